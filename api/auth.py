"""Bearer JWT authentication and the caller's tenant scope.

Production: OIDC, RS256 tokens verified against the issuer's JWKS, for the configured audience.
Dev: HS256 tokens signed with ``BIZ_AUTH_DEV_SECRET`` (``bizosaas token`` mints them, in dev
mode only). The API refuses to start with dev auth unless ``BIZ_ENVIRONMENT=dev`` was said, with
no dev secret, and with a published or short one on a non-loopback bind.

Claims: ``sub``, ``iat``, ``exp``, ``tenant_id``, ``roles`` and, for partners only, ``tenants``
(the tenants they manage); ``act`` ({"sub": ...}) when an admin acts as someone else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any, Literal

import jwt
import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, ServiceUnavailableException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from core.settings import MIN_DEV_SECRET_LENGTH, PUBLISHED_DEV_SECRETS, ConfigError, Settings

Role = Literal["super_admin", "admin", "finance", "support", "partner", "client"]
ROLES: tuple[str, ...] = ("super_admin", "admin", "finance", "support", "partner", "client")
ADMIN_ROLES = frozenset({"super_admin", "admin"})
# Platform staff see every tenant; partners see the tenants they manage; clients their own.
PLATFORM_ROLES = frozenset({"super_admin", "admin", "finance", "support"})
log = logging.getLogger(__name__)

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
    """An HS256 token for dev mode; refuses outside it (dev said explicitly, with a dev secret)."""
    if settings.environment != "dev" or settings.auth.mode != "dev":
        raise PermissionError("dev tokens can only be minted in dev mode (BIZ_ENVIRONMENT=dev, BIZ_AUTH_MODE=dev)")
    secret = _dev_secret(settings)
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
    return jwt.encode(claims, secret, algorithm="HS256")


def _dev_secret(settings: Settings) -> str:
    secret = settings.auth.dev_secret.get_secret_value() if settings.auth.dev_secret is not None else ""
    if not secret:
        raise PermissionError(
            "BIZ_AUTH_DEV_SECRET is not set (`bizosaas dev` keeps one in its state dir, BIZ_DEV_STATE_DIR)"
        )
    return secret


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


# JWKS: the key set is cached this long, so a key the provider retires stops being accepted
# within it. A token with an unknown `kid` forces a refetch at most once per cooldown: a key the
# provider starts signing with is picked up within seconds, and made-up kids cannot turn every
# request into a call to the provider. (PyJWT's own per-kid cache never expires, so it is off.)
JWKS_CACHE_SECONDS = 300.0
JWKS_REFRESH_COOLDOWN_SECONDS = 5.0
JWKS_TIMEOUT_SECONDS = 5.0
OIDC_ALGORITHM = "RS256"
DEV_ALGORITHM = "HS256"
# Clocks of the identity provider and the API drift apart a little (`iat`, `exp`, `nbf`).
CLOCK_SKEW_SECONDS = 30
# Present in every token; `iss` and `aud` are required by passing the expected values.
REQUIRED_CLAIMS = ["exp", "iat", "sub"]
# Verified tokens: a client sends the same token with every request, so the principal it
# verified to is kept (keyed by the exact token string, signature included) for at most this
# long, never past the token's `exp`, and in OIDC mode never longer than the JWKS cache (a key
# the provider retires stops being accepted as before). Only tokens that verified are kept;
# at most TOKEN_CACHE_SIZE of them (expired ones dropped first, then all).
TOKEN_CACHE_SECONDS = 60.0
TOKEN_CACHE_SIZE = 10_000


class TokenVerifier:
    """Verifies bearer tokens per the auth mode: OIDC RS256 against the issuer's JWKS, or dev
    HS256 with the dev secret (only with ``BIZ_ENVIRONMENT=dev``). A bad token is a 401 that
    names the kind of failure, never the token; an unreachable JWKS is a 503."""

    def __init__(self, settings: Settings) -> None:
        a = settings.auth
        self._settings = settings
        self._jwks: jwt.PyJWKClient | None = None
        self._verified: dict[str, tuple[Principal, float]] = {}  # token -> (principal, monotonic deadline)
        environment = settings.require_environment()
        if a.mode == "oidc":
            for value, name in ((a.oidc_jwks_url, "JWKS_URL"), (a.oidc_issuer, "ISSUER"), (a.oidc_audience, "AUDIENCE")):
                if not value:
                    raise ConfigError(f"BIZ_AUTH_OIDC_{name} is required when BIZ_AUTH_MODE=oidc")
            self._jwks = jwt.PyJWKClient(
                a.oidc_jwks_url, cache_keys=False, lifespan=JWKS_CACHE_SECONDS,
                cooldown_duration=JWKS_REFRESH_COOLDOWN_SECONDS, timeout=JWKS_TIMEOUT_SECONDS,
            )
            return
        if environment != "dev":
            # Dev tokens are minted by anyone holding the dev secret, with any role.
            raise ConfigError(
                f"BIZ_AUTH_MODE=dev is refused with BIZ_ENVIRONMENT={environment}; "
                "set BIZ_AUTH_MODE=oidc and the BIZ_AUTH_OIDC_* settings"
            )
        secret = a.dev_secret.get_secret_value() if a.dev_secret is not None else ""
        if not secret:
            raise ConfigError(
                "BIZ_AUTH_DEV_SECRET is not set: dev auth needs a secret of its own "
                "(`bizosaas dev` keeps a random one in its state dir)"
            )
        host = settings.api.host
        if not is_loopback(host) and (secret in PUBLISHED_DEV_SECRETS or len(secret) < MIN_DEV_SECRET_LENGTH):
            raise ConfigError(
                f"BIZ_AUTH_DEV_SECRET is published or shorter than {MIN_DEV_SECRET_LENGTH} characters: refused "
                f"with the API listening on {host}, beyond this machine; set a random one (or BIZ_API_HOST=127.0.0.1)"
            )

    async def verify(self, token: str) -> Principal:
        now = time.monotonic()
        cached = self._verified.get(token)
        if cached is not None:
            if now < cached[1]:
                return cached[0]
            del self._verified[token]
        principal, exp = await self._verify(token)
        # Until the token expires (the wall clock's `exp` as a monotonic deadline), at most the cache's time.
        ttl = min(TOKEN_CACHE_SECONDS, JWKS_CACHE_SECONDS if self._jwks is not None else TOKEN_CACHE_SECONDS,
                  exp - time.time())
        if ttl > 0:
            if len(self._verified) >= TOKEN_CACHE_SIZE:
                self._verified = {t: v for t, v in self._verified.items() if now < v[1]}
                if len(self._verified) >= TOKEN_CACHE_SIZE:
                    self._verified.clear()
            self._verified[token] = (principal, now + ttl)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        """The principal of a token that verifies, and its `exp` (Unix seconds)."""
        a = self._settings.auth
        try:
            if self._jwks is not None:
                header = jwt.get_unverified_header(token)
                kid = header.get("kid")
                # Refuse other algorithms (none, HS256 keyed with anything) before any key lookup.
                if header.get("alg") != OIDC_ALGORITHM or not isinstance(kid, str) or not kid:
                    raise jwt.InvalidAlgorithmError("not an RS256 token with a kid")
                try:
                    key = await asyncio.to_thread(self._jwks.get_signing_key, kid)
                except jwt.PyJWKClientConnectionError:
                    # The provider is down: not the caller's fault, and no reason to log in again.
                    log.warning("OIDC JWKS unreachable at %s", a.oidc_jwks_url)
                    raise ServiceUnavailableException("the identity provider's keys are unavailable") from None
                claims = jwt.decode(
                    token, key.key, algorithms=[OIDC_ALGORITHM], audience=a.oidc_audience,
                    issuer=a.oidc_issuer, leeway=CLOCK_SKEW_SECONDS, options={"require": REQUIRED_CLAIMS},
                )
            else:
                claims = jwt.decode(
                    token, _dev_secret(self._settings), algorithms=[DEV_ALGORITHM],
                    audience=AUDIENCE, issuer=DEV_ISSUER, leeway=CLOCK_SKEW_SECONDS,
                    options={"require": REQUIRED_CLAIMS},
                )
            return _principal(claims), float(claims["exp"])
        except (jwt.PyJWTError, ValueError) as exc:
            raise NotAuthorizedException(f"invalid bearer token: {exc.__class__.__name__}") from None


def _strings(value: Any, claim: str) -> tuple[str, ...]:
    """A claim holding one string or a list of strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"malformed {claim!r} claim")


