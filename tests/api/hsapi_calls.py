"""Every call of the PyPI client ``hsapi-client`` (0.9.9), run against a server named by
``HSAPI_SERVER``/``HSAPI_API_TOKEN``; prints one JSON line per call: name, ok, what came back.

Run by ``test_api_hsapi_client.py`` with the client's own interpreter (it needs Python 3.12:
its f-strings span lines), so this file imports nothing from headscale_core. Expects user 1
``alice`` owning node 1, registered with a pre-auth key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hsapi_client import APIKey, Node, Policy, PreAuthKey, Route, User
from hsapi_client.apikeys import v1CreateApiKeyRequest, v1ExpireApiKeyRequest
from hsapi_client.nodes import v1MoveNodeRequest, v1SetTagsNodeRequest
from hsapi_client.preauthkeys import (
    v1CreatePreAuthKeyRequest,
    v1ExpirePreAuthKeyRequest,
    v1ListPreAuthKeyRequest,
)
from hsapi_client.users import v1CreateUserRequest

POLICY = '{"tagOwners": {"tag:server": ["alice@"]}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'
created: dict[str, Any] = {}


def remember(key: str, value: Any) -> Any:
    created[key] = value
    return value


CALLS: list[tuple[str, Callable[[], Any]]] = [
    ("User.list", lambda: [u.name for u in User().list().users or []]),
    ("User.create", lambda: remember("bob", User().create(v1CreateUserRequest(name="bob")).user).name),
    ("User.get(name)", lambda: User().get("alice").user),
    ("User.rename(name)", lambda: User().rename("bob", "robert").user),
    ("User.rename(id)", lambda: User().rename(str(created["bob"].id), "robert").user.name),
    ("Node.list", lambda: [n.givenName for n in Node().list().nodes or []]),
    ("Node.get", lambda: Node().get(1).givenName),
    ("Node._get", lambda: Node()._get(1).givenName),
    ("Node.byUser", lambda: [n.givenName for n in Node().byUser("alice").nodes or []]),
    ("Node.rename", lambda: Node().rename(1, "workstation").node.givenName),
    ("Node.setTags", lambda: Node().setTags(1, v1SetTagsNodeRequest(tags=["server"])).node.givenName),
    ("Node.move", lambda: Node().move(1, v1MoveNodeRequest(user="1")).node.user.name),
    ("Node.routes", lambda: Node().routes(1).routes),
    ("Node.expire", lambda: Node().expire(1)),
    ("Node.backfillips", lambda: Node().backfillips().changes),
    ("PreAuthKey.list", lambda: [k.id for k in PreAuthKey().list(v1ListPreAuthKeyRequest(user="alice")).preAuthKeys
                                 or []]),
    ("PreAuthKey.create", lambda: PreAuthKey().create(v1CreatePreAuthKeyRequest(user="1", reusable=True)).preAuthKey),
    ("PreAuthKey.expire", lambda: PreAuthKey().expire(v1ExpirePreAuthKeyRequest(user="1", key="hskey-auth-x"))),
    ("APIKey.list", lambda: [k.prefix for k in APIKey().list().apiKeys or []]),
    ("APIKey.create", lambda: remember("apikey", APIKey().create(
        v1CreateApiKeyRequest(expiration="2040-01-01T00:00:00Z")).apiKey)[:10]),
    ("APIKey.expire", lambda: APIKey().expire(v1ExpireApiKeyRequest(prefix=created["apikey"].split("-")[2]))),
    ("APIKey.delete", lambda: APIKey().delete(created["apikey"].split("-")[2])),
    ("Policy.put", lambda: sorted(Policy().put(POLICY).policy)),
    ("Policy.get", lambda: sorted(Policy().get().policy)),
    ("Route.list", lambda: Route().list().routes),
    ("Node.delete", lambda: Node().delete(1)),
    ("User.delete(name)", lambda: User().delete("robert")),
    ("User.delete(id)", lambda: User().delete(str(created["bob"].id))),
]


def main() -> None:
    for name, call in CALLS:
        try:
            result = call()
        except Exception as exc:  # each call's failure is the report, not the end of the run
            print(json.dumps({"call": name, "ok": False, "detail": f"{type(exc).__name__}: {exc}"[:400]}))
        else:
            print(json.dumps({"call": name, "ok": True, "detail": repr(result)[:400]}))


if __name__ == "__main__":
    main()
