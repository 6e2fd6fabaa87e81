"""The reconciler: makes Temporal's schedules match the declarations, idempotently.

Desired: every global declaration, and every per-tenant declaration of a capability an active
tenant enabled (``tenant_capabilities``). Existing: schedules compared by id. A desired one
that is missing is created, one that differs is updated (pause state and note kept), and an
owned one no longer desired is deleted. Only schedules the platform owns are ever touched:
their id starts with ``biz:`` and their memo says ``biz_owner: bizosaas`` (set at creation).

What the platform applied (the declared spec and a fingerprint of the rest) is kept in the
schedule action's memo, since a schedule's own memo cannot be updated. A spec changed through
the API is marked ``spec_source: api`` there and survives later syncs; everything else is
brought back to the declaration.

Run at worker start-up (:func:`sync_at_startup`), by ``bizosaas schedules sync``, and for one
tenant by the TenantCapabilities workflow when a capability is enabled or disabled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import asyncpg
import msgspec
from temporalio.client import (
    Client,
    Schedule,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleIntervalSpec,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from activities.schedules import CHANGES, Change, ScheduleChange, SyncReport
from schedules.catalogue import GLOBAL, OWNED_PREFIX, SCHEDULES, ScheduleDecl, TenantContext, schedule_id
from schedules.frequency import shortest_gap
from workflows.catalogue import CATALOGUE
from core.names import CAPABILITY, SLUG_PATTERN, TENANT_ID, WORKFLOWS_QUEUE
from workflows.starting import CapabilityStart

log = logging.getLogger(__name__)

OWNER_MEMO_KEY = "biz_owner"  # in the schedule's memo, set once at creation
OWNER = "bizosaas"
APPLIED_MEMO_KEY = "biz_schedule"  # in the action's memo (updatable): what was applied
DESCRIBE_CONCURRENCY = 16
_SLUG = re.compile(SLUG_PATTERN)

SpecSource = Literal["catalogue", "api"]


class SpecParams(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule's spec as declared (the server keeps cron only as compiled calendars)."""

    cron: list[str] = []
    every_seconds: int | None = None
    time_zone: str = "UTC"
    jitter_seconds: int | None = None

    def to_spec(self) -> ScheduleSpec:
        return ScheduleSpec(
            cron_expressions=list(self.cron),
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=self.every_seconds))] if self.every_seconds else [],
            time_zone_name=self.time_zone,
            jitter=timedelta(seconds=self.jitter_seconds) if self.jitter_seconds else None,
        )


class Applied(msgspec.Struct, frozen=True, kw_only=True):
    """What the platform applied to a schedule, kept in its action's memo."""

    schedule: str  # the declaration's name
    spec: SpecParams
    action: str  # fingerprint of everything but the spec (workflow, id, queue, input, policy)
    spec_source: SpecSource = "catalogue"


def format_report(report: SyncReport) -> str:
    """One line per schedule id, then the counts: what ``schedules sync`` prints."""
    lines = [f"{c.change:<9} {c.schedule_id}{'  (' + c.detail + ')' if c.detail else ''}" for c in report.changes]
    return "\n".join([*lines, report.summary()])


def _seconds(delta: timedelta | None) -> int | None:
    return int(delta.total_seconds()) if delta else None


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(msgspec.json.encode(value, order="sorted")).hexdigest()[:16]


def valid_time_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Desired:
    """One schedule as the declarations want it."""

    schedule_id: str
    decl: ScheduleDecl
    tenant_id: str
    spec: SpecParams
    input: Any
    task_queue: str
    fingerprint: str

    @property
    def capability(self) -> str:
        return self.decl.capability

    @property
    def start(self) -> CapabilityStart:
        """Each run's start, as the API and the triggers start the capability."""
        return CapabilityStart.of(CATALOGUE[self.capability], self.input, self.tenant_id, self.decl.key)

    @property
    def search_attributes(self) -> TypedSearchAttributes:
        return self.start.search_attributes

    def applied(self, spec: SpecParams | None = None, source: SpecSource = "catalogue") -> Applied:
        return Applied(schedule=self.decl.name, spec=spec or self.spec, action=self.fingerprint, spec_source=source)

    def schedule(self, applied: Applied, state: ScheduleState | None = None) -> Schedule:
        action = self.start.schedule_action(task_queue=self.task_queue, memo={APPLIED_MEMO_KEY: applied})
        return Schedule(
            action=action,
            spec=applied.spec.to_spec(),
            policy=SchedulePolicy(overlap=self.decl.overlap, catchup_window=self.decl.catchup_window),
            state=state or ScheduleState(),
        )

    def update(self, current: ScheduleDescription, applied: Applied | None) -> ScheduleUpdate:
        """Back to the declaration; a spec set through the API and the pause state are kept."""
        if applied is not None and applied.spec_source == "api":
            new = self.applied(applied.spec, "api")
        else:
            new = self.applied()
        return ScheduleUpdate(schedule=self.schedule(new, current.schedule.state), search_attributes=self.search_attributes)


