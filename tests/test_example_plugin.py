"""The example third-party plugin (docs/examples/headscale-example-auth), installed into a
temporary directory outside the venv, is found through its ``headscale`` entry point, listed by
``headscale plugins``, and refuses or permits approvals by email domain."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from headscale_core.errors import ConfigError, InvalidRequest
from headscale_core.plugins import describe_plugins, make_plugin_manager
from headscale_core.protocol.keys import PrivateKey
from headscale_core.testing.inprocess import running
from headscale_core.testing.inprocess import test_config as make_test_config

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "headscale-example-auth"


def _can_build_offline() -> bool:
    """setuptools builds wheels by itself from 70.1; older ones need the ``wheel`` package."""
    import setuptools

    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _lay_out_like_pip(source: Path, target: Path) -> None:
    """What ``pip install --target`` leaves behind: the package and a .dist-info whose
    metadata and entry points come from the example's own pyproject.toml."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    for package in source.glob("headscale_*/__init__.py"):
        shutil.copytree(package.parent, target / package.parent.name)
    dist_info = target / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = project["entry-points"]
    (dist_info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in eps.items()) for group, eps in groups.items()))


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("example-auth")
    source = work / "src"  # a copy, so the build leaves nothing in docs/
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    if _can_build_offline():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(target), str(source)], check=True, capture_output=True)
    else:
        target.mkdir()
        _lay_out_like_pip(source, target)
    return target


@pytest.fixture
def installed(site_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(site_dir))
    yield site_dir
    for name in [m for m in sys.modules if m.startswith("headscale_example_auth")]:
        del sys.modules[name]


def test_loaded_through_its_entry_point(installed: Path) -> None:
    pm = make_plugin_manager()
    plugin = pm.get_plugin("example_auth")
    assert plugin is not None and plugin.__name__ == "headscale_example_auth.plugin"
    assert plugin.__file__.startswith(str(installed))
    (info,) = [i for i in describe_plugins(pm) if i.name == "headscale-example-auth:example_auth"]
    assert info.version == "0.1.0"
    assert info.hooks == ("headscale_auth_providers", "headscale_config_sections", "headscale_lifespans")
    assert make_plugin_manager(block=["example_auth"]).get_plugin("example_auth") is None


def test_headscale_plugins_lists_it(installed: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run([str(Path(sys.executable).with_name("headscale")), "plugins"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("headscale-example-auth:example_auth ")]
    assert line.split()[1:3] == ["0.1.0", "headscale_auth_providers,"]


def test_its_config_section_is_validated(installed: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_test_config(tmp_path, example_auth={"allowed_domain": ["example.com"]})
    assert "example_auth.allowed_domain: unknown key: did you mean 'example_auth.allowed_domains'?" in info.value.problems


async def test_refuses_and_permits_approvals(installed: Path, tmp_path: Path) -> None:
    settings = {"allowed_domains": ["example.com"], "login_url": "https://sso.example.com/start?r={registration_id}"}
    async with running(tmp_path, example_auth=settings) as srv:
        registrar = srv.ctx.extras["registrar"]
        answer = await registrar.register({"NodeKey": str(PrivateKey.generate().node_public()),
                                           "Hostinfo": {"Hostname": "laptop"}},
                                          str(PrivateKey.generate().machine_public()))
        reg_id = answer["AuthURL"].rsplit("/", 1)[-1]
        (provider,) = [p for group in srv.ctx.plugins.hook.headscale_auth_providers(ctx=srv.ctx) for p in group
                       if p.name == "example-auth"]
        assert provider.login_url(reg_id) == f"https://sso.example.com/start?r={reg_id}"

        mallory = await srv.state.create_user("mallory", email="mallory@example.org")
        with pytest.raises(InvalidRequest, match=r"login refused: mallory@example.org is not in an allowed "
                                                 r"domain \(example.com\)"):
            await registrar.approve(reg_id, mallory)
        assert srv.state.nodes() == []

        alice = await srv.state.create_user("alice", email="alice@Example.com")
        node = await registrar.approve(reg_id, alice)
        assert node.user_id == alice.id
    assert srv.ctx.plugins.pm.get_plugin("example_auth.domains") is None, "the veto is unregistered at shutdown"
