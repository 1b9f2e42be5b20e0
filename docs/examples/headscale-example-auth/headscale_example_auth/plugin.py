"""The plugin module named by the ``headscale`` entry point.

It owns the config section ``example_auth``, offers an organisation sign-in link on the
``/register/<id>`` page, and, while the server runs, vetoes logins whose email is outside
``example_auth.allowed_domains``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from headscale_core.hookspecs import hookimpl
from headscale_core.providers import AuthProvider, Deny, Identity
from headscale_core.server.context import ServerContext
from headscale_core.state.registrations import PendingRegistration

SECTION = "example_auth"


@dataclass(frozen=True)
class ExampleAuthSection:
    """``example_auth:`` in config.yaml (or ``HEADSCALE_EXAMPLE_AUTH_<KEY>``)."""

    allowed_domains: list[str] = field(default_factory=list, metadata={
        "doc": "Email domains whose users may register machines (empty: everyone may)."})
    login_url: str = field(default="", metadata={
        "doc": "Your sign-in page, linked from /register/<id>; {registration_id} is filled in."})


class DomainPolicy:
    """Holds the configured domains; registered as a plugin for the life of the server.

    ``headscale_authorize_login`` must not do I/O and gets no configuration, so the lifespan
    below hands the settings to this object once, at start-up.
    """

    def __init__(self, domains: list[str]) -> None:
        self.domains = tuple(d.strip().lstrip("@").lower() for d in domains if d.strip())

    def denial(self, identity: Identity) -> Deny | None:
        if not self.domains:
            return None
        address = identity.email or (identity.name if "@" in identity.name else "")
        domain = address.rpartition("@")[2].lower()
        if domain in self.domains:
            return None
        who = address or f"user {identity.name!r} (no email address)"
        return Deny(f"{who} is not in an allowed domain ({', '.join(self.domains)}): "
                    f"ask an administrator to add it to {SECTION}.allowed_domains")

    @hookimpl
    def headscale_authorize_login(self, identity: Identity, registration: PendingRegistration) -> Deny | None:
        return self.denial(identity)


class OrganisationLogin:
    name = "example-auth"
    title = "Sign in with your organisation account"

    def __init__(self, url_template: str) -> None:
        self.url_template = url_template

    def login_url(self, registration_id: str) -> str | None:
        return self.url_template.replace("{registration_id}", registration_id)


@hookimpl
def headscale_config_sections() -> Mapping[str, type]:
    return {SECTION: ExampleAuthSection}


@hookimpl
def headscale_auth_providers(ctx: ServerContext) -> list[AuthProvider]:
    settings: ExampleAuthSection = ctx.config.sections[SECTION]
    return [OrganisationLogin(settings.login_url)] if settings.login_url else []


@contextlib.asynccontextmanager
async def enforce_domains(ctx: ServerContext) -> AsyncIterator[None]:
    policy = DomainPolicy(ctx.config.sections[SECTION].allowed_domains)
    ctx.plugins.pm.register(policy, name=f"{SECTION}.domains")
    try:
        yield
    finally:
        ctx.plugins.pm.unregister(policy)


@hookimpl
def headscale_lifespans(ctx: ServerContext) -> list[Callable[[], AbstractAsyncContextManager[None]]]:
    return [lambda: enforce_domains(ctx)]
