"""Schedules: list, describe, pause, unpause, trigger, backfill and re-time the platform's
Temporal schedules; pause a tenant's schedules at once; enable or disable a tenant's
scheduled capability.

Only schedules the platform owns (``biz:`` ids, see schedules/reconciler.py) are served.
Platform staff see every tenant's and the global ones; partners the tenants they manage;
clients their own. Each run costs crawls and LLM calls, so clients and partners may only pause
and unpause (and enable or disable a capability at its declared spec); admins re-time,
trigger and backfill (at most ``MAX_BACKFILL``), and no spec may fire more often than its
capability's minimum interval (``ScheduleDecl.min_interval``, 422 naming it). A schedule or tenant out of scope reads as 404. Enabling a capability
starts the TenantCapabilities workflow, which writes the row and applies the schedules: the
API never writes business rows.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Controller, Request, Router, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import JSONBody, Parameter, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_422_UNPROCESSABLE_ENTITY
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleBackfill,
    ScheduleDescription,
    ScheduleHandle,
    ScheduleOverlapPolicy,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from api.auth import ADMIN_ROLES, ROLES, Principal
from api.errors import ApiError, ConflictError
from api.workflows import StartResponse
from schedules.catalogue import OWNED_PREFIX, schedule_id, scheduled_capabilities, tenant_schedules
from schedules.reconciler import (
    SpecPatch,
    TooFrequent,
    describe_or_none,
    is_owned,
    listed_owned_ids,
    read_applied,
    tenant_query,
    update_spec,
    valid_time_zone,
)
from core.names import CAPABILITY, SLUG_PATTERN, TENANT_ID, WORKFLOWS_QUEUE
from workflows.presence_audit import URL_PATTERN
from workflows.catalogue import Capability
from workflows.starting import AlreadyStarted, CapabilityStart, start_capability
from workflows.tenant_schedules import CAPABILITY as CHANGE_CAPABILITY
from workflows.tenant_schedules import CapabilityChange, TenantCapabilitiesWorkflow

READ_ROLES = frozenset(ROLES)
# Clients and partners pause and unpause their own tenants' schedules; finance and support only read.
WRITE_ROLES = ADMIN_ROLES | {"partner", "client"}
# What costs money (a new spec, a run now, past runs) is for admins only.
SPEC_ROLES = ADMIN_ROLES
MAX_BACKFILL = timedelta(days=31)
MAX_LIST = 1000
# The platform's own workflow behind enable / disable (no start route of its own): one change
# of a tenant's capability at a time, started again for the next change.
TENANT_CAPABILITIES = Capability(
    name=CHANGE_CAPABILITY,
    workflow=TenantCapabilitiesWorkflow,
    input_type=CapabilityChange,
    business_key=lambda change: change.capability,
    tenant_in_input=lambda change: change.tenant_id,
    start_roles=WRITE_ROLES,
    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    summary="Enable or disable a tenant's scheduled capability and apply its schedules.",
)
_SCHEDULE_ID = Annotated[str, PathParameter(min_length=5, max_length=200, pattern=r"^[a-z0-9:-]+$")]
_TENANT_ID = Annotated[str, PathParameter(pattern=SLUG_PATTERN)]
_CAPABILITY = Annotated[str, PathParameter(pattern=SLUG_PATTERN)]
_CRON_FIELDS = re.compile(r"^\S+(\s+\S+){4,6}$")

Overlap = Literal["skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"]


# --- bodies and views ---------------------------------------------------------------------

class NoteBody(msgspec.Struct, frozen=True, kw_only=True):
    note: Annotated[str, msgspec.Meta(max_length=500)] = ""


class BackfillBody(msgspec.Struct, frozen=True, kw_only=True):
    start: Annotated[datetime, msgspec.Meta(tz=True)]
    end: Annotated[datetime, msgspec.Meta(tz=True)]
    # Default: one run going and one waiting, the rest dropped; buffer_all (every missed
    # run, one after the other) only when the admin says so.
    overlap: Overlap = "buffer_one"


class SpecBody(msgspec.Struct, frozen=True, kw_only=True):
    """Fields left out keep their value; a cron replaces an interval and the other way round."""

    cron: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=200)]],
                    msgspec.Meta(min_length=1, max_length=10)] | None = None
    every_seconds: Annotated[int, msgspec.Meta(ge=60, le=366 * 86400)] | None = None
    time_zone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    jitter_seconds: Annotated[int, msgspec.Meta(ge=0, le=86400)] | None = None


class EnableBody(msgspec.Struct, frozen=True, kw_only=True):
    # Needed by website capabilities (presence-audit) unless given before.
    website_url: Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)] | None = None


class SpecView(msgspec.Struct, frozen=True, kw_only=True):
    cron: list[str]
    every_seconds: int | None
    time_zone: str | None
    jitter_seconds: int | None
    # catalogue: as declared; api: changed through this API (kept by later syncs).
    source: Literal["catalogue", "api", "server"]


class RunView(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    run_id: str
    scheduled_at: datetime
    started_at: datetime


class ScheduleSummary(msgspec.Struct, frozen=True, kw_only=True):
    schedule_id: str
    tenant_id: str | None
    capability: str | None
    workflow_type: str | None
    paused: bool
    note: str | None
    next_runs: list[datetime]
    recent_runs: list[RunView]


class ScheduleList(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ScheduleSummary]


class ScheduleView(msgspec.Struct, frozen=True, kw_only=True):
    schedule_id: str
    tenant_id: str | None
    capability: str | None
    workflow_type: str
    paused: bool
    note: str | None
    spec: SpecView
    next_runs: list[datetime]
    recent_runs: list[RunView]
    running: list[str]
    actions_taken: int
    created_at: datetime
    updated_at: datetime | None


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    schedule_id: str


class TenantSchedules(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    paused: bool
    schedule_ids: list[str]


# --- helpers ------------------------------------------------------------------------------

def _bad(key: str, message: str) -> ValidationException:
    """400 naming the field, shaped like Litestar's own validation errors."""
    return ValidationException(detail=f"Validation failed: {message}",
                               extra=[{"key": key, "message": message, "source": "body"}])


