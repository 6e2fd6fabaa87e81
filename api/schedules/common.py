"""What both schedule resources share: the roles, the note body, the 400 naming a field, and
the tenant scope check."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar.exceptions import NotFoundException, ValidationException

from api.auth import ADMIN_ROLES, ROLES, Principal

READ_ROLES = frozenset(ROLES)
# Clients and partners pause and unpause their own tenants' schedules; finance and support only read.
WRITE_ROLES = ADMIN_ROLES | {"partner", "client"}
# What costs money (a new spec, a run now, past runs) is for admins only.
SPEC_ROLES = ADMIN_ROLES


class NoteBody(msgspec.Struct, frozen=True, kw_only=True):
    note: Annotated[str, msgspec.Meta(max_length=500)] = ""


def bad(key: str, message: str) -> ValidationException:
    """400 naming the field, shaped like Litestar's own validation errors."""
    return ValidationException(detail=f"Validation failed: {message}",
                               extra=[{"key": key, "message": message, "source": "body"}])


def tenant_in_scope(principal: Principal, tenant_id: str) -> None:
    """A tenant the caller may not see reads as 404, as one that does not exist."""
    if not principal.can_see_tenant(tenant_id):
        raise NotFoundException(f"tenant {tenant_id!r} not found")
