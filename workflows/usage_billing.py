"""Usage billing sweep: every LLM call is billed, whatever became of the workflow that made it.

Each workflow bills its own ``llm_usage`` rows when it ends (completed, rejected, canceled).
Some rows it never sees: a workflow an admin terminated runs no more code, a worker that died
mid-run leaves a run that failed, and an agent attempt that timed out can still finish its LLM
calls, and record them, after its workflow has billed. The sweep sends every unreported row
recorded more than ``settled_minutes`` ago to Lago (one event per row, the row's idempotency key
as Lago's transaction id, so a row its workflow bills at the same moment still counts once) and
marks it reported. Hourly for the platform, and on demand by finance and admins, for every
tenant or the named ones. Workflow id ``global:usage-billing:{key}``, the key the start's UTC minute
(``202611261705``) or the schedule's ``hourly-{scheduled time}``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the workflow sandbox on every run
    from activities.lago import LagoActivities, ReportUsage
    from core.activity import run_activity
    from core.names import PLATFORM_TENANT, PROGRESS_QUERY, SLUG_PATTERN
    from workflows.capability import ADMINS, Capability, ScheduleDecl
    from workflows.stages import Stages

NAME = "usage-billing"

Stage = Literal["started", "billing", "completed", "failed"]

# Rows per activity call.
BATCH = 500


class UsageBillingInput(msgspec.Struct, frozen=True, kw_only=True):
    # Rows younger than this are left to their workflow, which bills them when it ends.
    settled_minutes: Annotated[int, msgspec.Meta(
        ge=0, le=10080, description="bill rows recorded at least this many minutes ago (0: all)")] = 30
    # Only these tenants' rows; None: every tenant's.
    tenant_ids: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]], msgspec.Meta(min_length=1, max_length=500)
    ] | None = None
    # The business key of the run; None: the minute it was asked for.
    key: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)] | None = None
    # At most this many rows per tenant named (or in all, for every tenant); the next run bills the rest.
    max_rows: Annotated[int, msgspec.Meta(
        ge=1, le=100_000, description="bill at most this many rows per tenant named (or in all); "
                                      "the next run bills the rest")] = 20_000
    # Who asked (filled by the API from the authenticated caller, never from the body).
    requested_by: str = "system"


class UsageBillingResult(msgspec.Struct, frozen=True, kw_only=True):
    recorded_before: datetime  # rows recorded before this time were looked at
    billed: int  # rows marked reported
    sent: int  # events Lago took as new
    duplicates: int  # events Lago already had (billed by their workflow, or a retry)
    more: bool  # the run stopped at max_rows: rows may be left for the next run


class UsageBillingProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    billed: int
    updated_at: datetime | None = None


@workflow.defn(name="UsageBillingSweep")
class UsageBillingWorkflow(Stages):
    def __init__(self) -> None:
        Stages.__init__(self)
        self._billed = 0

    @workflow.run
    async def run(self, inp: UsageBillingInput) -> UsageBillingResult:
        return await self.failed_on_error(self._run(inp))

    async def _run(self, inp: UsageBillingInput) -> UsageBillingResult:
        before = workflow.now() - timedelta(minutes=inp.settled_minutes)
        sent = duplicates = 0
        more = False
        await self.stage("billing")
        for tenant_id in sorted(set(inp.tenant_ids)) if inp.tenant_ids else [None]:
            left = inp.max_rows
            while left > 0:
                report = await run_activity(LagoActivities.report_usage, ReportUsage(
                    tenant_id=tenant_id, created_before=before, limit=min(BATCH, left)))
                self._billed += len(report.usage_ids)
                left -= len(report.usage_ids)
                sent, duplicates = sent + report.sent, duplicates + report.duplicates
                if not report.more or not report.usage_ids:
                    break
            else:
                more = True
        self._enter("completed", "usage_billed")
        return UsageBillingResult(recorded_before=before, billed=self._billed, sent=sent, duplicates=duplicates,
                                  more=more)

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> UsageBillingProgress:
        return UsageBillingProgress(stage=self._stage, steps_done=list(self._steps), billed=self._billed,
                                    updated_at=self._updated_at)


CAPABILITY = Capability(
    name=NAME,
    workflow=UsageBillingWorkflow,
    input_type=UsageBillingInput,
    business_key=lambda inp: inp.key or f"{datetime.now(UTC):%Y%m%d%H%M}",
    tenant_in_input=lambda inp: PLATFORM_TENANT,
    start_roles=ADMINS | {"finance"},  # finance closes billing periods
    summary="Usage billing sweep: send every LLM usage row not yet billed (of every tenant, or the named ones) to "
            "Lago, once each: calls of workflows that were terminated or failed, and of agent attempts that "
            "finished after their workflow billed. Hourly, and on demand.",
    schedules=(
        ScheduleDecl(
            name="usage-billing-hourly",
            key="hourly",
            input=lambda t: UsageBillingInput(requested_by="schedule"),
            every=timedelta(hours=1),
            per_tenant=False,
            min_interval=timedelta(minutes=15),
            summary="Hourly: bill LLM usage rows no workflow billed.",
        ),
    ),
)
