"""Digital Presence Audit: a 4-agent crew audits a tenant's website and social presence.

Seed: "4-agent crew performs technical, SEO, and social audits" — an automated report, no
human step. Stages: fetching pages (the ``fetch_web_page`` tool) → budget check → crew (agents queue)
→ report stored → usage recorded and reported. Progress by stage on the ``progress`` query.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Literal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the workflow sandbox on every run
    from activities.agents import AgentActivities
    from agents.types import CrewReport, CrewRequest, PageSnapshot
    from activities.mcp.tools import FetchWebPage, WebPage
    from workflows.tools import call_tool
    from activities.reports import ReportActivities, StoreReport
    from core.activity import run_activity
    from core.names import SITE_PATH_PATTERN, SLUG_PATTERN, WEB_URL_PATTERN
    from workflows.stages import Stages
    from workflows.capability import TENANT_PEOPLE, Capability, ScheduleDecl, host_key
    from workflows.usage import account, check_ai_budget, report_usage

NAME = "presence-audit"

Stage = Literal["started", "fetching_pages", "checking_budget", "auditing", "storing_report",
                "recording_usage", "reporting_usage", "completed", "failed"]

URL_PATTERN = WEB_URL_PATTERN


class PresenceAuditInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    website_url: Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)]
    social_handles: dict[str, Annotated[str, msgspec.Meta(max_length=200)]] = {}
    # Extra paths of the site to fetch besides the home page.
    paths: Annotated[list[Annotated[str, msgspec.Meta(pattern=SITE_PATH_PATTERN)]], msgspec.Meta(max_length=5)] = []
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
    pages: list[str] = []  # the URLs fetched


# The tool that reads the site (the MCP registry routes it: the shipped default implements it;
# production may route it to any server with the same tool).
FETCH_TOOL = FetchWebPage.TOOL


def _page_urls(inp: PresenceAuditInput) -> list[str]:
    base = inp.website_url.rstrip("/")
    urls = [inp.website_url] + [base + p for p in inp.paths]
    return list(dict.fromkeys(urls))


def _snapshot(url: str, page: WebPage) -> PageSnapshot:
    """The fetch tool's answer as the crew's page snapshot."""
    return PageSnapshot(
        url=page.final_url or url,
        status=page.status_code or 0,
        title=page.title,
        description=page.meta_description,
        headings=[h.text for h in page.headings][:50],
        links=[link.href for link in page.links][:100],
        word_count=page.word_count,
        load_ms=float(page.load_time_ms),
    )


@workflow.defn(name="PresenceAudit")
class PresenceAuditWorkflow(Stages):
    def __init__(self) -> None:
        Stages.__init__(self)
        self._pages: list[PageSnapshot] = []

    @workflow.run
    async def run(self, inp: PresenceAuditInput) -> PresenceAuditResult:
        wf_id = workflow.info().workflow_id
        try:
            await self.stage("fetching_pages")
            for i, url in enumerate(_page_urls(inp)):
                fetched = await call_tool(inp.tenant_id, FetchWebPage(url=url), step=f"fetch:{i}")
                self._pages.append(_snapshot(url, fetched))
            # A tenant over its monthly AI budget fails here, non-retryable, naming the budget.
            await self.stage("checking_budget", "pages_fetched")
            await check_ai_budget(inp.tenant_id)
            await self.stage("auditing", "budget_checked")
            outcome = await run_activity(
                AgentActivities.presence_crew,
                CrewRequest(tenant_id=inp.tenant_id, workflow_id=wf_id, website_url=inp.website_url,
                            social_handles=dict(inp.social_handles), pages=list(self._pages)),
            )
            await self.stage("storing_report", "crew_finished")
            stored = await run_activity(
                ReportActivities.store,
                StoreReport(tenant_id=inp.tenant_id, kind=NAME, workflow_id=wf_id, subject=inp.website_url,
                            offline=outcome.offline, score=outcome.report.overall_score,
                            body=msgspec.to_builtins(outcome.report)),
            )
            await self.stage("recording_usage", "report_stored")
            usage_ids = await account(inp.tenant_id, "presence-crew", outcome, "presence_crew")
            await self.stage("reporting_usage", "usage_recorded")
            await report_usage(inp.tenant_id, usage_ids)
            self._enter("completed", "usage_reported")
        except Exception:
            self._enter("failed")
            raise
        return PresenceAuditResult(
            tenant_id=inp.tenant_id, website_url=inp.website_url, offline=outcome.offline,
            report=outcome.report, report_id=stored.report_id, llm_calls=len(outcome.calls),
            tokens_in=sum(c.tokens_in for c in outcome.calls), tokens_out=sum(c.tokens_out for c in outcome.calls),
            pages=[p.url for p in self._pages],
        )

    @workflow.query(name="progress")
    def progress(self) -> PresenceProgress:
        return PresenceProgress(stage=self._stage, steps_done=list(self._steps),
                                pages_fetched=len(self._pages), updated_at=self._updated_at)




CAPABILITY = Capability(
    name=NAME,
    workflow=PresenceAuditWorkflow,
    input_type=PresenceAuditInput,
    # One audit per site and day unless the caller names a key (runs in the API only).
    business_key=lambda inp: inp.audit_key or f"{host_key(inp.website_url)}-{date.today():%Y%m%d}",
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=TENANT_PEOPLE,
    cancel_roles=TENANT_PEOPLE,
    summary="Audit a website and its social presence with a 4-agent crew; stores a typed report.",
    schedules=(
        ScheduleDecl(
            name="presence-audit-weekly",
            key="weekly",
            input=lambda t: PresenceAuditInput(
                tenant_id=t.tenant_id, website_url=t.website_url or "", requested_by="schedule"
            ),
            # Monday 06:00 in the tenant's time zone; jitter spreads tenants over half an hour.
            cron=("0 6 * * 1",),
            jitter=timedelta(minutes=30),
            min_interval=timedelta(days=1),
            requires=("website_url",),
            summary="Weekly Digital Presence Audit of the tenant's website.",
        ),
    ),
)
