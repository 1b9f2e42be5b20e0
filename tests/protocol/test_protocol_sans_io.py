"""``headscale_core.protocol`` stays sans-IO: no module there imports asyncio or aiohttp."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import headscale_core.protocol as protocol_package

FORBIDDEN = {"asyncio", "aiohttp", "socket", "trio", "anyio"}
PACKAGE_DIR = Path(protocol_package.__file__).parent
MODULES = sorted(f"headscale_core.protocol.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE_DIR)]))


def test_protocol_package_has_the_expected_modules() -> None:
    assert {
        "headscale_core.protocol.keys",
        "headscale_core.protocol.noise",
        "headscale_core.protocol.mapstream",
    } <= set(MODULES)


def test_no_protocol_source_file_imports_io_libraries() -> None:
    offenders = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.name}: import {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_protocol_modules_loads_no_io_library() -> None:
    # A fresh interpreter, so modules other tests imported do not hide a transitive import.
    code = (
        "import sys\n"
        f"for name in {MODULES!r}: __import__(name)\n"
        f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
