"""Pre-auth and API key secrets: ``hskey-<kind>-<prefix>-<secret>``, stored as a hash.

The secret has 256 bits of entropy, so a single SHA-256 is as strong as a password hash
here and keeps registration fast; only the prefix is stored in clear, for listing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX_LEN = 12


def new_key(kind: str) -> tuple[str, str, str]:
    """Return (full key, prefix, hash) for kind ``auth`` or ``api``."""
    prefix = secrets.token_hex(PREFIX_LEN // 2)
    secret = secrets.token_urlsafe(32).replace("-", "x").replace("_", "y")
    return f"hskey-{kind}-{prefix}-{secret}", prefix, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str, kind: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key of this kind, else None."""
    head = f"hskey-{kind}-"
    if not key.startswith(head):
        return None
    rest = key[len(head):]
    prefix, sep, secret = rest.partition("-")
    if not sep or len(prefix) != PREFIX_LEN or not secret:
        return None
    return prefix, secret


def verify(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
