"""The mapper: turns state changes into per-recipient map messages.

Changes are coalesced into one ``ChangeBatch`` per ``tuning.batch_change_delay``: the first
change after a quiet spell goes out at once, later ones wait until a window after the last
fan-out, and in a storm the window grows with the fan-outs (``batch_window``).

For each connected session the batch becomes the smallest message the client understands
(``PeersChangedPatch``, ``PeersChanged``, ``PeersRemoved``, a new ``PacketFilter`` only when
that recipient's filter changed). Identical messages are serialised and compressed once per
batch and the frame is shared; per-session work is proportional to what changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from headscale_core.config import parse_duration
from headscale_core.mapper import wire
from headscale_core.mapper.fullmap import FullMapFrames, PeerRuns
from headscale_core.mapper.session import MapSession
from headscale_core.protocol.mapstream import MapMessageEncoder
from headscale_core.protocol.wirejson import dumps
from headscale_core.state.changes import Change, ChangeBatch

if TYPE_CHECKING:
    from headscale_core.state.service import StateService

log = logging.getLogger(__name__)


MAX_WINDOW = 1.0  # the adaptive batching window never exceeds this
BUSY_SHARE = 4.0  # in a storm, wait this many times as long as the last fan-out took
STORM_STREAK = 3  # back-to-back batches in a row that make a storm


def _only_patches(batch: ChangeBatch) -> bool:
    """Does ``batch`` hold field patches and nothing that changes who sees whom or what?"""
    return bool(batch.patched) and not (batch.changed or batch.removed or batch.self_changed
                                        or batch.policy or batch.derp or batch.users)


def batch_window(delay: float, since: float, last_apply: float, streak: int = 0) -> float:
    """Seconds to wait before fanning out a change that finds no batch pending, ``since``
    seconds after the last fan-out ended, which took ``last_apply`` seconds; ``streak`` is how
    many batches in a row, this one included, began back to back (their first change came
    sooner after the last fan-out than that fan-out took)."""
    if since < last_apply:
        # Back to back: wait as long as the last fan-out took, so the next covers more. In a
        # storm (registrations, reconnections: a streak of them), wait BUSY_SHARE times as long,
        # so fan-out work stays at most about a fifth of the time and the rest goes to the
        # storm's handshakes and full maps. One event's two changes (a reconnecting node's
        # endpoints, then its coming online) are no storm; nor are changes that come a
        # fan-out's length apart or more (an endpoint move every 100 ms).
        share = BUSY_SHARE if streak >= STORM_STREAK else 1.0
        return max(delay, min(MAX_WINDOW, share * last_apply))
    # Leading edge: a change after a quiet spell goes out on the next turn of the loop (with
    # whatever else that turn emits), not a window later; changes while one went out less than
    # a window ago wait for the rest of that window. Fan-outs stay at least a window apart, and
    # an isolated endpoint move costs no delay.
    return max(0.0, delay - since)


class Mapper:
    def __init__(self, state: StateService, metrics: Any = None) -> None:
        self.state = state
        self.metrics = metrics
        self.sessions: dict[int, MapSession] = {}
        self.encoder = MapMessageEncoder()
        self.peers = wire.PeerJSON(state)
        self.full_maps = FullMapFrames(self.encoder)
        self.peer_runs = PeerRuns(state, self.peers)
        self.delay = parse_duration(state.config.tuning.batch_change_delay)
        self.keepalive = parse_duration(state.config.tuning.keepalive_interval)
        self._batch = ChangeBatch()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._first_change: float | None = None  # when the oldest change of this batch was emitted
        self._last_apply = 0.0  # seconds the last fan-out took: the next window grows with it
        self._last_done = 0.0  # when it ended (perf_counter)
        self._streak = 0  # batches in a row that began back to back (see batch_window)
        self._policy_version = -1  # the compiled policy's version the last fan-out saw
        self._keepalive: tuple[int, bytes] = (-1, b"")
        state.on_change(self.on_change)

    # ---- sessions -----------------------------------------------------------------------

    def open_session(self, node_id: int, stream: Any, capver: int, compress: bool = True) -> MapSession:
        """Register a new stream for ``node_id`` with its full map queued first. Nothing awaits
        between building the full map and registering, so no delta can overtake it."""
        old = self.sessions.get(node_id)
        if old is not None:
            old.close()
        session = MapSession(node_id, stream, capver=capver, keepalive=self.keepalive,
                             keepalive_frame=self.keepalive_frame)
        frame, message, peer_ids = self.full_map_frame(node_id)
        # The policy's own set when it names exactly the peers sent (the usual case): shared,
        # not a copy per session (at N = 1,000 everyone-sees-everyone, 32 KB each).
        shared_set = self.state.policy.visible_peers_set(node_id)
        if len(shared_set) == len(peer_ids):
            session.known_peers = shared_set
        else:
            session.known_peers = frozenset(peer_ids)
        for field in ("PacketFilter", "SSHPolicy"):
            if field in message:
                session.remember(field, message[field])
        session.push(frame)
        self.sessions[node_id] = session
        return session

    def close_session(self, session: MapSession) -> bool:
        """Forget ``session``; True when it was the node's current one (then the node is offline)."""
        session.close()
        if self.sessions.get(session.node_id) is session:
            del self.sessions[session.node_id]
            return True
        return False

    def keepalive_frame(self) -> bytes:
        """A keep-alive carrying ``ControlTime``, encoded once per second for every session.

        Keep-alives are what tells a quiet client the control server's time (patch-only messages
        leave it out, see ``apply``); clients read ``ControlTime`` from keep-alives too."""
        second = int(time.time())
        if self._keepalive[0] != second:
            body = b'{"KeepAlive":true,"ControlTime":"%s"}' % wire.go_time(datetime.now(UTC)).encode()
            self._keepalive = (second, self.encoder.encode(body))
        return self._keepalive[1]

    def encode(self, message: dict[str, Any], kind: str) -> bytes:
        return self.encode_body(dumps(message), kind)

    def encode_body(self, body: bytes, kind: str) -> bytes:
        return self._counted(self.encoder.encode(body), kind)

    def _counted(self, frame: bytes, kind: str) -> bytes:
        if self.metrics is not None:
            self.metrics.map_message(kind, len(frame))
        return frame

    # ---- full maps ------------------------------------------------------------------------

    def full_map(self, node_id: int) -> tuple[dict[str, Any], set[int]]:
        """The node's full MapResponse as a dict, and its peers."""
        peer_nodes = [self.state.store.nodes[pid] for pid in self._peer_ids(node_id)]
        message = self._full_map_message(node_id, {p.user_id for p in peer_nodes})
        if peer_nodes:
            message["Peers"] = [self.peers.peer(p, node_id) for p in peer_nodes]
        return message, {p.id for p in peer_nodes}

    def full_map_frame(self, node_id: int) -> tuple[bytes, dict[str, Any], list[int]]:
        """The full map framed for the wire, its message without ``Peers``, and the peers' IDs.
        Peers' JSON comes from runs of ``PeerJSON``'s variants that viewers seeing the same
        peers share (``PeerRuns``), compressed once per content (``FullMapFrames``)."""
        peer_ids = self._peer_ids(node_id)
        runs = self.peer_runs.runs(peer_ids, node_id)
        message = self._full_map_message(node_id, frozenset().union(*(run.user_ids for run in runs)))
        body = dumps(message)
        if not peer_ids:
            return self.encode_body(body, "full"), message, peer_ids
        frames = self.full_maps.body_runs(runs, body)
        return self._counted(self.encoder.frame(frames), "full"), message, peer_ids

    def _peer_ids(self, node_id: int) -> list[int]:
        nodes = self.state.store.nodes
        return [pid for pid in sorted(self.state.policy.visible_peers(node_id)) if pid in nodes]

    def _full_map_message(self, node_id: int, peer_user_ids: AbstractSet[int | None]) -> dict[str, Any]:
        """The full MapResponse but its ``Peers``."""
        state = self.state
        node = state.node(node_id)
        user_ids = {node.user_id} | peer_user_ids
        packet_filter = state.policy.packet_filter(node_id)
        message: dict[str, Any] = {
            "Node": wire.self_node_json(state, node),
            "DERPMap": state.derp_map,
            "DNSConfig": wire.dns_config(state.config),
            "Domain": state.config.dns.base_domain,
            "CollectServices": False,
            "PacketFilter": packet_filter,
            "UserProfiles": [wire.user_profile(state.store.users.get(uid) if uid else None)
                             for uid in sorted(user_ids, key=lambda u: u or 0)],
            "ControlTime": wire.go_time(datetime.now(UTC)),
        }
        ssh = state.policy.ssh_policy(node_id)
        if ssh is not None:
            message["SSHPolicy"] = ssh
        if not state.config.logtail.enabled:
            message["Debug"] = {"DisableLogTail": True}
        return message

    # ---- batching -------------------------------------------------------------------------

    def on_change(self, changes: list[Change]) -> None:
        if self._first_change is None:
            self._first_change = time.perf_counter()
        for change in changes:
            self._batch.add(change)
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            since = time.perf_counter() - self._last_done
            self._streak = self._streak + 1 if since < self._last_apply else 0
            window = batch_window(self.delay, since, self._last_apply, self._streak)
            self._flush_handle = loop.call_later(window, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_handle = None
        batch, self._batch = self._batch, ChangeBatch()
        first_change, self._first_change = self._first_change, None
        if batch:
            started = time.perf_counter()
            reached = 0
            try:
                reached = self.apply(batch)
            except Exception:
                log.exception("could not fan out a batch of changes; affected sessions are closed to resync")
                for session in list(self.sessions.values()):
                    session.close()
            done = time.perf_counter()
            self._last_apply = min(done - started, MAX_WINDOW)
            self._last_done = done
            if self.metrics is not None:
                self.metrics.batch_done(done - started)
                if reached and first_change is not None:
                    self.metrics.change_propagated(done - first_change)

    def apply(self, batch: ChangeBatch) -> int:
        """Queue each session's message for ``batch``; the number of sessions that got one.

        Under a policy, a viewer's peers, filter and SSH policy are asked again only when the
        compiled policy moved on; it hands back the very same objects for viewers the change
        could not reach (see ``policy.incremental``), so those cost an identity check.
        """
        state = self.state
        reached = 0
        now = wire.go_time(datetime.now(UTC))
        shared: dict[tuple[Any, ...], bytes] = {}
        held: list[Any] = []  # the peer dicts whose identities are in `shared`'s keys
        policy = state.policy
        policy.compiled()  # recompile (incrementally) before looking at the version
        # Only viewers the recompile may have touched are asked again (None: every viewer).
        stale = policy.stale_since(self._policy_version)
        self._policy_version = policy.version
        allow_all = policy.allow_all
        nodes = state.store.nodes
        topology = bool(batch.changed or batch.removed)
        # Every viewer of a patched peer gets the same PeerChange: built once per batch.
        patches = {nid: wire.peer_change(state, nodes[nid], fields)
                   for nid, fields in batch.patched.items() if nid in nodes}
        patched_ids = sorted(patches)
        self.peers.forget(batch.removed)
        sessions: list[MapSession] = list(self.sessions.values())
        if _only_patches(batch) and stale is not None and not stale:
            # No viewer's view can have moved: the sessions that know a patched peer are the only
            # ones with anything to hear. Picking them is a set lookup each; the loop below is
            # microseconds each, which a sparse tailnet of 5,000 paid per change.
            touched = set(batch.patched)
            sessions = [session for session in sessions if not touched.isdisjoint(session.known_peers)]
            if len(touched) == 1 and (only := next(iter(touched))) in nodes:
                # One peer patched (an endpoint moved): the same message for every one of them,
                # encoded once, and nothing else to work out per session.
                patch = self.encode({"PeersChangedPatch": [patches[only]]}, "patch")
                for session in sessions:
                    session.push(patch)
                return len(sessions)
            # Several peers patched (a burst): each session hears of those it knows, and sessions
            # that know the same ones share one encoded message (in a dense tailnet, all of them).
            frames: dict[tuple[int, ...], bytes] = {}
            reached = 0
            for session in sessions:
                known = session.known_peers
                heard = tuple(nid for nid in patched_ids if nid in known)
                if not heard:
                    continue
                frame = frames.get(heard)
                if frame is None:
                    frame = frames[heard] = self.encode({"PeersChangedPatch": [patches[nid] for nid in heard]},
                                                        "patch")
                session.push(frame)
                reached += 1
            return reached
        for session in sessions:
            viewer = session.node_id
            if viewer not in nodes:
                session.close()
                continue
            known = session.known_peers
            visible: AbstractSet[int]
            recheck = stale is None or viewer in stale
            if allow_all:
                # Everyone sees everyone: no per-session scan of the tailnet, only the delta.
                visible = (known | (batch.changed - {viewer})) - batch.removed if topology else known
            elif recheck:
                visible = policy.visible_peers_set(viewer)
                if batch.removed & visible:
                    visible = visible - batch.removed
            else:
                visible = known - batch.removed if batch.removed & known else known
            # Per session, work is proportional to the change, not to the tailnet: a patch for
            # one peer must not cost a scan of a thousand known peers per recipient.
            removed: list[int] = []
            added: AbstractSet[int] = frozenset()
            if visible is not known:
                removed = sorted((batch.removed & known) | (known - visible))
                added = visible - known
            if batch.changed:
                changed = sorted(((batch.changed - {viewer}) & visible) | added)
            else:
                changed = sorted(added)
            patched = [nid for nid in patched_ids if nid in visible]
            if patched and changed:
                whole = set(changed)  # a peer sent whole needs no patch
                patched = [nid for nid in patched if nid not in whole]
            message: dict[str, Any] = {}
            key: list[Any] = []
            if removed:
                message["PeersRemoved"] = removed
                key.append(("r", tuple(removed)))
            if changed:
                peers = [self.peers.peer(nodes[nid], viewer) for nid in changed]
                held.append(peers)
                message["PeersChanged"] = peers
                key.append(("c", tuple(map(id, peers))))
            if patched:
                message["PeersChangedPatch"] = [patches[nid] for nid in patched]
                key.append(("p", tuple(patched)))
            personal = False
            if viewer in batch.self_changed:
                message["Node"] = wire.self_node_json(state, nodes[viewer])
                personal = True
            if recheck or viewer in batch.changed:
                views = (("PacketFilter", policy.packet_filter(viewer)), ("SSHPolicy", policy.ssh_policy(viewer)))
                for field, value in views:
                    if value is None:  # no SSH policy: nothing to tell (clients keep the last)
                        continue
                    encoded = session.view_update(field, value)
                    if encoded is not None:
                        message[field] = value
                        key.append((field, encoded))
            if batch.derp:
                message["DERPMap"] = state.derp_map
                key.append("derp")
            if batch.users or added:
                uids = {nodes[nid].user_id for nid in changed} | set(batch.users)
                profiles = [wire.user_profile(state.store.users.get(uid) if uid else None)
                            for uid in sorted(u or 0 for u in uids) if not uid or uid in state.store.users]
                if profiles:
                    message["UserProfiles"] = profiles
                    key.append(("u", tuple(sorted(u or 0 for u in uids))))
            session.known_peers = visible
            if not message:
                continue
            # ControlTime goes with everything but patch-only messages: on a one-peer patch it is
            # a third of the bytes, and the client hears the time from keep-alives and full maps.
            patch_only = len(message) == 1 and "PeersChangedPatch" in message
            if not patch_only:
                message["ControlTime"] = now
            reached += 1
            if personal:
                session.push(self.encode(message, "self"))
                continue
            frame_key = tuple(key)
            frame = shared.get(frame_key)
            if frame is None:
                kind = "patch" if patch_only else "delta"
                frame = shared[frame_key] = self.encode(message, kind)
            session.push(frame)
        return reached

    async def aclose(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for session in list(self.sessions.values()):
            session.close()
