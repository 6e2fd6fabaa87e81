"""A tenant's schedules at once (``/v1/tenants/{t}/schedules/pause`` and ``unpause``) and its
scheduled capabilities (``/v1/tenants/{t}/capabilities/{capability}``: enable, disable).

Clients and partners may enable or disable a capability at its declared spec (an admin re-times
one schedule through ``/v1/schedules``). A tenant out of scope reads as 404. Enabling a
capability starts the TenantCapabilities workflow, which writes the row and applies the
schedules: the API never writes business rows.
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, delete, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from temporalio.client import Client

from api.auth import Principal
from api.errors import ConflictError
from api.schedules.common import WRITE_ROLES, NoteBody, bad, tenant_in_scope
from api.workflows import StartResponse, start_change
from core.names import SLUG_PATTERN, TENANT_ID
from schedules.catalogue import schedule_id, scheduled_capabilities, tenant_schedules
from schedules.reconciler import describe_or_none, is_owned, listed_owned_ids
from workflows.capability import platform_change
from workflows.presence_audit import URL_PATTERN
from workflows.tenant_schedules import CAPABILITY as CHANGE_CAPABILITY
from workflows.tenant_schedules import CapabilityChange, TenantCapabilitiesWorkflow

# The platform's own workflow behind enable / disable (no start route of its own): one change
# of a tenant's capability at a time, started again for the next change.
TENANT_CAPABILITIES = platform_change(
    CHANGE_CAPABILITY, TenantCapabilitiesWorkflow, CapabilityChange, WRITE_ROLES,
    "Enable or disable a tenant's scheduled capability and apply its schedules.")
_TENANT_ID = Annotated[str, PathParameter(pattern=SLUG_PATTERN)]
_CAPABILITY = Annotated[str, PathParameter(pattern=SLUG_PATTERN)]


class EnableBody(msgspec.Struct, frozen=True, kw_only=True):
    # Needed by website capabilities (presence-audit) unless given before.
    website_url: Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)] | None = None


class TenantSchedules(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    paused: bool
    schedule_ids: list[str]


async def _tenant_schedule_ids(temporal: Client, tenant_id: str) -> list[str]:
    """Every owned schedule of a tenant: listed, plus the declared ids (listing lags)."""
    ids = await listed_owned_ids(temporal, [tenant_id]) | {schedule_id(tenant_id, d.name) for d in tenant_schedules()}
    found = []
    for sid in sorted(ids):
        desc = await describe_or_none(temporal, sid)
        if desc is not None and await is_owned(desc) and desc.typed_search_attributes.get(TENANT_ID) == tenant_id:
            found.append(sid)
    return found


async def _change_capability(
    temporal: Client, db: asyncpg.Pool, principal: Principal, task_queue: str,
    tenant_id: str, capability: str, enabled: bool, website_url: str | None,
) -> StartResponse:
    tenant_in_scope(principal, tenant_id)
    if capability not in scheduled_capabilities():
        raise NotFoundException(f"no scheduled capability {capability!r}")
    row = await db.fetchrow(
        """SELECT t.id, c.website_url FROM tenants t
           LEFT JOIN tenant_capabilities c ON c.tenant_id = t.id AND c.capability = $2
           WHERE t.id = $1""",
        tenant_id, capability,
    )
    if row is None:
        raise NotFoundException(f"tenant {tenant_id!r} not found")
    if enabled:
        known = {"website_url": website_url or row["website_url"]}
        for decl in tenant_schedules(capability):
            for field in decl.requires:
                if not known.get(field):
                    raise bad(field, f"{capability} needs {field}")
    change = CapabilityChange(tenant_id=tenant_id, capability=capability, enabled=enabled,
                              website_url=website_url, requested_by=principal.sub)
    return await start_change(temporal, TENANT_CAPABILITIES, change, task_queue)


class TenantSchedulesController(Controller):
    path = "/v1/tenants/{tenant_id:str}"
    tags = ["schedules"]

    async def _set_paused(
        self, temporal: Client, principal: Principal, tenant_id: str, paused: bool, note: str
    ) -> TenantSchedules:
        tenant_in_scope(principal, tenant_id)
        ids = await _tenant_schedule_ids(temporal, tenant_id)
        for sid in ids:
            handle = temporal.get_schedule_handle(sid)
            if paused:
                await handle.pause(note=note or f"paused by {principal.sub}")
            else:
                await handle.unpause(note=note or f"unpaused by {principal.sub}")
        return TenantSchedules(tenant_id=tenant_id, paused=paused, schedule_ids=ids)

    @post("/schedules/pause", operation_id="pause_tenant_schedules", summary="Pause all of a tenant's schedules",
          status_code=HTTP_200_OK, opt={"roles": WRITE_ROLES})
    async def pause_tenant_schedules(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                                     tenant_id: _TENANT_ID, data: JSONBody[NoteBody]) -> TenantSchedules:
        return await self._set_paused(temporal, request.user, tenant_id, True, data.note)

    @post("/schedules/unpause", operation_id="unpause_tenant_schedules", summary="Unpause all of a tenant's schedules",
          status_code=HTTP_200_OK, opt={"roles": WRITE_ROLES})
    async def unpause_tenant_schedules(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                                       tenant_id: _TENANT_ID, data: JSONBody[NoteBody]) -> TenantSchedules:
        return await self._set_paused(temporal, request.user, tenant_id, False, data.note)

    @post("/capabilities/{capability:str}", operation_id="enable_tenant_capability",
          summary="Enable a scheduled capability for a tenant (starts TenantCapabilities)",
          description="Writes the tenant's capability row and creates its schedules, in the tenant's time zone. "
          "A change of the same capability still running answers 409.",
          status_code=HTTP_202_ACCEPTED, opt={"roles": WRITE_ROLES}, raises=[ConflictError])
    async def enable_capability(
        self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
        db: NamedDependency[asyncpg.Pool], schedules_task_queue: NamedDependency[str],
        tenant_id: _TENANT_ID, capability: _CAPABILITY,
        data: JSONBody[EnableBody],
    ) -> StartResponse:
        return await _change_capability(temporal, db, request.user, schedules_task_queue, tenant_id, capability,
                                        True, data.website_url)

    @delete("/capabilities/{capability:str}", operation_id="disable_tenant_capability",
            summary="Disable a scheduled capability for a tenant (its schedules are deleted)",
            status_code=HTTP_202_ACCEPTED, opt={"roles": WRITE_ROLES}, raises=[ConflictError])
    async def disable_capability(
        self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
        db: NamedDependency[asyncpg.Pool], schedules_task_queue: NamedDependency[str],
        tenant_id: _TENANT_ID, capability: _CAPABILITY,
    ) -> StartResponse:
        return await _change_capability(temporal, db, request.user, schedules_task_queue, tenant_id, capability,
                                        False, None)

