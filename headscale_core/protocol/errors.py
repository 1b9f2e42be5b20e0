"""Errors raised by the sans-IO protocol layers, named after whose fault they are.

A ``RemoteProtocolError`` means the peer sent bytes that break the protocol: the connection that
carried them cannot be trusted any more and should be closed. A ``LocalProtocolError`` means our
own code asked a layer to do something the protocol forbids (a bug here, not in the peer).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every protocol-layer error."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; close the connection it came from."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids (a bug on our side)."""
