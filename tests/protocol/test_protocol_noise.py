"""Noise IK handshake, transport records and early payload against the reference vectors (§14)."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from headscale_core.protocol.errors import RemoteProtocolError
from headscale_core.protocol.keys import MachinePublic, PrivateKey
from headscale_core.protocol.noise import (
    MAX_PLAINTEXT_SIZE,
    EarlyPayloadReader,
    HandshakeError,
    NoiseInitiator,
    NoiseResponder,
    NoiseTransport,
    encode_early_payload,
)

SERVER_PRIVATE = bytes.fromhex("0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20")
SERVER_PUBLIC = bytes.fromhex("07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c")
MACHINE_PRIVATE = bytes.fromhex("2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40")
MACHINE_PUBLIC = bytes.fromhex("5869aff450549732cbaaed5e5df9b30a6da31cb0e5742bad5ad4a1a768f1a67b")
CLIENT_EPHEMERAL = bytes.fromhex("4142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f60")
SERVER_EPHEMERAL = bytes.fromhex("6162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80")

INITIATION = bytes.fromhex(
    "0091010060"
    "64b101b1d0be5a8704bd078f9895001fc03e8e9f9522f188dd128d9846d48466"
    "0806c371c2f5b89e49d5c606b01d6586a9712bf580bcfb3a6c2d1d66cc5a9591"
    "446889758890ea7dd4499b071026cc3d"
    "9ecce39fe640dafd50888e63784bae79"
)
HANDSHAKE_HEADER = (
    "AJEBAGBksQGx0L5ahwS9B4+YlQAfwD6On5Ui8YjdEo2YRtSEZggGw3HC9bieSdXGBrAdZYapcSv1gLz7OmwtHWbMWpWRRGiJdYiQ"
    "6n3USZsHECbMPZ7M45/mQNr9UIiOY3hLrnk="
)
RESPONSE = bytes.fromhex(
    "020030244fe3b963e899dd295baffce248d3530f3a9a7479ba063002680ebfe7adad49de75d76faef311c84a2bc8a9596ccb48"
)
HANDSHAKE_HASH = bytes.fromhex("87a7882bf5f3943b29696e3ee1a46dfe03744b999f9e065b0e24cc28b28b3096")
K1 = bytes.fromhex("d5e58dae60ff25cc337ac1ea707d6c02dd1de177f8bc6d566627fc383ac00af8")
K2 = bytes.fromhex("6efd2cd4516d87a0827fbc5863fa03c5d58eafd0da54497d5190362fe50b0f6f")

HELLO_N0 = bytes.fromhex("040015b31929cb281c149e97e1e8212a4dd90a76c1a14985")
HELLO_N1 = bytes.fromhex("040015f808261f8450735b42cdf983253ac44bf304119bad")
HELLO_N256 = bytes.fromhex("04001544e57949262fcc579affb63351ef6b2f3d5d0cecbc")
EARLY_RECORD = bytes.fromhex(
    "040078946cea560ed458b75b1fe1a7a54a8562c1f6b9411ff06bd5e2f4fdc4bc0cf3d3e903f132fc76bb"
    "030797445d3b9ba135f4894eae252a63e76eab327b290ca4ddcd717ca06349c9d7082caf2d7aab"
    "f0ef46278fb0cb9c0cca0c8d0a411deb5c7c64302c4cff075702522bc9bec46f25928db8b447d826474f"
)
EARLY_JSON = {"nodeKeyChallenge": "chalpub:" + "0" * 64}


def feed_whole(transport: NoiseTransport, data: bytes) -> list[bytes]:
    return transport.receive_data(data)


def feed_bytewise(transport: NoiseTransport, data: bytes) -> list[bytes]:
    out: list[bytes] = []
    for i in range(len(data)):
        out += transport.receive_data(data[i : i + 1])
    return out


FEEDERS = [feed_whole, feed_bytewise]


def server_side_transport() -> NoiseTransport:
    return NoiseTransport(send_key=K2, receive_key=K1)


def client_side_transport() -> NoiseTransport:
    return NoiseTransport(send_key=K1, receive_key=K2)


# --- handshake -----------------------------------------------------------------------------------


def test_initiator_reproduces_the_initiation_vector() -> None:
    initiator = NoiseInitiator(MACHINE_PRIVATE, SERVER_PUBLIC, 145, ephemeral_private=CLIENT_EPHEMERAL)
    assert initiator.initiation == INITIATION
    assert base64.b64encode(INITIATION).decode() == HANDSHAKE_HEADER


def test_responder_reproduces_the_response_vector() -> None:
    result = NoiseResponder(SERVER_PRIVATE).respond(INITIATION, ephemeral_private=SERVER_EPHEMERAL)
    assert result.response == RESPONSE
    assert result.machine_key == MachinePublic(MACHINE_PUBLIC)
    assert result.capver == 145
    assert result.handshake_hash == HANDSHAKE_HASH
    assert result.transport.encrypt(encode_early_payload(EARLY_JSON)) == EARLY_RECORD


@pytest.mark.parametrize("trailing", [b"", HELLO_N0])
def test_initiator_accepts_the_response_vector(trailing: bytes) -> None:
    initiator = NoiseInitiator(MACHINE_PRIVATE, SERVER_PUBLIC, 145, ephemeral_private=CLIENT_EPHEMERAL)
    data = RESPONSE + trailing
    transport = None
    for i in range(len(data)):  # one byte at a time: nothing until byte 51
        transport = initiator.receive_data(data[i : i + 1])
        if transport is not None:
            break
    assert transport is not None and i == 50
    assert initiator.handshake_hash == HANDSHAKE_HASH
    assert transport.encrypt(b"hello") == HELLO_N0


def test_initiator_and_responder_joined_in_memory() -> None:
    server_key, machine_key = PrivateKey.generate(), PrivateKey.generate()
    initiator = NoiseInitiator(machine_key.raw, server_key.public_bytes(), 131)
    result = NoiseResponder(server_key.raw).respond(initiator.initiation)
    client = initiator.receive_data(result.response)
    assert client is not None
    assert result.machine_key == machine_key.machine_public()
    assert result.capver == 131
    assert initiator.handshake_hash == result.handshake_hash
    server = result.transport
    for size in (0, 1, 4077, 4078, 20_000):
        payload = bytes(i % 251 for i in range(size))
        assert b"".join(server.receive_data(client.encrypt(payload))) == payload
        assert b"".join(client.receive_data(server.encrypt(payload))) == payload


def test_handshake_with_wrong_server_key_is_a_silent_close() -> None:
    initiator = NoiseInitiator(MACHINE_PRIVATE, PrivateKey.generate().public_bytes(), 145)
    with pytest.raises(HandshakeError) as info:
        NoiseResponder(SERVER_PRIVATE).respond(initiator.initiation)
    assert info.value.error_frame is None


@pytest.mark.parametrize(
    ("initiation", "frame"),
    [
        (INITIATION[:100], b"\x03\x00\x1fwrong handshake initiation size"),
        (INITIATION + b"\x00", b"\x03\x00\x1fwrong handshake initiation size"),
        (INITIATION[:2] + b"\x02" + INITIATION[3:], b"\x03\x00\x21unexpected handshake message type"),
        (INITIATION[:3] + b"\x00\x61" + INITIATION[5:], b"\x03\x00\x21wrong handshake initiation length"),
    ],
)
def test_bad_initiation_gets_the_go_error_frame(initiation: bytes, frame: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        NoiseResponder(SERVER_PRIVATE).respond(initiation)
    assert info.value.error_frame == frame
    assert isinstance(info.value, RemoteProtocolError)


@pytest.mark.parametrize("offset", [5, 40, 90, 100])
def test_tampered_initiation_is_a_silent_close(offset: int) -> None:
    tampered = bytearray(INITIATION)
    tampered[offset] ^= 0x01
    with pytest.raises(HandshakeError) as info:
        NoiseResponder(SERVER_PRIVATE).respond(bytes(tampered))
    assert info.value.error_frame is None


def test_other_capver_changes_the_prologue() -> None:
    tampered = b"\x00\x90" + INITIATION[2:]
    with pytest.raises(HandshakeError):
        NoiseResponder(SERVER_PRIVATE).respond(tampered)


def test_initiator_reports_a_server_error_frame() -> None:
    initiator = NoiseInitiator(MACHINE_PRIVATE, SERVER_PUBLIC, 145)
    assert initiator.receive_data(b"\x03\x00\x1fwrong handshake") is None
    with pytest.raises(HandshakeError, match="server error: 'wrong handshake initiation size'"):
        initiator.receive_data(b" initiation size")


def test_initiator_rejects_a_tampered_response() -> None:
    initiator = NoiseInitiator(MACHINE_PRIVATE, SERVER_PUBLIC, 145, ephemeral_private=CLIENT_EPHEMERAL)
    with pytest.raises(HandshakeError, match="does not decrypt"):
        initiator.receive_data(RESPONSE[:-1] + bytes([RESPONSE[-1] ^ 1]))


def test_initiator_rejects_a_response_with_a_wrong_header() -> None:
    initiator = NoiseInitiator(MACHINE_PRIVATE, SERVER_PUBLIC, 145)
    with pytest.raises(HandshakeError, match="unexpected handshake response header"):
        initiator.receive_data(b"\x02\x00\x31")


# --- transport records ---------------------------------------------------------------------------


def test_record_vectors_encrypt_with_big_endian_nonces() -> None:
    client = client_side_transport()
    records = [client.encrypt(b"hello") for _ in range(257)]
    assert records[0] == HELLO_N0
    assert records[1] == HELLO_N1
    assert records[256] == HELLO_N256


@pytest.mark.parametrize("feed", FEEDERS)
def test_record_vectors_decrypt(feed) -> None:
    server = server_side_transport()
    client = client_side_transport()
    stream = b"".join(client.encrypt(b"hello") for _ in range(257))
    assert stream[: len(HELLO_N0)] == HELLO_N0
    assert stream[256 * len(HELLO_N0) :] == HELLO_N256
    assert feed(server, stream) == [b"hello"] * 257


def test_record_with_trailing_partial_record_is_kept_for_later() -> None:
    server = server_side_transport()
    assert server.receive_data(HELLO_N0 + HELLO_N1[:10]) == [b"hello"]
    assert server.receive_data(HELLO_N1[10:]) == [b"hello"]


@pytest.mark.parametrize("feed", FEEDERS)
def test_early_payload_record_vector(feed) -> None:
    plaintext = b"".join(feed(NoiseTransport(send_key=K1, receive_key=K2), EARLY_RECORD))
    reader = EarlyPayloadReader()
    assert reader.receive_data(plaintext) == b""
    assert reader.done and reader.payload == EARLY_JSON


def test_ten_thousand_bytes_become_three_records() -> None:
    sealed = client_side_transport().encrypt(bytes(10_000))
    sizes = []
    pos = 0
    while pos < len(sealed):
        kind, length = struct.unpack_from(">BH", sealed, pos)
        assert kind == 4
        sizes.append(length - 16)
        pos += 3 + length
    assert sizes == [MAX_PLAINTEXT_SIZE, MAX_PLAINTEXT_SIZE, 1846] == [4077, 4077, 1846]
    assert server_side_transport().receive_data(sealed) == [bytes(4077), bytes(4077), bytes(1846)]


def test_empty_records_are_skipped() -> None:
    empty_record = client_side_transport()._send.encrypt(bytes(12), b"", None)  # nonce 0, empty
    server = server_side_transport()
    assert server.receive_data(b"\x04\x00\x10" + empty_record) == []
    assert server.receive_data(HELLO_N1) == [b"hello"]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x05" + HELLO_N0[1:], "record type 0x05"),
        (b"\x17\x03\x03", "record type 0x17"),
        (b"\x04\x0f\xfe", "4094 bytes exceeds the 4093-byte limit"),
        (b"\x04\xff\xff", "exceeds"),
        (HELLO_N1, "record 0 does not decrypt"),
        (HELLO_N0[:-1] + bytes([HELLO_N0[-1] ^ 0x80]), "does not decrypt"),
        (b"\x04\x00\x05hello", "does not decrypt"),
    ],
)
def test_bad_records_are_the_peers_fault_and_final(data: bytes, problem: str) -> None:
    server = server_side_transport()
    with pytest.raises(RemoteProtocolError, match=problem):
        server.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="already failed"):
        server.receive_data(HELLO_N0)


def test_largest_legal_record_is_accepted() -> None:
    sealed = client_side_transport().encrypt(bytes(MAX_PLAINTEXT_SIZE))
    assert len(sealed) == 4096
    assert server_side_transport().receive_data(sealed) == [bytes(MAX_PLAINTEXT_SIZE)]


# --- early payload -------------------------------------------------------------------------------


def test_encode_early_payload_layout() -> None:
    framed = encode_early_payload(EARLY_JSON)
    body = json.dumps(EARLY_JSON, separators=(",", ":")).encode()
    assert len(body) == 95
    assert framed == b"\xff\xff\xffTS\x00\x00\x00\x5f" + body
    assert encode_early_payload(body) == framed


H2_SETTINGS_HEADER = bytes.fromhex("000012040000000000")  # length 18, type SETTINGS, flags 0, stream 0


@pytest.mark.parametrize("bytewise", [False, True])
def test_early_payload_then_http2(bytewise: bool) -> None:
    data = encode_early_payload(EARLY_JSON) + H2_SETTINGS_HEADER + b"rest"
    reader = EarlyPayloadReader()
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    out = b"".join(reader.receive_data(chunk) for chunk in chunks)
    assert reader.payload == EARLY_JSON
    assert out == H2_SETTINGS_HEADER + b"rest"


@pytest.mark.parametrize("bytewise", [False, True])
def test_http2_settings_frame_is_not_mistaken_for_early_payload(bytewise: bool) -> None:
    data = H2_SETTINGS_HEADER + bytes(18) + b"more"
    reader = EarlyPayloadReader()
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    out = b"".join(reader.receive_data(chunk) for chunk in chunks)
    assert out == data
    assert reader.done and reader.payload is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xff\xff\xffTS\x00\xa0\x00\x01", "exceeds"),
        (b"\xff\xff\xffTS\x00\x00\x00\x03{{{", "not valid JSON"),
        (b"\xff\xff\xffTS\x00\x00\x00\x02[]", "JSON list, expected an object"),
    ],
)
def test_bad_early_payload(data: bytes, problem: str) -> None:
    with pytest.raises(RemoteProtocolError, match=problem):
        EarlyPayloadReader().receive_data(data)
