"""An asyncio DERP client over the sans-IO connection: for tests, benchmarks and the mesh.

It speaks to any DERP server (ours or derper) over plain HTTP or TLS: the ``/derp`` upgrade,
the handshake, then frames. Optionally it fast-starts (sends ClientInfo with the request),
which is how the relay's "no byte lost after the request head" guarantee is exercised.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from urllib.parse import urlsplit

from headscale_derp.connection import DerpConnection, Event, Role, ServerInfoReceived
from headscale_derp.frames import Frame, FrameType, RecvPacket, RemoteProtocolError
from headscale_derp.handshake import ClientInfo, ServerInfo, public_key

CONNECT_TIMEOUT = 10.0  # the budget tailscaled gives a whole DERP connect


class UpgradeRefused(RemoteProtocolError):
    """The server answered the ``/derp`` request with something other than 101."""


class DerpClient:
    """A connected, handshaken DERP client."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: DerpConnection,
        private_key: bytes,
    ) -> None:
        self.public_key = public_key(private_key)
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.server_key = b""
        self.server_info = ServerInfo()
        self._pending: deque[Event] = deque()

    @classmethod
    async def connect(
        cls,
        url: str,
        private_key: bytes,
        *,
        client_info: ClientInfo | None = None,
        fast_start_key: bytes | None = None,
        ssl: ssl_module.SSLContext | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> DerpClient:
        """Dial ``http(s)://host:port/derp``, upgrade and finish the handshake."""
        parts = urlsplit(url)
        secure = parts.scheme in ("https", "wss")
        port = parts.port or (443 if secure else 80)
        host = parts.hostname or "127.0.0.1"
        if secure and ssl is None:
            ssl = ssl_module.create_default_context()
        conn = DerpConnection(Role.CLIENT, private_key, client_info=client_info, server_key=fast_start_key)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port, ssl=ssl if secure else None)
            client = cls(reader, writer, conn, private_key)
            try:
                await client._upgrade(
                    parts.path or "/derp", parts.netloc, headers, fast_start_key is not None
                )
            except BaseException:
                writer.transport.abort()
                raise
        return client

    async def _upgrade(self, path: str, host: str, headers: tuple[tuple[str, str], ...], fast: bool) -> None:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: DERP", "Connection: Upgrade"]
        if fast:
            lines.append("Derp-Fast-Start: 1")
        lines += [f"{name}: {value}" for name, value in headers]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.writer.write(request + self.conn.data_to_send())
        if not fast:
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                raise UpgradeRefused(
                    f"server answered the DERP upgrade with {status.decode(errors='replace')!r}"
                )
        while True:
            data = await self.reader.read(1 << 16)
            if not data:
                raise ConnectionResetError("server closed the connection during the DERP handshake")
            events = self.conn.receive_data(data)
            self.writer.write(self.conn.data_to_send())
            for index, event in enumerate(events):
                if isinstance(event, ServerInfoReceived):
                    self.server_key = event.server_key
                    self.server_info = event.info
                    self._pending.extend(events[index + 1 :])
                    return

    def send(self, frame: Frame) -> None:
        self.conn.send(frame)
        self.writer.write(self.conn.data_to_send())

    def send_packet(self, dst: bytes, packet: bytes) -> None:
        self.conn.send_raw(FrameType.SEND_PACKET, dst, packet)
        self.writer.write(self.conn.data_to_send())

    async def drain(self) -> None:
        await self.writer.drain()

    async def recv_batch(self) -> list[Event]:
        """Every event available from one socket read (at least one); EOF raises."""
        if self._pending:
            events = list(self._pending)
            self._pending.clear()
            return events
        while True:
            data = await self.reader.read(1 << 16)
            if not data:
                raise ConnectionResetError("DERP server closed the connection")
            events = self.conn.receive_data(data)
            if events:
                return events

    async def recv(self) -> Event:
        if not self._pending:
            self._pending.extend(await self.recv_batch())
        return self._pending.popleft()

    async def recv_packet(self) -> tuple[bytes, bytes]:
        """The next RecvPacket as ``(src, packet)``, skipping keep-alives and other frames."""
        while True:
            event = await self.recv()
            if isinstance(event, RecvPacket):
                return event.src, event.packet

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
