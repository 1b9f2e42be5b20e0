"""Seeded random input to every sans-IO decoder: they may only raise their declared errors."""

from __future__ import annotations

import random

import pytest

from headscale_core.protocol.errors import RemoteProtocolError
from headscale_core.protocol.keys import PrivateKey
from headscale_core.protocol.mapstream import KEEPALIVE_MESSAGE, MapStreamDecoder
from headscale_core.protocol.noise import (
    EARLY_PAYLOAD_MAGIC,
    EarlyPayloadReader,
    HandshakeError,
    NoiseInitiator,
    NoiseResponder,
    NoiseTransport,
)

ROUNDS = 400
SERVER = PrivateKey(bytes(range(1, 33)))


def random_chunks(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data) + 1, rng.randint(0, 6))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.5 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif choice < 0.75:
            out[rng.randrange(len(out) + 1) : 0] = rng.randbytes(rng.randint(1, 8))
        elif out:
            del out[rng.randrange(len(out))]
    return bytes(out)


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_responder(seed: int) -> None:
    rng = random.Random(seed)
    responder = NoiseResponder(SERVER.raw)
    valid = NoiseInitiator(b"\x07" * 32, SERVER.public_bytes(), 145).initiation
    for _ in range(ROUNDS):
        data = mutate(rng, valid) if rng.random() < 0.8 else rng.randbytes(rng.choice([0, 5, 101, 300]))
        try:
            responder.respond(data)
        except HandshakeError:
            pass


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_initiator(seed: int) -> None:
    rng = random.Random(seed)
    initiator = NoiseInitiator(b"\x07" * 32, SERVER.public_bytes(), 145)
    valid = NoiseResponder(SERVER.raw).respond(initiator.initiation).response
    for _ in range(ROUNDS):
        fresh = NoiseInitiator(b"\x07" * 32, SERVER.public_bytes(), 145)
        data = mutate(rng, valid) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 80))
        try:
            for chunk in random_chunks(rng, data):
                fresh.receive_data(chunk)
        except HandshakeError:
            pass


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_transport(seed: int) -> None:
    rng = random.Random(seed)
    sender = NoiseTransport(send_key=b"\x01" * 32, receive_key=b"\x02" * 32)
    valid = b"".join(sender.encrypt(rng.randbytes(rng.randint(0, 5000))) for _ in range(3))
    for _ in range(ROUNDS):
        receiver = NoiseTransport(send_key=b"\x02" * 32, receive_key=b"\x01" * 32)
        data = mutate(rng, valid) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 200))
        try:
            for chunk in random_chunks(rng, data):
                assert all(isinstance(p, bytes) for p in receiver.receive_data(chunk))
        except RemoteProtocolError:
            pass


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_map_stream_decoder(seed: int) -> None:
    rng = random.Random(seed)
    valid = KEEPALIVE_MESSAGE * 3
    for _ in range(ROUNDS):
        decoder = MapStreamDecoder(max_message_size=1 << 16)
        data = mutate(rng, valid) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 100))
        try:
            for chunk in random_chunks(rng, data):
                decoder.receive_data(chunk)
        except RemoteProtocolError:
            pass


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_early_payload_reader(seed: int) -> None:
    rng = random.Random(seed)
    valid = EARLY_PAYLOAD_MAGIC + b"\x00\x00\x00\x08" + b'{"a":[]}' + b"\x00" * 9
    for _ in range(ROUNDS):
        reader = EarlyPayloadReader()
        data = mutate(rng, valid) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 40))
        try:
            passed = b"".join(reader.receive_data(chunk) for chunk in random_chunks(rng, data))
        except RemoteProtocolError:
            continue
        if reader.done and reader.payload is None:
            assert passed == data