def _principal(claims: dict[str, Any]) -> Principal:
    """The caller, from verified claims. Malformed claims are refused (ValueError) rather than
    guessed at; role names this platform does not know are ignored (the provider may carry
    other applications' roles)."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise ValueError("malformed 'sub' claim")
    tenant_id = claims.get("tenant_id")
    if tenant_id is not None and not isinstance(tenant_id, str):
        raise ValueError("malformed 'tenant_id' claim")
    act = claims.get("act")
    acting_as = None
    if act is not None:
        # RFC 8693: {"sub": current actor, "act": {...earlier actors}}.
        if not isinstance(act, dict) or not isinstance(act.get("sub"), str) or not act["sub"]:
            raise ValueError("malformed 'act' claim")
        acting_as = act["sub"]
    roles = frozenset(r for r in _strings(claims.get("roles"), "roles") if r in ROLES)
    tenants = frozenset(t for t in _strings(claims.get("tenants"), "tenants") if t)
    return Principal(
        sub=sub,
        tenant_id=tenant_id or None,
        roles=roles,
        # Only partners manage other tenants; everyone else's scope is their tenant or their role.
        tenants=tenants if "partner" in roles else frozenset(),
        acting_as=acting_as,
    )


class BearerAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException("missing bearer token")
        verifier: TokenVerifier = connection.app.state.token_verifier
        principal = await verifier.verify(token.strip())
        # The route's roles are checked here, with the token: a Litestar guard would copy the
        # route handler on every request.
        _require_roles(principal, connection.route_handler)
        return AuthenticationResult(user=principal, auth=token)


def _require_roles(principal: Principal, handler: BaseRouteHandler) -> None:
    """Routes name the roles that may call them in ``opt={"roles": {...}}``; 403 otherwise."""
    roles = handler.opt.get("roles")
    if roles and not principal.has_any_role(roles):
        raise PermissionDeniedException(f"requires one of the roles: {', '.join(sorted(roles))}")


async def role_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """The same check as a guard, for an app whose routes are not all behind
    :class:`BearerAuthMiddleware` (which checks the roles itself)."""
    _require_roles(connection.user, handler)
