"""The DERP relay: who is connected under which node key, and where a packet goes.

``Relay.serve()`` takes a stream whose HTTP upgrade is already done (``http.py``), runs the
handshake and admission, registers a ``ClientSession`` and loops over the client's frames.
Routing (§4 of the reference): a local connection of the destination key wins; otherwise a
mesh peer that announced the key gets a ForwardPacket; otherwise the packet is dropped, with
a rate-limited PeerGone(NotHere) for disco packets. Everything runs on one event loop, so the
tables below need no locks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from prometheus_client.registry import CollectorRegistry

from headscale_derp import metrics
from headscale_derp.connection import ClientInfoReceived, DerpConnection, Role
from headscale_derp.frames import (
    ClosePeer,
    ForwardPacket,
    NotePreferred,
    PeerGone,
    PeerGoneReason,
    Ping,
    RemoteProtocolError,
    SendPacket,
    WatchConns,
    is_disco,
)
from headscale_derp.handshake import ClientInfo, public_key
from headscale_derp.session import ClientSession, RelayLimits

log = logging.getLogger("headscale_derp.relay")

Admit = Callable[[bytes, ClientInfo, str], Awaitable[bool]]
"""Admission check: ``(node_key, client_info, client_ip) -> allowed``."""


class Forwarder(Protocol):
    """A mesh link able to carry a packet to another relay of the region."""

    def forward(self, src: bytes, dst: bytes, packet: bytes) -> None: ...


class _KeySet:
    """All local connections of one node key; the active one receives its packets."""

    __slots__ = ("sessions", "active")

    def __init__(self, first: ClientSession) -> None:
        self.sessions = [first]
        self.active: ClientSession | None = first


class _NotHereLimiter:
    """Token bucket for PeerGone(NotHere) per sender: burst 3, one per second."""

    __slots__ = ("tokens", "stamp")

    def __init__(self) -> None:
        self.tokens = 3.0
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(3.0, self.tokens + (now - self.stamp))
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Relay:
    """A DERP server's routing core, shared by every accepted connection."""

    def __init__(
        self,
        private_key: bytes,
        *,
        admit: Admit | None = None,
        mesh_key: str = "",
        limits: RelayLimits | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if mesh_key and (len(mesh_key) != 64 or not all(c in "0123456789abcdef" for c in mesh_key)):
            raise ValueError(
                "derp mesh_key must be 64 lowercase hex characters (32 bytes), as derper requires"
            )
        self.private_key = private_key
        self.public_key = public_key(private_key)
        self.admit = admit
        self.mesh_key = mesh_key
        self.limits = limits or RelayLimits()
        self.stats = metrics.RelayStats()
        self.stun_stats = metrics.StunStats()
        self.clients: dict[bytes, _KeySet] = {}
        self.forwarders: dict[bytes, list[Forwarder]] = {}
        self.watchers: set[ClientSession] = set()
        self.sent_to: dict[bytes, set[ClientSession]] = {}
        self._not_here: dict[ClientSession, _NotHereLimiter] = {}
        self._sessions: set[ClientSession] = set()
        self._handshaking: set[asyncio.StreamWriter] = set()
        self.collector = metrics.register(registry, self.stats, self.gauges, self.stun_stats)

    # -- accepting -------------------------------------------------------------------------------

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buffered: bytes = b"",
        *,
        ideal: bool = True,
    ) -> None:
        """Run one client from ServerKey to disconnect. Returns when the connection is gone."""
        self.stats.accepts += 1
        peer = writer.get_extra_info("peername") or ("", 0)
        remote = (str(peer[0]), int(peer[1]))
        conn = DerpConnection(Role.SERVER, self.private_key)
        writer.write(conn.data_to_send())
        session: ClientSession | None = None
        self._handshaking.add(writer)
        try:
            async with asyncio.timeout(self.limits.handshake_timeout):
                received = await _read_client_info(conn, reader, buffered)
            info = received.info
            is_mesh = info.mesh_key_matches(self.mesh_key)
            if (
                not is_mesh
                and self.admit is not None
                and not await self.admit(received.client_key, info, remote[0])
            ):
                self.stats.rejected += 1
                log.info("refused nodekey:%s from %s: not a known node", received.client_key.hex(), remote[0])
                conn.reject()
                return
            self._handshaking.discard(writer)
            pending = conn.accept()
            session = ClientSession(
                self, conn, reader, writer, key=received.client_key, info=info,
                is_mesh=is_mesh, ideal=ideal, remote=remote,
            )  # fmt: skip
            self._register(session)
            session.start()
            for event in pending:
                self._dispatch(session, event)
            await self._read_loop(session)
        except TimeoutError:
            log.info("closing %s:%s: no ClientInfo within %.0f s", *remote, self.limits.handshake_timeout)
        except RemoteProtocolError as exc:
            self.stats.protocol_errors += 1
            who = session.name if session else f"{remote[0]}:{remote[1]}"
            log.info("closing %s: client broke the DERP protocol: %s", who, exc)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handshaking.discard(writer)
            if session is not None:
                session.close()
                self._unregister(session)
                await session.wait_writer()
            else:
                writer.transport.abort()

    async def _read_loop(self, session: ClientSession) -> None:
        reader, conn = session.reader, session.conn
        limits = self.limits
        rate = 0 if session.is_mesh else limits.rate_bytes_per_second
        burst = float(max(limits.rate_burst_bytes, 65568))
        tokens, stamp, throttled = burst, time.monotonic(), False
        dispatch = self._dispatch
        while not session.closing:
            data = await reader.read(1 << 16)
            if not data:
                return
            events = conn.receive_data(data)
            if events:
                session.last_active = time.monotonic()
                keyset = self.clients.get(session.key)
                if keyset is not None and keyset.active is not session:
                    keyset.active = session  # "last writer is active" among duplicates
            for event in events:
                dispatch(session, event)
            if rate:
                now = time.monotonic()
                tokens = min(burst, tokens + (now - stamp) * rate) - len(data)
                stamp = now
                if tokens < 0:
                    if not throttled:
                        throttled = True
                        self.stats.throttled += 1
                        log.warning("throttling %s: sending faster than %d bytes/s", session.name, rate)
                    # Stop reading: TCP backpressure slows the flooder, others keep relaying.
                    await asyncio.sleep(-tokens / rate)
                elif throttled and tokens >= burst:
                    throttled = False

    # -- frame dispatch ------------------------------------------------------------------------

    def _dispatch(self, session: ClientSession, event: object) -> None:
        kind = type(event)
        if kind is SendPacket:
            self._on_send_packet(session, event)  # type: ignore[arg-type]
        elif kind is NotePreferred:
            self._on_note_preferred(session, event)  # type: ignore[arg-type]
        elif kind is Ping:
            self.stats.got_ping += 1
            session.enqueue_pong(event.data)  # type: ignore[attr-defined]
        elif kind is ForwardPacket:
            self._require_mesh(session, "ForwardPacket")
            fwd: ForwardPacket = event  # type: ignore[assignment]
            self.stats.packets_forwarded_in += 1
            self._deliver_local(session, fwd.src, fwd.dst, fwd.packet, from_mesh=True)
        elif kind is WatchConns:
            self._require_mesh(session, "WatchConns")
            self._add_watcher(session)
        elif kind is ClosePeer:
            self._require_mesh(session, "ClosePeer")
            keyset = self.clients.get(event.peer)  # type: ignore[attr-defined]
            for victim in list(keyset.sessions if keyset else ()):
                log.info("closing %s at the request of mesh peer %s", victim.name, session.name)
                victim.close()

    @staticmethod
    def _require_mesh(session: ClientSession, what: str) -> None:
        if not session.is_mesh:
            raise RemoteProtocolError(f"{what} from a client without the mesh key")

    def _on_send_packet(self, session: ClientSession, frame: SendPacket) -> None:
        stats = self.stats
        stats.packets_received += 1
        stats.bytes_received += len(frame.packet)
        if is_disco(frame.packet):
            stats.packets_received_disco += 1
        self._deliver_local(session, session.key, frame.dst, frame.packet, from_mesh=False)

    def _deliver_local(
        self, sender: ClientSession, src: bytes, dst: bytes, packet: bytes, *, from_mesh: bool
    ) -> None:
        keyset = self.clients.get(dst)
        if keyset is not None and keyset.active is not None:
            target = keyset.active
            target.enqueue_packet(src, packet)
            receivers = self.sent_to.get(src)
            if receivers is None:
                self.sent_to[src] = {target}
            else:
                receivers.add(target)
            return
        if keyset is None and not from_mesh:
            forwarders = self.forwarders.get(dst)
            if forwarders:
                forwarders[0].forward(src, dst, packet)
                self.stats.packets_forwarded_out += 1
                return
        disco = is_disco(packet)
        reason = (
            "dup_client" if keyset is not None else "unknown_dest_on_fwd" if from_mesh else "unknown_dest"
        )
        self.stats.drop(reason, disco, len(packet))
        if disco and keyset is None:
            limiter = self._not_here.get(sender)
            if limiter is None:
                limiter = self._not_here[sender] = _NotHereLimiter()
            if limiter.allow():
                self.stats.peer_gone_not_here_frames += 1
                sender.enqueue_control(PeerGone(dst, PeerGoneReason.NOT_HERE))

    def _on_note_preferred(self, session: ClientSession, frame: NotePreferred) -> None:
        if frame.preferred != session.preferred and time.monotonic() - session.connected_at > 5:
            if frame.preferred:
                self.stats.home_moves_in += 1
            else:
                self.stats.home_moves_out += 1
        session.preferred = frame.preferred

    # -- registration --------------------------------------------------------------------------

    def _register(self, session: ClientSession) -> None:
        self._sessions.add(session)
        keyset = self.clients.get(session.key)
        if keyset is None:
            self.clients[session.key] = _KeySet(session)
        else:
            keyset.sessions.append(session)
            keyset.active = session  # the newest connection wins until another one writes
            self.stats.total_dup_client_conns += 1
            log.info("duplicate connection for nodekey:%s (%d now)", session.key.hex(), len(keyset.sessions))
        present = session.peer_present_frame()
        for watcher in self.watchers:
            if watcher is not session:
                watcher.enqueue_control(present)

    def _unregister(self, session: ClientSession) -> None:
        self._sessions.discard(session)
        self.watchers.discard(session)
        self._not_here.pop(session, None)
        for src in session.received_from:
            receivers = self.sent_to.get(src)
            if receivers is not None:
                receivers.discard(session)
                if not receivers:
                    del self.sent_to[src]
        keyset = self.clients.get(session.key)
        if keyset is None or session not in keyset.sessions:
            return
        keyset.sessions.remove(session)
        if keyset.sessions:
            if keyset.active is session or len(keyset.sessions) == 1:
                senders = [s for s in keyset.sessions if s.last_active]
                only = keyset.sessions[0] if len(keyset.sessions) == 1 else None
                keyset.active = only or max(senders, key=lambda s: s.last_active, default=None)
            return
        del self.clients[session.key]
        gone = PeerGone(session.key, PeerGoneReason.DISCONNECTED)
        for watcher in self.watchers:
            watcher.enqueue_control(gone)
        if session.key not in self.forwarders:
            self._notify_gone(session.key)

    def _notify_gone(self, key: bytes) -> None:
        """``key`` left the region: tell everyone who received packets from it."""
        gone = PeerGone(key, PeerGoneReason.DISCONNECTED)
        for receiver in self.sent_to.pop(key, ()):
            receiver.received_from.discard(key)
            receiver.enqueue_control(gone)
            self.stats.peer_gone_disconnected_frames += 1

    def _add_watcher(self, session: ClientSession) -> None:
        self.watchers.add(session)
        session.watching = True
        for keyset in self.clients.values():
            for other in keyset.sessions:
                if other is not session:
                    session.enqueue_control(other.peer_present_frame())

    # -- mesh forwarders -----------------------------------------------------------------------

    def add_forwarder(self, key: bytes, forwarder: Forwarder) -> None:
        chain = self.forwarders.setdefault(key, [])
        if forwarder not in chain:
            chain.append(forwarder)  # the first announcer stays preferred

    def remove_forwarder(self, key: bytes, forwarder: Forwarder) -> None:
        chain = self.forwarders.get(key)
        if chain is None or forwarder not in chain:
            return
        chain.remove(forwarder)
        if not chain:
            del self.forwarders[key]
            if key not in self.clients:
                self._notify_gone(key)

    # -- introspection and shutdown ------------------------------------------------------------

    def gauges(self) -> metrics.Gauges:
        sessions = self._sessions
        dups = [ks for ks in self.clients.values() if len(ks.sessions) > 1]
        remote_only = sum(1 for key in self.forwarders if key not in self.clients)
        return metrics.Gauges(
            current_connections=len(sessions),
            current_home_connections=sum(1 for s in sessions if s.preferred),
            current_notideal_connections=sum(1 for s in sessions if not s.ideal),
            clients_total=len(self.clients) + remote_only,
            clients_local=len(self.clients),
            clients_remote=remote_only,
            current_dup_client_keys=len(dups),
            current_dup_client_conns=sum(len(ks.sessions) for ks in dups),
            watchers=len(self.watchers),
        )

    def close_all(self) -> None:
        """Drop every connection, including those still in the handshake (shutdown)."""
        for writer in list(self._handshaking):
            writer.transport.abort()
        for session in list(self._sessions):
            session.close()


async def _read_client_info(
    conn: DerpConnection, reader: asyncio.StreamReader, buffered: bytes
) -> ClientInfoReceived:
    data = buffered
    while True:
        for event in conn.receive_data(data):
            if isinstance(event, ClientInfoReceived):
                return event
        data = await reader.read(1 << 16)
        if not data:
            raise asyncio.IncompleteReadError(b"", None)
