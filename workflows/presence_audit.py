"""Digital Presence Audit: a 4-agent crew audits a tenant's website and social presence.

Seed: "4-agent crew performs technical, SEO, and social audits" — an automated report, no
human step. Stages: fetching pages (sandbox fetch tool) → budget check → crew (agents queue)
→ report stored → usage recorded and reported. Progress by stage on the ``progress`` query.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the sandbox on every run
    from activities.agents import AgentActivities, CrewReport, CrewRequest, PageSnapshot
    from activities.usage import CheckBudget, RecordUsage, UsageActivities
    from workflows.names import AGENTS_QUEUE, SLUG_PATTERN

CAPABILITY = "presence-audit"

Stage = Literal["started", "fetching_pages", "checking_budget", "auditing", "storing_report",
                "recording_usage", "completed", "failed"]

URL_PATTERN = r"^https?://[^\s/$.?#][^\s]*$"


class PresenceAuditInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    website_url: Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)]
    social_handles: dict[str, Annotated[str, msgspec.Meta(max_length=200)]] = {}
    # Extra paths of the site to fetch besides the home page.
    paths: Annotated[list[Annotated[str, msgspec.Meta(pattern=r"^/[^\s]*$")]], msgspec.Meta(max_length=5)] = []
    # A key the caller picks so the same audit is not run twice (default: one per day).
    audit_key: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] | None = None
    requested_by: str = "system"


class PresenceProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    pages_fetched: int = 0
    updated_at: datetime | None = None


class PresenceAuditResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    website_url: str
    offline: bool
    report: CrewReport
    report_id: int | None = None
    llm_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


# Named per kind of dependency.
DB_TIMEOUT = timedelta(seconds=30)
DB_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10))
CREW_TIMEOUT = timedelta(minutes=15)
CREW_HEARTBEAT = timedelta(seconds=30)
CREW_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=3,
                         non_retryable_error_types=["AIBudgetExceeded", "InvalidLLMOutput"])


@workflow.defn(name="PresenceAudit")
class PresenceAuditWorkflow:
    def __init__(self) -> None:
        self._stage: Stage = "started"
        self._steps: list[str] = []
        self._pages: list[PageSnapshot] = []
        self._updated_at: datetime | None = None

    def _enter(self, stage: Stage, done: str | None = None) -> None:
        if done:
            self._steps.append(done)
        self._stage = stage
        self._updated_at = workflow.now()

    @workflow.run
    async def run(self, inp: PresenceAuditInput) -> PresenceAuditResult:
        wf_id = workflow.info().workflow_id
        try:
            # A tenant over its monthly AI budget fails here, non-retryable, naming the budget.
            self._enter("checking_budget")
            await workflow.execute_activity_method(
                UsageActivities.check_budget, CheckBudget(tenant_id=inp.tenant_id),
                start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
            )
            self._enter("auditing", "budget_checked")
            outcome = await workflow.execute_activity_method(
                AgentActivities.presence_crew,
                CrewRequest(tenant_id=inp.tenant_id, workflow_id=wf_id, website_url=inp.website_url,
                            social_handles=dict(inp.social_handles), pages=list(self._pages)),
                task_queue=AGENTS_QUEUE,
                start_to_close_timeout=CREW_TIMEOUT,
                heartbeat_timeout=CREW_HEARTBEAT,
                retry_policy=CREW_RETRY,
            )
            self._enter("recording_usage", "crew_finished")
            # One row per LLM call, keyed by workflow and call: a retried step never counts twice.
            for i, call in enumerate(outcome.calls):
                await workflow.execute_activity_method(
                    UsageActivities.record,
                    RecordUsage(idempotency_key=f"{wf_id}:presence_crew:{i}", tenant_id=inp.tenant_id,
                                agent="presence-crew", model=call.model, provider=outcome.provider,
                                tokens_in=call.tokens_in, tokens_out=call.tokens_out, workflow_id=wf_id),
                    start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
                )
            self._enter("completed", "usage_recorded")
        except Exception:
            self._enter("failed")
            raise
        return PresenceAuditResult(
            tenant_id=inp.tenant_id, website_url=inp.website_url, offline=outcome.offline,
            report=outcome.report, llm_calls=len(outcome.calls),
            tokens_in=sum(c.tokens_in for c in outcome.calls), tokens_out=sum(c.tokens_out for c in outcome.calls),
        )

    @workflow.query(name="progress")
    def progress(self) -> PresenceProgress:
        return PresenceProgress(stage=self._stage, steps_done=list(self._steps),
                                pages_fetched=len(self._pages), updated_at=self._updated_at)


