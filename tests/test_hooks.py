"""One ``test_hook_<name>`` per hook: a small real plugin registered through
``make_plugin_manager(extra=[...])`` and the effect a user of the server would notice.

``tests/test_hooks_meta.py`` checks that every hook in ``hookspecs.py`` has its test here (or in
a plugin's tests)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pluggy
import pytest
from aiohttp import web

from headscale_core.builtin.sqlite_storage import SqliteBackend
from headscale_core.cli.main import build_parser
from headscale_core.config import load_config
from headscale_core.configdump import dump_defaults
from headscale_core.errors import ConfigError, InvalidRequest
from headscale_core.events import Event
from headscale_core.hookspecs import hookimpl
from headscale_core.plugins import Plugins, make_plugin_manager
from headscale_core.protocol.keys import PrivateKey, generate_private, public_from_private
from headscale_core.providers import (
    AuthProvider,
    ChangeBus,
    ConnectionUpgrade,
    Deny,
    DERPMapProvider,
    DERPRegionContribution,
    Identity,
    KeyStore,
    PolicySource,
    RequestHead,
)
from headscale_core.server.app import close_core, open_core, plugin_sections, running_server
from headscale_core.server.context import ServerContext
from headscale_core.state.registrations import PendingRegistration
from headscale_core.storage.backend import StorageBackend
from headscale_core.testing.inprocess import test_config as make_test_config


@contextlib.asynccontextmanager
async def serving(data_dir: Path, *plugins: object, **overrides: Any) -> AsyncIterator[tuple[ServerContext, str]]:
    """The in-process server (loopback, port 0) with ``plugins`` registered after the built-ins."""
    config = make_test_config(data_dir, **overrides)
    # Installed plugins stay out: each test shows one plugin's effect on the built-in server.
    ctx = await open_core(config, plugins=Plugins(make_plugin_manager(load_entrypoints=False, extra=plugins)))
    try:
        async with running_server(ctx) as addresses:
            host, port = addresses["listen"][:2]
            yield ctx, f"http://{host}:{port}"
    finally:
        await close_core(ctx)


async def eventually(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


async def start_registration(ctx: ServerContext, hostname: str) -> str:
    """A pending interactive registration, as a client without an auth key creates it."""
    machine_key = str(PrivateKey.generate().machine_public())
    node_key = str(PrivateKey.generate().node_public())
    answer = await ctx.extras["registrar"].register(
        {"NodeKey": node_key, "Hostinfo": {"Hostname": hostname}}, machine_key)
    return str(answer["AuthURL"]).rsplit("/", 1)[-1]


# ---- headscale_config_sections --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GreetingSection:
    message: str = "hello"
    repeat: int = 1
    shout_loudly: bool = False


class GreetingPlugin:
    @hookimpl
    def headscale_config_sections(self) -> Mapping[str, type]:
        return {"greeting": GreetingSection}


def test_hook_headscale_config_sections(tmp_path: Path) -> None:
    sections = plugin_sections(Plugins(make_plugin_manager(extra=[GreetingPlugin()])))
    assert sections["greeting"] is GreetingSection
    config_file = tmp_path / "config.yaml"

    config_file.write_text("greeting:\n  message: hi\n  repeat: twice\n  colour: red\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(config_file), env={}, plugin_sections=sections)
    assert "greeting.repeat: expected a whole number, got str 'twice'" in info.value.problems
    assert any(p.startswith("greeting.colour: unknown key") for p in info.value.problems)

    config_file.write_text("greeting:\n  message: hi\n")
    env = {"HEADSCALE_GREETING_REPEAT": "3", "HEADSCALE_GREETING_SHOUT_LOUDLY": "true"}
    config = load_config(str(config_file), env=env, plugin_sections=sections)
    assert config.greeting == GreetingSection(message="hi", repeat=3, shout_loudly=True)
    assert "greeting:\n  message: hello\n  repeat: 1\n" in dump_defaults(sections)

    with pytest.raises(ConfigError, match="two plugins claim the config section 'greeting'"):
        plugin_sections(Plugins(make_plugin_manager(extra=[GreetingPlugin(), GreetingPlugin()])))


# ---- headscale_storage_backends -------------------------------------------------------------


class ElsewhereStorage:
    """Offers ``database.type: elsewhere``: SQLite at a path of the plugin's choosing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.made: list[StorageBackend] = []

    @hookimpl
    def headscale_storage_backends(self) -> Mapping[str, Callable[[Any], StorageBackend]]:
        return {"elsewhere": self.make}

    def make(self, config: Any) -> StorageBackend:
        backend = SqliteBackend(self.path)
        self.made.append(backend)
        return backend


