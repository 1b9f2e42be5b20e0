"""Byte vectors from the DERP reference §10: whole, one byte at a time, with trailing bytes."""

from __future__ import annotations

import random

import pytest
from headscale_derp import frames as f
from headscale_derp import handshake as hs
from headscale_derp.connection import (
    ClientInfoReceived,
    DerpConnection,
    Role,
    ServerInfoReceived,
    State,
)
from headscale_derp.reader import FrameReader

SERVER_PRIV = bytes.fromhex("404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f")
SERVER_PUB = bytes.fromhex("79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a")
CLIENT_PRIV = bytes.fromhex("606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f")
CLIENT_PUB = bytes.fromhex("675dd574ed7789310b3d2e7681f3790b466c773b1521fecf36577958371ea52f")
SERVER_KEY_HEX = "010000002844455250f09f949179a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a"
CLIENT_INFO_HEX = (
    "0200000068675dd574ed7789310b3d2e7681f3790b466c773b1521fecf36577958371ea52f"
    "000102030405060708090a0b0c0d0e0f1011121314151617"
    "2cf125c273565c47e184ba88fc246f082023f4b521e2c366090187c8b38614b361a790faa37f160272baf880402b258a"
)
SERVER_INFO_HEX = (
    "030000003518191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f"
    "3b50aa8a04d53afe7a528eef6965c1c01297e9f26dc40802b27bda78fb"
)
NONCE_CI = bytes(range(24))
NONCE_SI = bytes(range(24, 48))

VECTORS: list[tuple[f.Frame, str]] = [
    (f.ServerKey(SERVER_PUB), SERVER_KEY_HEX),
    (f.SendPacket(CLIENT_PUB, b"hello"), "0400000025" + CLIENT_PUB.hex() + "68656c6c6f"),
    (f.RecvPacket(SERVER_PUB, b"hello"), "0500000025" + SERVER_PUB.hex() + "68656c6c6f"),
    (
        f.ForwardPacket(SERVER_PUB, CLIENT_PUB, b"hi"),
        "0a00000042" + SERVER_PUB.hex() + CLIENT_PUB.hex() + "6869",
    ),
    (f.KeepAlive(), "0600000000"),
    (f.NotePreferred(True), "070000000101"),
    (f.PeerGone(CLIENT_PUB, f.PeerGoneReason.NOT_HERE), "0800000021" + CLIENT_PUB.hex() + "01"),
    (
        f.PeerPresent(CLIENT_PUB, "127.0.0.1", 41641, 0x01),
        "0900000033" + CLIENT_PUB.hex() + "00000000000000000000ffff7f000001" + "a2a9" + "01",
    ),
    (f.WatchConns(), "1000000000"),
    (f.Ping(bytes(range(1, 9))), "12000000080102030405060708"),
    (f.Pong(bytes(range(1, 9))), "13000000080102030405060708"),
    (f.Restarting(2000, 10000), "1500000008000007d000002710"),
    (f.Health(""), "1400000000"),
    (f.ClosePeer(CLIENT_PUB), "1100000020" + CLIENT_PUB.hex()),
]


def test_public_keys_match_the_reference() -> None:
    assert hs.public_key(SERVER_PRIV) == SERVER_PUB
    assert hs.public_key(CLIENT_PRIV) == CLIENT_PUB


@pytest.mark.parametrize(("frame", "wire"), VECTORS, ids=[type(v[0]).__name__ for v in VECTORS])
def test_encode_and_parse_vectors(frame: f.Frame, wire: str) -> None:
    raw = bytes.fromhex(wire)
    assert f.encode(frame) == raw
    assert f.parse(raw[0], raw[5:]) == frame


def _split_feed(reader: FrameReader, data: bytes, step: int) -> list[object]:
    out: list[object] = []
    for i in range(0, len(data), step):
        reader.feed(data[i : i + step])
        while (item := reader.next_frame()) is not None:
            out.append(item)
    return out


@pytest.mark.parametrize("step", [1, 2, 7, 10_000])
def test_frame_reader_whole_bytewise_and_trailing(step: int) -> None:
    stream = b"".join(bytes.fromhex(w) for _, w in VECTORS)
    limits = dict.fromkeys(range(256), 1 << 20)
    items = _split_feed(FrameReader(limits), stream + b"\x04\x00\x00", step)
    assert [f.parse(t, p) for t, p in items] == [frame for frame, _ in VECTORS]


def test_client_info_vector_opens_with_server_key() -> None:
    raw = bytes.fromhex(CLIENT_INFO_HEX)
    assert len(raw) == 109
    frame = f.ClientInfoFrame.parse(raw[5:])
    info = hs.open_client_info(SERVER_PRIV, frame)
    assert info == hs.ClientInfo(version=2, can_ack_pings=True)
    sealed = hs.seal_client_info(CLIENT_PRIV, SERVER_PUB, hs.ClientInfo(), NONCE_CI)
    assert f.encode(sealed) == raw