def build_desired(decl: ScheduleDecl, ctx: TenantContext, task_queue: str) -> Desired | str:
    """The desired schedule of one declaration for one tenant, or why there is none."""
    sid = schedule_id(ctx.tenant_id, decl.name)
    missing = [f for f in decl.requires if not getattr(ctx, f)]
    if missing:
        return f"tenant has no {', '.join(missing)}"
    time_zone = decl.time_zone or (ctx.timezone if decl.per_tenant else "UTC")
    if not valid_time_zone(time_zone):
        return f"unknown time zone {time_zone!r}"
    try:
        inp = decl.input(ctx)
        # Constraints are checked on decoding: a run must not fail on its own input.
        msgspec.json.decode(msgspec.json.encode(inp), type=type(inp))
    except (msgspec.ValidationError, ValueError) as exc:
        return f"invalid input: {exc}"
    spec = SpecParams(
        cron=list(decl.cron), every_seconds=_seconds(decl.every), time_zone=time_zone,
        jitter_seconds=_seconds(decl.jitter),
    )
    cap = CATALOGUE[decl.capability]
    fingerprint = _fingerprint({
        "workflow": cap.workflow.__name__, "key": decl.key, "tenant": ctx.tenant_id, "capability": cap.name,
        "task_queue": task_queue, "input": msgspec.to_builtins(inp), "overlap": decl.overlap.name,
        "catchup_seconds": _seconds(decl.catchup_window),
    })
    return Desired(schedule_id=sid, decl=decl, tenant_id=ctx.tenant_id, spec=spec, input=inp,
                   task_queue=task_queue, fingerprint=fingerprint)


async def load_enabled(pool: asyncpg.Pool, tenant_ids: Sequence[str] | None) -> list[tuple[TenantContext, str]]:
    """(tenant, capability) for every enabled capability of an active tenant."""
    rows = await pool.fetch(
        """SELECT t.id, t.timezone, c.capability, c.website_url
           FROM tenant_capabilities c JOIN tenants t ON t.id = c.tenant_id
           WHERE c.enabled AND t.status = 'active' AND ($1::text[] IS NULL OR t.id = ANY($1::text[]))
           ORDER BY t.id, c.capability""",
        None if tenant_ids is None else list(tenant_ids),
    )
    return [(TenantContext(tenant_id=r["id"], timezone=r["timezone"], website_url=r["website_url"]), r["capability"])
            for r in rows]


async def desired_schedules(
    pool: asyncpg.Pool,
    *,
    tenant_ids: Sequence[str] | None,
    declarations: Mapping[str, ScheduleDecl],
    task_queue: str,
) -> tuple[dict[str, Desired], list[ScheduleChange]]:
    desired: dict[str, Desired] = {}
    skipped: list[ScheduleChange] = []

    def add(decl: ScheduleDecl, ctx: TenantContext) -> None:
        outcome = build_desired(decl, ctx, task_queue)
        if isinstance(outcome, str):
            skipped.append(ScheduleChange(schedule_id=schedule_id(ctx.tenant_id, decl.name), change="skipped",
                                          tenant_id=ctx.tenant_id, capability=decl.capability, detail=outcome))
        else:
            desired[outcome.schedule_id] = outcome

    if tenant_ids is None:
        for decl in declarations.values():
            if not decl.per_tenant:
                add(decl, TenantContext(tenant_id=GLOBAL))
    for ctx, capability in await load_enabled(pool, tenant_ids):
        for decl in declarations.values():
            if decl.per_tenant and decl.capability == capability:
                if ctx.tenant_id == GLOBAL or not _SLUG.match(ctx.tenant_id):
                    skipped.append(ScheduleChange(schedule_id=schedule_id(ctx.tenant_id, decl.name), change="skipped",
                                                  tenant_id=ctx.tenant_id, capability=capability,
                                                  detail="tenant id is reserved or not a slug"))
                else:
                    add(decl, ctx)
    return desired, skipped


