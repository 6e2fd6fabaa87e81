"""SEO Health Monitor: a weekly technical scan of a tenant's site and the shift since last time.

Seed §10: "Technical scan and ranking shift analysis" — an automated report, no human step.
Stages: AI budget check → pages fetched through the ``fetch_web_page`` MCP tool (the
home page, the ``paths`` given, then internal links found on them up to ``max_pages``) → a
technical scan computed here, deterministically, from what was fetched (status codes, titles
and meta descriptions and their lengths, headings, word counts, load times, broken links among
the fetched pages; each finding an issue with a stable id and a severity, and a technical
score) → the previous seo-health report of the tenant and site (``reports.latest``) → an
agent's analysis (the durable agent loop, ``run_agent``: issues with severity, an overall score
0-100, recommendations, the ranking outlook; offline provider by default) → the shift since the
previous report (score deltas, issues new and resolved by id, per-page changes), computed here →
the report stored (kind ``seo-health``) → usage rows and their Lago events.

Workflow id: ``{tenant}:seo-health:{key}`` from the API (default key: the site's host and the
day); ``{tenant}:seo-health:weekly-{scheduled time}`` from the weekly schedule.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the workflow sandbox on every run
    from activities.mcp.tools import FetchWebPage
    from workflows.tools import call_tool
    from activities.reports import LatestReport, ReportActivities, StoredReport, StoreReport
    from workflows.agent_loop import AgentLoopInput, ToolRef, run_agent
    from core.activity import run_activity
    from core.names import SITE_PATH_PATTERN, SLUG_PATTERN
    from workflows.stages import Stages
    from workflows.presence_audit import FETCH_TOOL, URL_PATTERN
    from workflows.usage import account, check_ai_budget, report_usage
    from workflows.seo_scan import SEVERITIES, Issue, PageScan, Severity, TechnicalScan, technical_scan
    from workflows.seo_scan import netloc_of
    from workflows.seo_scan import normal_url as _normal
    from workflows.seo_scan import page_scan as _page
    from workflows.capability import TENANT_PEOPLE, Capability, ScheduleDecl, host_key

NAME = "seo-health"
AGENT = "seo-analyst"

Stage = Literal["started", "checking_budget", "fetching_pages", "scanning", "loading_previous", "analysing",
                "comparing", "storing_report", "recording_usage", "reporting_usage", "completed", "failed"]


class SeoHealthInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    website_url: Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)]
    # Paths of the site fetched besides the home page (then links found on them).
    paths: Annotated[list[Annotated[str, msgspec.Meta(pattern=SITE_PATH_PATTERN, max_length=500)]],
                     msgspec.Meta(max_length=20)] = []
    # Follow internal links of the fetched pages until max_pages pages were fetched.
    follow_links: bool = True
    max_pages: Annotated[int, msgspec.Meta(ge=1, le=20)] = 8
    # The business key of the workflow id (default: the site's host and the day).
    key: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] | None = None
    requested_by: str = "system"


# --- the agent's analysis -------------------------------------------------------------------

ANALYSIS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "overall_score": {"type": "integer", "minimum": 0, "maximum": 100},
        "summary": {"type": "string", "maxLength": 1000},
        "issues": {"type": "array", "maxItems": 20, "items": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 200},
                "severity": {"type": "string", "enum": list(SEVERITIES)},
                "page": {"type": "string", "maxLength": 500},
                "recommendation": {"type": "string", "maxLength": 500},
            },
            "required": ["title", "severity", "page", "recommendation"],
        }},
        "recommendations": {"type": "array", "items": {"type": "string", "maxLength": 500}, "minItems": 1,
                            "maxItems": 10},
        "ranking_outlook": {"type": "string", "maxLength": 1000},
    },
    "required": ["overall_score", "summary", "issues", "recommendations", "ranking_outlook"],
}


class AgentIssue(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    severity: Severity
    page: str
    recommendation: str


class SeoAnalysis(msgspec.Struct, frozen=True, kw_only=True):
    overall_score: Annotated[int, msgspec.Meta(ge=0, le=100)]
    summary: str
    issues: list[AgentIssue]
    recommendations: list[str]
    ranking_outlook: str


# --- the shift since the previous report -----------------------------------------------------

class FieldChange(msgspec.Struct, frozen=True, kw_only=True):
    field: str
    before: Any = None
    after: Any = None


class PageChange(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    change: Literal["added", "removed", "changed"]
    fields: list[FieldChange] = []


class Shift(msgspec.Struct, frozen=True, kw_only=True):
    first_run: bool  # no earlier seo-health report of this site: nothing to compare
    previous_report_id: int | None = None
    previous_workflow_id: str | None = None
    previous_at: datetime | None = None
    score_before: int | None = None
    score_delta: int | None = None
    technical_score_before: int | None = None
    technical_score_delta: int | None = None
    new_issues: list[Issue] = []
    resolved_issues: list[Issue] = []
    page_changes: list[PageChange] = []


class SeoHealthReport(msgspec.Struct, frozen=True, kw_only=True):
    """The stored report's body."""

    website_url: str
    offline: bool
    score: int  # the analysis' overall score
    technical_score: int
    scan: TechnicalScan
    analysis: SeoAnalysis
    shift: Shift


class SeoHealthResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    website_url: str
    offline: bool
    score: int
    technical_score: int
    shift: Shift
    issues: int = 0  # found by the technical scan
    report_id: int | None = None
    llm_calls: int = 0
    pages: list[str] = []  # the URLs fetched


class SeoHealthProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    pages_fetched: int = 0
    updated_at: datetime | None = None


# --- pure helpers (deterministic: they only read what the activities answered) -------------------

def site_of(url: str) -> str:
    """The report's subject: the site URL without a trailing slash (``https://a.example/`` and
    ``https://a.example`` are one site)."""
    return url.rstrip("/")


# Compared page by page (load time changes every run: a page becoming slow shows as an issue).
_COMPARED = ("status", "title", "meta_description", "h1_count", "headings", "word_count", "broken_links")


def compute_shift(scan: TechnicalScan, score: int | None, previous: StoredReport | None) -> Shift:
    """What changed since the previous report (``score``: the analysis' score, None before the
    analysis); a previous body this version cannot read counts as no previous report."""
    before: SeoHealthReport | None = None
    if previous is not None:
        try:
            before = msgspec.convert(previous.body, SeoHealthReport)
        except msgspec.ValidationError:
            before = None
    if previous is None or before is None:
        return Shift(first_run=True)
    old_issues = {i.id: i for i in before.scan.issues}
    new_issues = {i.id: i for i in scan.issues}
    old_pages = {p.path: p for p in before.scan.pages}
    new_pages = {p.path: p for p in scan.pages}
    changes: list[PageChange] = []
    for path in [*new_pages, *(p for p in old_pages if p not in new_pages)]:
        if path not in old_pages:
            changes.append(PageChange(path=path, change="added"))
        elif path not in new_pages:
            changes.append(PageChange(path=path, change="removed"))
        else:
            fields = [FieldChange(field=f, before=getattr(old_pages[path], f), after=getattr(new_pages[path], f))
                      for f in _COMPARED if getattr(old_pages[path], f) != getattr(new_pages[path], f)]
            if fields:
                changes.append(PageChange(path=path, change="changed", fields=fields))
    return Shift(
        first_run=False, previous_report_id=previous.report_id, previous_workflow_id=previous.workflow_id,
        previous_at=previous.created_at, score_before=before.score,
        score_delta=None if score is None else score - before.score,
        technical_score_before=before.technical_score, technical_score_delta=scan.score - before.technical_score,
        new_issues=[i for k, i in new_issues.items() if k not in old_issues],
        resolved_issues=[i for k, i in old_issues.items() if k not in new_issues],
        page_changes=changes,
    )


def _analysis_task(inp: SeoHealthInput, scan: TechnicalScan, preview: Shift) -> str:
    pages = [{"path": p.path, "status": p.status, "title": p.title, "meta_description": p.meta_description,
              "h1": p.h1_count, "headings": p.headings, "words": p.word_count, "load_ms": round(p.load_ms),
              "broken_links": p.broken_links} for p in scan.pages]
    issues = [{"id": i.id, "severity": i.severity, "detail": i.detail} for i in scan.issues]
    since = ("This is the first scan of the site." if preview.first_run else
             f"Since the previous scan (technical score {preview.technical_score_before}): "
             f"new issues {[i.id for i in preview.new_issues]}, resolved {[i.id for i in preview.resolved_issues]}, "
             f"pages changed {[c.path for c in preview.page_changes]}.")
    task = (f"Assess the SEO health of the website {inp.website_url} for a small business. "
            f"The technical scan (score {scan.score}/100) found these pages: {json.dumps(pages)[:8000]} "
            f"and these issues: {json.dumps(issues)[:6000]}. {since} "
            "You may fetch a page again to look closer. Answer with the issues that matter most (severity, page, "
            "recommendation), an overall score 0-100, the top recommendations, and how the changes are likely to "
            "shift the site's search rankings.")
    return task[:19000]


