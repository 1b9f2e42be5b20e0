"""Meta-tests that keep the plugin seams honest: every hook is documented in the generated
``docs/plugins.md`` with its exact signature and calling semantics, and has a test."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from headscale_core import docs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = docs.hook_functions()
HOOK_NAMES = [h.__name__ for h in HOOKS]


def test_hookspecs_are_found() -> None:
    assert "headscale_config_sections" in HOOK_NAMES and "headscale_event" in HOOK_NAMES
    assert len(HOOK_NAMES) == len(set(HOOK_NAMES))


def test_plugins_md_is_up_to_date() -> None:
    current = (ROOT / docs.DEFAULT_OUTPUT).read_text(encoding="utf-8")
    assert current == docs.render(), f"docs/plugins.md is out of date: run `{docs.REGENERATE}`"


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "plugins.md"
    stale.write_text(docs.render().replace("headscale_event", "headscale_evnet"), encoding="utf-8")
    assert docs.main(["--check", "-o", str(stale)]) == 1
    assert docs.main(["-o", str(stale)]) == 0
    assert docs.main(["--check", "-o", str(stale)]) == 0


@pytest.mark.parametrize("hook", HOOKS, ids=HOOK_NAMES)
def test_documented_with_exact_signature(hook: Callable[..., Any]) -> None:
    text = (ROOT / docs.DEFAULT_OUTPUT).read_text(encoding="utf-8")
    signature = str(inspect.signature(hook)).replace("'", "")  # annotations are source text
    assert f"### {hook.__name__}\n\n```python\n{hook.__name__}{signature}\n```" in text


@pytest.mark.parametrize("hook", HOOKS, ids=HOOK_NAMES)
def test_docstring_states_calling_semantics(hook: Callable[..., Any]) -> None:
    doc = " ".join((inspect.getdoc(hook) or "").split())
    assert "Calling semantics:" in doc, f"{hook.__name__} needs 'Calling semantics: …' in its docstring"
    assert docs.calling_semantics(hook)


def _test_files() -> list[Path]:
    files = list((ROOT / "tests").rglob("test_*.py"))
    for tests_dir in (ROOT / "plugins").glob("*/tests"):
        files += tests_dir.rglob("test_*.py")
    return files


def _test_function_names() -> set[str]:
    names = set()
    for path in _test_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names |= {node.name for node in ast.walk(tree)
                  if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_hook_")}
    return names


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_every_hook_has_a_test(name: str) -> None:
    assert f"test_hook_{name}" in _test_function_names(), (
        f"write test_hook_{name} (tests/test_hooks.py or a plugin's tests/) showing the hook's effect"
    )
