"""Sans-IO DERP connection: one side of one link, fed bytes, returning events.

``DerpConnection`` owns the handshake state machine for either role. The server side writes
ServerKey on creation, opens ClientInfo, waits for the application's ``accept()`` or
``reject()`` (authorisation may need I/O), then writes ServerInfo; the client side answers
ServerKey with ClientInfo and opens ServerInfo. Once established, every frame becomes an
event. Sockets, queues and timers live in ``relay.py`` and ``client.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from headscale_derp import handshake as hs
from headscale_derp.frames import (
    KEY_LEN,
    MAX_CLIENT_FRAME_LEN,
    MAX_CLIENT_INFO_LEN,
    MAX_PACKET_SIZE,
    MAX_PING_LEN,
    ClientInfoFrame,
    Frame,
    FrameType,
    LocalProtocolError,
    RemoteProtocolError,
    ServerInfoFrame,
    ServerKey,
    UnknownFrame,
    encode_frame,
    encode_header,
    frame_name,
    parse,
)
from headscale_derp.reader import FrameReader


class Role(Enum):
    SERVER = auto()
    CLIENT = auto()


class State(Enum):
    AWAIT_SERVER_KEY = auto()
    AWAIT_SERVER_INFO = auto()
    AWAIT_CLIENT_INFO = auto()
    AUTHORIZING = auto()
    ESTABLISHED = auto()
    CLOSED = auto()


class Input(Enum):
    SERVER_KEY = auto()
    CLIENT_INFO = auto()
    SERVER_INFO = auto()
    ACCEPT = auto()
    REJECT = auto()
    FRAME = auto()
    CLOSE = auto()


# Anything not in this table is a protocol error: the peer's if it came off the wire, ours if
# it was an API call.
TRANSITIONS: dict[tuple[Role, State, Input], State] = {
    (Role.SERVER, State.AWAIT_CLIENT_INFO, Input.CLIENT_INFO): State.AUTHORIZING,
    (Role.SERVER, State.AUTHORIZING, Input.ACCEPT): State.ESTABLISHED,
    (Role.SERVER, State.AUTHORIZING, Input.REJECT): State.CLOSED,
    (Role.SERVER, State.ESTABLISHED, Input.FRAME): State.ESTABLISHED,
    (Role.CLIENT, State.AWAIT_SERVER_KEY, Input.SERVER_KEY): State.AWAIT_SERVER_INFO,
    (Role.CLIENT, State.AWAIT_SERVER_INFO, Input.SERVER_INFO): State.ESTABLISHED,
    (Role.CLIENT, State.ESTABLISHED, Input.FRAME): State.ESTABLISHED,
    (Role.CLIENT, State.ESTABLISHED, Input.SERVER_KEY): State.ESTABLISHED,
    **{(role, state, Input.CLOSE): State.CLOSED for role in Role for state in State},
}

# Largest payload the server reads per frame type; other types are skipped unbuffered.
SERVER_LIMITS: dict[int, int] = {
    FrameType.CLIENT_INFO: MAX_CLIENT_INFO_LEN,
    FrameType.SEND_PACKET: KEY_LEN + MAX_PACKET_SIZE,
    FrameType.FORWARD_PACKET: 2 * KEY_LEN + MAX_PACKET_SIZE,
    FrameType.NOTE_PREFERRED: 1,
    FrameType.WATCH_CONNS: 0,
    FrameType.CLOSE_PEER: KEY_LEN,
    FrameType.PING: MAX_PING_LEN,
}
CLIENT_LIMITS: dict[int, int] = {
    t: MAX_CLIENT_FRAME_LEN
    for t in (
        FrameType.SERVER_KEY, FrameType.SERVER_INFO, FrameType.RECV_PACKET, FrameType.KEEP_ALIVE,
        FrameType.PEER_GONE, FrameType.PEER_PRESENT, FrameType.PING, FrameType.PONG,
        FrameType.HEALTH, FrameType.RESTARTING,
    )
}  # fmt: skip
# A client logs and skips these when malformed instead of dropping the connection.
_CLIENT_LENIENT = frozenset(
    {FrameType.RECV_PACKET, FrameType.PING, FrameType.PONG, FrameType.PEER_GONE, FrameType.RESTARTING}
)


@dataclass(frozen=True, slots=True)
class ClientInfoReceived:
    """Server side: a client proved it holds ``client_key``; call ``accept()`` or ``reject()``."""

    client_key: bytes
    info: hs.ClientInfo


@dataclass(frozen=True, slots=True)
class ServerInfoReceived:
    """Client side: the handshake is complete."""

    server_key: bytes
    info: hs.ServerInfo


Event = Frame | UnknownFrame | ClientInfoReceived | ServerInfoReceived


class DerpConnection:
    """One end of a DERP link. ``receive_data()`` returns events; ``data_to_send()`` bytes."""

    def __init__(
        self,
        role: Role,
        private_key: bytes,
        *,
        client_info: hs.ClientInfo | None = None,
        server_key: bytes | None = None,
    ) -> None:
        self.role = role
        self._private_key = private_key
        self._out: list[bytes] = []
        self.peer_key: bytes | None = server_key
        self.client_info = client_info
        if role is Role.SERVER:
            self.state = State.AWAIT_CLIENT_INFO
            self._reader = FrameReader(SERVER_LIMITS)
            self.send(hs.server_key_frame(private_key))
        else:
            self.state = State.AWAIT_SERVER_KEY
            self._reader = FrameReader(CLIENT_LIMITS)
            self.client_info = client_info or hs.ClientInfo()
            if server_key is not None:
                # Fast start: the key is known already, so ClientInfo can go out with the request.
                self.send(hs.seal_client_info(private_key, server_key, self.client_info))

    def _transition(self, what: Input, remote: bool) -> None:
        new = TRANSITIONS.get((self.role, self.state, what))
        if new is None:
            message = f"{self.role.name.lower()} cannot handle {what.name} in state {self.state.name}"
            if remote:
                self.state = State.CLOSED
                raise RemoteProtocolError(message)
            raise LocalProtocolError(message)
        self.state = new

    def send(self, frame: Frame) -> None:
        self._out.append(encode_frame(frame.frame_type, frame.payload()))

    def send_raw(self, frame_type: int, *parts: bytes) -> None:
        """Queue a frame from payload pieces; the relay's hot path uses it to skip a dataclass
        and a copy per packet (the pieces are joined once, in ``data_to_send``)."""
        self._out.append(encode_header(frame_type, sum(map(len, parts))))
        self._out.extend(parts)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def accept(self, info: hs.ServerInfo | None = None) -> list[Event]:
        """Admit the client: queue ServerInfo, then return events for frames already buffered."""
        self._transition(Input.ACCEPT, remote=False)
        assert self.peer_key is not None
        self.send(hs.seal_server_info(self._private_key, self.peer_key, info or hs.ServerInfo()))
        return self.receive_data(b"")

    def reject(self) -> None:
        self._transition(Input.REJECT, remote=False)

    def close(self) -> None:
        self._transition(Input.CLOSE, remote=False)

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; raises ``RemoteProtocolError`` when the peer broke the
        protocol (the connection is then CLOSED and must be dropped)."""
        if self.state is State.CLOSED:
            raise LocalProtocolError("receive_data on a closed DERP connection")
        reader = self._reader
        if data:
            reader.feed(data)
        events: list[Event] = []
        try:
            while self.state is not State.AUTHORIZING:
                item = reader.next_frame()
                if item is None:
                    break
                if isinstance(item, UnknownFrame):
                    if self.state is not State.ESTABLISHED:
                        raise RemoteProtocolError(
                            f"{frame_name(item.frame_type)} frame before the handshake finished",
                            item.frame_type,
                        )
                    events.append(item)
                    continue
                event = self._handle(*item)
                if event is not None:
                    events.append(event)
        except RemoteProtocolError:
            self.state = State.CLOSED
            raise
        return events

    def _handle(self, frame_type: int, payload: bytes) -> Event | None:
        if self.state is State.ESTABLISHED and frame_type != FrameType.SERVER_KEY:
            if self.role is Role.CLIENT and frame_type in _CLIENT_LENIENT:
                try:
                    return parse(frame_type, payload)
                except RemoteProtocolError:
                    return None
            return parse(frame_type, payload)
        if frame_type == FrameType.CLIENT_INFO:
            self._transition(Input.CLIENT_INFO, remote=True)
            frame = ClientInfoFrame.parse(payload)
            self.client_info = hs.open_client_info(self._private_key, frame)
            self.peer_key = frame.client_key
            return ClientInfoReceived(frame.client_key, self.client_info)
        if frame_type == FrameType.SERVER_KEY:
            self._transition(Input.SERVER_KEY, remote=True)
            server_key = ServerKey.parse(payload).server_key
            if self.peer_key is None:
                self.peer_key = server_key
                assert self.client_info is not None
                self.send(hs.seal_client_info(self._private_key, server_key, self.client_info))
            elif server_key != self.peer_key:
                self.state = State.CLOSED
                raise RemoteProtocolError("server key differs from the one the client expected")
            return None
        if frame_type == FrameType.SERVER_INFO:
            self._transition(Input.SERVER_INFO, remote=True)
            assert self.peer_key is not None
            info = hs.open_server_info(self._private_key, self.peer_key, ServerInfoFrame.parse(payload))
            return ServerInfoReceived(self.peer_key, info)
        name = frame_name(frame_type)
        self.state = State.CLOSED
        raise RemoteProtocolError(
            f"{self.role.name.lower()} got a {name} frame before the handshake finished", frame_type
        )
