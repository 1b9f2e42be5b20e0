"""A client someone else wrote: every call of PyPI ``hsapi-client`` 0.9.9 against our server.

The client targets Headscale 0.23's API, so some calls cannot work against a 0.29-compatible
server (or against Headscale 0.29 itself); the table below says which and why, and the test
fails when a call's outcome changes either way. ``scripts/setup`` installs the client into
``.tools/hsapi-client`` with Python >= 3.12, which its code needs.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from headscale_core.testing.inprocess import RunningServer
from headscale_core.testing.simnode import SimNode

CLIENT_PYTHON = Path(__file__).parents[2] / ".tools" / "hsapi-client" / "bin" / "python"
DRIVER = Path(__file__).parent / "hsapi_calls.py"

# call -> None when it works, else why it cannot
EXPECTED: dict[str, str | None] = {
    "User.list": None,
    "User.create": None,
    "User.get(name)": "GET /user/{name} was removed in Headscale 0.24 (users are listed with ?name=)",
    "User.rename(name)": "users are addressed by ID since 0.24; the client passes whatever it is given",
    "User.rename(id)": None,
    "Node.list": "its model wants lastSeen/expiry as timestamps (we and Headscale send null when unset) "
                 "and preAuthKey.user as a string (a User object since 0.26)",
    "Node.get": "built on Node.list",
    "Node._get": "same model as Node.list",
    "Node.byUser": "built on Node.list",
    "Node.rename": "the rename happens; the answer fails the same node model",
    "Node.setTags": "the tags are set; the answer fails the node model (tagged-devices user has no createdAt too)",
    "Node.move": "the move happens; the answer fails the same node model",
    "Node.routes": "GET /node/{id}/routes was removed in Headscale 0.26 (approve_routes and the node's route fields)",
    "Node.expire": None,
    "Node.backfillips": "POST /node/backfillips is not implemented: addresses are allocated at registration",
    "PreAuthKey.list": "its model wants preAuthKey.user as a string (a User object since 0.26)",
    "PreAuthKey.create": "the key is created; the answer fails the same model",
    "PreAuthKey.expire": None,  # answers 200, but it POSTs to /preauthkey: a client bug that creates a key
    "APIKey.list": None,
    "APIKey.create": None,
    "APIKey.expire": None,
    "APIKey.delete": None,
    "Policy.put": None,
    "Policy.get": None,
    "Route.list": "/routes was removed in Headscale 0.26",
    "Node.delete": None,
    "User.delete(name)": "users are deleted by ID since 0.24",
    "User.delete(id)": None,
}


async def test_every_hsapi_client_call(server: RunningServer) -> None:
    if not CLIENT_PYTHON.exists():
        pytest.fail(f"hsapi-client is not installed at {CLIENT_PYTHON.parent.parent}: run scripts/setup "
                    "(it needs a Python >= 3.12 interpreter; set HSAPI_PYTHON to one)")
    state = server.state
    alice = await state.create_user("alice")
    _, auth_key = await state.create_preauth_key(alice, reusable=True)
    laptop = SimNode(server.url, "laptop")
    await laptop.join(auth_key)
    _, api_key = await state.create_api_key(actor="test")
    env = {**os.environ, "HSAPI_SERVER": server.url, "HSAPI_API_TOKEN": api_key}
    proc = await asyncio.create_subprocess_exec(str(CLIENT_PYTHON), str(DRIVER), env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    await laptop.close()
    assert proc.returncode == 0, err.decode()
    results = {r["call"]: r for r in map(json.loads, out.decode().splitlines())}

    assert set(results) == set(EXPECTED)
    report = "\n".join(f"{'works' if r['ok'] else 'fails'}  {name}: {r['detail'][:160]}"
                       for name, r in results.items())
    print(f"\nhsapi-client 0.9.9 against headscale-core:\n{report}")
    changed = {name: results[name]["detail"] for name, why in EXPECTED.items() if results[name]["ok"] != (why is None)}
    assert not changed, f"calls whose outcome changed: {changed}"

    # The calls that work did what they say; the failing ones that reached the server did too.
    assert [u.name for u in state.users()] == ["alice"]  # bob created, renamed robert, deleted by ID
    assert state.nodes() == []
    assert "acls" in state.policy.text
    keys = await state.preauth_keys(alice)
    assert len(keys) == 3  # ours, PreAuthKey.create's, and the one PreAuthKey.expire created by mistake
    assert len(await state.api_keys()) == 1  # the one the client made was expired, then deleted
