"""Competitor Insight Engine: the competitors' prices and notable changes, weekly, with the shift
since the last run.

Seed §10A: "Real-time pricing and update tracking" — an automated report, no human step.
Stages: AI budget check → the competitors (the input's, else the tenant's ``competitors``
setting) → each competitor's page fetched through the ``fetch_web_page`` MCP tool, with its
content (structured data, meta properties, text) → prices and notable facts extracted here,
deterministically (workflows/price_extract.py: JSON-LD, microdata, OpenGraph, then price
patterns in the text; the title, headline, promotions and internal pages) → an agent reads the
prices of a page where none of that found any (``run_agent``; a price it gives is kept only if
that amount is written on the page) → the previous competitor-insight report of the tenant
(``reports.latest``) → the shift since then, computed here (prices up or down by amount and
percent, products added and removed, promotions new and ended, title and headline changes,
pages newly linked) → an analyst agent's summary and recommendations → the report stored (kind
``competitor-insight``) → usage rows and their Lago events.

A competitor whose page cannot be fetched (unreachable, refused) is reported as such and the
others go on; its products are not reported removed.

Workflow id: ``{tenant}:competitor-insight:{key}`` from the API (default key: the day);
``{tenant}:competitor-insight:weekly-{scheduled time}`` from the weekly schedule.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the workflow sandbox on every run
    from activities.mcp.tools import FetchWebPage, TextBlock, WebPage
    from activities.reports import LatestReport, ReportActivities, StoredReport, StoreReport
    from activities.tenants import CapabilitySettingsRequest, TenantActivities
    from core.activity import raise_if_cancelled, run_activity
    from core.names import SLUG_PATTERN
    from workflows.agent_loop import AgentLoopInput, AgentLoopResult, run_agent
    from workflows.capability import TENANT_PEOPLE, Capability, ScheduleDecl
    from workflows.presence_audit import URL_PATTERN
    from workflows.price_extract import (CURRENCIES, PageFacts, PriceFound, Promotion, page_facts, parse_amount,
                                         product_key)
    from workflows.stages import Stages
    from workflows.tools import call_tool
    from workflows.usage import account, check_ai_budget, report_usage

NAME = "competitor-insight"
SUBJECT = "competitors"  # one series of reports per tenant: competitors are matched by URL inside
EXTRACTOR = "price-extractor"
ANALYST = "competitor-analyst"
MAX_COMPETITORS = 10

Stage = Literal["started", "checking_budget", "loading_competitors", "fetching_pages", "extracting",
                "agent_extracting", "loading_previous", "comparing", "analysing", "storing_report",
                "recording_usage", "reporting_usage", "completed", "failed"]


class Competitor(msgspec.Struct, frozen=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
    # The page to watch: a product, pricing or home page.
    url: Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)]


def _site(url: str) -> str:
    """A competitor's identity from run to run: its URL without a trailing slash, host in lower case."""
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}".rstrip("/")


def _check_competitors(competitors: list[Competitor] | None) -> None:
    """Two entries for one page (or under one name) would be compared with each other."""
    if not competitors:
        return
    for what, key in (("url", lambda c: _site(c.url)), ("name", lambda c: c.name.casefold())):
        seen: set[str] = set()
        for c in competitors:
            if key(c) in seen:
                raise ValueError(f"competitors: two competitors have the {what} {getattr(c, what)!r}")
            seen.add(key(c))


Competitors = Annotated[list[Competitor], msgspec.Meta(max_length=MAX_COMPETITORS)]


class CompetitorInsightSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's watch list (``GET/PUT /v1/tenants/{tenant}/settings/competitor-insight``): what the
    weekly schedule reads, and a run started without ``competitors``."""

    competitors: Competitors = []

    def __post_init__(self) -> None:
        _check_competitors(self.competitors)


class CompetitorInsightInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    # None: the tenant's setting (the schedule's runs). Given: these, for this run.
    competitors: Annotated[list[Competitor], msgspec.Meta(min_length=1, max_length=MAX_COMPETITORS)] | None = None
    # The business key of the workflow id (default: the day).
    key: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] | None = None
    requested_by: str = "system"

    def __post_init__(self) -> None:
        _check_competitors(self.competitors)


# --- what a run found, and what changed ----------------------------------------------------------

class CompetitorSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    url: str
    ok: bool  # the page was read (2xx)
    status_code: int | None = None
    error: str | None = None  # why it was not read
    title: str | None = None
    headline: str | None = None
    prices: list[PriceFound] = []
    promotions: list[Promotion] = []
    pages: list[str] = []  # the internal pages it links
    # Who found the prices: the deterministic extraction, the agent, or nobody.
    extracted_by: Literal["deterministic", "agent", "none"] = "none"


class PriceChange(msgspec.Struct, frozen=True, kw_only=True):
    product: str
    currency: str | None
    period: str | None
    before: Decimal
    after: Decimal
    change: Decimal  # after - before
    percent: float | None  # of the price before, to 0.1 (None when it was 0)
    direction: Literal["up", "down"]


class FieldChange(msgspec.Struct, frozen=True, kw_only=True):
    field: str  # "title", "headline"
    before: str | None = None
    after: str | None = None


class CompetitorShift(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    url: str
    first_seen: bool  # not in the previous report: nothing to compare
    # False when this run or the previous one could not read the page: no product is called removed.
    compared: bool = True
    price_changes: list[PriceChange] = []
    products_added: list[PriceFound] = []
    products_removed: list[PriceFound] = []
    promotions_new: list[Promotion] = []
    promotions_ended: list[Promotion] = []
    changes: list[FieldChange] = []
    pages_new: list[str] = []
    pages_removed: list[str] = []


class Shift(msgspec.Struct, frozen=True, kw_only=True):
    first_run: bool  # no earlier competitor-insight report of the tenant
    previous_report_id: int | None = None
    previous_workflow_id: str | None = None
    previous_at: datetime | None = None
    competitors: list[CompetitorShift] = []
    competitors_dropped: list[str] = []  # watched last time, not this time (their URLs)


# --- the agents ----------------------------------------------------------------------------------

# The price as digits ("none" when the page shows no price): the offline provider answers with the
# first such word of the task, i.e. the first amount written on the page, and a real model is held
# to a form the workflow can check against the page.
EXTRACT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "product": {"type": "string", "maxLength": 200},
        "price": {"type": "string", "pattern": r"^(?:[0-9]{1,9}(?:[.,][0-9]{1,3})*|none)$"},
        "currency": {"type": "string", "pattern": r"^[A-Z]{3}$"},
    },
    "required": ["product", "price", "currency"],
}


class AgentPrice(msgspec.Struct, frozen=True, kw_only=True):
    product: str
    price: str
    currency: str


ANALYSIS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "maxLength": 1500},
        "highlights": {"type": "array", "items": {"type": "string", "maxLength": 300}, "maxItems": 10},
        "recommendations": {"type": "array", "items": {"type": "string", "maxLength": 500}, "minItems": 1,
                            "maxItems": 8},
    },
    "required": ["summary", "highlights", "recommendations"],
}


class CompetitorAnalysis(msgspec.Struct, frozen=True, kw_only=True):
    summary: str
    highlights: list[str]
    recommendations: list[str]


class CompetitorInsightReport(msgspec.Struct, frozen=True, kw_only=True):
    """The stored report's body."""

    offline: bool
    competitors: list[CompetitorSnapshot]
    analysis: CompetitorAnalysis
    shift: Shift


class CompetitorInsightResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    offline: bool
    competitors: int
    prices: int  # found on all pages
    shift: Shift
    report_id: int | None = None
    llm_calls: int = 0
    unreachable: list[str] = []  # names of the competitors whose page was not read


class CompetitorInsightProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    pages_fetched: int = 0
    updated_at: datetime | None = None


# --- pure helpers (deterministic: they only read what the activities answered) -------------------

def snapshot(competitor: Competitor, page: WebPage | None, error: str | None = None) -> CompetitorSnapshot:
    """What the run read of one competitor (``page`` None: the tool refused the URL, ``error``)."""
    if page is None or not page.ok:
        why = error or (page.error if page is not None else None) or (
            f"HTTP {page.status_code}" if page is not None and page.status_code else "not fetched")
        return CompetitorSnapshot(name=competitor.name, url=competitor.url, ok=False, error=why,
                                  status_code=page.status_code if page is not None else None)
    facts: PageFacts = page_facts(page)
    return CompetitorSnapshot(name=competitor.name, url=competitor.url, ok=True, status_code=page.status_code,
                              title=facts.title, headline=facts.headline, prices=facts.prices,
                              promotions=facts.promotions, pages=facts.pages,
                              extracted_by="deterministic" if facts.prices else "none")


