"""Visibility queries composed from typed filters, and cursor pages over them.

User text never becomes query text: every value is checked against the slug or name pattern it
must match (a tenant id, a capability, a role) before it is quoted into the query, and the
cursor is Temporal's own page token, signed for the query it pages, opaque to the caller.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable
from datetime import datetime

from litestar.exceptions import NotFoundException, ValidationException
from temporalio.client import Client, WorkflowExecution

from api.auth import Principal
from api.errors import invalid
from core.settings import Settings

_SAFE = re.compile(r"^[A-Za-z0-9_.:@-]{1,200}$")


def quote(value: str) -> str:
    """A value as a visibility-query string literal; only plain names are accepted."""
    if not _SAFE.match(value):
        raise ValidationException(f"invalid filter value {value!r}")
    return f"'{value}'"


def in_list(field: str, values: Iterable[str]) -> str:
    return f"{field} IN ({', '.join(quote(v) for v in values)})"


def tenant_clause(principal: Principal, tenant_id: str | None) -> str | None:
    """The tenants the caller may list: '' when none, None when any (platform staff), else a clause.
    A named tenant out of scope gives the empty answer (as good as not found)."""
    if tenant_id is not None:
        return f"BizTenantId = {quote(tenant_id)}" if principal.can_see_tenant(tenant_id) else ""
    if principal.is_platform:
        return None
    tenants = sorted({t for t in (principal.tenant_id, *principal.tenants) if t})
    return in_list("BizTenantId", tenants) if tenants else ""


def listed_tenant(principal: Principal, tenant_id: str | None) -> str | None:
    """A listing's ``tenant_id`` filter: 404 for a tenant out of the caller's scope, as every
    tenant route answers (a caller learns nothing of another tenant, not even that it exists)."""
    if tenant_id is not None and not principal.can_see_tenant(tenant_id):
        raise NotFoundException(f"tenant {tenant_id!r} not found")
    return tenant_id


def timestamp(value: datetime) -> str:
    return f"'{value.isoformat()}'"


CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,2000}$"  # what encode_cursor gives: unpadded url-safe base64
_MAC_BYTES = 16


def cursor_key(settings: Settings) -> bytes:
    """The key that signs cursors: ``BIZ_API_CURSOR_SECRET``, else derived from the database URL
    (which every API process of a deployment shares, with its password in production)."""
    secret = settings.api.cursor_secret
    material = secret.get_secret_value() if secret is not None else settings.database_url()
    return hashlib.sha256(b"bizosaas-cursor\0" + material.encode()).digest()


def _mac(key: bytes, query: str, token: bytes) -> bytes:
    return hmac.new(key, query.encode() + b"\0" + token, hashlib.sha256).digest()[:_MAC_BYTES]


def _bad_cursor() -> ValidationException:
    return invalid("cursor", "not a cursor of this listing: pass the previous page's next_cursor")


def decode_cursor(cursor: str | None, key: bytes, query: str) -> bytes | None:
    """Temporal's page token, if the API issued this cursor for this same query. Anything else
    never reaches the server (it answers a token it did not write with an internal error, after
    retries)."""
    if not cursor:
        return None
    try:
        raw = base64.b64decode(cursor.encode() + b"=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise _bad_cursor() from None
    mac, token = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
    if not token or not hmac.compare_digest(mac, _mac(key, query, token)):
        raise _bad_cursor()
    return token


def encode_cursor(token: bytes | None, key: bytes, query: str) -> str | None:
    if not token:
        return None
    return base64.urlsafe_b64encode(_mac(key, query, token) + token).decode().rstrip("=")


async def page(temporal: Client, key: bytes, clauses: list[str], limit: int, cursor: str | None,
               ) -> tuple[list[WorkflowExecution], str | None]:
    """One page of executions matching every clause (newest first, the server's default order)
    and the next page's cursor, signed with ``key`` (see :func:`cursor_key`) for this query."""
    query = " AND ".join(f"({c})" for c in clauses)
    it = temporal.list_workflows(query or None, page_size=limit, next_page_token=decode_cursor(cursor, key, query))
    await it.fetch_next_page()
    return list(it.current_page), encode_cursor(it.next_page_token, key, query)