class TooFrequentError(ApiError):
    """422: the spec fires more often than the capability's minimum interval."""

    status_code = HTTP_422_UNPROCESSABLE_ENTITY
    code = "too_frequent"


def _runs(actions: Any) -> list[RunView]:
    return [
        RunView(workflow_id=a.action.workflow_id, run_id=a.action.first_execution_run_id,
                scheduled_at=a.scheduled_at, started_at=a.started_at)
        for a in actions if isinstance(a.action, ScheduleActionExecutionStartWorkflow)
    ]


async def _view(temporal: Client, desc: ScheduleDescription) -> ScheduleView:
    applied = await read_applied(temporal, desc)
    server = desc.schedule.spec
    if applied is not None:
        s = applied.spec
        spec = SpecView(cron=s.cron, every_seconds=s.every_seconds, time_zone=s.time_zone,
                        jitter_seconds=s.jitter_seconds, source=applied.spec_source)
    else:
        spec = SpecView(cron=list(server.cron_expressions),
                        every_seconds=int(server.intervals[0].every.total_seconds()) if server.intervals else None,
                        time_zone=server.time_zone_name,
                        jitter_seconds=int(server.jitter.total_seconds()) if server.jitter else None, source="server")
    info, state = desc.info, desc.schedule.state
    return ScheduleView(
        schedule_id=desc.id,
        tenant_id=desc.typed_search_attributes.get(TENANT_ID),
        capability=desc.typed_search_attributes.get(CAPABILITY),
        workflow_type=getattr(desc.schedule.action, "workflow", ""),
        paused=state.paused,
        note=state.note,
        spec=spec,
        next_runs=list(info.next_action_times),
        recent_runs=_runs(info.recent_actions),
        running=[r.workflow_id for r in info.running_actions if isinstance(r, ScheduleActionExecutionStartWorkflow)],
        actions_taken=info.num_actions,
        created_at=info.created_at,
        updated_at=info.last_updated_at,
    )


async def describe_in_scope(
    temporal: Client, principal: Principal, schedule_id_: str
) -> tuple[ScheduleHandle, ScheduleDescription]:
    """An owned schedule the caller may see; anything else is 404 alike."""
    desc = await describe_or_none(temporal, schedule_id_) if schedule_id_.startswith(OWNED_PREFIX) else None
    if (desc is None or not await is_owned(desc)
            or not principal.can_see_tenant(desc.typed_search_attributes.get(TENANT_ID))):
        raise NotFoundException(f"schedule {schedule_id_!r} not found")
    return temporal.get_schedule_handle(schedule_id_), desc


def _tenant_in_scope(principal: Principal, tenant_id: str) -> None:
    if not principal.can_see_tenant(tenant_id):
        raise NotFoundException(f"tenant {tenant_id!r} not found")


