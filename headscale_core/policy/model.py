"""The tailnet as the policy compiler sees it, and the errors it reports.

The server builds `PolicyUser`/`PolicyNode` values from its node store; the compiler never
touches storage. Node ids double as registration order: the lowest id among routers
announcing the same prefix is its primary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class PolicyError(ValueError):
    """A policy that cannot be accepted.

    `message` is Tailscale's wording for the problem (kept verbatim, so a rejection reads as
    the service's would); `location` is where in the document it is, as a path such as
    `acls[3].dst[1]` or `tagOwners["tag:x"]` ("" when it is the document as a whole).
    """

    def __init__(self, message: str, location: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def describe(self) -> str:
        """`location: message`, without repeating a location the message already starts with."""
        if not self.location or self.message.startswith(self.location):
            return self.message
        return f"{self.location}: {self.message}"

    def __str__(self) -> str:
        return self.describe()


@contextmanager
def located(location: str) -> Iterator[None]:
    """Give a `PolicyError` raised inside the block this location, unless a nested block
    already named a more precise one."""
    try:
        yield
    except PolicyError as exc:
        if not exc.location:
            exc.location = location
        raise


@dataclass(frozen=True)
class PolicyUser:
    id: int
    name: str
    email: str = ""
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()  # tailnet roles: "owner", "admin" (autogroup:owner, autogroup:admin)

    @property
    def login(self) -> str:
        """The name policies use for this user: the email, or `name@` when it has none."""
        if self.email:
            return self.email
        return self.name if "@" in self.name else f"{self.name}@"


@dataclass(frozen=True)
class PolicyNode:
    id: int
    stable_id: str
    hostname: str
    ipv4: str | None
    ipv6: str | None
    user_id: int | None
    tags: tuple[str, ...] = ()
    advertised_routes: tuple[str, ...] = ()
    approved_routes: tuple[str, ...] = ()
    online: bool = True
    posture: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_tagged(self) -> bool:
        return bool(self.tags)

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(ip for ip in (self.ipv4, self.ipv6) if ip)


@dataclass(frozen=True)
class Explanation:
    """Why a packet from one node to another is allowed or denied."""

    allowed: bool
    rule_index: int | None = None
    rule_kind: str = ""
    rule_text: str = ""

    def __str__(self) -> str:
        if self.rule_index is None:
            return "denied: no rule matches"
        verdict = "allowed" if self.allowed else "denied"
        return f"{verdict} by {self.rule_kind}[{self.rule_index}]: {self.rule_text}"
