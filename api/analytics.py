"""GET /v1/analytics/workflows: per capability and day (UTC), how many runs started, completed,
failed (and were canceled, terminated, timed out), and the p50/p95 duration of those that
completed.

Read from Temporal's visibility store, not kept in Postgres: every run of every capability is
there with its ``BizTenantId``/``BizCapability`` search attributes and its StartTime, CloseTime
and ExecutionStatus, whether or not the workflow reached one of its own activities (a run that
fails on bad input, is terminated or times out never would, so a table fed by an activity would
miss exactly the failures). The walk is bounded: one visibility query per call, pages of
:data:`PAGE_SIZE`, at most :data:`MAX_SCANNED` runs; a period with more answers
``truncated: true`` and the counts of the runs read (ask for a shorter period or one capability).
The dev server's visibility is SQLite: the bound keeps a call to a few visibility pages.

Buckets: a run counts as started on the day of its StartTime, and as completed/failed/... on
the day of its CloseTime; ``running`` counts the runs started that day that are still open. Child
workflows (agent loops) are steps of a run, not runs: they are left out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Router, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import Parameter
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus

from api.auth import Principal
from api.paging import Since, Tenant, Until, period
from api.visibility import listed_tenant, quote, tenant_clause, timestamp
from core.names import CAPABILITY, SLUG_PATTERN

PAGE_SIZE = 1000
MAX_SCANNED = 5000
DEFAULT_PERIOD = timedelta(days=7)
LONGEST_PERIOD = timedelta(days=92)

_CLOSED = {
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.FAILED: "failed",
    WorkflowExecutionStatus.CANCELED: "canceled",
    WorkflowExecutionStatus.TERMINATED: "terminated",
    WorkflowExecutionStatus.TIMED_OUT: "timed_out",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "continued_as_new",
}


class DayStats(msgspec.Struct, frozen=True, kw_only=True):
    day: date  # UTC
    capability: str | None  # None: a run started without the BizCapability search attribute
    started: int
    running: int  # of those started this day, still open
    completed: int
    failed: int
    canceled: int
    terminated: int
    timed_out: int
    continued_as_new: int
    # Of the runs that completed this day (nearest rank); None when none completed.
    p50_duration_seconds: float | None
    p95_duration_seconds: float | None


class WorkflowAnalytics(msgspec.Struct, frozen=True, kw_only=True):
    since: datetime
    until: datetime
    scanned: int  # runs read from visibility
    truncated: bool  # more runs matched than one call reads: the counts cover `scanned` runs only
    days: list[DayStats]  # by day, then capability


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..1) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def _capability(wf: WorkflowExecution) -> str | None:
    return wf.typed_search_attributes.get(CAPABILITY) or None


def aggregate(runs: list[WorkflowExecution], start: datetime, end: datetime) -> list[DayStats]:
    counts: dict[tuple[date, str | None], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    durations: dict[tuple[date, str | None], list[float]] = defaultdict(list)
    for wf in runs:
        cap = _capability(wf)
        if wf.start_time is not None and start <= wf.start_time < end:
            key = (wf.start_time.date(), cap)
            counts[key]["started"] += 1
            if wf.status == WorkflowExecutionStatus.RUNNING:
                counts[key]["running"] += 1
        if wf.close_time is not None and start <= wf.close_time < end and wf.status in _CLOSED:
            key = (wf.close_time.date(), cap)
            counts[key][_CLOSED[wf.status]] += 1
            if wf.status == WorkflowExecutionStatus.COMPLETED and wf.start_time is not None:
                durations[key].append((wf.close_time - wf.start_time).total_seconds())
    days = []
    for key in sorted(counts, key=lambda k: (k[0], k[1] or "")):
        c = counts[key]
        days.append(DayStats(
            day=key[0], capability=key[1], started=c["started"], running=c["running"], completed=c["completed"],
            failed=c["failed"], canceled=c["canceled"], terminated=c["terminated"], timed_out=c["timed_out"],
            continued_as_new=c["continued_as_new"], p50_duration_seconds=percentile(durations[key], 0.50),
            p95_duration_seconds=percentile(durations[key], 0.95)))
    return days


class AnalyticsController(Controller):
    path = "/v1/analytics"
    tags = ["analytics"]

    @get("/workflows", operation_id="get_workflow_analytics",
         summary="Runs started, completed and failed, and p50/p95 durations, per capability per day",
         description="Read from Temporal visibility with a bounded walk (at most "
                     f"{MAX_SCANNED} runs a call: `truncated` says when more matched). Filters: `tenant_id`, "
                     "`capability`, the period `since`/`until` (default: the last 7 days; at most 92 days). "
                     "Clients see their tenant's runs, partners their tenants', platform staff every tenant's.",
         raises=[NotFoundException])
    async def workflow_analytics(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                                 tenant_id: Tenant = None,
                                 capability: Annotated[str | None, Parameter(
                                     pattern=SLUG_PATTERN, description="Only this capability")] = None,
                                 since: Since = None, until: Until = None) -> WorkflowAnalytics:
        start, end = period(since, until, default=DEFAULT_PERIOD, longest=LONGEST_PERIOD)
        scope = tenant_clause(request.user, listed_tenant(request.user, tenant_id))
        if scope == "":
            return WorkflowAnalytics(since=start, until=end, scanned=0, truncated=False, days=[])
        a, b = timestamp(start), timestamp(end)
        clauses = [f"(StartTime >= {a} AND StartTime < {b}) OR (CloseTime >= {a} AND CloseTime < {b})",
                   # A capability's runs, not the children they start (agent loops): those are steps.
                   "ParentWorkflowId IS NULL"]
        if scope:
            clauses.append(scope)
        if capability:
            clauses.append(f"BizCapability = {quote(capability)}")
        query = " AND ".join(f"({c})" for c in clauses)
        runs = [wf async for wf in temporal.list_workflows(query, page_size=PAGE_SIZE, limit=MAX_SCANNED + 1)]
        truncated = len(runs) > MAX_SCANNED
        runs = runs[:MAX_SCANNED]
        return WorkflowAnalytics(since=start, until=end, scanned=len(runs), truncated=truncated,
                                 days=aggregate(runs, start, end))


def analytics_router() -> Router:
    return Router(path="/", route_handlers=[AnalyticsController])
