"""Embedded DERP relay and STUN responder, a headscale-core plugin (``headscale-derp``)."""

__version__ = "0.1.0"
