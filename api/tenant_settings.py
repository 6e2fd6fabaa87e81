"""Per-tenant settings of each capability, derived from the capabilities' declarations.

For every capability of the catalogue (its ``settings`` Struct, workflows/capability.py):

- ``GET /v1/tenants/{tenant_id}/settings/{capability}``: the tenant's settings, typed, with the
  declared defaults filled in for what the tenant never set.
- ``PUT /v1/tenants/{tenant_id}/settings/{capability}``: replace them. The body is the settings
  Struct (a field left out goes back to its default; an unknown field or a value out of bounds
  answers 400 naming the field). The API writes nothing itself: it starts the TenantSettings
  workflow (202), whose activity replaces the row and records who changed what in the audit log.
  A change of the same capability still running answers 409; a value another tenant holds
  (a Shopify shop domain) answers 409 naming the field.

Who may change what: platform admins (``admin``, ``super_admin``) any field of any tenant; the
tenant's own client and its partner the fields their capability does not reserve for admins
(``Capability.admin_settings``: e.g. the campaign budget cap, which is the platform's check on
a tenant's spend, and the Shopify shop domain, which routes a shop's orders to a tenant); a
reserved field they change answers 403 naming it (sending it unchanged is fine, so a GET's
answer can be sent back). Finance and support read only. Another tenant reads as 404.
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from litestar import Request, Router, get, put
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import JSONBody, PathParameter
from litestar.status_codes import HTTP_202_ACCEPTED
from temporalio.client import Client

from activities.tenants import InvalidSettings, decode_settings, stored_settings
from api.auth import ADMIN_ROLES, ROLES, Principal
from api.errors import ConflictError
from api.workflows import StartResponse, start_change
from core.names import SLUG_PATTERN, WORKFLOWS_QUEUE
from workflows.capability import Capability, departures, platform_change
from workflows.catalogue import CATALOGUE
from workflows.tenant_settings import NAME as CHANGE_NAME
from workflows.tenant_settings import SettingsChange, TenantSettingsWorkflow

READ_ROLES = frozenset(ROLES)
WRITE_ROLES = ADMIN_ROLES | {"partner", "client"}
# The platform's own workflow behind PUT (no start route of its own): one change of a tenant's
# settings of one capability at a time, started again for the next change.
TENANT_SETTINGS = platform_change(
    CHANGE_NAME, TenantSettingsWorkflow, SettingsChange, WRITE_ROLES,
    "Replace a tenant's settings of one capability and record the change in the audit log.")
_TENANT_ID = Annotated[str, PathParameter(pattern=SLUG_PATTERN)]


async def _current(db: asyncpg.Pool, principal: Principal, tenant_id: str, cap: Capability) -> tuple[Any, dict]:
    """The tenant's settings (typed) and what it stored; 404 for a tenant out of scope or unknown."""
    if not principal.can_see_tenant(tenant_id):
        raise NotFoundException(f"tenant {tenant_id!r} not found")
    stored = await stored_settings(db, tenant_id, cap.name)
    if stored is None:
        raise NotFoundException(f"tenant {tenant_id!r} not found")
    try:
        return decode_settings(stored, cap.settings), stored
    except InvalidSettings:
        # A row written before its Struct changed: shown as the defaults, a PUT replaces it.
        return cap.settings(), stored


def _getter(cap: Capability):  # noqa: ANN202 - a route handler per capability
    async def read(request: Request, db: NamedDependency[asyncpg.Pool], tenant_id: _TENANT_ID) -> Any:
        settings, _ = await _current(db, request.user, tenant_id, cap)
        return settings

    read.__annotations__ = {"request": Request, "db": NamedDependency[asyncpg.Pool], "tenant_id": _TENANT_ID,
                            "return": cap.settings}
    return get(
        f"/{cap.name}", operation_id=f"get_{cap.name.replace('-', '_')}_settings",
        summary=f"A tenant's {cap.name} settings",
        description="The tenant's settings of this capability, with the declared defaults for what it never set.",
        opt={"roles": READ_ROLES},
    )(read)


def _putter(cap: Capability):  # noqa: ANN202 - a route handler per capability
    reserved = ", ".join(sorted(cap.admin_settings)) or "none"

    async def replace(data: Any, request: Request, temporal: NamedDependency[Client],
                      db: NamedDependency[asyncpg.Pool], settings_task_queue: NamedDependency[str],
                      tenant_id: _TENANT_ID) -> StartResponse:
        principal: Principal = request.user
        current, _ = await _current(db, principal, tenant_id, cap)
        if not principal.roles & ADMIN_ROLES:
            for field in sorted(cap.admin_settings):
                if getattr(data, field) != getattr(current, field):
                    raise PermissionDeniedException(f"{field}: only a platform admin changes it")
        wanted = departures(data)
        for field in sorted(cap.unique_settings):
            value = wanted.get(field)
            if value is None:
                continue
            holder = await db.fetchval(
                """SELECT tenant_id FROM tenant_settings
                   WHERE capability = $1 AND lower(settings->>$2) = lower($3) AND tenant_id <> $4 LIMIT 1""",
                cap.name, field, str(value), tenant_id)
            if holder is not None:
                raise ConflictError(f"{field}: {value!r} belongs to another tenant", code="setting_taken")
        change = SettingsChange(tenant_id=tenant_id, capability=cap.name, settings=wanted,
                                requested_by=principal.sub)
        return await start_change(temporal, TENANT_SETTINGS, change, settings_task_queue)

    replace.__annotations__ = {
        "data": JSONBody[cap.settings], "request": Request, "temporal": NamedDependency[Client],
        "db": NamedDependency[asyncpg.Pool], "settings_task_queue": NamedDependency[str], "tenant_id": _TENANT_ID,
        "return": StartResponse,
    }
    return put(
        f"/{cap.name}", operation_id=f"put_{cap.name.replace('-', '_')}_settings",
        summary=f"Replace a tenant's {cap.name} settings (starts TenantSettings)",
        description="The body replaces the settings: a field left out goes back to its default. Validated against "
        f"the capability's settings; the change is audited. Fields only a platform admin changes: {reserved}. "
        "A change of the same capability still running, or a value another tenant holds, answers 409.",
        status_code=HTTP_202_ACCEPTED,
        opt={"roles": WRITE_ROLES},
        raises=[ConflictError, PermissionDeniedException],
    )(replace)


def settings_router(task_queue: str = WORKFLOWS_QUEUE) -> Router:
    """``task_queue``: where TenantSettings runs (tests use their own)."""
    handlers = [h for cap in CATALOGUE.values() for h in (_getter(cap), _putter(cap))]
    return Router(
        path="/v1/tenants/{tenant_id:str}/settings",
        route_handlers=handlers,
        tags=["settings"],
        dependencies={"settings_task_queue": Provide(lambda: task_queue, sync_to_thread=False)},
    )
