"""PostgreSQL storage and multi-instance change fan-out, a headscale-core plugin (``headscale-postgres``)."""

__version__ = "0.1.0"