def _numbers(blocks: list[TextBlock], title: str | None) -> set[Decimal]:
    found = set()
    for text in [title or "", *(b.text for b in blocks)]:
        for m in re.finditer(r"\d[\d.,\u00a0\u202f ]*\d|\d", text):
            amount = parse_amount(m.group().strip(" .,"))
            if amount is not None:
                found.add(amount)
    return found


def agent_price(answer: AgentPrice, page: WebPage, fallback_name: str) -> PriceFound | None:
    """The agent's price, kept only when that amount is written on the page (a model that invents
    a price is not believed); its currency only when it is a known ISO 4217 code."""
    amount = parse_amount(answer.price) if answer.price != "none" else None
    if amount is None or amount == 0 or amount not in _numbers(page.text_blocks, page.title):
        return None
    currency = answer.currency if answer.currency in CURRENCIES else None
    product = " ".join(answer.product.split())[:200] or fallback_name
    return PriceFound(product=product, amount=amount, currency=currency, source="agent")


def _percent(before: Decimal, after: Decimal) -> float | None:
    if before == 0:
        return None
    return round(float((after - before) * 100 / before), 1)


def compare_competitor(now: CompetitorSnapshot, before: CompetitorSnapshot | None) -> CompetitorShift:
    if before is None:
        return CompetitorShift(name=now.name, url=now.url, first_seen=True)
    if not (now.ok and before.ok):
        return CompetitorShift(name=now.name, url=now.url, first_seen=False, compared=False)
    old = {product_key(p): p for p in before.prices}
    new = {product_key(p): p for p in now.prices}
    changes = []
    for key, p in new.items():
        if key in old and old[key].amount != p.amount:
            was = old[key].amount
            changes.append(PriceChange(product=p.product, currency=p.currency, period=p.period, before=was,
                                       after=p.amount, change=p.amount - was, percent=_percent(was, p.amount),
                                       direction="up" if p.amount > was else "down"))
    old_pages, new_pages = set(before.pages), set(now.pages)
    old_promos = {p.label for p in before.promotions}
    new_promos = {p.label for p in now.promotions}
    fields = [FieldChange(field=f, before=getattr(before, f), after=getattr(now, f))
              for f in ("title", "headline") if getattr(before, f) != getattr(now, f)]
    return CompetitorShift(
        name=now.name, url=now.url, first_seen=False, price_changes=changes,
        products_added=[p for k, p in new.items() if k not in old],
        products_removed=[p for k, p in old.items() if k not in new],
        promotions_new=[p for p in now.promotions if p.label not in old_promos],
        promotions_ended=[p for p in before.promotions if p.label not in new_promos],
        changes=fields,
        pages_new=[p for p in now.pages if p not in old_pages],
        pages_removed=[p for p in before.pages if p not in new_pages],
    )


def compute_shift(snapshots: list[CompetitorSnapshot], previous: StoredReport | None) -> Shift:
    """What changed since the previous report, competitor by competitor (matched by URL); a
    previous body this version cannot read counts as no previous report."""
    before: CompetitorInsightReport | None = None
    if previous is not None:
        try:
            before = msgspec.convert(previous.body, CompetitorInsightReport, strict=False)
        except msgspec.ValidationError:
            before = None
    if previous is None or before is None:
        return Shift(first_run=True, competitors=[compare_competitor(s, None) for s in snapshots])
    old = {_site(s.url): s for s in before.competitors}
    watched = {_site(s.url) for s in snapshots}
    return Shift(
        first_run=False, previous_report_id=previous.report_id, previous_workflow_id=previous.workflow_id,
        previous_at=previous.created_at,
        competitors=[compare_competitor(s, old.get(_site(s.url))) for s in snapshots],
        competitors_dropped=[s.url for k, s in old.items() if k not in watched],
    )


def _extract_task(competitor: Competitor, page: WebPage) -> str:
    # The page comes first and the instructions after it hold no digits: the offline provider
    # takes the first amount of the page (README: Competitor Insight Engine).
    text = " | ".join(b.text for b in page.text_blocks)[:12000]
    return (f"Here is a competitor's web page. Its title: {page.title or '(none)'}. Its text, block by block: "
            f"{text} . End of the page. It shows no price in structured data or in a usual price format. "
            "Find the main product or plan it offers and its price: the price as digits exactly as written on "
            "the page, the currency as a three-letter code; when the page shows no price at all, answer the "
            "price \"none\" and the currency \"XXX\". "
            f"The competitor: {competitor.name}, {competitor.url}")[:19000]


