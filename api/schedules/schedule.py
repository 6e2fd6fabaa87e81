"""One schedule at a time (``/v1/schedules``): list, describe, pause, unpause, trigger, backfill
and re-time the platform's Temporal schedules.

Only schedules the platform owns (``biz:`` ids, see schedules/reconciler.py) are served.
Platform staff see every tenant's and the global ones; partners the tenants they manage;
clients their own. Each run costs crawls and LLM calls, so clients and partners may only pause
and unpause; admins re-time, trigger and backfill (at most ``MAX_BACKFILL``), and no spec may
fire more often than its capability's minimum interval (``ScheduleDecl.min_interval``, 422
naming it). A schedule out of scope reads as 404.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
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
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Principal
from api.errors import ApiError, ConflictError
from api.visibility import quote
from api.schedules.common import READ_ROLES, SPEC_ROLES, WRITE_ROLES, NoteBody, bad, tenant_in_scope
from core.names import CAPABILITY, SLUG_PATTERN, TENANT_ID
from schedules.catalogue import OWNED_PREFIX
from schedules.reconciler import (
    SpecPatch,
    TooFrequent,
    describe_or_none,
    is_owned,
    read_applied,
    tenant_query,
    update_spec,
    valid_time_zone,
)

MAX_BACKFILL = timedelta(days=31)
MAX_LIST = 1000
_SCHEDULE_ID = Annotated[str, PathParameter(min_length=5, max_length=200, pattern=r"^[a-z0-9:-]+$")]
_CRON_FIELDS = re.compile(r"^\S+(\s+\S+){4,6}$")

Overlap = Literal["skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"]


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


def _check_spec(body: SpecBody) -> SpecPatch:
    if body.cron is not None and body.every_seconds is not None:
        raise bad("every_seconds", "give cron or every_seconds, not both")
    if body == SpecBody():
        raise bad("cron", "nothing to change: give cron, every_seconds, time_zone or jitter_seconds")
    for expr in body.cron or ():
        if "TZ=" in expr.upper():
            raise bad("cron", "set the time zone with time_zone, not in the cron expression")
        if not (expr.startswith("@") or _CRON_FIELDS.match(expr.strip())):
            raise bad("cron", f"{expr!r} is not a cron expression (5 fields: minute hour day month weekday)")
    if body.time_zone is not None and not valid_time_zone(body.time_zone):
        raise bad("time_zone", f"unknown time zone {body.time_zone!r}")
    return SpecPatch(cron=body.cron, every_seconds=body.every_seconds, time_zone=body.time_zone,
                     jitter_seconds=body.jitter_seconds)


async def list_in_scope(temporal: Client, principal: Principal, *, tenant_id: str | None = None,
                        capability: str | None = None, limit: int = 100) -> ScheduleList:
    """The owned schedules the caller may see (one tenant's with ``tenant_id``: 404 out of scope).
    Shared by the controller below and the console (api/console/)."""
    if tenant_id is not None:
        tenant_in_scope(principal, tenant_id)
        tenants: list[str] | None = [tenant_id]
    elif principal.is_platform:
        tenants = None
    else:
        tenants = sorted({t for t in (principal.tenant_id, *principal.tenants) if t})
        if not tenants:
            return ScheduleList(items=[])
    clauses = [tenant_query(tenants)] if tenants is not None else []
    if capability is not None:
        clauses.append(f"BizCapability = {quote(capability)}")
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
        return await list_in_scope(temporal, request.user, tenant_id=tenant_id, capability=capability, limit=limit)

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
            raise bad("end", "end must be after start")
        if data.end - data.start > MAX_BACKFILL:
            raise bad("end", f"a backfill covers at most {MAX_BACKFILL.days} days")
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
                raise bad("cron", str(exc)) from None
            raise TooFrequentError(detail=str(exc), extra={"min_interval_seconds": int(exc.minimum.total_seconds())}) from None
        except ValueError as exc:
            raise ConflictError(str(exc)) from None
        except RPCError as exc:
            if exc.status != RPCStatusCode.INVALID_ARGUMENT:
                raise
            # The server is the authority on cron syntax and time zones.
            field = "time_zone" if "time zone" in exc.message.lower() else (
                "cron" if data.cron is not None else "every_seconds")
            raise bad(field, exc.message) from None
        return await _view(temporal, await handle.describe())

