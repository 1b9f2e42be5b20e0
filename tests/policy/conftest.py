"""Collects capture results per category and prints the pass rate at the end of the session."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

CAPTURE_RESULTS: dict[str, list[bool]] = defaultdict(list)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report = outcome.get_result()
    category = getattr(item, "callspec", None) and item.callspec.params.get("capture_path")
    if report.when == "call" and category is not None and item.name.startswith("test_capture"):
        CAPTURE_RESULTS[category.parent.name].append(report.passed)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not CAPTURE_RESULTS:
        return
    terminalreporter.section("Tailscale policy captures: pass rate per category")
    total_pass = total = 0
    for category in sorted(CAPTURE_RESULTS):
        results = CAPTURE_RESULTS[category]
        passed = sum(results)
        total_pass += passed
        total += len(results)
        terminalreporter.write_line(f"{category:20} {passed:4}/{len(results):<4} {100 * passed / len(results):5.1f}%")
    terminalreporter.write_line(f"{'total':20} {total_pass:4}/{total:<4} {100 * total_pass / total:5.1f}%")