def tenant_query(tenant_ids: Sequence[str]) -> str:
    """A visibility query for these tenants; ids must be slugs (never free text in a query)."""
    for t in tenant_ids:
        if not (_SLUG.match(t) or t == GLOBAL):
            raise ValueError(f"not a tenant id: {t!r}")
    return f"BizTenantId IN ({', '.join(repr(t) for t in tenant_ids)})"


async def listed_owned_ids(client: Client, tenant_ids: Sequence[str] | None) -> set[str]:
    """Owned-looking schedule ids in visibility (eventually consistent: lags a create)."""
    if tenant_ids is not None and not tenant_ids:
        return set()
    query = None if tenant_ids is None else tenant_query(tenant_ids)
    return {s.id async for s in await client.list_schedules(query) if s.id.startswith(OWNED_PREFIX)}


async def describe_or_none(client: Client, schedule_id_: str) -> ScheduleDescription | None:
    try:
        return await client.get_schedule_handle(schedule_id_).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def is_owned(desc: ScheduleDescription) -> bool:
    return desc.id.startswith(OWNED_PREFIX) and (await desc.memo()).get(OWNER_MEMO_KEY) == OWNER


async def action_memo(client: Client, desc: ScheduleDescription) -> dict[str, Any]:
    """The scheduled action's memo, decoded (values as plain JSON)."""
    memo = getattr(desc.schedule.action, "memo", None) or {}
    keys = list(memo)
    values = await client.data_converter.decode([memo[k] for k in keys]) if keys else []
    return dict(zip(keys, values, strict=True))


async def read_applied(client: Client, desc: ScheduleDescription) -> Applied | None:
    value = (await action_memo(client, desc)).get(APPLIED_MEMO_KEY)
    try:
        return msgspec.convert(value, Applied) if value is not None else None
    except msgspec.ValidationError:
        return None


async def _reconcile_one(client: Client, sid: str, want: Desired | None, dry_run: bool) -> ScheduleChange | None:
    desc = await describe_or_none(client, sid)
    handle = client.get_schedule_handle(sid)
    if want is None:
        if desc is None:
            return None
        tenant = desc.typed_search_attributes.get(TENANT_ID)
        capability = desc.typed_search_attributes.get(CAPABILITY)
        if not await is_owned(desc):
            return ScheduleChange(schedule_id=sid, change="skipped", tenant_id=tenant, capability=capability,
                                  detail="not created by the platform: left alone")
        if not dry_run:
            try:
                await handle.delete()
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
        return ScheduleChange(schedule_id=sid, change="delete", tenant_id=tenant, capability=capability,
                              detail="no longer declared or enabled")
    base = {"schedule_id": sid, "tenant_id": want.tenant_id, "capability": want.capability}
    if desc is None:
        if not dry_run:
            try:
                await client.create_schedule(
                    sid, want.schedule(want.applied()),
                    memo={OWNER_MEMO_KEY: OWNER}, search_attributes=want.search_attributes,
                )
            except ScheduleAlreadyRunningError:  # another worker's start-up sync was first
                return ScheduleChange(**base, change="unchanged", detail="created concurrently")
        return ScheduleChange(**base, change="create")
    if not await is_owned(desc):
        return ScheduleChange(**base, change="skipped", detail="exists but was not created by the platform")
    applied = await read_applied(client, desc)
    if applied is None:
        differs = ["not applied by this version"]
    else:
        differs = [part for part, changed in (
            ("action", applied.action != want.fingerprint),
            ("spec", applied.spec_source == "catalogue" and applied.spec != want.spec),
        ) if changed]
    if not differs:
        return ScheduleChange(**base, change="unchanged",
                              detail="spec set through the API" if applied and applied.spec_source == "api" else "")
    if not dry_run:
        await handle.update(lambda inp: want.update(inp.description, applied))
    return ScheduleChange(**base, change="update", detail=f"changed: {', '.join(differs)}")


