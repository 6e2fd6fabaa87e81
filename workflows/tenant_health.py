"""Tenant Health Guardian: the platform's daily look at every tenant (admin portal).

One activity reads each tenant's signals of the last hours from its own rows: approvals that
escalated or timed out, orders that failed, webhook deliveries the platform could not handle,
and this month's AI spend against the tenant's budget. The workflow scores each tenant
(:func:`assess`, pure: 100 is healthy), compares with the previous report (tenants newly at
risk, tenants recovered) and stores the report (``reports``, kind ``tenant-health``, tenant
``global``). Admins start it, or its daily schedule does. Workflow id:
``global:tenant-health:{key}``, the key the day (``20261126``) or the schedule's
``daily-{scheduled time}``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the workflow sandbox on every run
    from activities.reports import LatestReport, ReportActivities, StoreReport
    from activities.tenants import HealthSignalsRequest, TenantActivities, TenantSignals
    from core.activity import run_activity
    from core.names import PLATFORM_TENANT, PROGRESS_QUERY, SLUG_PATTERN
    from workflows.stages import Stages
    from workflows.capability import ADMINS, Capability, ScheduleDecl

NAME = "tenant-health"

Level = Literal["healthy", "watch", "at_risk"]
Stage = Literal["started", "collecting", "comparing", "storing", "completed", "failed"]

# A score of at least HEALTHY is healthy, at least WATCH is worth a look, below it at risk.
HEALTHY, WATCH = 80, 50


class TenantHealthInput(msgspec.Struct, frozen=True, kw_only=True):
    window_hours: Annotated[int, msgspec.Meta(ge=1, le=720, description="how far back to look")] = 24
    # Only these tenants (a partner's book, a support case); None: every tenant not closed.
    tenant_ids: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]], msgspec.Meta(min_length=1, max_length=500)
    ] | None = None
    # The business key of the run; None: the day (one run per day unless named).
    key: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)] | None = None
    # Who asked (filled by the API from the authenticated caller, never from the body).
    requested_by: str = "system"


class TenantHealth(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    score: int  # 0-100
    level: Level
    reasons: list[str]  # why points were taken, worst first as found


class TenantHealthResult(msgspec.Struct, frozen=True, kw_only=True):
    report_id: int
    checked: int
    at_risk: list[str]
    watch: list[str]
    newly_at_risk: list[str]  # at risk now, not in the previous report
    recovered: list[str]  # at risk in the previous report, not now
    tenants: list[TenantHealth]


class TenantHealthProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    updated_at: datetime | None = None


def assess(s: TenantSignals) -> TenantHealth:
    """A tenant's score from its signals: each problem takes points, bounded per kind."""
    score, reasons = 100, []

    def take(points: int, why: str) -> None:
        nonlocal score
        score -= points
        reasons.append(why)

    if s.status == "suspended":
        take(60, "suspended")
    if s.approvals_timed_out:
        take(min(45, 15 * s.approvals_timed_out), f"{s.approvals_timed_out} approval(s) timed out undecided")
    if s.approvals_escalated:
        take(min(20, 5 * s.approvals_escalated), f"{s.approvals_escalated} approval(s) escalated")
    if s.orders_failed:
        share = s.orders_failed / max(s.orders, s.orders_failed)
        take(25 if share >= 0.2 else 10, f"{s.orders_failed} of {max(s.orders, s.orders_failed)} orders failed")
    if s.webhooks_failed:
        take(15 if s.webhooks_failed >= 3 else 5, f"{s.webhooks_failed} webhook deliveries failed")
    if s.ai_budget_usd is not None and s.ai_budget_usd > 0:
        used = s.ai_spend_month_usd / s.ai_budget_usd
        if used >= 1:
            take(30, f"AI budget spent ({s.ai_spend_month_usd:.2f} of {s.ai_budget_usd:.2f} USD)")
        elif used >= Decimal("0.8"):
            take(15, f"AI budget {used:.0%} spent")
    score = max(score, 0)
    level: Level = "healthy" if score >= HEALTHY else "watch" if score >= WATCH else "at_risk"
    return TenantHealth(tenant_id=s.tenant_id, score=score, level=level, reasons=reasons)


def subject_of(inp: TenantHealthInput) -> str:
    """What a report covers: the platform, or the named tenants (compared only with the same)."""
    return "platform" if inp.tenant_ids is None else "tenants:" + ",".join(sorted(set(inp.tenant_ids)))[:1000]


@workflow.defn(name="TenantHealthGuardian")
class TenantHealthWorkflow(Stages):
    @workflow.run
    async def run(self, inp: TenantHealthInput) -> TenantHealthResult:
        wf_id = workflow.info().workflow_id
        try:
            await self.stage("collecting")
            signals = await run_activity(TenantActivities.health_signals, HealthSignalsRequest(
                as_of=workflow.now(), window_hours=inp.window_hours, tenant_ids=inp.tenant_ids))
            tenants = [assess(s) for s in signals.tenants]
            at_risk = [t.tenant_id for t in tenants if t.level == "at_risk"]

            await self.stage("comparing", "signals_collected")
            previous = (await run_activity(ReportActivities.latest, LatestReport(
                tenant_id=PLATFORM_TENANT, kind=NAME, subject=subject_of(inp), exclude_workflow_id=wf_id),
            )).report
            before = set(previous.body.get("at_risk") or []) if previous else set()

            await self.stage("storing", "compared")
            result = TenantHealthResult(
                report_id=0, checked=len(tenants), at_risk=at_risk,
                watch=[t.tenant_id for t in tenants if t.level == "watch"],
                newly_at_risk=[t for t in at_risk if t not in before],
                recovered=sorted(before - set(at_risk)), tenants=tenants,
            )
            body = msgspec.to_builtins(result)
            del body["report_id"]
            stored = await run_activity(ReportActivities.store, StoreReport(
                tenant_id=PLATFORM_TENANT, kind=NAME, workflow_id=wf_id, subject=subject_of(inp),
                offline=False, body={**body, "window_hours": inp.window_hours, "requested_by": inp.requested_by},
                score=min((t.score for t in tenants), default=100)))
            self._enter("completed", "report_stored")
        except Exception:
            self._enter("failed")
            raise
        return msgspec.structs.replace(result, report_id=stored.report_id)

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> TenantHealthProgress:
        return TenantHealthProgress(stage=self._stage, steps_done=list(self._steps), updated_at=self._updated_at)


CAPABILITY = Capability(
    name=NAME,
    workflow=TenantHealthWorkflow,
    input_type=TenantHealthInput,
    business_key=lambda inp: inp.key or f"{date.today():%Y%m%d}",
    tenant_in_input=lambda inp: PLATFORM_TENANT,
    start_roles=ADMINS,
    summary="Tenant Health Guardian: score every tenant (or the named ones) from its last hours: approvals timed "
            "out or escalated, failed orders and webhook deliveries, AI spend against budget; stores a report with "
            "the tenants newly at risk and those recovered. Daily, and on demand.",
    schedules=(
        ScheduleDecl(
            name="tenant-health-daily",
            key="daily",
            input=lambda t: TenantHealthInput(requested_by="schedule"),
            cron=("0 5 * * *",),  # 05:00 UTC, once for the platform
            per_tenant=False,
            min_interval=timedelta(hours=6),
            summary="Daily Tenant Health Guardian over every tenant.",
        ),
    ),
)