def _check_spec(body: SpecBody) -> SpecPatch:
    if body.cron is not None and body.every_seconds is not None:
        raise _bad("every_seconds", "give cron or every_seconds, not both")
    if body == SpecBody():
        raise _bad("cron", "nothing to change: give cron, every_seconds, time_zone or jitter_seconds")
    for expr in body.cron or ():
        if "TZ=" in expr.upper():
            raise _bad("cron", "set the time zone with time_zone, not in the cron expression")
        if not (expr.startswith("@") or _CRON_FIELDS.match(expr.strip())):
            raise _bad("cron", f"{expr!r} is not a cron expression (5 fields: minute hour day month weekday)")
    if body.time_zone is not None and not valid_time_zone(body.time_zone):
        raise _bad("time_zone", f"unknown time zone {body.time_zone!r}")
    return SpecPatch(cron=body.cron, every_seconds=body.every_seconds, time_zone=body.time_zone,
                     jitter_seconds=body.jitter_seconds)


# --- routes -------------------------------------------------------------------------------

class ScheduleController(Controller):
    path = "/v1/schedules"
    tags = ["schedules"]

    @get(
        "/",
        operation_id="list_schedules",
        summary="The platform's schedules in the caller's scope",
        description="Clients see their tenant's; partners the tenants they manage; platform staff every "
        "tenant's and the global ones, or one tenant's with `tenant_id`. Eventually consistent: a "
        "schedule created a moment ago may take a second to appear.",
        opt={"roles": READ_ROLES},
        raises=[NotFoundException],
    )
    async def list_schedules(
        self,
        request: Request[Principal, Any, Any],
        temporal: NamedDependency[Client],
        tenant_id: Annotated[str | None, Parameter(pattern=SLUG_PATTERN, description="Defaults to the caller's tenants")] = None,
        capability: Annotated[str | None, Parameter(pattern=SLUG_PATTERN)] = None,
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIST)] = 100,
    ) -> ScheduleList:
        principal = request.user
        if tenant_id is not None:
            _tenant_in_scope(principal, tenant_id)
            tenants: list[str] | None = [tenant_id]
        elif principal.is_platform:
            tenants = None
        else:
            tenants = sorted({t for t in (principal.tenant_id, *principal.tenants) if t})
            if not tenants:
                return ScheduleList(items=[])
        clauses = [tenant_query(tenants)] if tenants is not None else []
        if capability is not None:
            clauses.append(f"BizCapability = '{capability}'")  # a slug: checked by the parameter
        items: list[ScheduleSummary] = []
        async for s in await temporal.list_schedules(" AND ".join(clauses) or None):
            if not s.id.startswith(OWNED_PREFIX):
                continue
            tenant = s.typed_search_attributes.get(TENANT_ID)
            if not principal.can_see_tenant(tenant):
                continue
            sched, info = s.schedule, s.info
            items.append(ScheduleSummary(
                schedule_id=s.id, tenant_id=tenant, capability=s.typed_search_attributes.get(CAPABILITY),
                workflow_type=getattr(sched.action, "workflow", None) if sched else None,
                paused=bool(sched and sched.state.paused), note=sched.state.note if sched else None,
                next_runs=list(info.next_action_times) if info else [],
                recent_runs=_runs(info.recent_actions) if info else [],
            ))
            if len(items) >= limit:
                break
        return ScheduleList(items=sorted(items, key=lambda i: i.schedule_id))

    @get("/{schedule_id:str}", operation_id="get_schedule", summary="A schedule's spec, next runs, recent runs and state",
         opt={"roles": READ_ROLES})
    async def get_schedule(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                           schedule_id: _SCHEDULE_ID) -> ScheduleView:
        _, desc = await describe_in_scope(temporal, request.user, schedule_id)
        return await _view(temporal, desc)

    @post("/{schedule_id:str}/pause", operation_id="pause_schedule", summary="Pause a schedule with a note", status_code=HTTP_200_OK,
          opt={"roles": WRITE_ROLES})
    async def pause_schedule(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                             schedule_id: _SCHEDULE_ID, data: JSONBody[NoteBody]) -> ScheduleView:
        handle, _ = await describe_in_scope(temporal, request.user, schedule_id)
        await handle.pause(note=data.note or f"paused by {request.user.sub}")
        return await _view(temporal, await handle.describe())

    @post("/{schedule_id:str}/unpause", operation_id="unpause_schedule",
          summary="Unpause a schedule with a note", status_code=HTTP_200_OK,
          opt={"roles": WRITE_ROLES})
    async def unpause_schedule(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                               schedule_id: _SCHEDULE_ID, data: JSONBody[NoteBody]) -> ScheduleView:
        handle, _ = await describe_in_scope(temporal, request.user, schedule_id)
        await handle.unpause(note=data.note or f"unpaused by {request.user.sub}")
        return await _view(temporal, await handle.describe())

    @post("/{schedule_id:str}/trigger", operation_id="trigger_schedule", summary="Run the schedule's action now",
          description="Admins only. Follows the schedule's overlap policy (skip: nothing starts while a run is going).",
          status_code=HTTP_202_ACCEPTED, opt={"roles": SPEC_ROLES})
    async def trigger_schedule(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                               schedule_id: _SCHEDULE_ID) -> Accepted:
        handle, _ = await describe_in_scope(temporal, request.user, schedule_id)
        await handle.trigger()
        return Accepted(schedule_id=schedule_id)

    @post("/{schedule_id:str}/backfill", operation_id="backfill_schedule",
          summary="Take the actions of a past period now (start exclusive, end inclusive)",
          description=f"Admins only, at most {MAX_BACKFILL.days} days. Overlap defaults to buffer_one (one run going, "
          "one waiting, the rest dropped); buffer_all takes every run, one after the other.",
          status_code=HTTP_202_ACCEPTED, opt={"roles": SPEC_ROLES})
    async def backfill_schedule(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                                schedule_id: _SCHEDULE_ID, data: JSONBody[BackfillBody]) -> Accepted:
        if data.end <= data.start:
            raise _bad("end", "end must be after start")
        if data.end - data.start > MAX_BACKFILL:
            raise _bad("end", f"a backfill covers at most {MAX_BACKFILL.days} days")
        handle, _ = await describe_in_scope(temporal, request.user, schedule_id)
        await handle.backfill(ScheduleBackfill(start_at=data.start, end_at=data.end,
                                               overlap=ScheduleOverlapPolicy[data.overlap.upper()]))
        return Accepted(schedule_id=schedule_id)

    @patch("/{schedule_id:str}/spec", operation_id="update_schedule_spec",
           summary="Change when a schedule runs (cron or interval, time zone, jitter)",
           description="Admins only. Kept by later syncs (the spec is marked as set through the API); the pause "
           "state is kept. A spec firing more often than the capability's minimum interval answers 422 naming it.",
           opt={"roles": SPEC_ROLES}, raises=[ConflictError, TooFrequentError])
    async def update_schedule_spec(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                                   schedule_id: _SCHEDULE_ID, data: JSONBody[SpecBody]) -> ScheduleView:
        spec_patch = _check_spec(data)
        handle, _ = await describe_in_scope(temporal, request.user, schedule_id)
        try:
            await update_spec(temporal, schedule_id, spec_patch)
        except TooFrequent as exc:
            if exc.gap is None:
                raise _bad("cron", str(exc)) from None
            raise TooFrequentError(detail=str(exc), extra={"min_interval_seconds": int(exc.minimum.total_seconds())}) from None
        except ValueError as exc:
            raise ConflictError(str(exc)) from None
        except RPCError as exc:
            if exc.status != RPCStatusCode.INVALID_ARGUMENT:
                raise
            # The server is the authority on cron syntax and time zones.
            field = "time_zone" if "time zone" in exc.message.lower() else (
                "cron" if data.cron is not None else "every_seconds")
            raise _bad(field, exc.message) from None
        return await _view(temporal, await handle.describe())


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
    _tenant_in_scope(principal, tenant_id)
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
                    raise _bad(field, f"{capability} needs {field}")
    change = CapabilityChange(tenant_id=tenant_id, capability=capability, enabled=enabled,
                              website_url=website_url, requested_by=principal.sub)
    try:
        handle = await start_capability(temporal, CapabilityStart.of(TENANT_CAPABILITIES, change, tenant_id),
                                        task_queue=task_queue)
    except AlreadyStarted as exc:
        raise ConflictError(f"a change of {capability} for {tenant_id!r} is in progress; try again",
                            extra={"workflow_id": exc.workflow_id}) from None
    return StartResponse(workflow_id=handle.id, run_id=handle.result_run_id or "")


class TenantSchedulesController(Controller):
    path = "/v1/tenants/{tenant_id:str}"
    tags = ["schedules"]

    async def _set_paused(
        self, temporal: Client, principal: Principal, tenant_id: str, paused: bool, note: str
    ) -> TenantSchedules:
        _tenant_in_scope(principal, tenant_id)
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


def schedules_router(task_queue: str = WORKFLOWS_QUEUE) -> Router:
    """``task_queue``: where TenantCapabilities runs (tests use their own)."""
    return Router(
        path="/",
        route_handlers=[ScheduleController, TenantSchedulesController],
        dependencies={"schedules_task_queue": Provide(lambda: task_queue, sync_to_thread=False)},
    )
