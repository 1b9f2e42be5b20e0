"""Vault (or OpenBao) custody of the server's private keys (``keys.store: vault``) and
``vault:<mount>/<path>#<field>`` secret references anywhere in the configuration."""

__version__ = "0.1.0"
