"""What the Postgres read APIs share (reports, audit log, usage): the caller's tenant scope, a
period, filters composed into SQL with bound values, and signed keyset cursors.

A cursor is opaque to the caller: the last position of the page (an id, or a group's key) and
a MAC over that position and the listing it pages (the route, its filters and the caller's
tenant scope), with the key that signs the visibility cursors (``BIZ_API_CURSOR_SECRET``). A
cursor of another listing, another caller's scope or altered by hand is a 400 naming
``cursor``; it never reaches a query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import msgspec
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from api.auth import Principal
from api.errors import invalid
from api.visibility import CURSOR_PATTERN
from core.names import MAX_ROW_ID, SLUG_PATTERN, TIME_PATTERN

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_ID = MAX_ROW_ID
_MAC_BYTES = 16

# Free text filters (an actor, a workflow id, an action): printable, no control characters
# (Postgres refuses NUL in text).
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]{1,400}$"
NAME_PATTERN = r"^[A-Za-z0-9_.:@/+-]{1,200}$"  # an action, an agent, a model, a report kind

Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="Items per page")]
Cursor = Annotated[str | None, Parameter(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page")]
Tenant = Annotated[str | None, Parameter(
    pattern=SLUG_PATTERN, description="Only this tenant (404 when not in the caller's tenants); defaults to all of "
                                      "the caller's tenants (platform staff: every tenant)")]
# A time filter is declared as a string of TIME_PATTERN, not as a datetime: Litestar's datetime
# parameters also take a bare number as Unix time, which the OpenAPI document's date-time does not.


def time_filter(description: str) -> Any:
    """A query parameter holding a time, read with :func:`parse_time`."""
    return Annotated[str | None, Parameter(pattern=TIME_PATTERN, description=description,
                                           schema_extra={"format": "date-time"})]


Since = time_filter("From this time (RFC 3339, e.g. 2026-11-26T09:30:00Z; UTC when no offset is given)")
Until = time_filter("Until this time, excluded (RFC 3339; default: now)")


def parse_time(name: str, value: str | datetime | None) -> datetime | None:
    """The time of the query parameter ``name`` (in UTC), or None; 400 naming it when the text
    matches the pattern but is no date (the 31st of February, hour 24...) or out of range."""
    if value is None or isinstance(value, datetime):
        return None if value is None else utc(value)
    try:
        parsed = msgspec.convert(value, datetime, strict=False)
    except msgspec.ValidationError:
        raise invalid(name, "not a date and time (RFC 3339, e.g. 2026-11-26T09:30:00Z)") from None
    try:
        return utc(parsed)
    except OverflowError:
        raise invalid(name, "out of range") from None


def tenant_scope(principal: Principal, tenant_id: str | None) -> list[str] | None:
    """The tenants to read (None: every tenant, for platform staff). A named tenant out of the
    caller's scope is a 404, as if it did not exist."""
    if tenant_id is not None:
        if not principal.can_see_tenant(tenant_id):
            raise NotFoundException(f"tenant {tenant_id!r} not found")
        return [tenant_id]
    if principal.is_platform:
        return None
    return sorted({t for t in (principal.tenant_id, *principal.tenants) if t})


def utc(value: datetime) -> datetime:
    """``value`` in UTC (a time without an offset is taken as UTC)."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def period(since: str | datetime | None, until: str | datetime | None, *, default: timedelta,
           longest: timedelta | None = None) -> tuple[datetime, datetime]:
    """``[since, until)`` in UTC: until defaults to now, since to ``default`` before until; 400
    naming ``since`` when it is after ``until``, or when the period is over ``longest``."""
    since, until = parse_time("since", since), parse_time("until", until)
    try:
        end = utc(until) if until is not None else datetime.now(timezone.utc)
    except OverflowError:
        raise invalid("until", "out of range") from None
    try:
        start = utc(since) if since is not None else end - default
    except OverflowError:
        raise invalid("since" if since is not None else "until", "out of range") from None
    if start > end:  # the same time twice is an empty period: nothing in it
        raise invalid("since", "must not be after until")
    if longest is not None and end - start > longest:
        raise invalid("since", f"the period may be at most {longest.days} days long")
    return start, end


class Where:
    """SQL conditions with bound values: clauses are constants of the caller's code, values
    never become SQL text."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, clause: str, value: Any) -> None:
        """``clause`` with ``{}`` where the value's placeholder goes; nothing when value is None."""
        if value is not None:
            self.args.append(value)
            self.clauses.append(clause.format(f"${len(self.args)}"))

    def bind(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def sql(self) -> str:
        return ("WHERE " + " AND ".join(self.clauses)) if self.clauses else ""


def listing(name: str, principal: Principal, tenants: list[str] | None, **filters: Any) -> str:
    """The identity of a listing a cursor belongs to: route, caller's scope and filters."""
    scope = "*" if tenants is None else ",".join(tenants)
    return msgspec.json.encode([name, principal.sub, scope, sorted((k, str(v)) for k, v in filters.items())]).decode()


def _mac(key: bytes, listing_: str, position: bytes) -> bytes:
    return hmac.new(key, b"pg\0" + listing_.encode() + b"\0" + position, hashlib.sha256).digest()[:_MAC_BYTES]


def encode_cursor(position: list[Any], key: bytes, listing_: str) -> str:
    raw = msgspec.json.encode(position)
    return base64.urlsafe_b64encode(_mac(key, listing_, raw) + raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, key: bytes, listing_: str) -> list[Any] | None:
    """The position this API wrote into ``cursor`` for this same listing; 400 for anything else."""
    if not cursor:
        return None
    bad = invalid("cursor", "not a cursor of this listing: pass the previous page's next_cursor")
    try:
        raw = base64.b64decode(cursor.encode() + b"=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise bad from None
    mac, position = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
    if not position or not hmac.compare_digest(mac, _mac(key, listing_, position)):
        raise bad
    try:
        value = msgspec.json.decode(position)
    except msgspec.DecodeError:
        raise bad from None
    if not isinstance(value, list):
        raise bad
    return value


def last_id(cursor: str | None, key: bytes, listing_: str) -> int | None:
    """The id a page of an id-ordered listing ended at (the next page starts below it)."""
    position = decode_cursor(cursor, key, listing_)
    if position is None:
        return None
    if len(position) != 1 or not isinstance(position[0], int):
        raise invalid("cursor", "not a cursor of this listing: pass the previous page's next_cursor")
    return position[0]
