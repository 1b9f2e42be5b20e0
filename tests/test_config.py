"""Configuration as an operator meets it: ``config.yaml``, ``HEADSCALE_*`` overrides, ``${VAR}``,
the problems ``headscale configtest`` lists, ``configdump``, running with no file at all, and
start-up refusing bad files without touching them."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from headscale_core.config import load_config
from headscale_core.configdump import dump_defaults
from headscale_core.configschema import RootConfig
from headscale_core.errors import ConfigError

HEADSCALE = str(Path(sys.executable).with_name("headscale"))


def load(tmp_path: Path, text: str, env: Mapping[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(str(path), env=env or {})


def problems(tmp_path: Path, text: str, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return info.value.problems


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADSCALE_")}
    return {**env, **extra}


def cli(*args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HEADSCALE, *args], cwd=cwd, env=dict(env or clean_env()), capture_output=True, text=True,
                          timeout=timeout)


# ---- environment -----------------------------------------------------------------------------


def test_environment_overrides_file_values_by_key_path(tmp_path: Path) -> None:
    env = {
        "HEADSCALE_SERVER_URL": "https://hs.example.com",
        "HEADSCALE_DATABASE_SQLITE_WRITE_AHEAD_LOG": "false",
        "HEADSCALE_DATABASE_SQLITE_WAL_AUTOCHECKPOINT": "0",
        "HEADSCALE_DATABASE_POSTGRES_PASS": "from-env",
        "HEADSCALE_DNS_NAMESERVERS_GLOBAL": "[1.1.1.1, 9.9.9.9]",
        "HEADSCALE_LOG_LEVEL": "debug",
    }
    config = load(tmp_path, "server_url: http://from-file:8080\ndatabase:\n  sqlite:\n    write_ahead_log: true\n", env)
    assert config.server_url == "https://hs.example.com"
    assert config.database.sqlite.write_ahead_log is False
    assert config.database.sqlite.wal_autocheckpoint == 0
    assert config.database.postgres.password == "from-env"
    assert config.dns.nameservers.global_ == ["1.1.1.1", "9.9.9.9"]
    assert config.log.level == "debug"


def test_a_bad_environment_value_names_its_key(tmp_path: Path) -> None:
    found = problems(tmp_path, "", {"HEADSCALE_DATABASE_SQLITE_WAL_AUTOCHECKPOINT": "lots"})
    assert found == ["database.sqlite.wal_autocheckpoint: expected a whole number, got str 'lots'"]


def test_variables_are_expanded_and_a_missing_one_is_named_with_its_key(tmp_path: Path) -> None:
    text = "database:\n  postgres:\n    pass: ${DB_PASSWORD}\n    host: ${DB_HOST:-db.internal}\n"
    config = load(tmp_path, text, {"DB_PASSWORD": "s3cret"})
    assert (config.database.postgres.password, config.database.postgres.host) == ("s3cret", "db.internal")
    assert problems(tmp_path, text) == [
        "database.postgres.pass: environment variable DB_PASSWORD is not set (used as ${DB_PASSWORD})"]


# ---- problems with key paths -----------------------------------------------------------------


def test_unknown_keys_get_a_did_you_mean(tmp_path: Path) -> None:
    found = problems(tmp_path, "server_ulr: http://x\ndatabase:\n  sqlite:\n    pth: /x.db\nfrobnicate: 1\n")
    assert sorted(found) == [
        "database.sqlite.pth: unknown key: did you mean 'database.sqlite.path'?",
        "frobnicate: unknown key: remove it (see `headscale configdump`)",
        "server_ulr: unknown key: did you mean 'server_url'?",
    ]


def test_wrong_types_are_reported_with_what_was_found(tmp_path: Path) -> None:
    found = problems(tmp_path, "listen_addr: [a, b]\ndatabase:\n  debug: 'yes'\nprefixes: 10\n"
                               "tuning:\n  register_cache_max_entries: 1.5\n")
    assert "listen_addr: expected text, got list" in found
    assert "database.debug: expected true or false, got str 'yes'" in found
    assert "prefixes: expected a mapping of keys, got int 10" in found
    assert "tuning.register_cache_max_entries: expected a whole number, got float 1.5" in found


@pytest.mark.parametrize(("yaml_text", "problem"), [
    ("acl_policy_path: /etc/acl.hujson\n", "acl_policy_path: this key was removed (renamed to policy.path)"),
    ("dns_config:\n  magic_dns: true\n", "dns_config: this key was removed (renamed to dns (see configdump))"),
    ("randomize_client_port: true\n",
     "randomize_client_port: this key was removed (moved to the policy (nodeAttrs randomize-client-port))"),
])
def test_removed_keys_say_where_they_went(tmp_path: Path, yaml_text: str, problem: str) -> None:
    assert problems(tmp_path, yaml_text) == [problem]


def test_the_older_ip_prefixes_list_is_accepted(tmp_path: Path) -> None:
    config = load(tmp_path, "ip_prefixes:\n  - 100.100.0.0/16\n  - fd7a:115c:a1e0:ab::/64\n")
    assert config.prefix_v4 == ipaddress.ip_network("100.100.0.0/16")
    assert config.prefix_v6 == ipaddress.ip_network("fd7a:115c:a1e0:ab::/64")
    assert problems(tmp_path, "ip_prefixes: [100.64.0.0/10, nope]\n") == ["ip_prefixes[1]: 'nope' is not a CIDR range"]


def test_configdump_is_the_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, dump_defaults()).root == RootConfig()


# ---- the command line ------------------------------------------------------------------------


def test_configtest_lists_every_problem_on_its_own_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server_url: hs.example.com\nlog:\n  level: loud\ndatabase:\n  sqlite:\n    pth: x\n")
    result = cli("-c", str(bad), "configtest", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: the configuration has problems:",
        "  database.sqlite.pth: unknown key: did you mean 'database.sqlite.path'?",
        "  server_url: 'hs.example.com' must start with http:// or https://",
        "  log.level: 'loud' must be one of panic, fatal, error, warn, info, debug, trace",
    ]


def test_configdump_output_passes_configtest(tmp_path: Path) -> None:
    dumped = cli("configdump", cwd=tmp_path)
    assert dumped.returncode == 0, dumped.stderr
    (tmp_path / "config.yaml").write_text(dumped.stdout)
    result = cli("-c", "config.yaml", "configtest", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "configuration OK (config.yaml)\n"


def test_without_a_config_file_the_server_runs_on_defaults_in_a_local_data_dir(tmp_path: Path) -> None:
    if any(Path(p).is_file() for p in ("/etc/headscale/config.yaml", "/etc/headscale/config.yml")):
        pytest.skip("this machine has /etc/headscale/config.yaml, which would be found first")
    env = clean_env(HOME=str(tmp_path), HEADSCALE_LISTEN_ADDR="127.0.0.1:0", HEADSCALE_METRICS_LISTEN_ADDR="")
    result = cli("configtest", cwd=tmp_path, env=env)
    assert (result.returncode, result.stdout) == (0, "configuration OK (built-in defaults)\n")

    proc = subprocess.Popen([HEADSCALE, "serve"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    data = tmp_path / "headscale-data"
    try:
        deadline = time.monotonic() + 30
        while not (data / "headscale.sock").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        assert (data / "db.sqlite").is_file() and (data / "noise_private.key").is_file()
        assert (data / "noise_private.key").stat().st_mode & 0o777 == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"data in {data.name}" in err or f"data in {data}" in err


# ---- bad files at start-up -------------------------------------------------------------------


def serve_config(tmp_path: Path, **paths: str) -> Path:
    lines = ["listen_addr: 127.0.0.1:0", "metrics_listen_addr: ''", f"data_dir: {tmp_path / 'data'}",
             "derp:", "  server:", "    enabled: false"]
    if "noise" in paths:
        lines += ["noise:", f"  private_key_path: {paths['noise']}"]
    if "database" in paths:
        lines += ["database:", "  sqlite:", f"    path: {paths['database']}"]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``Error:`` line that ends the output (start-up log lines may precede it)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "Error" in line or "error" in line]
    assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0], result.stderr
    return errors[0]


def test_a_garbage_noise_key_stops_serve_and_is_left_alone(tmp_path: Path) -> None:
    key = tmp_path / "noise_private.key"
    garbage = b"privkey:this-is-not-hex\n"
    key.write_bytes(garbage)
    result = cli("-c", str(serve_config(tmp_path, noise=str(key))), "serve", cwd=tmp_path, timeout=30)
    line = one_line_failure(result)
    assert line == (f"Error: {key} does not hold a noise private key (expected 'privkey:' and 64 hex digits): "
                    "restore the original file")
    assert key.read_bytes() == garbage


def test_an_unreadable_noise_key_stops_serve_and_is_left_alone(tmp_path: Path) -> None:
    key = tmp_path / "noise_private.key"
    key.mkdir()  # unreadable as a file even for root
    (key / "keep").write_bytes(b"x")
    result = cli("-c", str(serve_config(tmp_path, noise=str(key))), "serve", cwd=tmp_path, timeout=30)
    line = one_line_failure(result)
    assert line.startswith(f"Error: cannot read the noise private key {key}: ")
    assert "never delete it" in line
    assert key.is_dir() and os.listdir(key) == ["keep"]


def test_a_database_path_that_is_not_sqlite_stops_serve_and_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    content = b"# my notes, not a database\n" * 100
    db.write_bytes(content)
    result = cli("-c", str(serve_config(tmp_path, database=str(db))), "serve", cwd=tmp_path, timeout=30)
    line = one_line_failure(result)
    assert line == (f"Error: {db} is not a SQLite database (database.sqlite.path): point it at the right file; "
                    "nothing was written")
    assert db.read_bytes() == content
    assert not [name for name in os.listdir(tmp_path) if name.startswith("db.sqlite-")], "no journal or WAL"
