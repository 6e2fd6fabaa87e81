"""The console's session: a signed, HttpOnly, SameSite=Lax cookie holding the bearer token the
person signed in with (re-verified on every request, so a session ends with its token), a CSRF
token every form sends back, and an expiry. Sign-in is a pasted dev token in dev mode, and the
OIDC authorization code flow with PKCE otherwise; its state, verifier and nonce travel in a
second short-lived signed cookie, scoped to the callback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import msgspec
from litestar import Request, Response
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from api.auth import Principal, TokenVerifier
from core.settings import Settings

SESSION_COOKIE = "biz_console"
FLOW_COOKIE = "biz_console_flow"  # before sign-in: the login form's CSRF token, the OIDC flow's state
FLOW_SECONDS = 600
CONSOLE = "/console"
CALLBACK = "/console/auth/callback"
OIDC_SCOPE = "openid profile email"
TOKEN_ENDPOINT_TIMEOUT_SECONDS = 10.0


class ConsoleNotConfigured(Exception):
    """The console cannot sign anyone in with these settings (says which to set)."""


class Session(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    csrf: str
    exp: int  # Unix seconds


class Flow(msgspec.Struct, frozen=True, kw_only=True):
    csrf: str
    exp: int
    state: str = ""
    verifier: str = ""
    nonce: str = ""
    next: str = CONSOLE


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.encode() + b"=" * (-len(text) % 4))


def session_key(settings: Settings) -> bytes:
    """``BIZ_CONSOLE_SESSION_SECRET``, else (dev mode only) derived from the dev secret."""
    secret = settings.console.session_secret
    if secret is not None and secret.get_secret_value():
        material = secret.get_secret_value()
    elif settings.auth.mode == "dev" and settings.auth.dev_secret is not None:
        material = "dev:" + settings.auth.dev_secret.get_secret_value()
    else:
        raise ConsoleNotConfigured("set BIZ_CONSOLE_SESSION_SECRET to sign the console's sessions")
    return hashlib.sha256(b"bizosaas-console-session\0" + material.encode()).digest()


def seal(key: bytes, purpose: str, value: msgspec.Struct) -> str:
    payload = msgspec.json.encode(value)
    mac = hmac.new(key, purpose.encode() + b"\0" + payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def unseal(key: bytes, purpose: str, text: str | None, kind: type[Any]) -> Any:
    """The value sealed for ``purpose``, or None when absent, forged or expired."""
    if not text or "." not in text or len(text) > 8192:
        return None
    try:
        body, mac = text.split(".", 1)
        payload = _unb64(body)
        expected = hmac.new(key, purpose.encode() + b"\0" + payload, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        value = msgspec.json.decode(payload, type=kind)
    except (ValueError, msgspec.DecodeError):
        return None
    return value if value.exp > time.time() else None


def _secure(settings: Settings) -> bool:
    return (settings.api.public_url or "").startswith("https://")


def set_session(response: Response, settings: Settings, token: str, token_exp: float) -> None:
    exp = int(min(time.time() + settings.console.session_hours * 3600, token_exp))
    value = seal(session_key(settings), "session", Session(token=token, csrf=secrets.token_urlsafe(24), exp=exp))
    response.set_cookie(SESSION_COOKIE, value, path=CONSOLE, httponly=True, samesite="lax", secure=_secure(settings),
                        max_age=max(0, exp - int(time.time())))


def clear_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=CONSOLE)


def current_session(request: Request[Any, Any, Any]) -> Session | None:
    settings: Settings = request.app.state.settings
    try:
        key = session_key(settings)
    except ConsoleNotConfigured:
        return None
    return unseal(key, "session", request.cookies.get(SESSION_COOKIE), Session)


async def signed_in(request: Request[Any, Any, Any]) -> tuple[Principal, Session]:
    """The person behind the session cookie (401, answered with the sign-in page, otherwise)."""
    session = current_session(request)
    if session is None:
        raise NotAuthorizedException("sign in to use the console")
    verifier: TokenVerifier = request.app.state.token_verifier
    principal = await verifier.verify(session.token)  # 401 when the token no longer verifies
    request.state.console_principal = principal  # for the error pages' navigation
    return principal, session


def check_csrf(session: Session | Flow | None, sent: str | None) -> None:
    if session is None or not sent or not hmac.compare_digest(session.csrf.encode(), sent.encode()):
        raise PermissionDeniedException("the form expired or did not come from this console: reload the page and try again")


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: a console path only (never another site)."""
    if value and value.startswith(CONSOLE) and not value.startswith("//") and "\\" not in value:
        return value
    return CONSOLE + "/"