async def reconcile(
    client: Client,
    pool: asyncpg.Pool,
    *,
    tenant_ids: Sequence[str] | None = None,
    dry_run: bool = False,
    declarations: Mapping[str, ScheduleDecl] = SCHEDULES,
    task_queue: str = WORKFLOWS_QUEUE,
) -> SyncReport:
    """Make Temporal match the declarations: every tenant and the global schedules, or only
    the tenants named (global schedules untouched). ``dry_run`` reports without applying."""
    desired, skipped = await desired_schedules(pool, tenant_ids=tenant_ids, declarations=declarations,
                                               task_queue=task_queue)
    ids = set(desired) | await listed_owned_ids(client, tenant_ids)
    if tenant_ids is not None:
        # Visibility lags a create: also look at every id these tenants could have.
        ids |= {schedule_id(t, d.name) for t in tenant_ids for d in declarations.values() if d.per_tenant}
    # A schedule whose input cannot be built now is left as it is, never deleted for it.
    ids -= {c.schedule_id for c in skipped}
    limit = asyncio.Semaphore(DESCRIBE_CONCURRENCY)

    async def one(sid: str) -> ScheduleChange | None:
        async with limit:
            return await _reconcile_one(client, sid, desired.get(sid), dry_run)

    changes = [c for c in await asyncio.gather(*(one(s) for s in sorted(ids))) if c is not None]
    return SyncReport(dry_run=dry_run, changes=sorted([*changes, *skipped], key=lambda c: c.schedule_id))


async def sync_at_startup(client: Client, pool: asyncpg.Pool) -> SyncReport | None:
    """Apply the declarations when a worker starts; a failure is logged, the worker still runs."""
    try:
        report = await reconcile(client, pool)
    except Exception:  # noqa: BLE001 - schedules must not keep workflows from running
        log.exception("schedules sync at start-up failed; run `bizosaas schedules sync` once it is fixed")
        return None
    for c in report.changes:
        if c.change != "unchanged":
            log.info("schedule %s: %s %s", c.schedule_id, c.change, c.detail)
    log.info("schedules synced: %s", report.summary())
    return report


# --- spec changes through the API -----------------------------------------------------

class SpecPatch(msgspec.Struct, frozen=True, kw_only=True):
    cron: list[str] | None = None
    every_seconds: int | None = None
    time_zone: str | None = None
    jitter_seconds: int | None = None


def patched(spec: SpecParams, patch: SpecPatch) -> SpecParams:
    """``spec`` with the patch applied: a cron replaces an interval and the other way round."""
    changes: dict[str, Any] = {}
    if patch.cron is not None:
        changes |= {"cron": list(patch.cron), "every_seconds": None}
    elif patch.every_seconds is not None:
        changes |= {"cron": [], "every_seconds": patch.every_seconds}
    if patch.time_zone is not None:
        changes["time_zone"] = patch.time_zone
    if patch.jitter_seconds is not None:
        changes["jitter_seconds"] = patch.jitter_seconds or None
    return msgspec.structs.replace(spec, **changes)


class TooFrequent(Exception):
    """The spec would fire more often than its capability allows (``ScheduleDecl.min_interval``)."""

    def __init__(self, minimum: timedelta, gap: timedelta | None) -> None:
        self.minimum, self.gap = minimum, gap
        every = "cannot tell how often it fires" if gap is None else f"it fires every {_human(gap)}"
        super().__init__(f"{every}; this schedule may fire at most once every {_human(minimum)}")


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def check_frequency(decl_name: str, spec: SpecParams) -> None:
    """TooFrequent when ``spec`` fires more often than the declaration's minimum interval (a
    schedule no longer declared keeps the strictest minimum of the catalogue)."""
    decl = SCHEDULES.get(decl_name)
    minimum = decl.min_interval if decl else max(d.min_interval for d in SCHEDULES.values())
    gap = shortest_gap(spec.cron, spec.every_seconds)
    if gap is None or gap < minimum:
        raise TooFrequent(minimum, gap)


async def update_spec(client: Client, schedule_id_: str, patch: SpecPatch) -> SpecParams:
    """Change an owned schedule's spec; marked as set through the API so syncs keep it.
    TooFrequent when the new spec fires more often than the capability's minimum interval.
    The server validates the cron and time zone (``RPCError`` INVALID_ARGUMENT)."""
    result: list[SpecParams] = []

    async def updater(inp: ScheduleUpdateInput) -> ScheduleUpdate:
        desc = inp.description
        memo = await action_memo(client, desc)
        applied = await read_applied(client, desc)
        if applied is None:
            raise ValueError(f"schedule {schedule_id_!r} was not applied by the platform")
        new = patched(applied.spec, patch)
        check_frequency(applied.schedule, new)
        memo[APPLIED_MEMO_KEY] = msgspec.structs.replace(applied, spec=new, spec_source="api")
        action = desc.schedule.action
        action.memo = memo  # type: ignore[attr-defined] - a start-workflow action
        result[:] = [new]
        return ScheduleUpdate(schedule=dataclasses.replace(desc.schedule, spec=new.to_spec(), action=action))

    await client.get_schedule_handle(schedule_id_).update(updater)
    return result[0]