async def test_hook_headscale_storage_backends(tmp_path: Path) -> None:
    plugin = ElsewhereStorage(tmp_path / "elsewhere" / "data.db")
    async with serving(tmp_path / "server", plugin, database={"type": "elsewhere"}) as (ctx, _):
        assert ctx.state.storage is plugin.made[0]
        await ctx.state.create_user("alice")
    with contextlib.closing(sqlite3.connect(plugin.path)) as db:
        assert db.execute("SELECT name FROM users").fetchall() == [("alice",)]
    assert not (tmp_path / "server" / "db.sqlite").exists()


async def test_unknown_database_type_names_the_installed_backends(tmp_path: Path) -> None:
    config = make_test_config(tmp_path, database={"type": "x"})
    for extra, installed in (((), "sqlite"), ((ElsewhereStorage(tmp_path / "e.db"),), "elsewhere, sqlite")):
        plugins = Plugins(make_plugin_manager(load_entrypoints=False, extra=extra))
        with pytest.raises(ConfigError) as info:
            await open_core(config, plugins=plugins)
        assert str(info.value) == f"unknown database.type 'x': is the plugin installed? installed: {installed}"
    assert not (tmp_path / "db.sqlite").exists()


# ---- headscale_change_buses -----------------------------------------------------------------


class RecordingBus:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.closed = False

    async def publish(self, change: Mapping[str, Any]) -> None:
        return None

    def subscribe(self, callback: Any) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True


class BusPreferringStorage(ElsewhereStorage):
    @hookimpl
    def headscale_change_buses(self) -> Mapping[str, Callable[[ServerContext], ChangeBus]]:
        return {"recording": self.make_bus}

    def make(self, config: Any) -> StorageBackend:
        backend = super().make(config)
        backend.preferred_change_bus = "recording"
        return backend

    def make_bus(self, ctx: ServerContext) -> ChangeBus:
        self.bus = RecordingBus(ctx)
        return self.bus


async def test_hook_headscale_change_buses(tmp_path: Path) -> None:
    plugin = BusPreferringStorage(tmp_path / "bus.db")
    async with serving(tmp_path / "server", plugin, database={"type": "elsewhere"}) as (ctx, _):
        assert ctx.extras["change_bus"] is plugin.bus
        assert plugin.bus.ctx is ctx and not plugin.bus.closed
    assert plugin.bus.closed, "the change bus is closed at shutdown"

    async with serving(tmp_path / "default") as (ctx, _):
        assert type(ctx.extras["change_bus"]).__name__ == "LocalBus"


# ---- headscale_key_stores -------------------------------------------------------------------


class MemoryKeys:
    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.closed = False

    async def load_or_create(self, name: str) -> bytes:
        return self.keys.setdefault(name, generate_private())

    async def rotate(self, name: str) -> bytes:
        self.keys[name] = generate_private()
        return self.keys[name]

    async def aclose(self) -> None:
        self.closed = True


class MemoryKeyStorePlugin:
    def __init__(self) -> None:
        self.store = MemoryKeys()

    @hookimpl
    def headscale_key_stores(self) -> Mapping[str, Callable[[Any], KeyStore]]:
        return {"memory": lambda config: self.store}


async def test_hook_headscale_key_stores(tmp_path: Path) -> None:
    plugin = MemoryKeyStorePlugin()
    async with serving(tmp_path, plugin, keys={"store": "memory"}) as (_, url):
        async with aiohttp.ClientSession() as http, http.get(f"{url}/key?v=100") as resp:
            served = (await resp.json())["publicKey"]
    assert served == "mkey:" + public_from_private(plugin.store.keys["noise"]).hex()
    assert not (tmp_path / "noise_private.key").exists(), "the file store must not have been used"
    assert plugin.store.closed


