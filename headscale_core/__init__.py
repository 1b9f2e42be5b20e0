"""headscale-core: a self-hosted Tailscale coordination server built from pluggy plugins."""

__version__ = "0.1.0"
