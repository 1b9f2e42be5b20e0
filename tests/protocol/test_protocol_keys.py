"""Key text forms and X25519 helpers (``headscale_core.protocol.keys``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from headscale_core.protocol.keys import (
    ChallengePublic,
    DiscoPublic,
    MachinePublic,
    NLPublic,
    NodePublic,
    PrivateKey,
    is_zero,
    parse_disco_public,
    parse_machine_public,
    parse_node_public,
    parse_private,
    public_from_private,
    x25519,
)

SERVER_PRIVATE = bytes.fromhex("0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20")
SERVER_PUBLIC_TEXT = "mkey:07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c"


def test_public_from_private_matches_reference_vector() -> None:
    assert str(MachinePublic(public_from_private(SERVER_PRIVATE))) == SERVER_PUBLIC_TEXT
    assert str(PrivateKey(SERVER_PRIVATE).machine_public()) == SERVER_PUBLIC_TEXT


@pytest.mark.parametrize(
    ("cls", "prefix"),
    [
        (MachinePublic, "mkey:"),
        (NodePublic, "nodekey:"),
        (DiscoPublic, "discokey:"),
        (NLPublic, "nlpub:"),
        (ChallengePublic, "chalpub:"),
        (PrivateKey, "privkey:"),
    ],
)
def test_text_form_round_trips(cls: Any, prefix: str) -> None:
    key = cls(bytes(range(32)))
    text = str(key)
    assert text == prefix + bytes(range(32)).hex()
    assert cls.parse(text) == key
    assert cls.parse(prefix + bytes(range(32)).hex().upper()) == key


def test_parse_rejects_wrong_prefix_with_clear_message() -> None:
    with pytest.raises(ValueError, match="expected type prefix 'nodekey:'"):
        parse_node_public("mkey:" + "00" * 32)


@pytest.mark.parametrize("digits", ["", "00" * 31, "00" * 33, "zz" * 32, " 0" * 32, "00" * 31 + "0g"])
def test_parse_rejects_bad_hex(digits: str) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        parse_machine_public("mkey:" + digits)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_disco_public(None)  # type: ignore[arg-type]


def test_nl_public_accepts_legacy_prefix_but_emits_nlpub() -> None:
    key = NLPublic.parse("tlpub:" + "ab" * 32)
    assert str(key) == "nlpub:" + "ab" * 32


def test_zero_key_means_unset() -> None:
    zero = NodePublic.zero()
    assert zero.is_zero()
    assert str(zero) == "nodekey:" + "0" * 64
    assert is_zero(zero) and is_zero(None) and is_zero(bytes(32)) and is_zero(str(zero)) and is_zero("")
    assert not is_zero(NodePublic(b"\x01" * 32))
    assert not is_zero("nodekey:" + "0" * 63 + "1")


def test_keys_are_frozen_typed_values() -> None:
    key = MachinePublic(b"\x01" * 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.raw = b"\x02" * 32  # type: ignore[misc]
    assert key != NodePublic(b"\x01" * 32)
    assert {key, MachinePublic(b"\x01" * 32)} == {key}


def test_wrong_length_raw_bytes_refused() -> None:
    with pytest.raises(ValueError, match="needs 32 raw bytes, got 31 bytes"):
        MachinePublic(b"\x00" * 31)


def test_private_key_repr_does_not_leak() -> None:
    key = parse_private("privkey:" + SERVER_PRIVATE.hex())
    assert SERVER_PRIVATE.hex() not in repr(key)


def test_x25519_agrees_both_ways_and_refuses_low_order_points() -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    assert x25519(a.raw, b.public_bytes()) == x25519(b.raw, a.public_bytes())
    with pytest.raises(ValueError):
        x25519(a.raw, bytes(32))
