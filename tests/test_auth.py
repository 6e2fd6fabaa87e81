"""Authentication over real HTTP: OIDC RS256 against a JWKS served on loopback, dev HS256,
roles, partner scope, the acting-as claim and `bizosaas token`.

No token 401, wrong role 403, another tenant's object 404.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from litestar.exceptions import NotAuthorizedException
from pydantic import SecretStr
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_202_ACCEPTED,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

import api.auth
from api.app import create_app
from api.auth import AUDIENCE, DEV_ISSUER, ROLES, TokenVerifier, mint_dev_token
from tests.conftest import ROOT, Tokens, assert_eventually, dev_settings, free_port, serve, unique
from workers.dev import DEV_SECRET_FILE, dev_credentials
from core.settings import PUBLISHED_DEV_SECRETS, ConfigError, Settings
from core.names import CAPABILITY, TENANT_ID, workflow_id

ISSUER = "https://auth.test/application/o/bizosaas/"
OIDC_AUDIENCE = "bizosaas-api"


# --- helpers -----------------------------------------------------------------------------

def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any], **header: Any) -> str:
    """An `alg: none` token (PyJWT will not make one)."""
    return f"{_b64({'alg': 'none', 'typ': 'JWT', **header})}.{_b64(claims)}."


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _dev_secret(settings: Settings) -> str:
    return settings.auth.dev_secret.get_secret_value()


def _dev_token(settings: Settings, **claims: Any) -> str:
    """A dev-mode token with arbitrary claims (mint_dev_token refuses unknown roles)."""
    now = int(time.time())
    base = {"iss": DEV_ISSUER, "aud": AUDIENCE, "sub": "someone@x", "iat": now, "exp": now + 300}
    return jwt.encode({**base, **claims}, _dev_secret(settings), algorithm="HS256")


def _with_auth(settings: Settings, **auth: Any) -> Settings:
    return settings.model_copy(update={"auth": settings.auth.model_copy(update=auth)})


class Jwks:
    """An identity provider's JWKS endpoint on loopback; a test adds and removes keys."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0

    def add(self, kid: str) -> rsa.RSAPrivateKey:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.keys[kid]

    def sign(self, claims: dict[str, Any], kid: str, key: rsa.RSAPrivateKey | None = None) -> str:
        return jwt.encode(claims, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def document(self) -> dict[str, Any]:
        return {
            "keys": [
                {**json.loads(RSAAlgorithm.to_jwk(k.public_key())), "kid": kid, "use": "sig", "alg": "RS256"}
                for kid, k in self.keys.items()
            ]
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": f"{message['type']}.complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        self.fetches += 1
        body = json.dumps(self.document()).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def _claims(**over: Any) -> dict[str, Any]:
    """OIDC claims of a client of `tenant_id`; None drops a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER, "aud": OIDC_AUDIENCE, "sub": "owner@acme", "tenant_id": "acme",
        "roles": ["client"], "iat": now, "exp": now + 300,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@dataclass
class Oidc:
    jwks: Jwks
    api: httpx.AsyncClient
    settings: Settings


@pytest_asyncio.fixture
async def oidc(settings: Settings) -> AsyncIterator[Oidc]:
    """The real app in OIDC mode, trusting a JWKS served on loopback (one key, kid `k1`)."""
    jwks = Jwks()
    jwks.add("k1")
    async with serve(jwks) as jwks_url:
        s = _with_auth(
            settings, mode="oidc", oidc_issuer=ISSUER, oidc_audience=OIDC_AUDIENCE,
            oidc_jwks_url=f"{jwks_url}/application/o/bizosaas/jwks/",
        )
        async with serve(create_app(s)) as url, httpx.AsyncClient(base_url=url, timeout=10) as api_client:
            yield Oidc(jwks=jwks, api=api_client, settings=s)


@pytest_asyncio.fixture(scope="module")
async def dev_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app in dev mode (HS256), served once for this module."""
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
        yield c


def _onboarding(tenant: str) -> dict[str, str]:
    return {"tenant_id": tenant, "name": f"{tenant} Ltd", "owner_email": f"owner@{tenant}.example"}


def _assert_401_without_secrets(r: httpx.Response, token: str, *secrets: str) -> None:
    assert r.status_code == HTTP_401_UNAUTHORIZED, r.text
    assert token not in r.text
    # Not even the signature or the payload part of it.
    for part in token.split("."):
        if len(part) > 8:
            assert part not in r.text
    for secret in secrets:
        assert secret not in r.text


# --- 1. OIDC -----------------------------------------------------------------------------

async def test_oidc_accepts_a_valid_rs256_token(oidc: Oidc) -> None:
    tenant = unique("oidc")
    r = await oidc.api.get("/v1/outbox", params={"tenant_id": tenant},
                           headers=_bearer(oidc.jwks.sign(_claims(tenant_id=tenant), "k1")))
    assert r.status_code == HTTP_200_OK, r.text
    assert r.json() == {"items": [], "next_before_id": None}
    # The same client may not look at another tenant: 404, as if it did not exist.
    r = await oidc.api.get("/v1/outbox", params={"tenant_id": unique("other")},
                           headers=_bearer(oidc.jwks.sign(_claims(tenant_id=tenant), "k1")))
    assert r.status_code == HTTP_404_NOT_FOUND


async def test_oidc_rejects_forged_expired_and_misaddressed_tokens(oidc: Oidc, settings: Settings) -> None:
    jwks, now = oidc.jwks, int(time.time())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dev_secret = _dev_secret(settings)
    admin = _claims(roles=["admin"], tenant_id=None)
    bad = {
        "wrong issuer": jwks.sign(_claims(iss="https://evil.test/"), "k1"),
        "no issuer": jwks.sign(_claims(iss=None), "k1"),
        "wrong audience": jwks.sign(_claims(aud="another-app"), "k1"),
        "no audience": jwks.sign(_claims(aud=None), "k1"),
        "expired": jwks.sign(_claims(iat=now - 3600, exp=now - 60), "k1"),
        "no issued-at": jwks.sign(_claims(iat=None), "k1"),
        "issued in the future": jwks.sign(_claims(iat=now + 3600, exp=now + 7200), "k1"),
        "never expires": jwks.sign(_claims(exp=None), "k1"),
        "no subject": jwks.sign(_claims(sub=None), "k1"),
        "another key, known kid": jwks.sign(admin, "k1", key=stranger),
        "another key, unknown kid": jwks.sign(admin, "stranger", key=stranger),
        "another key, no kid": jwt.encode(admin, stranger, algorithm="RS256"),
        # Algorithm confusion: HS256 with the dev secret, and HS256 keyed with the public key.
        "HS256 dev secret": jwt.encode(admin, dev_secret, algorithm="HS256"),
        "HS256 dev secret, known kid": jwt.encode(admin, dev_secret, algorithm="HS256", headers={"kid": "k1"}),
        "dev token": mint_dev_token(settings, sub="admin@bizosaas", roles=["admin"]),
        "alg none": _unsigned(admin),
        "alg none, known kid": _unsigned(admin, kid="k1"),
        "garbage": "not-a-jwt",
    }
    for case, token in bad.items():
        r = await oidc.api.get("/v1/outbox", headers=_bearer(token))
        assert r.status_code == HTTP_401_UNAUTHORIZED, (case, r.status_code, r.text)
        _assert_401_without_secrets(r, token, dev_secret)
    # The one good token still works after all that.
    r = await oidc.api.get("/v1/outbox", headers=_bearer(jwks.sign(admin, "k1")))
    assert r.status_code == HTTP_200_OK, r.text


async def test_oidc_hs256_signed_with_the_public_key_is_rejected(oidc: Oidc) -> None:
    """The classic confusion: the RSA public key (PEM) used as an HMAC secret."""
    pem = oidc.jwks.keys["k1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = _b64({"alg": "HS256", "typ": "JWT", "kid": "k1"}) + "." + _b64(_claims(roles=["admin"], tenant_id=None))
    sig = base64.urlsafe_b64encode(hmac.new(pem, claims.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    r = await oidc.api.get("/v1/outbox", headers=_bearer(f"{claims}.{sig}"))
    assert r.status_code == HTTP_401_UNAUTHORIZED


async def test_oidc_key_rotation(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new key published later is picked up; a retired key stops working; unknown kids do
    not make the API hammer the identity provider."""
    cooldown = 0.5
    monkeypatch.setattr(api.auth, "JWKS_CACHE_SECONDS", 1.0)
    monkeypatch.setattr(api.auth, "JWKS_REFRESH_COOLDOWN_SECONDS", cooldown)
    jwks = Jwks()
    jwks.add("k1")
    async with serve(jwks) as jwks_url:
        s = _with_auth(settings, mode="oidc", oidc_issuer=ISSUER, oidc_audience=OIDC_AUDIENCE, oidc_jwks_url=jwks_url)
        async with serve(create_app(s)) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            old = jwks.sign(_claims(), "k1")
            assert (await c.get("/v1/outbox", headers=_bearer(old))).status_code == HTTP_200_OK

            # Unknown kids: at most one forced refetch within the cooldown, not one per request.
            spoof_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            spoofs = [jwks.sign(_claims(), f"nope-{i}", key=spoof_key) for i in range(20)]
            fetches, started = jwks.fetches, time.monotonic()
            for token in spoofs:
                assert (await c.get("/v1/outbox", headers=_bearer(token))).status_code == HTTP_401_UNAUTHORIZED
            assert jwks.fetches - fetches <= 1 + (time.monotonic() - started) / cooldown < len(spoofs)

            # The provider publishes a new key and signs with it: accepted once the JWKS is refetched.
            jwks.add("k2")
            new = jwks.sign(_claims(), "k2")

            async def new_key_accepted() -> None:
                r = await c.get("/v1/outbox", headers=_bearer(new))
                assert r.status_code == HTTP_200_OK, r.text

            await assert_eventually(new_key_accepted, timeout=5, interval=0.1)

            # The provider retires the old key: its tokens stop working once the cache expires.
            del jwks.keys["k1"]

            async def old_key_refused() -> None:
                r = await c.get("/v1/outbox", headers=_bearer(old))
                assert r.status_code == HTTP_401_UNAUTHORIZED, r.text

            await assert_eventually(old_key_refused, timeout=5, interval=0.1)
            assert (await c.get("/v1/outbox", headers=_bearer(new))).status_code == HTTP_200_OK


async def test_oidc_provider_down_is_503_not_401(settings: Settings) -> None:
    """Unreachable JWKS: the caller's token is not at fault, so no 401 (which sends it to log in again)."""
    s = _with_auth(settings, mode="oidc", oidc_issuer=ISSUER, oidc_audience=OIDC_AUDIENCE,
                   oidc_jwks_url=f"http://127.0.0.1:{free_port()}/jwks")
    token = Jwks().sign(_claims(), "k1", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    async with serve(create_app(s)) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.get("/v1/outbox", headers=_bearer(token))
        assert r.status_code == HTTP_503_SERVICE_UNAVAILABLE, r.text
        assert token not in r.text
        # A token that is not even RS256 is refused without asking the provider.
        r = await c.get("/v1/outbox", headers=_bearer(_dev_token(settings, roles=["admin"])))
        assert r.status_code == HTTP_401_UNAUTHORIZED


def test_oidc_mode_needs_issuer_audience_and_jwks_url(settings: Settings) -> None:
    full = {"mode": "oidc", "oidc_issuer": ISSUER, "oidc_audience": OIDC_AUDIENCE, "oidc_jwks_url": "http://127.0.0.1:1/jwks"}
    for missing, name in (("oidc_jwks_url", "BIZ_AUTH_OIDC_JWKS_URL"), ("oidc_issuer", "BIZ_AUTH_OIDC_ISSUER"),
                          ("oidc_audience", "BIZ_AUTH_OIDC_AUDIENCE")):
        s = _with_auth(settings, **{**full, missing: None})
        with pytest.raises(ConfigError, match=name):
            TokenVerifier(s)
        # The API refuses to start: no audience would accept tokens minted for any other application.
        with pytest.raises(ConfigError, match=name):
            create_app(s)


async def test_oidc_tenants_claim_widens_scope_for_partners_only(oidc: Oidc, db: asyncpg.Pool) -> None:
    own, other = unique("own"), unique("other")
    await db.execute(
        "INSERT INTO outbox (idempotency_key, tenant_id, tool, arguments) VALUES ($1, $2, 'send_email', $3)",
        f"{other}:auth-test", other, {"to": f"owner@{other}.example"},
    )
    for roles in (["client"], ["finance-ish"], []):
        # A client (or a token with no role of ours) naming other tenants gets its own tenant only.
        token = oidc.jwks.sign(_claims(tenant_id=own, roles=roles, tenants=[other]), "k1")
        r = await oidc.api.get("/v1/outbox", params={"tenant_id": other}, headers=_bearer(token))
        assert r.status_code == HTTP_404_NOT_FOUND, (roles, r.text)
        r = await oidc.api.get("/v1/outbox", headers=_bearer(token))
        assert r.status_code == HTTP_200_OK and r.json()["items"] == [], (roles, r.text)
        r = await oidc.api.get("/v1/outbox", params={"tenant_id": own}, headers=_bearer(token))
        assert r.status_code == HTTP_200_OK, (roles, r.text)
    # A partner's `tenants` are the tenants it manages.
    partner = oidc.jwks.sign(_claims(sub="partner@agency", tenant_id=None, roles=["partner"], tenants=[other]), "k1")
    r = await oidc.api.get("/v1/outbox", params={"tenant_id": other}, headers=_bearer(partner))
    assert r.status_code == HTTP_200_OK, r.text
    assert [i["tenant_id"] for i in r.json()["items"]] == [other]


def test_dev_auth_needs_dev_said_explicitly_and_a_secret_of_its_own(settings: Settings) -> None:
    published = next(iter(PUBLISHED_DEV_SECRETS))
    strong = "s" * 40

    def dev(environment: str | None = "dev", secret: str | None = strong, host: str = "127.0.0.1") -> Settings:
        return settings.model_copy(update={
            "environment": environment,
            "auth": settings.auth.model_copy(update={"mode": "dev", "dev_secret": SecretStr(secret) if secret else None}),
            "api": settings.api.model_copy(update={"host": host}),
        })

    refused = {
        "nothing said": (dev(environment=None), "BIZ_ENVIRONMENT is not set"),
        "no dev secret": (dev(secret=None), "BIZ_AUTH_DEV_SECRET is not set"),
        "published secret on 0.0.0.0": (dev(secret=published, host="0.0.0.0"), "BIZ_AUTH_DEV_SECRET is published"),
        "published secret on a LAN address": (dev(secret=published, host="10.1.2.3"), "BIZ_AUTH_DEV_SECRET"),
        "published secret on ::": (dev(secret=published, host="::"), "BIZ_AUTH_DEV_SECRET"),
        "short secret on 0.0.0.0": (dev(secret="short", host="0.0.0.0"), "shorter than 32"),
    }
    for case, (s, message) in refused.items():
        with pytest.raises(ConfigError, match=message):
            TokenVerifier(s)
        with pytest.raises(ConfigError):
            create_app(s)
    # On loopback a dev machine may use what it likes; beyond it, a strong secret of its own.
    for s in (dev(secret=published), dev(secret="short", host="localhost"), dev(host="0.0.0.0"), dev(host="::1")):
        TokenVerifier(s)
    with pytest.raises(PermissionError, match="BIZ_AUTH_DEV_SECRET"):
        mint_dev_token(dev(secret=None), sub="x", roles=["admin"])
    with pytest.raises(PermissionError, match="BIZ_ENVIRONMENT=dev"):
        mint_dev_token(dev(environment=None), sub="x", roles=["admin"])


async def test_a_token_signed_with_the_published_secret_is_refused(
    dev_api: httpx.AsyncClient, oidc: Oidc
) -> None:
    """The platform configured explicitly (dev with its own secret, or OIDC) refuses tokens
    anyone can sign with the secret earlier releases shipped as a default."""
    now = int(time.time())
    for published in PUBLISHED_DEV_SECRETS:
        token = jwt.encode({"iss": DEV_ISSUER, "aud": AUDIENCE, "sub": "mallory", "roles": ["super_admin"],
                            "iat": now, "exp": now + 300}, published, algorithm="HS256")
        for api_client in (dev_api, oidc.api):
            r = await api_client.get("/v1/outbox", headers=_bearer(token))
            _assert_401_without_secrets(r, token, published)
            r = await api_client.post("/v1/workflows/onboarding", json=_onboarding(unique("mal")), headers=_bearer(token))
            assert r.status_code == HTTP_401_UNAUTHORIZED, r.text


def test_dev_tokens_are_refused_in_production(settings: Settings) -> None:
    """An API in production with the (default, public) dev secret would accept anyone's tokens."""
    prod = settings.model_copy(update={"environment": "production"})
    with pytest.raises(ValueError, match="dev"):
        TokenVerifier(prod)
    with pytest.raises(PermissionError):
        mint_dev_token(prod, sub="x", roles=["admin"])


# --- 2. Roles ----------------------------------------------------------------------------

async def test_wrong_role_is_403(dev_api: httpx.AsyncClient, tokens: Tokens, settings: Settings) -> None:
    tenant = unique("role")
    for who in (tokens.client(tenant), tokens.partner([tenant]),
                _bearer(mint_dev_token(settings, sub="f@x", roles=["finance", "support"]))):
        r = await dev_api.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers=who)
        assert r.status_code == HTTP_403_FORBIDDEN, r.text
        assert "admin" in r.json()["detail"]


async def test_unknown_roles_are_ignored(dev_api: httpx.AsyncClient, settings: Settings) -> None:
    tenant = unique("role")
    for roles in (["owner", "root"], "root", [], ["ADMIN", "super-admin"], None):
        token = _dev_token(settings, roles=roles, tenant_id=tenant)
        r = await dev_api.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers=_bearer(token))
        assert r.status_code == HTTP_403_FORBIDDEN, (roles, r.text)
        # Unknown roles grant nothing, not even platform scope; the caller's own tenant still reads.
        r = await dev_api.get("/v1/outbox", params={"tenant_id": unique("other")}, headers=_bearer(token))
        assert r.status_code == HTTP_404_NOT_FOUND, (roles, r.text)
        r = await dev_api.get("/v1/outbox", params={"tenant_id": tenant}, headers=_bearer(token))
        assert r.status_code == HTTP_200_OK, (roles, r.text)


async def test_malformed_claims_are_401_not_500(dev_api: httpx.AsyncClient, settings: Settings) -> None:
    for claims in (
        {"roles": 42, "tenant_id": "acme"},
        {"roles": {"admin": True}, "tenant_id": "acme"},
        {"roles": [["admin"]], "tenant_id": "acme"},
        {"roles": ["admin", {"admin": True}], "tenant_id": "acme"},
        {"roles": ["client"], "tenant_id": ["acme", "other"]},
        {"roles": ["client"], "tenant_id": 7},
        {"roles": ["partner"], "tenants": [{"t": "acme"}]},
        {"roles": ["partner"], "tenants": 5},
        {"roles": ["client"], "tenant_id": "acme", "sub": ["a", "b"]},
        {"roles": ["client"], "tenant_id": "acme", "sub": ""},
        {"roles": ["client"], "tenant_id": "acme", "act": "admin@x"},
        {"roles": ["client"], "tenant_id": "acme", "act": {"sub": 5}},
    ):
        token = _dev_token(settings, **claims)
        r = await dev_api.get("/v1/outbox", headers=_bearer(token))
        assert r.status_code == HTTP_401_UNAUTHORIZED, (claims, r.status_code, r.text)


# --- 3. Partner scope --------------------------------------------------------------------

async def test_partner_sees_the_tenants_it_manages_only(
    dev_api: httpx.AsyncClient, tokens: Tokens, settings: Settings, db: asyncpg.Pool, client: Client
) -> None:
    a, b, c = unique("pa"), unique("pb"), unique("pc")
    for tenant in (a, b, c):
        await db.execute(
            "INSERT INTO outbox (idempotency_key, tenant_id, tool, arguments) VALUES ($1, $2, 'send_email', $3)",
            f"{tenant}:auth-test", tenant, {"to": f"owner@{tenant}.example"},
        )
    partner = tokens.partner([a, b])

    for tenant in (a, b):
        r = await dev_api.get("/v1/outbox", params={"tenant_id": tenant}, headers=partner)
        assert r.status_code == HTTP_200_OK, r.text
        assert [i["tenant_id"] for i in r.json()["items"]] == [tenant]
    r = await dev_api.get("/v1/outbox", params={"tenant_id": c}, headers=partner)
    assert r.status_code == HTTP_404_NOT_FOUND
    # Without a tenant: everything of a and b, nothing of anyone else.
    r = await dev_api.get("/v1/outbox", params={"limit": 200}, headers=partner)
    assert r.status_code == HTTP_200_OK
    assert {i["tenant_id"] for i in r.json()["items"]} == {a, b}

    # A `tenants` claim given as one string is one tenant, not its characters.
    one = _bearer(_dev_token(settings, sub="p@x", roles=["partner"], tenants=a))
    assert (await dev_api.get("/v1/outbox", params={"tenant_id": a}, headers=one)).status_code == HTTP_200_OK

    # Workflows: c's exists (no worker needed) and reads as 404 to the partner, like a missing one.
    queue = f"tq-{uuid.uuid4().hex}"
    handles = []
    for tenant in (a, c):
        handles.append(await client.start_workflow(
            "PresenceAudit", _onboarding(tenant), id=workflow_id(tenant, "presence-audit", tenant), task_queue=queue,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(TENANT_ID, tenant), SearchAttributePair(CAPABILITY, "presence-audit")]
            ),
        ))
    try:
        wf_a, wf_c = (h.id for h in handles)
        assert (await dev_api.get(f"/v1/workflows/{wf_c}", headers=partner)).status_code == HTTP_404_NOT_FOUND
        assert (await dev_api.post(f"/v1/workflows/{wf_c}/cancel", headers=partner)).status_code == HTTP_404_NOT_FOUND
        missing = workflow_id(a, "onboarding", unique("none"))
        assert (await dev_api.get(f"/v1/workflows/{missing}", headers=partner)).status_code == HTTP_404_NOT_FOUND
        # a's workflow is in scope and partners may cancel an audit: the partner cancels it.
        assert (await dev_api.post(f"/v1/workflows/{wf_a}/cancel", headers=partner)).status_code == HTTP_202_ACCEPTED
        assert (await dev_api.post(f"/v1/workflows/{wf_c}/cancel", headers=tokens.client(a))).status_code == HTTP_404_NOT_FOUND
    finally:
        for h in handles:
            await h.terminate("auth test done")


# --- 4. Acting as ------------------------------------------------------------------------

async def test_act_claim_becomes_acting_as(settings: Settings) -> None:
    verifier = TokenVerifier(settings)
    p = await verifier.verify(
        mint_dev_token(settings, sub="owner@acme", roles=["client"], tenant_id="acme", act="admin@bizosaas")
    )
    assert (p.sub, p.tenant_id, p.roles, p.acting_as) == ("owner@acme", "acme", frozenset({"client"}), "admin@bizosaas")
    p = await verifier.verify(mint_dev_token(settings, sub="owner@acme", roles=["client"], tenant_id="acme"))
    assert p.acting_as is None
    # Nested delegation (RFC 8693): the current actor is the outer `act`.
    p = await verifier.verify(_dev_token(settings, sub="u@acme", roles=["client"], tenant_id="acme",
                                         act={"sub": "support@bizosaas", "act": {"sub": "admin@bizosaas"}}))
    assert p.acting_as == "support@bizosaas"


async def test_a_token_verified_before_is_refused_once_it_expires(settings: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified tokens are remembered, never past their `exp`, and only the exact token is."""
    monkeypatch.setattr(api.auth, "CLOCK_SKEW_SECONDS", 0)
    verifier = TokenVerifier(settings)
    token = mint_dev_token(settings, sub="owner@acme", roles=["client"], tenant_id="acme", ttl_seconds=2)
    assert (await verifier.verify(token)).sub == "owner@acme"
    assert (await verifier.verify(token)).sub == "owner@acme"
    header, claims, _ = token.split(".")
    forged = _dev_token(settings, sub="owner@acme", roles=["admin"], tenant_id="acme")
    with pytest.raises(NotAuthorizedException):  # the claims of a remembered token, another signature
        await verifier.verify(f"{header}.{claims}.{forged.split('.')[2]}")
    await asyncio.sleep(3)
    with pytest.raises(NotAuthorizedException):
        await verifier.verify(token)


async def test_act_claim_from_oidc(oidc: Oidc) -> None:
    verifier = TokenVerifier(oidc.settings)
    p = await verifier.verify(oidc.jwks.sign(_claims(act={"sub": "admin@bizosaas"}), "k1"))
    assert (p.sub, p.acting_as) == ("owner@acme", "admin@bizosaas")
    with pytest.raises(NotAuthorizedException):
        await verifier.verify(oidc.jwks.sign(_claims(act={"sub": "admin@bizosaas"}, aud="x"), "k1"))


# --- 5. bizosaas token -------------------------------------------------------------------

async def _bizosaas(*args: str, **env: str) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BIZ_")}
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv" / "bin" / "bizosaas"), *args,
        env={**clean, **env}, cwd=os.environ.get("TMPDIR", "/tmp"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_bizosaas_token_mints_dev_tokens_only_when_dev_is_said(tmp_path: Path) -> None:
    secret = "t" * 40
    empty, made = tmp_path / "empty", tmp_path / "made"
    # What `bizosaas dev` leaves in its state dir on first run.
    state = dev_credentials(Settings(_env_file=None, environment="dev", dev={"state_dir": made}), create=True)
    assert (made / DEV_SECRET_FILE).stat().st_mode & 0o077 == 0  # owner-only
    dev = {"BIZ_ENVIRONMENT": "dev", "BIZ_AUTH_DEV_SECRET": secret, "BIZ_DEV_STATE_DIR": str(empty)}
    ok, partner, from_state, nothing, no_secret, prod, oidc_mode, unknown = await asyncio.gather(
        _bizosaas("token", "--tenant", "acme", "--role", "client", **dev),
        _bizosaas("token", "--role", "partner", "--manages", "acme", "--manages", "bolt", "--act", "admin@x", **dev),
        _bizosaas("token", "--role", "admin", BIZ_ENVIRONMENT="dev", BIZ_DEV_STATE_DIR=str(made)),
        _bizosaas("token", "--role", "super_admin", BIZ_DEV_STATE_DIR=str(made)),
        _bizosaas("token", "--role", "admin", BIZ_ENVIRONMENT="dev", BIZ_DEV_STATE_DIR=str(empty)),
        _bizosaas("token", "--tenant", "acme", "--role", "client", BIZ_ENVIRONMENT="production",
                  BIZ_AUTH_DEV_SECRET=secret),
        _bizosaas("token", "--tenant", "acme", "--role", "client", BIZ_ENVIRONMENT="dev", BIZ_AUTH_MODE="oidc",
                  BIZ_AUTH_OIDC_ISSUER=ISSUER, BIZ_AUTH_OIDC_JWKS_URL="http://127.0.0.1:1/jwks"),
        _bizosaas("token", "--tenant", "acme", "--role", "owner", **dev),
    )
    code, out, err = ok
    assert code == 0, err
    verifier = TokenVerifier(dev_settings(auth={"mode": "dev", "dev_secret": secret}))
    p = await verifier.verify(out.strip())
    assert (p.tenant_id, p.roles, p.sub) == ("acme", frozenset({"client"}), "client@acme")
    # Not accepted by a platform with another secret.
    with pytest.raises(NotAuthorizedException):
        await TokenVerifier(dev_settings()).verify(out.strip())

    code, out, err = partner
    assert code == 0, err
    p = await verifier.verify(out.strip())
    assert (p.roles, p.tenants, p.acting_as) == (frozenset({"partner"}), frozenset({"acme", "bolt"}), "admin@x")

    # With BIZ_ENVIRONMENT=dev and no secret in the environment: the one `bizosaas dev` keeps.
    code, out, err = from_state
    assert code == 0, err
    p = await TokenVerifier(state).verify(out.strip())
    assert p.roles == frozenset({"admin"})

    # Nothing said (even beside a dev state dir): refused, naming what to set.
    for code, out, err in (nothing, prod, oidc_mode):
        assert code == 2, err
        assert out == "" and "eyJ" not in err
        assert "dev mode" in err and "BIZ_ENVIRONMENT=dev" in err and "BIZ_AUTH_MODE=dev" in err
    code, out, err = no_secret
    assert code == 2 and out == "" and "BIZ_AUTH_DEV_SECRET is not set" in err, err

    code, out, err = unknown
    assert code != 0 and out == ""
    assert "owner" in err and all(role in err for role in ROLES)


async def _refused_at_start(*args: str, **env: str) -> str:
    """Runs a long-running command that must refuse to start; returns its error output."""
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv" / "bin" / "bizosaas"), *args,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("BIZ_")}, **env},
        cwd=os.environ.get("TMPDIR", "/tmp"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=45)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"`bizosaas {' '.join(args)}` started instead of refusing") from None
    assert proc.returncode == 2, (proc.returncode, err.decode())
    assert out == b""
    return err.decode()


async def test_the_api_and_workers_refuse_to_start_with_nothing_set(database_url: str, tmp_path: Path) -> None:
    """An install that sets nothing gets a clear error naming the variable, not an open API."""
    port = str(free_port())
    pg = {"BIZ_DATABASE_URL": database_url, "BIZ_DEV_STATE_DIR": str(tmp_path)}
    published = next(iter(PUBLISHED_DEV_SECRETS))
    api_nothing, worker_nothing, api_prod, worker_prod, api_oidc, api_published = await asyncio.gather(
        _refused_at_start("api", "--port", port, **pg),
        _refused_at_start("worker", **pg),
        _refused_at_start("api", "--port", port, BIZ_ENVIRONMENT="production", **pg),
        _refused_at_start("worker", BIZ_ENVIRONMENT="production", **pg),
        _refused_at_start("api", "--port", port, BIZ_ENVIRONMENT="production", BIZ_AUTH_MODE="oidc",
                          BIZ_AUTH_OIDC_ISSUER=ISSUER, BIZ_AUTH_OIDC_JWKS_URL="http://127.0.0.1:1/jwks", **pg),
        _refused_at_start("api", "--host", "0.0.0.0", "--port", port, BIZ_ENVIRONMENT="dev",
                          BIZ_AUTH_DEV_SECRET=published, **pg),
    )
    for err in (api_nothing, worker_nothing):
        assert "BIZ_ENVIRONMENT is not set" in err and "bizosaas dev" in err, err
        assert "Traceback" not in err
    assert "BIZ_AUTH_MODE=dev is refused with BIZ_ENVIRONMENT=production" in api_prod, api_prod
    assert "BIZ_CODEC_KEYS is not set" in worker_prod, worker_prod
    assert "BIZ_AUTH_OIDC_AUDIENCE is required" in api_oidc, api_oidc
    assert "BIZ_AUTH_DEV_SECRET is published" in api_published and "0.0.0.0" in api_published
    assert published not in api_published


# --- 6. No token, malformed headers ------------------------------------------------------

async def test_missing_or_malformed_authorization_is_401(dev_api: httpx.AsyncClient, tokens: Tokens) -> None:
    good = tokens.client("acme")["authorization"].split()[1]
    for headers in (
        {},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": f"Basic {good}"},
        {"authorization": good},
        {"authorization": "Bearer not.a.jwt"},
        {"authorization": "Bearer a.b"},
        {"authorization": f"Bearer {good}x"},
        {"authorization": f"Bearer {good} {good}"},
    ):
        r = await dev_api.get("/v1/outbox", headers=headers)
        assert r.status_code == HTTP_401_UNAUTHORIZED, (headers, r.status_code, r.text)
        assert good not in r.text
    r = await dev_api.post("/v1/workflows/onboarding", json=_onboarding("acme"))
    assert r.status_code == HTTP_401_UNAUTHORIZED
    # The scheme is case-insensitive; health stays public.
    assert (await dev_api.get("/v1/outbox", headers={"authorization": f"bearer {good}"})).status_code == HTTP_200_OK
    assert (await dev_api.get("/health")).status_code != HTTP_401_UNAUTHORIZED


async def test_expired_dev_token_is_401(dev_api: httpx.AsyncClient, settings: Settings) -> None:
    token = mint_dev_token(settings, sub="owner@acme", roles=["client"], tenant_id="acme", ttl_seconds=-60)
    r = await dev_api.get("/v1/outbox", headers=_bearer(token))
    _assert_401_without_secrets(r, token, _dev_secret(settings))