def _analysis_task(snapshots: list[CompetitorSnapshot], shift: Shift) -> str:
    seen = [{"name": s.name, "url": s.url, "read": s.ok, "error": s.error, "title": s.title,
             "headline": s.headline,
             "prices": [{"product": p.product, "amount": str(p.amount), "currency": p.currency, "period": p.period,
                         "source": p.source} for p in s.prices[:20]],
             "promotions": [p.label for p in s.promotions]} for s in snapshots]
    changed = [{"name": c.name, "first_seen": c.first_seen,
                "prices": [f"{p.product}: {p.before} -> {p.after} ({p.percent}%)" for p in c.price_changes],
                "added": [p.product for p in c.products_added], "removed": [p.product for p in c.products_removed],
                "new_promotions": [p.label for p in c.promotions_new], "pages_new": c.pages_new[:20]}
               for c in shift.competitors]
    since = "This is the first run." if shift.first_run else f"Since the previous run: {json.dumps(changed)[:6000]}."
    return (f"Compare a small business's competitors from what their pages show: {json.dumps(seen)[:10000]}. "
            f"{since} Summarise their pricing and moves, list the highlights, and recommend what the business "
            "should do about its own prices and promotions.")[:19000]


@workflow.defn(name="CompetitorInsight")
class CompetitorInsightWorkflow(Stages):
    def __init__(self) -> None:
        Stages.__init__(self)
        self._fetched = 0

    @workflow.run
    async def run(self, inp: CompetitorInsightInput) -> CompetitorInsightResult:
        result = await self.failed_on_error(self._run(inp))
        return result

    async def _run(self, inp: CompetitorInsightInput) -> CompetitorInsightResult:
        wf_id = workflow.info().workflow_id
        await self.stage("checking_budget")
        await check_ai_budget(inp.tenant_id)

        await self.stage("loading_competitors", "budget_checked")
        competitors = inp.competitors
        if competitors is None:
            read = await run_activity(TenantActivities.capability_settings,
                                      CapabilitySettingsRequest(tenant_id=inp.tenant_id, capability=NAME))
            competitors = msgspec.convert(read.settings, CompetitorInsightSettings, strict=False).competitors
        if not competitors:
            raise ApplicationError(f"tenant {inp.tenant_id!r} watches no competitors: set them in its "
                                   f"{NAME} settings (competitors)", type="NoCompetitors", non_retryable=True)

        await self.stage("fetching_pages", "competitors_loaded")
        pages: list[tuple[WebPage | None, str | None]] = []
        for i, competitor in enumerate(competitors):
            pages.append(await self._fetch(inp.tenant_id, competitor, i))

        await self.stage("extracting", "pages_fetched")
        snapshots = [snapshot(c, page, error) for c, (page, error) in zip(competitors, pages, strict=True)]

        await self.stage("agent_extracting", "extracted")
        agents: list[tuple[str, AgentLoopResult]] = []
        for i, (competitor, (page, _)) in enumerate(zip(competitors, pages, strict=True)):
            if page is None or not snapshots[i].ok or snapshots[i].prices:
                continue
            agent = await run_agent(AgentLoopInput(
                tenant_id=inp.tenant_id, agent=EXTRACTOR, output_schema=EXTRACT_SCHEMA, max_turns=3,
                system_prompt="You read prices on competitors' web pages for a small business.",
                task=_extract_task(competitor, page)), key=f"c{i}")
            agents.append((EXTRACTOR, agent))
            try:
                answer = msgspec.convert(agent.final, AgentPrice)
            except msgspec.ValidationError as exc:
                raise ApplicationError(f"the price extraction does not match its schema: {exc}",
                                       type="InvalidLLMOutput", non_retryable=True) from None
            found = agent_price(answer, page, snapshots[i].headline or snapshots[i].title or competitor.name)
            if found is not None:
                snapshots[i] = msgspec.structs.replace(snapshots[i], prices=[found], extracted_by="agent")

        await self.stage("loading_previous", "agent_extracted")
        previous = (await run_activity(
            ReportActivities.latest,
            LatestReport(tenant_id=inp.tenant_id, kind=NAME, subject=SUBJECT, exclude_workflow_id=wf_id))).report

        await self.stage("comparing", "previous_loaded")
        shift = compute_shift(snapshots, previous)

        await self.stage("analysing", "compared")
        analyst = await run_agent(AgentLoopInput(
            tenant_id=inp.tenant_id, agent=ANALYST, output_schema=ANALYSIS_SCHEMA, max_turns=3,
            system_prompt="You are a pricing and competition analyst for small businesses.",
            task=_analysis_task(snapshots, shift)))
        agents.append((ANALYST, analyst))
        try:
            analysis = msgspec.convert(analyst.final, CompetitorAnalysis)
        except msgspec.ValidationError as exc:
            raise ApplicationError(f"the competitor analysis does not match its schema: {exc}",
                                   type="InvalidLLMOutput", non_retryable=True) from None
        offline = any(a.offline for _, a in agents)
        report = CompetitorInsightReport(offline=offline, competitors=snapshots, analysis=analysis, shift=shift)

        await self.stage("storing_report", "analysed")
        stored = await run_activity(
            ReportActivities.store,
            StoreReport(tenant_id=inp.tenant_id, kind=NAME, workflow_id=wf_id, subject=SUBJECT, offline=offline,
                        body=msgspec.to_builtins(report)),
        )

        await self.stage("recording_usage", "report_stored")
        usage_ids: list[int] = []
        for n, (agent_name, outcome) in enumerate(agents):
            usage_ids += await account(inp.tenant_id, agent_name, outcome, f"{agent_name}:{n}")
        await self.stage("reporting_usage", "usage_recorded")
        await report_usage(inp.tenant_id, usage_ids)
        self._enter("completed", "usage_reported")
        return CompetitorInsightResult(
            tenant_id=inp.tenant_id, offline=offline, competitors=len(snapshots),
            prices=sum(len(s.prices) for s in snapshots), shift=shift, report_id=stored.report_id,
            llm_calls=sum(len(a.calls) for _, a in agents), unreachable=[s.name for s in snapshots if not s.ok])

    async def _fetch(self, tenant_id: str, competitor: Competitor, i: int) -> tuple[WebPage | None, str | None]:
        """The competitor's page with its content; a URL the tool refuses for good is that
        competitor's error, not the run's (an unreachable page comes back as a page, ``ok`` false)."""
        try:
            page = await call_tool(tenant_id, FetchWebPage(url=competitor.url, include_content=True),
                                   step=f"fetch:{i}")
        except ActivityError as err:
            raise_if_cancelled(err)
            cause = err.cause
            return None, (cause.message if isinstance(cause, ApplicationError) else str(cause or err))[:500]
        except ApplicationError as err:  # the answer did not fit the tool's result
            return None, err.message[:500]
        self._fetched += 1
        return page, None

    @workflow.query(name="progress")
    def progress(self) -> CompetitorInsightProgress:
        return CompetitorInsightProgress(stage=self._stage, steps_done=list(self._steps),
                                         pages_fetched=self._fetched, updated_at=self._updated_at)


CAPABILITY = Capability(
    name=NAME,
    workflow=CompetitorInsightWorkflow,
    input_type=CompetitorInsightInput,
    # One run per day unless the caller names a key (schedules: weekly-{time}).
    business_key=lambda inp: inp.key or f"{date.today():%Y%m%d}",
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=TENANT_PEOPLE,
    cancel_roles=TENANT_PEOPLE,
    settings=CompetitorInsightSettings,
    summary="Competitor Insight Engine: fetch the competitors' pages, extract prices (structured data, price "
            "patterns, an agent otherwise) and notable changes; stores a report with the shift since the last run.",
    schedules=(
        ScheduleDecl(
            name="competitor-insight-weekly",
            key="weekly",
            # The competitors come from the tenant's settings when the run starts.
            input=lambda t: CompetitorInsightInput(tenant_id=t.tenant_id, requested_by="schedule"),
            # Monday 08:00 in the tenant's time zone (after the SEO scan); jitter spreads tenants.
            cron=("0 8 * * 1",),
            jitter=timedelta(minutes=30),
            min_interval=timedelta(days=1),
            summary="Weekly Competitor Insight Engine: the competitors' prices and changes since last week.",
        ),
    ),
)
