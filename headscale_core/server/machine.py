"""``/machine/*`` over Noise: registration, map streams and lite updates (protocol §5–§7).

Handlers validate and translate; every change goes through the state service, and map
messages come from the mapper.
"""

from __future__ import annotations

import logging
from typing import Any

from headscale_core.errors import HeadscaleError, InvalidRequest
from headscale_core.events import request_source
from headscale_core.mapper.batcher import Mapper
from headscale_core.protocol import wirejson
from headscale_core.protocol.keys import is_zero
from headscale_core.protocol.wirejson import dumps
from headscale_core.server.h2session import MachineRequest, ResponseStream, StreamClosed
from headscale_core.state.auth import Registrar
from headscale_core.state.changes import Change, NodeChanged, NodePatched
from headscale_core.state.model import Node
from headscale_core.state.service import StateService

log = logging.getLogger(__name__)

MIN_CAPVER = 113  # Tailscale 1.80
JSON_HEADERS = [("content-type", "application/json")]


class MachineHandler:
    def __init__(self, state: StateService, mapper: Mapper, registrar: Registrar, metrics: Any = None) -> None:
        self.state = state
        self.mapper = mapper
        self.registrar = registrar
        self.metrics = metrics

    async def __call__(self, req: MachineRequest, resp: ResponseStream) -> None:
        route = {
            "/machine/register": self.register,
            "/machine/map": self.map,
        }.get(req.path)
        if route is None:
            await resp.respond(404, f"{req.path} is not served by this control server".encode())
            return
        try:
            body = wirejson.loads(req.take_body() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            log.warning("%s from %s (%s): bad JSON: %s", req.path, req.remote, req.machine_key, exc)
            await resp.respond(400, f"invalid JSON in request body: {exc}".encode())
            return
        version = int(body.get("Version") or req.capver or 0)
        if version < MIN_CAPVER:
            log.info("%s from %s: client capability version %s is too old", req.path, req.remote, version)
            await resp.respond(400, (f"unsupported client version {version}: this server needs Tailscale 1.80 "
                                     f"(capability version {MIN_CAPVER}) or newer; update the client").encode())
            return
        try:
            await route(req, body, resp)
        except HeadscaleError as exc:
            log.warning("%s from %s: %s", req.path, req.remote, exc)
            if not resp.headers_sent:
                await resp.respond(400, str(exc).encode())

    # ---- register -------------------------------------------------------------------------

    async def register(self, req: MachineRequest, body: dict[str, Any], resp: ResponseStream) -> None:
        try:
            with request_source(req.remote):
                answer = await self.registrar.register(body, str(req.machine_key), req.remote)
        except InvalidRequest as exc:
            answer = {"Error": str(exc)}
        if self.metrics is not None:
            method = "authkey" if (body.get("Auth") or {}).get("AuthKey") else "interactive"
            result = "error" if answer.get("Error") else ("pending" if answer.get("AuthURL") else "ok")
            self.metrics.registration(method, result)
        await resp.respond(200, dumps(answer), JSON_HEADERS)

    # ---- map --------------------------------------------------------------------------------

    async def map(self, req: MachineRequest, body: dict[str, Any], resp: ResponseStream) -> None:
        node_key = str(body.get("NodeKey") or "")
        node = self.state.store.by_node_key(node_key)
        if node is None or node.machine_key != str(req.machine_key):
            log.info("map from %s: node key %s is not registered to machine %s", req.remote, node_key[:20],
                     req.machine_key)
            await resp.respond(404, b"node not found: register first")
            return
        node = await self.apply_client_update(node, body)
        stream, omit_peers = bool(body.get("Stream")), bool(body.get("OmitPeers"))
        capver = int(body.get("Version") or req.capver)
        # A map poll lasts hours, and this frame and the caller's hold the request: let go of
        # what it parsed to (a Hostinfo per node, a second copy beside the node's own).
        body.clear()
        req.drop_headers()
        if not stream:
            if omit_peers:
                await resp.respond(200, b"")
                return
            frame, _, _ = self.mapper.full_map_frame(node.id)
            await resp.respond(200, frame)
            return
        await resp.send_headers(200, JSON_HEADERS)
        session = self.mapper.open_session(node.id, resp, capver=capver)
        await self.state.session_started(node)
        node_id = node.id
        del node  # the node as it was when the poll began: a stale copy within minutes
        if self.metrics is not None:
            self.metrics.stream_opened()
        try:
            await session.run()
        except StreamClosed:
            pass
        finally:
            if self.metrics is not None:
                self.metrics.stream_closed()
            if self.mapper.close_session(session):
                await self.state.session_ended(node_id)
        if not resp.closed.is_set():
            try:
                await resp.end()
            except Exception:  # the connection may be gone already
                pass

    async def apply_client_update(self, node: Node, body: dict[str, Any]) -> Node:
        """Store what a MapRequest reports (endpoints, disco key, Hostinfo) and tell peers."""
        changes: list[Change] = []
        patched: set[str] = set()
        updates: dict[str, Any] = {}
        endpoints = tuple(str(e) for e in body.get("Endpoints") or ())
        if endpoints and endpoints != node.endpoints:
            updates["endpoints"] = endpoints
            patched.add("Endpoints")
        disco = str(body.get("DiscoKey") or "")
        if disco and not is_zero(disco) and disco != node.disco_key:
            updates["disco_key"] = disco
            patched.add("DiscoKey")
        version = int(body.get("Version") or 0)
        if version and version != node.capver:
            updates["capver"] = version
        hostinfo = body.get("Hostinfo")
        full_change = topology = False
        if isinstance(hostinfo, dict) and hostinfo:
            merged = dict(hostinfo)
            if "NetInfo" not in merged and "NetInfo" in node.host_info:
                merged["NetInfo"] = node.host_info["NetInfo"]
            if merged != node.host_info:
                old_derp = node.home_derp
                updates["host_info"] = merged
                new_derp = int((merged.get("NetInfo") or {}).get("PreferredDERP") or 0)
                if new_derp != old_derp:
                    patched.add("DERPRegion")
                if _without_netinfo(merged) != _without_netinfo(node.host_info):
                    full_change = True
                    if sorted(merged.get("RoutableIPs") or []) != sorted(node.host_info.get("RoutableIPs") or []):
                        topology = True
        if not updates:
            return node
        new = node.replace(**updates)
        if full_change:
            changes.append(NodeChanged(node.id, topology=topology))
        elif patched:
            changes.append(NodePatched(node.id, frozenset(patched)))
        if topology:
            new = await self.state.save_node(new, *changes)
            await self.registrar.auto_approve(new)
            return self.state.store.nodes.get(new.id, new)
        await self.state.update_soft(new, *changes)
        return new


def _without_netinfo(hostinfo: dict[str, Any]) -> dict[str, Any]:
    """Hostinfo minus NetInfo: what peers must be sent whole when it changes (a NetInfo change
    alone travels as a DERPRegion patch)."""
    return {k: v for k, v in hostinfo.items() if k != "NetInfo"}