# ---- headscale_auth_providers ---------------------------------------------------------------


class ExampleSSO:
    name = "example-sso"
    title = "Example SSO"

    def login_url(self, registration_id: str) -> str | None:
        return f"https://sso.example/login?registration={registration_id}"


class SSOPlugin:
    @hookimpl
    def headscale_auth_providers(self, ctx: ServerContext) -> list[AuthProvider]:
        return [ExampleSSO()]


async def test_hook_headscale_auth_providers(tmp_path: Path) -> None:
    async with serving(tmp_path, SSOPlugin()) as (ctx, url):
        reg_id = await start_registration(ctx, "laptop")
        async with aiohttp.ClientSession() as http, http.get(f"{url}/register/{reg_id}") as resp:
            page = await resp.text()
    assert resp.status == 200
    assert f'<a href="https://sso.example/login?registration={reg_id}">Example SSO</a>' in page
    assert "headscale nodes register --user USERNAME --key " + reg_id in page  # CLI approval stays


# ---- headscale_authorize_login --------------------------------------------------------------


class OnlyExampleCom:
    def __init__(self) -> None:
        self.seen: list[tuple[Identity, PendingRegistration]] = []

    @hookimpl
    def headscale_authorize_login(self, identity: Identity, registration: PendingRegistration) -> Deny | None:
        self.seen.append((identity, registration))
        if not identity.email.endswith("@example.com"):
            return Deny(f"{identity.email or identity.name} is not an example.com account")
        return None


async def test_hook_headscale_authorize_login(tmp_path: Path) -> None:
    plugin = OnlyExampleCom()
    async with serving(tmp_path, plugin) as (ctx, _):
        registrar = ctx.extras["registrar"]
        mallory = await ctx.state.create_user("mallory", email="mallory@evil.test")
        reg_id = await start_registration(ctx, "intruder")
        with pytest.raises(InvalidRequest, match="login refused: mallory@evil.test is not an example.com account"):
            await registrar.approve(reg_id, mallory)
        assert ctx.state.nodes() == []
        identity, registration = plugin.seen[-1]
        assert (identity.name, identity.email) == ("mallory", "mallory@evil.test")
        assert (registration.id, registration.hostname) == (reg_id, "intruder")

        alice = await ctx.state.create_user("alice", email="alice@example.com")
        node = await registrar.approve(reg_id, alice)
        assert [n.id for n in ctx.state.nodes()] == [node.id] and node.user_id == alice.id


# ---- headscale_policy_sources ---------------------------------------------------------------

ALLOW_ALL_POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'
ALICE_ONLY_POLICY = '{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]}]}'


class StaticPolicy:
    def __init__(self, text: str) -> None:
        self.text = text
        self.changed: asyncio.Queue[None] = asyncio.Queue()
        self.stored: list[str] = []

    async def load(self) -> str | None:
        return self.text

    async def store(self, text: str) -> None:
        self.stored.append(text)
        self.text = text

    async def watch(self) -> AsyncIterator[None]:
        while True:
            await self.changed.get()
            yield None


class StaticPolicyPlugin:
    def __init__(self, source: StaticPolicy) -> None:
        self.source = source

    @hookimpl
    def headscale_policy_sources(self) -> Mapping[str, Callable[[ServerContext], PolicySource]]:
        return {"static": lambda ctx: self.source}


async def test_hook_headscale_policy_sources(tmp_path: Path) -> None:
    source = StaticPolicy(ALLOW_ALL_POLICY)
    async with serving(tmp_path, StaticPolicyPlugin(source), policy={"mode": "static"}) as (ctx, _):
        assert ctx.state.policy.text == ALLOW_ALL_POLICY and not ctx.state.policy.allow_all
        source.text = ALICE_ONLY_POLICY
        source.changed.put_nowait(None)
        await eventually(lambda: ctx.state.policy.text == ALICE_ONLY_POLICY)
        await ctx.state.set_policy(ALLOW_ALL_POLICY)
        assert source.stored == [ALLOW_ALL_POLICY]


