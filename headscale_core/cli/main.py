"""The ``headscale`` command: server commands here, admin commands in ``cli.admin``, more
from plugins through ``headscale_cli_commands``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from headscale_core import __version__
from headscale_core.config import Config, load_config
from headscale_core.errors import HeadscaleError
from headscale_core.plugins import Plugins, describe_plugins, make_plugin_manager
from headscale_core.providers import KeyStoreError


def build_parser(plugins: Plugins) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headscale", description="Self-hosted Tailscale coordination server")
    parser.add_argument("-c", "--config", help="config file (default: $HEADSCALE_CONFIG, /etc/headscale, ~/.headscale, .)")
    parser.add_argument("-o", "--output", default="", choices=["", "json", "json-line", "yaml"],
                        help="output format")
    parser.add_argument("--force", action="store_true", help="do not ask for confirmation")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the server")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("configtest", help="load and validate the configuration, listing every problem")
    p.set_defaults(func=cmd_configtest)
    for name in ("configdump", "dumpConfig"):
        p = sub.add_parser(name, help="print a complete, commented default configuration")
        p.set_defaults(func=cmd_configdump, needs_config=False)
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version, needs_config=False)
    p = sub.add_parser("plugins", help="list installed plugins with versions and hooks")
    p.set_defaults(func=cmd_plugins, needs_config=False)
    gen = sub.add_parser("generate", aliases=["gen"], help="generate keys").add_subparsers(dest="what")
    p = gen.add_parser("private-key", help="print a new machine private key")
    p.set_defaults(func=cmd_generate_key, needs_config=False)
    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="what", metavar="ACTION")
    p = db.add_parser("upgrade", help="apply database migrations")
    p.set_defaults(func=cmd_db_upgrade)
    p = db.add_parser("backup", help="write a consistent online backup of the database")
    p.add_argument("destination")
    p.set_defaults(func=cmd_db_backup)
    import importlib

    try:
        admin = importlib.import_module("headscale_core.cli.admin")
    except ImportError:
        pass
    else:
        admin.register(sub)
    importlib.import_module("headscale_core.cli.admin_policy_explain").register(sub)
    plugins.hook.headscale_cli_commands(subparsers=sub, plugin_manager=plugins.pm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    try:
        plugins = Plugins(make_plugin_manager(block=early_block_list(argv)))
    except HeadscaleError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    parser = build_parser(plugins)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.plugins = plugins
    try:
        if getattr(args, "needs_config", True):
            args.cfg = load(args, plugins)
        result = args.func(args)
        return int(result or 0)
    except (HeadscaleError, KeyStoreError) as exc:
        return fail(args, str(exc), getattr(exc, "problems", None))
    except KeyboardInterrupt:
        return 130


GLOBAL_WITH_VALUE = ("-c", "--config", "-o", "--output")


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options to the front, so ``headscale nodes list -o json`` works as it does
    with Headscale's CLI (argparse only accepts them before the subcommand)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg in GLOBAL_WITH_VALUE and i + 1 < len(argv):
            front += argv[i:i + 2]
            i += 2
            continue
        if arg == "--force" or arg.startswith(("--config=", "--output=")) or (
                len(arg) > 2 and arg[:2] in ("-c", "-o") and not arg.startswith("--")):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def early_block_list(argv: list[str]) -> list[str]:
    """``plugins.block`` read before plugins are loaded (a broken plugin must be blockable)."""
    import os

    import yaml

    from headscale_core.config import find_config_file

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config")
    known, _ = pre.parse_known_args(argv)
    block: list[str] = []
    env = os.environ.get("HEADSCALE_PLUGINS_BLOCK", "")
    if env:
        parsed = yaml.safe_load(env)
        block += [str(x) for x in parsed] if isinstance(parsed, list) else [x.strip() for x in env.split(",")]
    try:
        path = find_config_file(known.config, os.environ)
        raw = yaml.safe_load(path.read_text()) if path else None
    except (OSError, yaml.YAMLError):
        raw = None  # reported properly when the config is loaded
    if isinstance(raw, dict) and isinstance(raw.get("plugins"), dict):
        block += [str(x) for x in raw["plugins"].get("block") or []]
    return block


def load(args: argparse.Namespace, plugins: Plugins) -> Config:
    from headscale_core.server.app import plugin_sections

    config = load_config(args.config, plugin_sections=plugin_sections(plugins))
    if config.plugins.block:
        args.plugins = Plugins(make_plugin_manager(block=config.plugins.block))
    setup_logging(config)
    return args.plugins.resolve_secrets(config)


def fail(args: argparse.Namespace, message: str, problems: list[str] | None = None) -> int:
    if getattr(args, "output", ""):
        print(json.dumps({"error": message}), file=sys.stderr)
    elif problems and len(problems) > 1:
        print("Error: the configuration has problems:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    else:
        print(f"Error: {message}", file=sys.stderr)
    return 1


def setup_logging(config: Config) -> None:
    level = {"panic": "CRITICAL", "fatal": "CRITICAL", "error": "ERROR", "warn": "WARNING", "info": "INFO",
             "debug": "DEBUG", "trace": "DEBUG"}[config.log.level]
    fmt = ('{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
           if config.log.format == "json" else "%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from headscale_core.server.app import run_server

    with asyncio.Runner(loop_factory=event_loop_factory(args.cfg.tuning.event_loop)) as runner:
        runner.run(run_server(args.cfg, args.plugins))
    return 0


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when configured and installed (it has no Windows build), else asyncio's own."""
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        logging.getLogger(__name__).warning(
            "tuning.event_loop is uvloop but uvloop is not installed (pip install uvloop): using asyncio")
        return None
    return uvloop.new_event_loop


def cmd_configtest(args: argparse.Namespace) -> int:
    print(f"configuration OK ({args.cfg.source or 'built-in defaults'})")
    return 0


def cmd_configdump(args: argparse.Namespace) -> int:
    from headscale_core.configdump import dump_defaults
    from headscale_core.server.app import plugin_sections

    sys.stdout.write(dump_defaults(plugin_sections(args.plugins)))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(json.dumps({"version": __version__}) if args.output else __version__)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    infos = describe_plugins(args.plugins.pm)
    if args.output:
        print(json.dumps([{"name": i.name, "version": i.version, "hooks": list(i.hooks)} for i in infos]))
        return 0
    width = max(len(i.name) for i in infos)
    for info in infos:
        print(f"{info.name:<{width}}  {info.version:<8}  {', '.join(info.hooks)}")
    return 0


def cmd_generate_key(args: argparse.Namespace) -> int:
    from headscale_core.protocol.keys import generate_private

    print("privkey:" + generate_private().hex())
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    async def run() -> None:
        backend = args.plugins.choose("headscale_storage_backends", "database.type", args.cfg.database.type, "")(args.cfg)
        await backend.open(migrate_schema=True)
        await backend.close()

    asyncio.run(run())
    print("database schema is up to date")
    return 0


def cmd_db_backup(args: argparse.Namespace) -> int:
    async def run() -> Any:
        backend = args.plugins.choose("headscale_storage_backends", "database.type", args.cfg.database.type, "")(args.cfg)
        await backend.open(migrate_schema=False)
        try:
            await backend.backup(args.destination)
        finally:
            await backend.close()

    asyncio.run(run())
    print(f"backup written to {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
