"""The configuration schema: Headscale's ``config.yaml`` keys as frozen dataclasses.

Each field's ``metadata["doc"]`` is the comment ``headscale configdump`` prints. Paths
default relative to ``data_dir`` so that a server started with no config file keeps
everything in one local directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def doc(text: str, default: Any = None, *, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class NoiseSection:
    private_key_path: str = doc("Noise (ts2021) private key; generated if missing. Keep it: clients pin it.", "noise_private.key")


@dataclass(frozen=True)
class PrefixesSection:
    v4: str = doc("IPv4 range for node addresses (a subset of 100.64.0.0/10).", "100.64.0.0/10")
    v6: str = doc("IPv6 range for node addresses (a subset of fd7a:115c:a1e0::/48).", "fd7a:115c:a1e0::/48")
    allocation: str = doc("How addresses are handed out: sequential or random.", "sequential")


@dataclass(frozen=True)
class SqliteSection:
    path: str = doc("SQLite database file; its directory is created if missing.", "db.sqlite")
    write_ahead_log: bool = doc("Use SQLite's write-ahead log (recommended).", True)
    wal_autocheckpoint: int = doc("WAL pages between automatic checkpoints (0 turns them off).", 1000)


@dataclass(frozen=True)
class PostgresSection:
    host: str = doc("PostgreSQL host, or a unix socket directory.", "")
    port: int | None = doc("PostgreSQL port (leave empty with a socket directory).", 5432)
    name: str = doc("Database name.", "headscale")
    user: str = doc("Database user.", "headscale")
    # ``pass`` is a Python keyword; the YAML key stays ``pass``.
    password: str = field(default="", metadata={"doc": "Password; use ${DB_PASSWORD} to keep it out of the file.", "key": "pass"})
    ssl: str = doc("false, true, or a libpq sslmode (disable, require, verify-full…).", "false")
    max_open_conns: int = doc("Connection pool size.", 10)
    max_idle_conns: int = doc("Idle connections kept.", 10)
    conn_max_idle_time_secs: int = doc("Seconds before an idle connection is closed.", 3600)


@dataclass(frozen=True)
class DatabaseSection:
    type: str = doc("Storage backend: sqlite (built in) or postgres (plugin headscale-postgres).", "sqlite")
    change_bus: str = doc("How server instances tell each other of changes; empty: the backend's choice "
                          "(sqlite: local, postgres: LISTEN/NOTIFY).", "")
    debug: bool = doc("Log every SQL statement.", False)
    gorm: dict[str, Any] = doc("Accepted for compatibility with Headscale configs; not used.", factory=dict)
    sqlite: SqliteSection = doc("SQLite settings.", factory=SqliteSection)
    postgres: PostgresSection = doc("PostgreSQL settings (plugin headscale-postgres).", factory=PostgresSection)


@dataclass(frozen=True)
class DerpServerSection:
    enabled: bool = doc("Run the built-in DERP relay (plugin headscale-derp).", True)
    region_id: int = doc("Region ID of the built-in relay (900-999 are for self-hosted relays).", 999)
    region_code: str = doc("Short region code shown by clients.", "headscale")
    region_name: str = doc("Region name shown by clients.", "Headscale Embedded DERP")
    verify_clients: bool = doc("Only nodes registered here may use the relay.", True)
    stun_listen_addr: str = doc("UDP address of the STUN responder (0.0.0.0:3478 to serve clients elsewhere).", "127.0.0.1:3478")
    private_key_path: str = doc("DERP relay private key; generated if missing.", "derp_server_private.key")
    automatically_add_embedded_derp_region: bool = doc("Add the relay's region to the DERP map.", True)
    ipv4: str = doc("Public IPv4 address written into the region entry.", "")
    ipv6: str = doc("Public IPv6 address written into the region entry.", "")
    mesh_key: str = doc("Shared secret of a relay mesh (several server instances).", "")
    mesh_with: list[str] = doc("URLs of the other relays of the mesh.", factory=list)


@dataclass(frozen=True)
class DerpSection:
    server: DerpServerSection = doc("Built-in DERP relay.", factory=DerpServerSection)
    urls: list[str] = doc("URLs of JSON DERP maps to fetch.", factory=list)
    paths: list[str] = doc("Local YAML or JSON DERP map files.", factory=list)
    auto_update_enabled: bool = doc("Refresh the DERP map periodically.", True)
    update_frequency: str = doc("How often to refresh the DERP map.", "3h")


@dataclass(frozen=True)
class EphemeralSection:
    inactivity_timeout: str = doc("Delete ephemeral nodes this long after they disconnect.", "120s")


@dataclass(frozen=True)
class NodeSection:
    expiry: str = doc("Default key expiry for new untagged nodes (0 = never).", "0")
    ephemeral: EphemeralSection = doc("Ephemeral nodes.", factory=EphemeralSection)


@dataclass(frozen=True)
class LogSection:
    level: str = doc("panic, fatal, error, warn, info, debug or trace.", "info")
    format: str = doc("text or json.", "text")


@dataclass(frozen=True)
class PolicySection:
    mode: str = doc("Where the policy lives: file or database.", "file")
    path: str = doc("HuJSON policy file (mode file). Empty: allow all.", "")


@dataclass(frozen=True)
class NameserversSection:
    global_: list[str] = field(default_factory=list, metadata={"doc": "Resolvers for all queries.", "key": "global"})
    split: dict[str, list[str]] = doc("Per-domain resolvers.", factory=dict)


@dataclass(frozen=True)
class DNSSection:
    magic_dns: bool = doc("Answer node names under base_domain.", True)
    base_domain: str = doc("Domain of node names (node.<base_domain>); not the server's own domain.", "headscale.net")
    override_local_dns: bool = doc("Make the global nameservers the clients' only resolvers.", False)
    nameservers: NameserversSection = doc("Resolvers.", factory=NameserversSection)
    search_domains: list[str] = doc("Extra search domains.", factory=list)
    extra_records: list[dict[str, str]] = doc("Extra records: {name, type: A|AAAA, value}.", factory=list)
    extra_records_path: str = doc("JSON file of extra records (watched).", "")


@dataclass(frozen=True)
class LogtailSection:
    enabled: bool = doc("Let clients upload logs to Tailscale's log service.", False)


@dataclass(frozen=True)
class TaildropSection:
    enabled: bool = doc("Allow Taildrop file sharing.", True)


@dataclass(frozen=True)
class CLISection:
    address: str = doc("Remote server for the CLI (https://host:port); empty: local unix socket.", "")
    api_key: str = doc("API key for the remote CLI.", "")
    timeout: str = doc("CLI request timeout.", "5s")
    insecure: bool = doc("Skip TLS verification for the remote CLI.", False)


@dataclass(frozen=True)
class TuningSection:
    batch_change_delay: str = doc("Changes are coalesced into at most one fan-out per window: the first change "
                                  "after a quiet spell goes out at once, later ones wait for the rest of the window.", "10ms")
    register_cache_expiration: str = doc("How long a pending interactive registration lives.", "15m")
    register_cache_max_entries: int = doc("Pending registrations kept at most.", 1024)
    keepalive_interval: str = doc("Interval of map-stream keep-alives.", "50s")
    event_loop: str = doc("Event loop of `headscale serve`: uvloop (libuv sockets and timers, faster "
                          "fan-out) or asyncio (the standard library's).", "uvloop")
    gc_freeze_interval: str = doc("How often `headscale serve` moves the heap into Python's permanent GC "
                                  "generation, so automatic collections walk only what is new (0: off).", "30s")
    gc_sweep_interval: str = doc("How often `headscale serve` collects the whole heap, frozen part included "
                                 "(a pause of ~0.1 s per 1,000 nodes; 0: off).", "10m")


@dataclass(frozen=True)
class KeysSection:
    store: str = doc("Key custody: file (built in) or vault (plugin headscale-vault-keys).", "file")


@dataclass(frozen=True)
class PluginsSection:
    block: list[str] = doc("Installed plugins not to load (entry-point names).", factory=list)


@dataclass(frozen=True)
class AuditSection:
    path: str = doc("Also append audit events as JSON lines to this file (empty: database only).", "")


@dataclass(frozen=True)
class RootConfig:
    server_url: str = doc("URL clients use to reach this server.", "http://127.0.0.1:8080")
    listen_addr: str = doc("Address of the main listener (clients, API, web).", "127.0.0.1:8080")
    metrics_listen_addr: str = doc("Address of /metrics; empty turns it off.", "127.0.0.1:9090")
    grpc_listen_addr: str = doc("Accepted for compatibility; this server has no gRPC listener.", "")
    grpc_allow_insecure: bool = doc("Accepted for compatibility; not used.", False)
    trusted_proxies: list[str] = doc("CIDRs whose X-Forwarded-For is believed.", factory=list)
    data_dir: str = doc("Directory for relative paths below (database, keys).", "headscale-data")
    noise: NoiseSection = doc("Control protocol keys.", factory=NoiseSection)
    prefixes: PrefixesSection = doc("Address ranges.", factory=PrefixesSection)
    ip_prefixes: list[str] = doc("Older spelling of prefixes.v4/v6 (a list of CIDRs).", factory=list)
    database: DatabaseSection = doc("Storage.", factory=DatabaseSection)
    derp: DerpSection = doc("Relays.", factory=DerpSection)
    disable_check_updates: bool = doc("Accepted for compatibility; this server never phones home.", True)
    ephemeral_node_inactivity_timeout: str = doc("Older spelling of node.ephemeral.inactivity_timeout.", "")
    node: NodeSection = doc("Node defaults.", factory=NodeSection)
    acme_url: str = doc("ACME directory (automatic TLS is not built in: use tls_cert_path).", "")
    acme_email: str = doc("ACME contact.", "")
    tls_letsencrypt_hostname: str = doc("Not supported: terminate TLS with tls_cert_path or a proxy.", "")
    tls_letsencrypt_cache_dir: str = doc("Not used.", "")
    tls_letsencrypt_challenge_type: str = doc("Not used.", "HTTP-01")
    tls_letsencrypt_listen: str = doc("Not used.", ":http")
    tls_cert_path: str = doc("TLS certificate for the main listener (empty: plain HTTP).", "")
    tls_key_path: str = doc("TLS private key for the main listener.", "")
    log: LogSection = doc("Logging.", factory=LogSection)
    policy: PolicySection = doc("Tailnet policy.", factory=PolicySection)
    dns: DNSSection = doc("MagicDNS and resolvers.", factory=DNSSection)
    unix_socket: str = doc("Local admin socket for the CLI.", "headscale.sock")
    unix_socket_permission: str = doc("Permissions of the admin socket.", "0770")
    logtail: LogtailSection = doc("Client log upload.", factory=LogtailSection)
    taildrop: TaildropSection = doc("Taildrop.", factory=TaildropSection)
    randomize_client_port: bool | None = field(default=None, metadata={"doc": "", "removed": "moved to the policy (nodeAttrs randomize-client-port)"})
    acl_policy_path: str | None = field(default=None, metadata={"doc": "", "removed": "renamed to policy.path"})
    dns_config: dict[str, Any] | None = field(default=None, metadata={"doc": "", "removed": "renamed to dns (see configdump)"})
    cli: CLISection = doc("Remote CLI.", factory=CLISection)
    tuning: TuningSection = doc("Batching and caches.", factory=TuningSection)
    keys: KeysSection = doc("Private key custody.", factory=KeysSection)
    plugins: PluginsSection = doc("Plugin loading.", factory=PluginsSection)
    audit: AuditSection = doc("Audit log.", factory=AuditSection)
