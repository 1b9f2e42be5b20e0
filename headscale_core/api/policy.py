"""``/api/v1/policy`` (get, set, check) and ``/api/v1/health``.

Setting the policy goes through the configured ``policy.mode`` source: with ``file`` the
file is the truth and the API refuses (FailedPrecondition), as Headscale does.
"""

from __future__ import annotations

from aiohttp import web

from headscale_core.api.base import Endpoint, Handlers, actor, ok, read_body
from headscale_core.api.wire import field, timestamp
from headscale_core.errors import InvalidRequest, StorageError


class PolicyHandlers(Handlers):
    def endpoints(self) -> list[Endpoint]:
        policy_out = {"policy": "string", "updatedAt": "date-time"}
        return [
            Endpoint("GET", "/policy", self.get_policy, "GetPolicy", "The current policy (HuJSON text)",
                     response=policy_out),
            Endpoint("PUT", "/policy", self.set_policy, "SetPolicy",
                     "Validate, store and apply a new policy (needs policy.mode: database)",
                     body={"policy": "string"}, response=policy_out),
            Endpoint("POST", "/policy/check", self.check_policy, "CheckPolicy",
                     "Validate a policy without applying it", body={"policy": "string"}),
            Endpoint("GET", "/health", self.health, "Health", "Can the server reach its database?",
                     response={"databaseConnectivity": "boolean"}),
        ]

    async def get_policy(self, request: web.Request) -> web.Response:
        return ok({"policy": self.state.policy.text or "",
                   "updatedAt": timestamp(await self.state.policy_updated_at())})

    def _text(self, body: dict[str, object]) -> str:
        text = field(body, "policy")
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest("policy is required: the HuJSON policy text as a string")
        return text

    async def set_policy(self, request: web.Request) -> web.Response:
        text = self._text(await read_body(request))
        await self.state.set_policy(text, actor=actor(request))
        return await self.get_policy(request)

    async def check_policy(self, request: web.Request) -> web.Response:
        self.state.policy.validate(self._text(await read_body(request)))
        return ok()

    async def health(self, request: web.Request) -> web.Response:
        if not await self.state.database_ok():
            raise StorageError(f"the database ({self.state.storage.describe()}) does not answer")
        return ok({"databaseConnectivity": True})
