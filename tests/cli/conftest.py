"""Run ``headscale`` admin commands in-process, through the real parser of ``cli.main``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from api.conftest import builtin_plugins, events, server, short_dir  # noqa: F401  (shared fixtures)

from headscale_core.cli.main import build_parser
from headscale_core.config import Config


@dataclass
class Result:
    code: int
    out: str
    err: str


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.plugins = builtin_plugins()
        self.parser = build_parser(self.plugins)

    def __call__(self, config: Config, *argv: str) -> Result:
        """One command, as `headscale ARGV` would run it with this config."""
        self.capsys.readouterr()
        args = self.parser.parse_args(list(argv))
        args.cfg, args.plugins = config, self.plugins
        code = int(args.func(args) or 0)
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)
