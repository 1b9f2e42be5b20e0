"""The management REST API ``/api/v1``, wire-compatible with Headscale 0.29's grpc-gateway.

Mount ``make_api_app(ctx, trusted_local=False)`` with ``add_subapp("/api/v1", ...)`` on the
main listener; serve ``make_local_app(ctx)`` on the admin unix socket. Handlers only call the
state service (the one writer path), naming the caller as ``actor``.
"""

from headscale_core.api.app import TRUSTED_LOCAL, api_endpoints, api_routes, make_api_app, make_local_app

__all__ = ["TRUSTED_LOCAL", "api_endpoints", "api_routes", "make_api_app", "make_local_app"]
