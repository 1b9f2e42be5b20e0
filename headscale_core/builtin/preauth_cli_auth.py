"""Built-in authentication: pre-auth keys (in the registration path) and approval of
interactive registrations by an administrator (CLI or REST API).

Approval has no web login flow, so this provider only describes itself; the
``/register/<id>`` page shows the command that approves the machine.
"""

from __future__ import annotations

from headscale_core.hookspecs import hookimpl
from headscale_core.providers import AuthProvider
from headscale_core.server.context import ServerContext


class CLIApproval:
    name = "cli"
    title = "Approval by an administrator"

    def login_url(self, registration_id: str) -> str | None:
        return None


@hookimpl(trylast=True)
def headscale_auth_providers(ctx: ServerContext) -> list[AuthProvider]:
    return [CLIApproval()]
