"""Visibility queries composed from typed filters, and cursor pages over them.

User text never becomes query text: every value is checked against the slug or name pattern it
must match (a tenant id, a capability, a role) before it is quoted into the query, and the
cursor is Temporal's own page token, opaque to the caller.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from datetime import datetime

from litestar.exceptions import ValidationException
from temporalio.client import Client, WorkflowExecution

from api.auth import Principal

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


def timestamp(value: datetime) -> str:
    return f"'{value.isoformat()}'"


def decode_cursor(cursor: str | None) -> bytes | None:
    if not cursor:
        return None
    try:
        return base64.urlsafe_b64decode(cursor.encode() + b"=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise ValidationException("invalid cursor") from None


def encode_cursor(token: bytes | None) -> str | None:
    return base64.urlsafe_b64encode(token).decode().rstrip("=") if token else None


async def page(temporal: Client, clauses: list[str], limit: int, cursor: str | None,
               ) -> tuple[list[WorkflowExecution], str | None]:
    """One page of executions matching every clause (newest first, the server's default order)
    and the next page's cursor."""
    query = " AND ".join(f"({c})" for c in clauses)
    it = temporal.list_workflows(query or None, page_size=limit, next_page_token=decode_cursor(cursor))
    await it.fetch_next_page()
    return list(it.current_page), encode_cursor(it.next_page_token)