def new_flow(settings: Settings, next_path: str, *, oidc: bool) -> Flow:
    return Flow(csrf=secrets.token_urlsafe(24), exp=int(time.time()) + FLOW_SECONDS, next=safe_next(next_path),
                state=secrets.token_urlsafe(24) if oidc else "", verifier=secrets.token_urlsafe(48) if oidc else "",
                nonce=secrets.token_urlsafe(24) if oidc else "")


def set_flow(response: Response, settings: Settings, flow: Flow) -> None:
    response.set_cookie(FLOW_COOKIE, seal(session_key(settings), "flow", flow), path=CONSOLE, httponly=True,
                        samesite="lax", secure=_secure(settings), max_age=FLOW_SECONDS)


def current_flow(request: Request[Any, Any, Any]) -> Flow | None:
    try:
        key = session_key(request.app.state.settings)
    except ConsoleNotConfigured:
        return None
    return unseal(key, "flow", request.cookies.get(FLOW_COOKIE), Flow)


def clear_flow(response: Response) -> None:
    response.delete_cookie(FLOW_COOKIE, path=CONSOLE)


# --- OIDC: authorization code with PKCE ----------------------------------------------------

def oidc_ready(settings: Settings) -> None:
    a = settings.auth
    for value, name in ((a.oidc_authorization_url, "AUTHORIZATION_URL"), (a.oidc_token_url, "TOKEN_URL"),
                        (a.oidc_client_id, "CLIENT_ID")):
        if not value:
            raise ConsoleNotConfigured(f"set BIZ_AUTH_OIDC_{name} for the console's sign-in")
    session_key(settings)


def redirect_uri(request: Request[Any, Any, Any]) -> str:
    public = request.app.state.settings.api.public_url
    base = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return base + CALLBACK


def challenge(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode()).digest())


def authorization_url(settings: Settings, flow: Flow, callback: str) -> str:
    a = settings.auth
    query = urlencode({
        "response_type": "code", "client_id": a.oidc_client_id, "redirect_uri": callback, "scope": OIDC_SCOPE,
        "state": flow.state, "nonce": flow.nonce, "code_challenge": challenge(flow.verifier),
        "code_challenge_method": "S256",
    })
    sep = "&" if "?" in (a.oidc_authorization_url or "") else "?"
    return f"{a.oidc_authorization_url}{sep}{query}"


async def exchange_code(settings: Settings, flow: Flow, code: str, callback: str) -> str:
    """The access token for an authorization code (the verifier proves this console asked for it);
    the ID token's nonce must be the flow's. NotAuthorizedException when the issuer refuses."""
    a = settings.auth
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": callback,
            "client_id": a.oidc_client_id or "", "code_verifier": flow.verifier}
    if a.oidc_client_secret is not None:
        form["client_secret"] = a.oidc_client_secret.get_secret_value()
    async with httpx.AsyncClient(timeout=TOKEN_ENDPOINT_TIMEOUT_SECONDS) as http:
        r = await http.post(a.oidc_token_url or "", data=form, headers={"accept": "application/json"})
    if r.status_code != 200:
        raise NotAuthorizedException(f"the identity provider refused the sign-in ({r.status_code})")
    try:
        body = r.json()
    except ValueError:
        raise NotAuthorizedException("the identity provider answered something other than tokens") from None
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise NotAuthorizedException("the identity provider sent no access token")
    id_token = body.get("id_token")
    if isinstance(id_token, str) and id_token:
        # Received straight from the token endpoint (TLS): its nonce ties it to this sign-in.
        try:
            claims = jwt.decode(id_token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise NotAuthorizedException("the identity provider sent an unreadable ID token") from None
        if claims.get("nonce") != flow.nonce:
            raise NotAuthorizedException("the ID token does not belong to this sign-in (nonce)")
    return token


def token_expiry(token: str) -> float:
    """The ``exp`` of a token that verified already."""
    exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    return float(exp) if isinstance(exp, int | float) else time.time()
