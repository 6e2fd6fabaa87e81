"""Bearer JWT authentication and the caller's tenant scope.

Production: OIDC, RS256 tokens verified against the issuer's JWKS. Dev: HS256 tokens signed
with ``BIZ_AUTH_DEV_SECRET`` (``bizosaas token`` mints them, in dev mode only).

Claims: ``sub``, ``tenant_id``, ``roles`` and, for partners, ``tenants`` (the tenants they
manage); ``act`` ({"sub": ...}) when an admin acts as someone else (impersonation).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import jwt
import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from workers.settings import Settings

Role = Literal["super_admin", "admin", "finance", "support", "partner", "client"]
ROLES: tuple[str, ...] = ("super_admin", "admin", "finance", "support", "partner", "client")
ADMIN_ROLES = frozenset({"super_admin", "admin"})
# Platform staff see every tenant; partners see the tenants they manage; clients their own.
PLATFORM_ROLES = frozenset({"super_admin", "admin", "finance", "support"})
DEV_ISSUER = "bizosaas-dev"
AUDIENCE = "bizosaas"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    sub: str
    tenant_id: str | None
    roles: frozenset[str]
    tenants: frozenset[str] = frozenset()
    acting_as: str | None = None  # the impersonating admin (`act.sub`), recorded with decisions

    @property
    def is_platform(self) -> bool:
        return bool(self.roles & PLATFORM_ROLES)

    def can_see_tenant(self, tenant_id: str | None) -> bool:
        if tenant_id is None:
            return self.is_platform
        if self.is_platform:
            return True
        return tenant_id == self.tenant_id or tenant_id in self.tenants

    def has_any_role(self, roles: frozenset[str] | set[str] | tuple[str, ...]) -> bool:
        return bool(self.roles & set(roles))


def mint_dev_token(
    settings: Settings,
    *,
    sub: str,
    roles: list[str] | tuple[str, ...],
    tenant_id: str | None = None,
    tenants: list[str] | tuple[str, ...] = (),
    act: str | None = None,
    ttl_seconds: int | None = None,
) -> str:
    """An HS256 token for dev mode; refuses outside it."""
    if settings.environment != "dev" or settings.auth.mode != "dev":
        raise PermissionError("dev tokens can only be minted in dev mode (BIZ_ENVIRONMENT=dev, BIZ_AUTH_MODE=dev)")
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}; known: {', '.join(ROLES)}")
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": DEV_ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "roles": list(roles),
        "iat": now,
        "exp": now + (ttl_seconds or settings.auth.token_ttl_hours * 3600),
    }
    if tenant_id:
        claims["tenant_id"] = tenant_id
    if tenants:
        claims["tenants"] = list(tenants)
    if act:
        claims["act"] = {"sub": act}
    return jwt.encode(claims, settings.auth.dev_secret.get_secret_value(), algorithm="HS256")


class TokenVerifier:
    """Verifies bearer tokens per the auth mode; JWKS keys are fetched and cached by PyJWT."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._jwks: jwt.PyJWKClient | None = None
        if settings.auth.mode == "oidc":
            if not settings.auth.oidc_jwks_url:
                raise ValueError("BIZ_AUTH_OIDC_JWKS_URL is required when BIZ_AUTH_MODE=oidc")
            self._jwks = jwt.PyJWKClient(settings.auth.oidc_jwks_url, cache_keys=True, lifespan=300)

    async def verify(self, token: str) -> Principal:
        a = self._settings.auth
        try:
            if self._jwks is not None:
                key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
                claims = jwt.decode(
                    token, key.key, algorithms=["RS256"], audience=a.oidc_audience,
                    issuer=a.oidc_issuer, options={"verify_aud": a.oidc_audience is not None},
                )
            else:
                claims = jwt.decode(
                    token, a.dev_secret.get_secret_value(), algorithms=["HS256"],
                    audience=AUDIENCE, issuer=DEV_ISSUER,
                )
        except (jwt.PyJWTError, ValueError) as exc:
            raise NotAuthorizedException(f"invalid bearer token: {exc.__class__.__name__}") from None
        roles = claims.get("roles") or []
        if isinstance(roles, str):
            roles = [roles]
        act = claims.get("act")
        return Principal(
            sub=str(claims.get("sub") or ""),
            tenant_id=claims.get("tenant_id"),
            roles=frozenset(r for r in roles if r in ROLES),
            tenants=frozenset(claims.get("tenants") or ()),
            acting_as=act.get("sub") if isinstance(act, dict) else None,
        )


class BearerAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException("missing bearer token")
        verifier: TokenVerifier = connection.app.state.token_verifier
        principal = await verifier.verify(token.strip())
        return AuthenticationResult(user=principal, auth=token)


def role_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Routes name the roles that may call them in ``opt={"roles": {...}}``."""
    roles = handler.opt.get("roles")
    if roles and not connection.user.has_any_role(roles):
        raise PermissionDeniedException(f"requires one of the roles: {', '.join(sorted(roles))}")
