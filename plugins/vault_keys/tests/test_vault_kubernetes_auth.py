"""``vault.kubernetes`` login against a real OpenBao dev server whose ``kubernetes`` auth method
asks a fake Kubernetes API (an aiohttp TokenReview endpoint over HTTPS on 127.0.0.1, with a
self-signed certificate given to OpenBao as ``kubernetes_ca_cert``) about the pod's token.

OpenBao reads the service account from the JWT's claims (it verifies no signature when no
``pem_keys`` are configured), then posts the JWT to ``/apis/authentication.k8s.io/v1/tokenreviews``
with the reviewer JWT as bearer and compares the answer's user with those claims. The fake API
authenticates exactly one token: the one the test wrote as the pod's token file.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import secrets
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from headscale_vault_keys.client import connect
from headscale_vault_keys.store import vault_key_store
from headscale_vault_keys.testing import DevVault

from headscale_core.config import Config
from headscale_core.protocol.keys import public_from_private
from headscale_core.providers import KeyStoreError
from headscale_core.testing.inprocess import test_config as make_test_config
from headscale_core.testing.netns import free_loopback_port

NAMESPACE = "headscale"
SERVICE_ACCOUNT = "headscale-server"
ROLE = "headscale"
AUDIENCE = "openbao"
REVIEWER_JWT = "reviewer-" + secrets.token_hex(8)
KEYS_POLICY = """
path "secret/data/headscale/keys/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/headscale/keys/*" { capabilities = ["read"] }
"""
REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def service_account_jwt(namespace: str, name: str, uid: str) -> str:
    """A projected service account token as the kubelet writes it: RS256, the ``kubernetes.io``
    claim and the legacy ``kubernetes.io/serviceaccount/*`` claims. The signature is random
    bytes: OpenBao checks no signature without ``pem_keys``; the TokenReview decides."""
    now = int(time.time())
    header = {"alg": "RS256", "kid": "test-" + secrets.token_hex(4), "typ": "JWT"}
    claims = {
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "aud": [AUDIENCE],
        "iat": now, "nbf": now, "exp": now + 3600,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid},
                          "pod": {"name": f"{name}-0", "uid": str(uuid.uuid4())}},
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": uid,
    }
    parts = [json.dumps(header).encode(), json.dumps(claims).encode(), secrets.token_bytes(256)]
    return ".".join(_b64(part) for part in parts)


def api_server_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA, as OpenBao's ``kubernetes_ca_cert``)
    and its key, as PEM files in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "apiserver.crt", directory / "apiserver.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class FakeKubernetesApi:
    """The TokenReview API of a cluster that knows one service account token."""

    url: str
    ca_pem: str
    valid_jwt: str
    uid: str
    reviews: list[dict[str, Any]] = field(default_factory=list)


API_KEY = web.AppKey("api", FakeKubernetesApi)


async def _token_review(request: web.Request) -> web.Response:
    api = request.app[API_KEY]
    body = await request.json()
    api.reviews.append({"authorization": request.headers.get("Authorization", ""), "body": body})
    if request.headers.get("Authorization") != f"Bearer {REVIEWER_JWT}":
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "message": "Unauthorized", "reason": "Unauthorized", "code": 401}, status=401)
    spec = body.get("spec", {})
    status: dict[str, Any] = {"authenticated": False, "user": {}}
    if spec.get("token") == api.valid_jwt:
        status = {"authenticated": True, "audiences": spec.get("audiences") or [AUDIENCE],
                  "user": {"username": f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}", "uid": api.uid,
                           "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}",
                                      "system:authenticated"]}}
    return web.json_response({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                              "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}, status=201)


@pytest.fixture
async def kube_api(tmp_path: Path) -> AsyncIterator[FakeKubernetesApi]:
    uid = str(uuid.uuid4())
    port = free_loopback_port(20000, 32000)
    cert_path, key_path = api_server_certificate(tmp_path / "apiserver")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_path, key_path)
    api = FakeKubernetesApi(f"https://127.0.0.1:{port}", cert_path.read_text(),
                            service_account_jwt(NAMESPACE, SERVICE_ACCOUNT, uid), uid)
    app = web.Application()
    app[API_KEY] = api
    app.router.add_post(REVIEW_PATH, _token_review)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    yield api
    await runner.cleanup()


def enable_kubernetes_auth(vault: DevVault, api: FakeKubernetesApi) -> None:
    """``bao auth enable kubernetes``, pointed at the fake API, and a role for the service account."""
    root = vault.client()
    root.sys.enable_auth_method("kubernetes")
    root.auth.kubernetes.configure(kubernetes_host=api.url, kubernetes_ca_cert=api.ca_pem,
                                   token_reviewer_jwt=REVIEWER_JWT, disable_local_ca_jwt=True)
    root.sys.create_or_update_policy(name="headscale-keys", policy=KEYS_POLICY)
    root.auth.kubernetes.create_role(name=ROLE, bound_service_account_names=[SERVICE_ACCOUNT],
                                     bound_service_account_namespaces=[NAMESPACE], policies=["headscale-keys"],
                                     audience=AUDIENCE, ttl="10m")


def kube_config(data_dir: Path, vault: DevVault, jwt_path: Path, role: str = ROLE) -> Config:
    # token="" drops the dev root token of vault.section(): the Kubernetes login is the only one.
    return make_test_config(data_dir, keys={"store": "vault"},
                            vault=vault.section(token="", kubernetes={"role": role, "jwt_path": str(jwt_path)}))


def stored(vault: DevVault, name: str) -> dict[str, Any]:
    return dict(vault.client().secrets.kv.v2.read_secret_version(
        path=f"headscale/keys/{name}", mount_point="secret", raise_on_deleted_version=True)["data"]["data"])


async def test_kubernetes_login_creates_and_reads_back_the_keys(tmp_path: Path, vault: DevVault,
                                                                kube_api: FakeKubernetesApi) -> None:
    await asyncio.to_thread(enable_kubernetes_auth, vault, kube_api)
    jwt_path = tmp_path / "serviceaccount" / "token"
    jwt_path.parent.mkdir()
    jwt_path.write_text(kube_api.valid_jwt + "\n")
    config = kube_config(tmp_path / "data", vault, jwt_path)

    first = vault_key_store(config)
    noise, derp = await first.load_or_create("noise"), await first.load_or_create("derp")
    await first.aclose()
    assert len(noise) == 32 and noise != derp
    assert stored(vault, "noise")["private_key"] == "privkey:" + noise.hex()
    assert stored(vault, "derp")["public_key"] == public_from_private(derp).hex()

    again = vault_key_store(config)  # a restart: a fresh login, the same keys
    assert await again.load_or_create("noise") == noise
    assert await again.load_or_create("derp") == derp
    await again.aclose()

    # Every login went through the fake API: the reviewer JWT as bearer, the pod's token under review.
    assert kube_api.reviews, "OpenBao never asked the Kubernetes API"
    for review in kube_api.reviews:
        assert review["authorization"] == f"Bearer {REVIEWER_JWT}"
        assert review["body"]["spec"]["token"] == kube_api.valid_jwt
        assert review["body"]["spec"].get("audiences") == [AUDIENCE]
    # Each store connects once per key that it has not cached: four logins here.
    assert len(kube_api.reviews) == 4


async def test_the_login_token_can_only_do_what_its_role_allows(tmp_path: Path, vault: DevVault,
                                                                kube_api: FakeKubernetesApi) -> None:
    await asyncio.to_thread(enable_kubernetes_auth, vault, kube_api)
    jwt_path = tmp_path / "token"
    jwt_path.write_text(kube_api.valid_jwt)
    section = kube_config(tmp_path / "data", vault, jwt_path).sections["vault"]
    client = await asyncio.to_thread(connect, section)  # the very login the store uses
    lookup = (await asyncio.to_thread(client.auth.token.lookup_self))["data"]
    assert sorted(lookup["policies"]) == ["default", "headscale-keys"]
    assert lookup["meta"]["service_account_name"] == SERVICE_ACCOUNT
    assert lookup["meta"]["service_account_namespace"] == NAMESPACE
    assert lookup["meta"]["service_account_uid"] == kube_api.uid


async def test_a_token_the_kubernetes_api_refuses_fails_with_one_line(tmp_path: Path, vault: DevVault,
                                                                      kube_api: FakeKubernetesApi) -> None:
    await asyncio.to_thread(enable_kubernetes_auth, vault, kube_api)
    # Claims OpenBao accepts (the bound name and namespace), but a token the cluster does not know:
    # a deleted or recreated service account, or a token from another cluster.
    jwt_path = tmp_path / "token"
    jwt_path.write_text(service_account_jwt(NAMESPACE, SERVICE_ACCOUNT, kube_api.uid))
    store = vault_key_store(kube_config(tmp_path / "data", vault, jwt_path))
    with pytest.raises(KeyStoreError) as caught:
        await store.load_or_create("noise")
    message = str(caught.value)
    assert "\n" not in message
    # OpenBao answers a refused Kubernetes login with 403 "permission denied" (the TokenReview's
    # reason stays in its log): a refused login, not a token's policy, since there is no token yet.
    assert message == (f"cannot log in to Vault with kubernetes: Vault at {vault.address} refused the login "
                       "(permission denied): check vault.kubernetes.role (its bound service account names and "
                       "namespaces) and that the Kubernetes API accepts the token in vault.kubernetes.jwt_path")
    assert len(kube_api.reviews) == 1 and kube_api.reviews[0]["body"]["spec"]["token"] != kube_api.valid_jwt
    assert not (tmp_path / "data" / "vault-keys.json").exists()
    assert not (tmp_path / "data" / "noise_private.key").exists()


async def test_a_service_account_outside_the_role_is_refused_before_any_review(
        tmp_path: Path, vault: DevVault, kube_api: FakeKubernetesApi) -> None:
    await asyncio.to_thread(enable_kubernetes_auth, vault, kube_api)
    jwt_path = tmp_path / "token"
    jwt_path.write_text(service_account_jwt("default", "intruder", str(uuid.uuid4())))
    with pytest.raises(KeyStoreError, match=r"^cannot log in to Vault with kubernetes: Vault at .* refused the login "
                       r"\(service account name not authorized\): check vault\.kubernetes\.role \(its bound"):
        await vault_key_store(kube_config(tmp_path / "data", vault, jwt_path)).load_or_create("noise")
    assert kube_api.reviews == []


async def test_a_missing_token_file_is_named(tmp_path: Path, vault: DevVault, kube_api: FakeKubernetesApi) -> None:
    await asyncio.to_thread(enable_kubernetes_auth, vault, kube_api)
    missing = tmp_path / "no-such-token"
    with pytest.raises(KeyStoreError, match=rf"^cannot read vault\.kubernetes\.jwt_path {missing}: No such file"):
        await vault_key_store(kube_config(tmp_path / "data", vault, missing)).load_or_create("noise")
    assert kube_api.reviews == []
