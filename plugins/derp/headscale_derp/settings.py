"""``derp.server.*`` settings, read defensively from the core's config object.

The core owns the config schema (Headscale's key names); this adapter turns whatever it
hands over into one frozen, validated value, so the rest of the plugin never touches the
config object and keeps working if a field is missing from an older core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from headscale_derp.stun import split_host_port


class DerpSettingsError(ValueError):
    """A ``derp.server`` setting is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class DerpSettings:
    enabled: bool = False
    region_id: int = 999
    region_code: str = "headscale"
    region_name: str = "Headscale Embedded DERP"
    verify_clients: bool = True
    stun_listen_addr: str = "0.0.0.0:3478"
    private_key_path: str = "derp_server_private.key"
    automatically_add_embedded_derp_region: bool = True
    ipv4: str = ""
    ipv6: str = ""
    mesh_key: str = ""
    mesh_with: tuple[str, ...] = ()
    server_url: str = "http://127.0.0.1:8080"

    def __post_init__(self) -> None:
        if not 0 < self.region_id < 2**53:
            raise DerpSettingsError(
                f"derp.server.region_id {self.region_id} must be a positive integer (900-999)"
            )
        if self.mesh_key and (len(self.mesh_key) != 64 or not _is_hex(self.mesh_key)):
            raise DerpSettingsError(
                "derp.server.mesh_key must be 64 lowercase hex characters: generate one with `openssl rand -hex 32`"
            )
        if self.mesh_with and not self.mesh_key:
            raise DerpSettingsError(
                "derp.server.mesh_with is set but derp.server.mesh_key is empty: set the key"
            )
        if self.stun_listen_addr:
            try:
                split_host_port(self.stun_listen_addr)
            except ValueError as exc:
                raise DerpSettingsError(f"derp.server.stun_listen_addr: {exc}") from exc

    @property
    def stun_port(self) -> int:
        """The STUNPort advertised in the region; -1 (no STUN) when the listener is off."""
        return split_host_port(self.stun_listen_addr)[1] if self.stun_listen_addr else -1

    @property
    def host_and_port(self) -> tuple[str, int]:
        """HostName and DERPPort of the embedded node, from ``server_url``."""
        parts = urlsplit(self.server_url)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)

    def region(self) -> dict[str, Any]:
        """The embedded region as ``tailcfg.DERPRegion`` JSON (Headscale's GenerateRegion)."""
        host, port = self.host_and_port
        node: dict[str, Any] = {
            "Name": str(self.region_id),
            "RegionID": self.region_id,
            "HostName": host,
            "STUNPort": self.stun_port,
            "DERPPort": port,
        }
        if self.ipv4:
            node["IPv4"] = self.ipv4
        if self.ipv6:
            node["IPv6"] = self.ipv6
        return {
            "RegionID": self.region_id,
            "RegionCode": self.region_code,
            "RegionName": self.region_name,
            "Nodes": [node],
        }


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def settings_from(config: Any) -> DerpSettings:
    """Read ``config.derp.server.<field>`` and ``config.server_url``; missing ones keep defaults."""
    server = getattr(getattr(config, "derp", None), "server", None)
    defaults = DerpSettings()
    values: dict[str, Any] = {}
    for name in DerpSettings.__dataclass_fields__:
        if name == "server_url":
            continue
        value = getattr(server, name, getattr(defaults, name))
        values[name] = tuple(value) if name == "mesh_with" else value
    values["server_url"] = str(getattr(config, "server_url", defaults.server_url))
    return DerpSettings(**values)
