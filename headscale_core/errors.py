"""Exceptions that reach a person: each says what was wrong, whose fault it was, what to do."""

from __future__ import annotations


class HeadscaleError(Exception):
    """Base class of errors shown to an operator as one line."""


class ConfigError(HeadscaleError):
    """The configuration is invalid; the message names the key path and the fix."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class StorageError(HeadscaleError):
    """The database cannot be opened or used; the message names it and what to check."""


class NotFound(HeadscaleError):
    """An object named by an operator or client does not exist."""


class Conflict(HeadscaleError):
    """The request conflicts with existing state (duplicate name, key in use…)."""


class InvalidRequest(HeadscaleError):
    """The request is malformed or not allowed; the caller must change it."""


class PermissionDenied(HeadscaleError):
    """The caller is not allowed to do this."""
