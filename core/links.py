"""Signed, expiring one-click links of notification emails (``GET/POST /v1/links/{token}``).

A token is ``base64url(JSON claims) "." base64url(HMAC-SHA256(secret, claims))``. The claims
bind the tenant, the workflow and request (the pending action), the choice the link makes
(``approve`` or ``reject``), the recipient it was sent to (who is recorded as the decider) with
the role they were notified in, and the expiry. Nothing else decides from it: the API turns a
valid token into the same signed ``decide`` update the decision endpoint sends, recorded with
``via: link``. A token that does not verify, is malformed or has expired is refused with a
clear 4xx by the API, never a 5xx.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal

import msgspec

LinkChoice = Literal["approve", "reject"]
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{10,2000}\.[A-Za-z0-9_-]{43}$"


class LinkClaims(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    v: int = 1
    tenant_id: str
    workflow_id: str
    request_id: str
    choice: LinkChoice
    recipient: str  # the email address it was sent to: the decider's identity
    role: str  # the role the recipient was notified in
    audience: Literal["client", "admin"] = "client"
    expires_at: int  # Unix seconds


class LinkInvalid(ValueError):
    """A token that is malformed or whose signature does not verify."""


class LinkExpired(ValueError):
    """A genuine token past its expiry."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(claims: LinkClaims, secret: bytes) -> str:
    body = _b64(msgspec.json.encode(claims))
    return f"{body}.{_b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())}"


def read_token(token: str, secret: bytes, now: float) -> LinkClaims:
    """The claims of a token signed with ``secret`` and not expired at ``now`` (Unix seconds)."""
    body, sep, mac = token.partition(".")
    if not sep or not body or not mac:
        raise LinkInvalid("the link is malformed")
    expected = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, mac):
        raise LinkInvalid("the link's signature does not verify (altered, or signed with another key)")
    try:
        claims = msgspec.json.decode(_unb64(body), type=LinkClaims)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
        raise LinkInvalid("the link is malformed") from None
    if now >= claims.expires_at:
        raise LinkExpired("the link has expired: open the approval in the console instead")
    return claims