def test_server_info_vector() -> None:
    frame = hs.seal_server_info(SERVER_PRIV, CLIENT_PUB, hs.ServerInfo(), NONCE_SI)
    assert f.encode(frame).hex() == SERVER_INFO_HEX
    assert hs.open_server_info(CLIENT_PRIV, SERVER_PUB, frame) == hs.ServerInfo(version=2)


@pytest.mark.parametrize("index", [5 + 32 + 24, 5 + 32 + 24 + 15, 5 + 32 + 24 + 16, 108])
def test_flipped_box_byte_fails_to_open(index: int) -> None:
    raw = bytearray.fromhex(CLIENT_INFO_HEX)
    raw[index] ^= 0x01
    server = DerpConnection(Role.SERVER, SERVER_PRIV)
    with pytest.raises(hs.HandshakeError, match="does not open"):
        server.receive_data(bytes(raw))
    assert server.state is State.CLOSED


def test_client_info_json_is_case_insensitive_and_ignores_unknown_keys() -> None:
    info = hs.ClientInfo.from_json(b'{"Version":2,"MESHKEY":"ab","canackpings":true,"future":[1]}')
    assert info == hs.ClientInfo(version=2, mesh_key="ab", can_ack_pings=True)


@pytest.mark.parametrize("step", [1, 3, 4096])
def test_handshake_through_an_in_memory_pair(step: int) -> None:
    server = DerpConnection(Role.SERVER, SERVER_PRIV)
    client = DerpConnection(Role.CLIENT, CLIENT_PRIV)

    def pump(src: DerpConnection, dst: DerpConnection) -> list[object]:
        data, events = src.data_to_send(), []
        for i in range(0, len(data), step):
            events += dst.receive_data(data[i : i + step])
        return events

    assert pump(server, client) == []
    client.send(f.NotePreferred(True))
    assert pump(client, server) == [ClientInfoReceived(CLIENT_PUB, hs.ClientInfo())]
    assert server.state is State.AUTHORIZING
    assert server.accept() == [f.NotePreferred(True)]
    assert pump(server, client) == [ServerInfoReceived(SERVER_PUB, hs.ServerInfo())]
    client.send(f.SendPacket(SERVER_PUB, b"x" * 1000))
    assert pump(client, server) == [f.SendPacket(SERVER_PUB, b"x" * 1000)]


def _established_server() -> DerpConnection:
    server = DerpConnection(Role.SERVER, SERVER_PRIV)
    server.receive_data(bytes.fromhex(CLIENT_INFO_HEX))
    server.accept()
    return server


def test_oversized_send_packet_is_a_protocol_error_before_buffering() -> None:
    server = _established_server()
    header = bytes([f.FrameType.SEND_PACKET]) + (65536 + 33).to_bytes(4, "big")
    with pytest.raises(f.RemoteProtocolError, match="exceeds limit"):
        server.receive_data(header)


def test_unknown_frame_type_is_skipped_and_note_preferred_of_two_bytes_closes() -> None:
    server = _established_server()
    events = server.receive_data(bytes.fromhex("7f00000003aabbcc") + bytes.fromhex("0600000000070000000101"))
    assert events == [f.UnknownFrame(0x7F, 3), f.UnknownFrame(0x06, 0), f.NotePreferred(True)]
    with pytest.raises(f.RemoteProtocolError):
        server.receive_data(bytes.fromhex("07000000020101"))


def test_large_unknown_frame_is_skipped_without_buffering() -> None:
    server = _established_server()
    assert server.receive_data(b"\x7f" + (5_000_000).to_bytes(4, "big") + b"\0" * 1000) == [
        f.UnknownFrame(0x7F, 5_000_000)
    ]
    for _ in range(4999):
        assert server.receive_data(b"\0" * 1000) == []
    assert server.receive_data(bytes.fromhex("070000000100")) == [f.NotePreferred(False)]


def test_first_frame_must_be_client_info() -> None:
    server = DerpConnection(Role.SERVER, SERVER_PRIV)
    with pytest.raises(f.RemoteProtocolError, match="before the handshake"):
        server.receive_data(bytes.fromhex("0400000025" + CLIENT_PUB.hex() + "68656c6c6f"))


def test_decoder_fuzz_never_raises_anything_but_protocol_errors() -> None:
    rng = random.Random(1234)
    valid = bytes.fromhex(CLIENT_INFO_HEX) + b"".join(bytes.fromhex(w) for _, w in VECTORS)
    for _ in range(2000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randint(0, len(data))
        server = DerpConnection(Role.SERVER, SERVER_PRIV)
        client = DerpConnection(Role.CLIENT, CLIENT_PRIV)
        for conn in (server, client):
            try:
                conn.receive_data(bytes(data[:cut]))
                if conn.state is State.AUTHORIZING:
                    conn.accept()
                conn.receive_data(bytes(data[cut:]))
            except f.RemoteProtocolError:
                assert conn.state is State.CLOSED
