"""Applying a policy: its own tests must pass, and an emptied file on reload is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headscale_core.errors import InvalidRequest
from headscale_core.testing.inprocess import running
from headscale_core.testing.simnode import SimNode

POLICY = {
    "acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:web:443"]}],
    "tagOwners": {"tag:web": ["alice@"]},
}


async def test_a_policy_whose_own_tests_fail_is_refused_and_not_stored(tmp_path: Path) -> None:
    async with running(tmp_path, policy={"mode": "database"}) as srv:
        alice = await srv.state.create_user("alice")
        _, user_key = await srv.state.create_preauth_key(alice)
        _, web_key = await srv.state.create_preauth_key(None, tags=["tag:web"])
        for name, key in (("laptop", user_key), ("web", web_key)):
            node = SimNode(srv.url, name)
            await node.join(key)
            await node.close()
        good = dict(POLICY, tests=[{"src": "alice@", "accept": ["tag:web:443"], "deny": ["tag:web:22"]}])
        await srv.state.set_policy(json.dumps(good))
        bad = dict(POLICY, tests=[{"src": "alice@", "accept": ["tag:web:22"]}])
        with pytest.raises(InvalidRequest, match="own tests fail"):
            await srv.state.set_policy(json.dumps(bad))
        assert json.loads(srv.state.policy.text) == good
        assert json.loads(await srv.state.policy.source().load()) == good


async def test_an_emptied_policy_file_keeps_the_last_good_policy(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        srv.state.policy.apply(json.dumps(POLICY), reload=True)
        with pytest.raises(InvalidRequest, match="policy file is empty"):
            srv.state.policy.apply("  \n", reload=True)
        assert not srv.state.policy.allow_all
