"""Registration: turning a ``RegisterRequest`` into a node (control protocol §6).

Pre-auth keys, interactive approval (``AuthURL`` + ``Followup`` long-poll), restarts of a
known node, node-key rotation and logout. Answers are ``RegisterResponse`` dicts; failures a
person must act on are ``Error`` texts, as the client shows them to its user.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from headscale_core.config import parse_duration
from headscale_core.errors import InvalidRequest, NotFound
from headscale_core.protocol.keys import is_zero
from headscale_core.providers import Identity
from headscale_core.state import names
from headscale_core.state.changes import NodeChanged, SelfChanged
from headscale_core.state.model import (
    TAGGED_DEVICES_USER_ID,
    TAGGED_DEVICES_USER_NAME,
    Node,
    PreAuthKey,
    User,
)
from headscale_core.state.registrations import PendingRegistration, RegistrationOutcome
from headscale_core.storage import repository as repo
from headscale_core.storage.models import RegistrationRow

if TYPE_CHECKING:
    from headscale_core.state.service import StateService

log = logging.getLogger(__name__)


def parse_time(text: Any) -> datetime | None:
    if not text or not isinstance(text, str) or text.startswith("0001-01-01"):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def user_json(user: User | None) -> dict[str, Any]:
    if user is None:
        return {"ID": TAGGED_DEVICES_USER_ID, "DisplayName": TAGGED_DEVICES_USER_NAME}
    return {"ID": user.id, "DisplayName": user.display_name or user.name}


def login_json(user: User | None) -> dict[str, Any]:
    if user is None:
        return {"ID": TAGGED_DEVICES_USER_ID, "Provider": "", "LoginName": TAGGED_DEVICES_USER_NAME,
                "DisplayName": TAGGED_DEVICES_USER_NAME}
    return {"ID": user.id, "Provider": user.provider, "LoginName": user.login_name,
            "DisplayName": user.display_name or user.name}


class Registrar:
    def __init__(self, state: StateService) -> None:
        self.state = state

    def _ok(self, node: Node) -> dict[str, Any]:
        user = self.state.store.users.get(node.user_id) if node.user_id else None
        return {"User": user_json(user), "Login": login_json(user), "MachineAuthorized": True}

    async def register(self, req: dict[str, Any], machine_key: str, remote: str = "") -> dict[str, Any]:
        node_key = str(req.get("NodeKey") or "")
        if not node_key.startswith("nodekey:") or is_zero(node_key):
            raise InvalidRequest("RegisterRequest.NodeKey is missing or zero")
        old_key = str(req.get("OldNodeKey") or "")
        old_key = "" if not old_key or is_zero(old_key) else old_key
        expiry = parse_time(req.get("Expiry"))
        hostinfo = req.get("Hostinfo") or {}
        auth_key = ((req.get("Auth") or {}).get("AuthKey") or "").strip()
        followup = str(req.get("Followup") or "")
        now = datetime.now(UTC)
        store = self.state.store

        node = store.by_node_key(node_key)
        if node is not None and node.machine_key != machine_key:
            log.warning("register from %s: node key %s belongs to another machine", remote, node_key[:16])
            return {"Error": "node exists with a different machine key"}

        if expiry is not None and expiry <= now:
            return await self._logout(node, machine_key)
        if followup:
            return await self._wait_followup(followup, req, machine_key, remote)
        if auth_key:
            return await self._with_preauth_key(auth_key, node_key, old_key, hostinfo, machine_key,
                                                bool(req.get("Ephemeral")), remote)
        if node is not None:
            if node.is_expired(now):
                return {"NodeKeyExpired": True}
            if hostinfo:
                await self.state.update_soft(node.replace(host_info=_merge_hostinfo(node.host_info, hostinfo)),
                                             NodeChanged(node.id))
            return self._ok(node)
        return await self._start_interactive(req, machine_key, node_key, old_key, hostinfo)

    async def _logout(self, node: Node | None, machine_key: str) -> dict[str, Any]:
        if node is None:
            return {"NodeKeyExpired": True}
        if node.ephemeral:
            await self.state.delete_node(node, actor=f"node:{node.id}")
            return {"NodeKeyExpired": True}
        await self.state.expire_node(node, actor=f"node:{node.id}")
        return {"NodeKeyExpired": True, "MachineAuthorized": False}

    async def _with_preauth_key(self, text: str, node_key: str, old_key: str, hostinfo: dict[str, Any],
                                machine_key: str, ephemeral: bool, remote: str) -> dict[str, Any]:
        existing = self.state.store.by_node_key(node_key)
        try:
            key = await self.state.preauth_key_by_text(text)
        except InvalidRequest as exc:
            self.state.audit("login.failed", f"machine:{machine_key[:16]}", source=remote, reason=str(exc))
            return {"Error": str(exc)}
        now = datetime.now(UTC)
        # Containers resend the same key on every start: a node already registered with this
        # key needs no fresh validation (the key may since have been used or expired).
        if existing is not None and existing.auth_key_id == key.id and not existing.is_expired(now):
            self.state.audit("login.ok", f"node:{existing.id}", subject=f"node:{existing.id}", source=remote,
                             method="authkey", preauthkey=key.id)
            return self._ok(existing)
        user = self.state.store.users.get(key.user_id) if key.user_id else None
        problem = key.problem(now)
        if not problem and key.user_id and user is None:
            problem = "the user of this pre-auth key was deleted: create a new key"
        first_use = not problem and self.state.claim_preauth_key(key)
        if not problem and not first_use and not key.reusable:
            problem = key.problem_when_used()  # another registration took this single-use key
        if problem:
            self.state.audit("login.failed", f"machine:{machine_key[:16]}", source=remote, reason=problem)
            return {"Error": problem}
        try:
            node = await self._create_or_reuse(machine_key, node_key, old_key, hostinfo, user, key.tags,
                                               ephemeral or key.ephemeral, "authkey", key)
        except BaseException:
            if first_use:  # nothing was registered with it: the next registration may claim it
                self.state.release_preauth_key(key)
            raise
        if first_use:  # a reusable key is marked once, not written on every registration
            await self.state.mark_preauth_key_used(key)
        self.state.audit("login.ok", f"node:{node.id}", subject=f"node:{node.id}", source=remote, method="authkey",
                         preauthkey=key.id, user=user.name if user else "")
        return self._ok(node)

    async def _create_or_reuse(self, machine_key: str, node_key: str, old_key: str, hostinfo: dict[str, Any],
                               user: User | None, tags: tuple[str, ...], ephemeral: bool, method: str,
                               key: PreAuthKey | None) -> Node:
        """Re-key the machine's existing node (rotation, re-login) or create a new one."""
        store = self.state.store
        prior = (store.by_node_key(old_key) if old_key else None) or store.by_machine_key(machine_key)
        tagged = bool(tags)
        expiry = self.state.default_expiry(tagged)
        if prior is not None and prior.machine_key == machine_key:
            node = prior.replace(node_key=node_key, host_info=_merge_hostinfo(prior.host_info, hostinfo),
                                 user_id=None if tagged else (user.id if user else prior.user_id),
                                 tags=tags or (prior.tags if user is None else ()), expiry=expiry,
                                 ephemeral=ephemeral, register_method=method,
                                 auth_key_id=key.id if key else prior.auth_key_id)
            return await self.state.save_node(node, NodeChanged(node.id, topology=True), SelfChanged(node.id),
                                              actor=f"node:{node.id}", kind="node.reauth")
        v4, v6 = self.state.allocate_addresses()
        hostname = str(hostinfo.get("Hostname") or "node")
        node = Node(
            id=0, machine_key=machine_key, node_key=node_key,
            given_name=names.unique_label(hostname, store.given_names()), hostname=hostname,
            user_id=None if tagged else (user.id if user else None), host_info=dict(hostinfo),
            ipv4=v4, ipv6=v6, register_method=method, tags=tags, auth_key_id=key.id if key else None,
            ephemeral=ephemeral, expiry=expiry,
        )
        try:
            node = await self.state.insert_node(node, actor=f"{method}:{user.name if user else 'tags'}")
        except Exception:
            self.state.release_addresses(node)
            raise
        await self.auto_approve(node)
        return node

    async def auto_approve(self, node: Node) -> None:
        # Most nodes announce no routes: do not recompile the policy (O(nodes)) for them.
        if not node.announced_routes:
            return
        compiled = self.state.policy.compiled()
        if compiled is None:
            return
        from headscale_core.state.policystate import policy_node

        approved = compiled.auto_approved_routes(policy_node(node, False), node.announced_routes) \
            if hasattr(compiled, "auto_approved_routes") else []
        if approved and set(approved) - set(node.approved_routes):
            await self.state.approve_routes(node, set(node.approved_routes) | set(approved),
                                            actor="policy:autoApprovers")

    # ---- interactive ------------------------------------------------------------------------

    def auth_url(self, reg_id: str) -> str:
        return f"{self.state.config.server_url.rstrip('/')}/register/{reg_id}"

    async def _start_interactive(self, req: dict[str, Any], machine_key: str, node_key: str, old_key: str,
                                 hostinfo: dict[str, Any]) -> dict[str, Any]:
        now = datetime.now(UTC)
        reg_id = secrets.token_urlsafe(18)
        ttl = parse_duration(self.state.config.tuning.register_cache_expiration)
        async with self.state.writing() as s:
            await repo.delete_registrations_before(s, now)
            await repo.insert_registration(s, RegistrationRow(
                id=reg_id, machine_key=machine_key, node_key=node_key, old_node_key=old_key,
                host_info=dict(hostinfo), ephemeral=bool(req.get("Ephemeral")), expiry=parse_time(req.get("Expiry")),
                status="pending", created_at=now, expires_at=now + timedelta(seconds=ttl)))
        return {"AuthURL": self.auth_url(reg_id)}

    async def pending(self, reg_id: str) -> PendingRegistration:
        async with self.state.storage.transaction() as s:
            row = await repo.registration(s, reg_id)
        if row is None or row.expires_at <= datetime.now(UTC):
            raise NotFound(f"registration {reg_id} does not exist or has expired: run `tailscale up` again")
        return PendingRegistration(id=row.id, machine_key=row.machine_key, node_key=row.node_key,
                                   hostinfo=dict(row.host_info or {}), old_node_key=row.old_node_key,
                                   ephemeral=row.ephemeral, expiry=row.expiry, created_at=row.created_at,
                                   expires_at=row.expires_at)

    async def approve(self, reg_id: str, user: User, method: str = "cli", actor: str = "cli",
                      identity: Identity | None = None) -> Node:
        """Complete a pending registration for ``user`` (CLI, API or a login provider).

        ``identity`` is what a login provider saw; without one (CLI, API) it is built from
        the user, so ``headscale_authorize_login`` always gets an ``Identity``.
        """
        reg = await self.pending(reg_id)
        identity = identity or identity_of(user)
        denials = [d for d in self.state.plugins.hook.headscale_authorize_login(
            identity=identity, registration=reg, ctx=self.state.context) if d is not None]
        if denials:
            self.state.audit("login.refused", actor, subject=f"registration:{reg_id}", method=method,
                             user=user.name, identity=f"{identity.provider}:{identity.subject}",
                             reason=denials[0].reason)
            raise InvalidRequest(f"login refused: {denials[0].reason}")
        node = await self._create_or_reuse(reg.machine_key, reg.node_key, reg.old_node_key, reg.hostinfo, user,
                                           (), reg.ephemeral, method, None)
        async with self.state.writing() as s:
            row = await repo.registration(s, reg_id)
            if row is not None:
                row.status, row.user_id = "approved", user.id
        self.state.audit("registration.approve", actor, subject=f"node:{node.id}", user=user.name)
        self.state.audit("login.ok", actor, subject=f"node:{node.id}", method=method, user=user.name)
        self.state.waiters.resolve(reg_id, RegistrationOutcome(node_id=node.id))
        return node

    async def reject(self, reg_id: str, reason: str = "rejected by an administrator", actor: str = "cli") -> None:
        await self.pending(reg_id)
        async with self.state.writing() as s:
            row = await repo.registration(s, reg_id)
            if row is not None:
                row.status, row.reason = "rejected", reason
        self.state.audit("registration.reject", actor, subject=f"registration:{reg_id}", reason=reason)
        self.state.waiters.resolve(reg_id, RegistrationOutcome(error=reason))

    async def _wait_followup(self, url: str, req: dict[str, Any], machine_key: str, remote: str) -> dict[str, Any]:
        reg_id = url.rstrip("/").rsplit("/", 1)[-1]
        while True:
            async with self.state.storage.transaction() as s:
                row = await repo.registration(s, reg_id)
            if row is None or row.machine_key != machine_key or row.expires_at <= datetime.now(UTC):
                return await self._start_interactive(req, machine_key, str(req.get("NodeKey")),
                                                     str(req.get("OldNodeKey") or ""), req.get("Hostinfo") or {})
            if row.status == "approved":
                node = self.state.store.by_machine_key(machine_key)
                return self._ok(node) if node else {"Error": "registration approved but the node is gone"}
            if row.status == "rejected":
                return {"Error": row.reason or "registration rejected"}
            fut = self.state.waiters.wait(reg_id)
            try:
                # Re-check the database now and then: the approval may land on another instance.
                await asyncio.wait_for(asyncio.shield(fut), timeout=2.0)
            except TimeoutError:
                pass
            finally:
                self.state.waiters.forget(reg_id, fut)


def identity_of(user: User) -> Identity:
    """The identity of a stored user, for approvals that did not come through a login."""
    return Identity(provider=user.provider or "local", subject=user.provider_identifier or str(user.id),
                    name=user.name, email=user.email, display_name=user.display_name, groups=user.groups,
                    profile_pic_url=user.profile_pic_url)


def _merge_hostinfo(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Newest Hostinfo wins, but keep NetInfo when an update leaves it out (clients do)."""
    merged = dict(new)
    if "NetInfo" not in merged and "NetInfo" in old:
        merged["NetInfo"] = old["NetInfo"]
    return merged