@workflow.defn(name="SeoHealth")
class SeoHealthWorkflow(Stages):
    def __init__(self) -> None:
        Stages.__init__(self)
        self._pages: list[PageScan] = []

    @workflow.run
    async def run(self, inp: SeoHealthInput) -> SeoHealthResult:
        result = await self.failed_on_error(self._run(inp))
        return result

    async def _run(self, inp: SeoHealthInput) -> SeoHealthResult:
        wf_id = workflow.info().workflow_id
        # A tenant over its monthly AI budget fails here, non-retryable, before any fetch.
        await self.stage("checking_budget")
        await check_ai_budget(inp.tenant_id)

        await self.stage("fetching_pages", "budget_checked")
        links = await self._fetch(inp, wf_id)

        await self.stage("scanning", "pages_fetched")
        scan = technical_scan(self._pages, links)

        await self.stage("loading_previous", "scanned")
        previous = (await run_activity(
            ReportActivities.latest,
            LatestReport(tenant_id=inp.tenant_id, kind=NAME, subject=site_of(inp.website_url),
                         exclude_workflow_id=wf_id))).report
        # The technical part of the shift, for the agent to weigh.
        preview = compute_shift(scan, None, previous)

        await self.stage("analysing", "previous_loaded")
        agent = await run_agent(AgentLoopInput(
            tenant_id=inp.tenant_id, agent=AGENT, output_schema=ANALYSIS_SCHEMA, max_turns=6,
            tools=[ToolRef(tool=FETCH_TOOL)],
            system_prompt="You are a technical SEO analyst for small businesses' websites.",
            task=_analysis_task(inp, scan, preview),
        ))
        try:
            analysis = msgspec.convert(agent.final, SeoAnalysis)
        except msgspec.ValidationError as exc:
            raise ApplicationError(f"the SEO analysis does not match its schema: {exc}", type="InvalidLLMOutput",
                                   non_retryable=True) from None

        await self.stage("comparing", "analysed")
        report = SeoHealthReport(website_url=inp.website_url, offline=agent.offline, score=analysis.overall_score,
                                 technical_score=scan.score, scan=scan, analysis=analysis,
                                 shift=compute_shift(scan, analysis.overall_score, previous))

        await self.stage("storing_report", "compared")
        stored = await run_activity(
            ReportActivities.store,
            StoreReport(tenant_id=inp.tenant_id, kind=NAME, workflow_id=wf_id, subject=site_of(inp.website_url),
                        offline=report.offline, score=report.score, body=msgspec.to_builtins(report)),
        )

        await self.stage("recording_usage", "report_stored")
        usage_ids = await account(inp.tenant_id, AGENT, agent, "seo_analysis")
        await self.stage("reporting_usage", "usage_recorded")
        await report_usage(inp.tenant_id, usage_ids)
        self._enter("completed", "usage_reported")
        return SeoHealthResult(
            tenant_id=inp.tenant_id, website_url=inp.website_url, offline=report.offline, score=report.score,
            technical_score=scan.score, shift=report.shift, issues=len(scan.issues), report_id=stored.report_id,
            llm_calls=len(agent.calls), pages=[p.url for p in self._pages],
        )

    async def _fetch(self, inp: SeoHealthInput, wf_id: str) -> dict[str, list[str]]:
        """Fetch the home page, the paths given, then internal links found, up to max_pages;
        answers each page's internal links by path."""
        base = inp.website_url.rstrip("/")
        host = netloc_of(inp.website_url)
        queue: list[str] = []
        seen: set[str] = set()
        for url in [inp.website_url] + [base + p for p in inp.paths]:
            if _normal(url) not in seen:
                seen.add(_normal(url))
                queue.append(url)
        links: dict[str, list[str]] = {}
        while queue and len(self._pages) < inp.max_pages:
            url = queue.pop(0)
            fetched = await call_tool(inp.tenant_id, FetchWebPage(url=url), step=f"fetch:{len(self._pages)}")
            page, found = _page(url, msgspec.to_builtins(fetched))
            self._pages.append(page)
            links[page.path] = found
            if inp.follow_links:
                for link in found:
                    if link not in seen and netloc_of(link) == host:
                        seen.add(link)
                        queue.append(link)
        return links

    @workflow.query(name="progress")
    def progress(self) -> SeoHealthProgress:
        return SeoHealthProgress(stage=self._stage, steps_done=list(self._steps), pages_fetched=len(self._pages),
                                 updated_at=self._updated_at)


CAPABILITY = Capability(
    name=NAME,
    workflow=SeoHealthWorkflow,
    input_type=SeoHealthInput,
    # One run per site and day unless the caller names a key (schedules: weekly-{time}).
    business_key=lambda inp: inp.key or f"{host_key(inp.website_url)}-{date.today():%Y%m%d}",
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=TENANT_PEOPLE,
    cancel_roles=TENANT_PEOPLE,
    summary="SEO Health Monitor: fetch the site, scan it technically, an agent analyses it; stores a report "
            "with the shift since the last run (score delta, issues new and resolved, pages changed).",
    schedules=(
        ScheduleDecl(
            name="seo-health-weekly",
            key="weekly",
            input=lambda t: SeoHealthInput(
                tenant_id=t.tenant_id, website_url=t.website_url or "", requested_by="schedule"
            ),
            # Monday 07:00 in the tenant's time zone (after the audit); jitter spreads tenants.
            cron=("0 7 * * 1",),
            jitter=timedelta(minutes=30),
            min_interval=timedelta(days=1),
            requires=("website_url",),
            summary="Weekly SEO Health Monitor of the tenant's website: technical scan and the shift since last week.",
        ),
    ),
)