# ---- headscale_derp_map_providers -----------------------------------------------------------


def region(rid: int, code: str) -> dict[str, Any]:
    return {"RegionID": rid, "RegionCode": code, "RegionName": code.title(),
            "Nodes": [{"Name": f"{rid}a", "RegionID": rid, "HostName": f"{code}.derp.test"}]}


class FixedRegions:
    def __init__(self, regions: dict[int, dict[str, Any]], priority: int) -> None:
        self.contribution = DERPRegionContribution(regions=regions, priority=priority)

    async def fetch(self) -> DERPRegionContribution:
        return self.contribution


class RegionPlugin:
    @hookimpl
    def headscale_derp_map_providers(self, ctx: ServerContext) -> list[DERPMapProvider]:
        return [FixedRegions({950: region(950, "plugin")}, priority=10)]


async def test_hook_headscale_derp_map_providers(tmp_path: Path) -> None:
    derp_file = tmp_path / "derp.json"
    derp_file.write_text(json.dumps({"Regions": {"950": region(950, "file"), "951": region(951, "other")}}))
    async with serving(tmp_path / "server", RegionPlugin(),
                       derp={"paths": [str(derp_file)]}) as (ctx, _):
        regions = ctx.state.derp_map["Regions"]
    assert regions[950] == region(950, "plugin"), "the higher-priority provider wins a region-ID clash"
    assert regions[951] == region(951, "other")


# ---- headscale_connection_upgrades ----------------------------------------------------------


class EchoUpgrade:
    """Answers 101 on ``/echo``, reports what arrived with the head, then echoes."""

    def __init__(self) -> None:
        self.heads: list[RequestHead] = []
        self.buffered: list[bytes] = []

    async def __call__(self, head: RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       buffered: bytes) -> None:
        self.heads.append(head)
        self.buffered.append(buffered)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n" + buffered)
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()


class EchoPlugin:
    def __init__(self, path: str = "/echo") -> None:
        self.path = path
        self.handler = EchoUpgrade()

    @hookimpl
    def headscale_connection_upgrades(self, ctx: ServerContext) -> Mapping[str, ConnectionUpgrade]:
        return {self.path: self.handler}


async def test_hook_headscale_connection_upgrades(tmp_path: Path) -> None:
    plugin = EchoPlugin()
    early = b"\x00early bytes sent right after the head\xff"
    async with serving(tmp_path, plugin) as (_, url):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /echo?x=1 HTTP/1.1\r\nHost: test\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n" + early)
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert status.startswith(b"HTTP/1.1 101 ")
        assert await asyncio.wait_for(reader.readexactly(len(early)), 5) == early
        writer.write(b"later")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"later"
        writer.close()
    assert plugin.handler.buffered == [early]
    (head,) = plugin.handler.heads
    assert (head.method, head.path, head.query, head.header("upgrade")) == ("GET", "/echo", {"x": "1"}, "echo")


@pytest.mark.parametrize("path", ["/ts2021", "/echo"])
async def test_an_upgrade_path_claimed_twice_stops_start_up(tmp_path: Path, path: str) -> None:
    with pytest.raises(ConfigError, match=f"two plugins want to take over {path}"):
        async with serving(tmp_path, EchoPlugin("/echo"), EchoPlugin(path)):
            pass


# ---- headscale_routes -----------------------------------------------------------------------


class HelloRoutes:
    @hookimpl
    def headscale_routes(self, ctx: ServerContext) -> list[web.RouteDef]:
        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"hello": request.match_info["name"], "users": len(ctx.state.users())})

        return [web.get("/hello/{name}", hello)]


async def test_hook_headscale_routes(tmp_path: Path) -> None:
    async with serving(tmp_path, HelloRoutes()) as (ctx, url):
        await ctx.state.create_user("alice")
        async with aiohttp.ClientSession() as http, http.get(f"{url}/hello/bob") as resp:
            assert resp.status == 200
            assert await resp.json() == {"hello": "bob", "users": 1}


