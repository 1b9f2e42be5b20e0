"""Key types of the control protocol and their text forms (tailscale ``types/key``).

Every key on the wire is 32 raw bytes written as a type prefix plus 64 lowercase hex digits
(``nodekey:3f…``); parsers also accept upper-case hex. The all-zero key means "unset" (for
example ``RegisterRequest.OldNodeKey`` when there was no previous key). Machine, node, disco and
challenge keys are X25519 public keys; the helpers at the end wrap ``cryptography``'s X25519 so
the rest of the code handles plain bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Self

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

KEY_SIZE = 32
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_ZERO = bytes(KEY_SIZE)


@dataclass(frozen=True, slots=True)
class _Key:
    """32 raw key bytes of one key type; ``str()`` gives the wire text form."""

    raw: bytes

    prefix: ClassVar[str] = ""
    # Older prefixes a parser still accepts (never emitted).
    legacy_prefixes: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_SIZE:
            raise ValueError(f"{type(self).__name__} needs {KEY_SIZE} raw bytes, got {_describe(self.raw)}")

    def __str__(self) -> str:
        return self.prefix + self.raw.hex()

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse the text form (``prefix`` + 64 hex digits); raise ``ValueError`` if malformed."""
        if not isinstance(text, str):
            raise ValueError(f"{cls.prefix} key must be a string, got {type(text).__name__}")
        for prefix in (cls.prefix, *cls.legacy_prefixes):
            if text.startswith(prefix):
                digits = text[len(prefix) :]
                break
        else:
            shown = text if len(text) <= 20 else text[:20] + "…"
            raise ValueError(f"key {shown!r} does not have the expected type prefix {cls.prefix!r}")
        if not _HEX64.fullmatch(digits):
            raise ValueError(
                f"{cls.prefix} key must be followed by exactly 64 hex digits, got {len(digits)} characters"
            )
        return cls(bytes.fromhex(digits))

    @classmethod
    def zero(cls) -> Self:
        """The all-zero key, meaning "unset"."""
        return cls(_ZERO)

    def is_zero(self) -> bool:
        return self.raw == _ZERO


class MachinePublic(_Key):
    """A machine's (or the server's Noise) static X25519 public key: ``mkey:``."""

    __slots__ = ()
    prefix = "mkey:"


class NodePublic(_Key):
    """A node's WireGuard public key: ``nodekey:``."""

    __slots__ = ()
    prefix = "nodekey:"


class DiscoPublic(_Key):
    """A node's disco (path discovery) public key: ``discokey:``."""

    __slots__ = ()
    prefix = "discokey:"


class NLPublic(_Key):
    """A tailnet-lock ed25519 public key: ``nlpub:`` (``tlpub:`` is accepted when parsing)."""

    __slots__ = ()
    prefix = "nlpub:"
    legacy_prefixes = ("tlpub:",)


class ChallengePublic(_Key):
    """The per-connection challenge key sent in the early payload: ``chalpub:``."""

    __slots__ = ()
    prefix = "chalpub:"


class PrivateKey(_Key):
    """A raw X25519 private scalar: ``privkey:`` (local files only, never on the wire)."""

    __slots__ = ()
    prefix = "privkey:"

    def __repr__(self) -> str:
        return "PrivateKey(<redacted>)"

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(generate_private())

    def public_bytes(self) -> bytes:
        return public_from_private(self.raw)

    def machine_public(self) -> MachinePublic:
        return MachinePublic(self.public_bytes())

    def node_public(self) -> NodePublic:
        return NodePublic(self.public_bytes())

    def disco_public(self) -> DiscoPublic:
        return DiscoPublic(self.public_bytes())


def parse_machine_public(text: str) -> MachinePublic:
    return MachinePublic.parse(text)


def parse_node_public(text: str) -> NodePublic:
    return NodePublic.parse(text)


def parse_disco_public(text: str) -> DiscoPublic:
    return DiscoPublic.parse(text)


def parse_nl_public(text: str) -> NLPublic:
    return NLPublic.parse(text)


def parse_challenge_public(text: str) -> ChallengePublic:
    return ChallengePublic.parse(text)


def parse_private(text: str) -> PrivateKey:
    return PrivateKey.parse(text)


def is_zero(key: _Key | bytes | str | None) -> bool:
    """True for a missing key, the all-zero key, or its text form (all meaning "unset")."""
    if key is None:
        return True
    if isinstance(key, _Key):
        return key.is_zero()
    if isinstance(key, bytes):
        return key == _ZERO
    return key == "" or key.endswith(":" + "0" * 64)


def generate_private() -> bytes:
    """A fresh random X25519 private key (32 raw bytes)."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_from_private(private: bytes) -> bytes:
    """The X25519 public key (32 raw bytes) belonging to ``private``."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def x25519(private: bytes | X25519PrivateKey, public: bytes) -> bytes:
    """The X25519 shared secret; ``ValueError`` when ``public`` is a low-order point.

    ``private`` may be a loaded ``X25519PrivateKey``: loading costs as much as the exchange, so
    hot paths keep long-lived keys loaded. An all-zero result would let a peer force a known
    key, so it is refused, as Go's ``curve25519.X25519`` does.
    """
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise ValueError(f"X25519 with a bad public key: {exc}") from None
    if shared == _ZERO:
        raise ValueError("X25519 with a low-order public key gave an all-zero shared secret")
    return shared


def _describe(value: object) -> str:
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    return type(value).__name__
