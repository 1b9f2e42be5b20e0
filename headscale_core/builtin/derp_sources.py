"""Built-in DERP map provider: regions from ``derp.urls`` (JSON) and ``derp.paths`` (YAML/JSON)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from headscale_core.hookspecs import hookimpl
from headscale_core.providers import DERPMapProvider, DERPRegionContribution
from headscale_core.server.context import ServerContext

log = logging.getLogger(__name__)


def regions_of(doc: Any, where: str) -> dict[int, dict[str, Any]]:
    """The ``Regions`` of a DERP map document, keyed by integer region ID."""
    raw_regions = doc.get("Regions", doc.get("regions")) if isinstance(doc, dict) else None
    if not isinstance(raw_regions, dict):
        raise ValueError(f"{where}: not a DERP map (expected a mapping with 'Regions')")
    out: dict[int, dict[str, Any]] = {}
    for key, region in raw_regions.items():
        if region is None:
            continue
        region = _go_case(region)
        rid = int(region.get("RegionID") or key)
        region["RegionID"] = rid
        region["Nodes"] = [_go_case(n) for n in region.get("Nodes") or []]
        out[rid] = region
    return out


_GO_NAMES = {k.lower(): k for k in (
    "RegionID", "RegionCode", "RegionName", "Latitude", "Longitude", "Avoid", "NoMeasureNoHome", "Nodes",
    "Name", "HostName", "CertName", "IPv4", "IPv6", "STUNPort", "STUNOnly", "DERPPort", "InsecureForTests",
    "STUNTestIP", "CanPort80",
)}


def _go_case(obj: dict[str, Any]) -> dict[str, Any]:
    """YAML files often use lower-case keys (as Go's decoder accepts); emit Go's exact case."""
    return {_GO_NAMES.get(str(k).lower(), k): v for k, v in obj.items()}


class ConfiguredDERPMap:
    def __init__(self, urls: list[str], paths: list[Path]) -> None:
        self.urls, self.paths = urls, paths

    async def fetch(self) -> DERPRegionContribution:
        regions: dict[int, dict[str, Any]] = {}
        for url in self.urls:
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                    async with http.get(url) as resp:
                        resp.raise_for_status()
                        regions.update(regions_of(json.loads(await resp.text()), url))
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("derp.urls: cannot fetch %s: %s (keeping the other regions)", url, exc)
        for path in self.paths:
            try:
                text = await asyncio.to_thread(path.read_text)
                regions.update(regions_of(yaml.safe_load(text), str(path)))
            except (OSError, ValueError, yaml.YAMLError) as exc:
                log.warning("derp.paths: cannot read %s: %s", path, exc)
        return DERPRegionContribution(regions=regions, priority=0)


@hookimpl(trylast=True)
def headscale_derp_map_providers(ctx: ServerContext) -> list[DERPMapProvider]:
    derp = ctx.config.derp
    return [ConfiguredDERPMap(list(derp.urls), [Path(p).expanduser() for p in derp.paths])]