# ---- headscale_lifespans --------------------------------------------------------------------


class TwoLifespans:
    def __init__(self) -> None:
        self.log: list[str] = []

    def _span(self, name: str, ctx: ServerContext) -> Callable[[], contextlib.AbstractAsyncContextManager[None]]:
        @contextlib.asynccontextmanager
        async def span() -> AsyncIterator[None]:
            # entered after storage is open: the state service is usable here
            self.log.append(f"enter {name} users={len(ctx.state.users())}")
            try:
                yield
            finally:
                self.log.append(f"exit {name}")

        return span

    @hookimpl
    def headscale_lifespans(self, ctx: ServerContext) -> list[Callable[[], contextlib.AbstractAsyncContextManager[None]]]:
        return [self._span("first", ctx), self._span("second", ctx)]


async def test_hook_headscale_lifespans(tmp_path: Path) -> None:
    plugin = TwoLifespans()
    async with serving(tmp_path, plugin):
        assert plugin.log == ["enter first users=0", "enter second users=0"]
    assert plugin.log[2:] == ["exit second", "exit first"]


# ---- headscale_cli_commands -----------------------------------------------------------------


class HelloCommand:
    @hookimpl
    def headscale_cli_commands(self, subparsers: argparse._SubParsersAction, plugin_manager: Any) -> None:  # type: ignore[type-arg]
        parser = subparsers.add_parser("hello", help="greet someone")
        parser.add_argument("--name", default="world")
        parser.set_defaults(func=lambda args: print(f"hello {args.name}") or 0, needs_config=False)


def test_hook_headscale_cli_commands(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser(Plugins(make_plugin_manager(extra=[HelloCommand()])))
    assert "greet someone" in parser.format_help()
    args = parser.parse_args(["hello", "--name", "bob"])
    assert args.func(args) == 0
    assert capsys.readouterr().out == "hello bob\n"


# ---- headscale_event ------------------------------------------------------------------------


class EventLog:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def headscale_event(self, event: Event) -> None:
        self.events.append(event)


class BrokenObserver:
    @hookimpl
    def headscale_event(self, event: Event) -> None:
        raise RuntimeError("webhook down")


async def test_hook_headscale_event(tmp_path: Path) -> None:
    observer = EventLog()
    async with serving(tmp_path, BrokenObserver(), observer) as (ctx, _):
        user = await ctx.state.create_user("alice", actor="api:abc123")
        assert ctx.state.user("alice") == user, "a failing observer must not break the change"
    (event,) = [e for e in observer.events if e.kind == "user.create"]
    assert (event.actor, event.subject, event.details) == ("api:abc123", f"user:{user.id}", {"name": "alice"})
    assert event.time.tzinfo is not None


# ---- the plugin manager itself --------------------------------------------------------------


class Misspelled:
    @hookimpl
    def headscale_unknwon(self) -> None:
        return None


def test_a_plugin_implementing_an_unknown_hook_fails_at_start_up() -> None:
    with pytest.raises(pluggy.PluginValidationError, match="headscale_unknwon"):
        make_plugin_manager(extra=[Misspelled()])


def test_blocked_plugins_are_not_loaded() -> None:
    pm = make_plugin_manager(block=["headscale_core.builtin.sqlite_storage", "derp"])
    assert pm.get_plugin("headscale_core.builtin.sqlite_storage") is None
    assert pm.get_plugin("derp") is None, "an entry-point plugin is blocked by its entry-point name"
    plugins = Plugins(pm)
    assert "sqlite" not in plugins.names("headscale_storage_backends")
    with pytest.raises(ConfigError, match=r"unknown database.type 'sqlite': is the plugin installed\? installed: "):
        plugins.choose("headscale_storage_backends", "database.type", "sqlite", "")


async def test_the_config_block_list_reaches_start_up(tmp_path: Path) -> None:
    config = make_test_config(tmp_path, plugins={"block": ["headscale_core.builtin.file_keys"]})
    with pytest.raises(ConfigError, match="unknown keys.store 'file': is the plugin installed"):
        await open_core(config)
