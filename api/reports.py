"""GET /v1/reports: the reports workflows wrote (Digital Presence Audit, SEO Health Monitor,
Competitor Insight Engine, Tenant Health Guardian), listed, read one at a time, and two compared.

Clients read their tenant's reports, partners those of the tenants they manage, platform staff
every tenant's (and the platform's own, tenant ``global``). A report out of scope is a 404, the
same as one that does not exist.

A comparison goes from one report (before) to another of the same kind (after): the scores that
changed, the findings that are new and those resolved, for SEO health the page changes and for
competitor insight the changes per competitor, computed exactly as those workflows compute their
weekly shift.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, Router, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import Parameter, PathParameter

from activities.reports import StoredReport
from agents.types import CrewReport
from api.auth import Principal
from api.errors import invalid
from api.paging import (DEFAULT_LIMIT, MAX_ID, Cursor, Limit, Since, Tenant, Until, Where,
                        encode_cursor, last_id, listing, period, tenant_scope)
from core.names import SLUG_PATTERN
from workflows.competitor_insight import NAME as COMPETITOR_INSIGHT
from workflows.competitor_insight import CompetitorInsightReport, CompetitorShift
from workflows.competitor_insight import compute_shift as competitor_shift
from workflows.presence_audit import NAME as PRESENCE_AUDIT
from workflows.seo_health import NAME as SEO_HEALTH
from workflows.seo_health import PageChange, SeoHealthReport, compute_shift

_ID = Annotated[int, PathParameter(ge=1, le=MAX_ID, description="A report's id")]
ALL_TIME = timedelta(days=36600)  # `until` alone: everything before it


class ReportSummary(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: str
    kind: str  # presence-audit | seo-health | competitor-insight | tenant-health
    capability: str | None  # the capability of the workflow that wrote it
    workflow_id: str
    subject: str  # what it is about (a website URL, ...)
    offline: bool  # written by the offline provider: not real content
    score: int | None
    created_at: datetime


class Report(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    tenant_id: str
    kind: str
    capability: str | None
    workflow_id: str
    subject: str
    offline: bool
    score: int | None
    created_at: datetime
    body: dict[str, Any]  # the report as its workflow wrote it (its kind's result type)


class ReportPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ReportSummary]
    next_cursor: str | None = None  # pass as ?cursor= for the next (older) page


class ScoreChange(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # "score" (the report's overall score), "technical_score", "seo", ...
    before: int | None
    after: int | None
    delta: int | None  # after - before, when both are known


class ReportFinding(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # stable from one report to the next (SEO health: "{check}:{path}")
    area: str  # the audit area or the scan's check
    severity: str
    detail: str
    page: str | None = None


class ReportComparison(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    before: ReportSummary
    after: ReportSummary
    same_subject: bool  # both about the same site or subject
    score_delta: int | None  # of the overall score
    scores: list[ScoreChange]
    # False when a report's body is not one this version reads (or its kind has no findings):
    # then only the overall score is compared.
    findings_compared: bool
    new_findings: list[ReportFinding] = []
    resolved_findings: list[ReportFinding] = []
    page_changes: list[PageChange] = []  # SEO health: pages added, removed or changed
    # Competitor insight: per competitor of the later report, what changed (prices, products,
    # promotions, title and headline, pages), as the engine computes its shift.
    competitor_changes: list[CompetitorShift] = []


_COLUMNS = "id, tenant_id, kind, workflow_id, subject, offline, score, created_at"


def _capability(workflow_id: str) -> str | None:
    parts = workflow_id.split(":")
    return parts[1] if len(parts) >= 3 else None


def _summary(row: asyncpg.Record) -> ReportSummary:
    return ReportSummary(id=row["id"], tenant_id=row["tenant_id"], kind=row["kind"],
                         capability=_capability(row["workflow_id"]), workflow_id=row["workflow_id"],
                         subject=row["subject"], offline=row["offline"], score=row["score"],
                         created_at=row["created_at"])


async def _one(db: asyncpg.Pool, principal: Principal, report_id: int) -> asyncpg.Record:
    row = await db.fetchrow(f"SELECT {_COLUMNS}, body FROM reports WHERE id = $1", report_id)  # noqa: S608
    if row is None or not principal.can_see_tenant(row["tenant_id"]):
        raise NotFoundException(f"report {report_id} not found")
    return row


def _delta(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


def _scores(pairs: list[tuple[str, int | None, int | None]]) -> list[ScoreChange]:
    return [ScoreChange(name=n, before=b, after=a, delta=_delta(b, a)) for n, b, a in pairs]


def _seo(before: asyncpg.Record, after: asyncpg.Record) -> tuple[list[ScoreChange], dict[str, Any]] | None:
    try:
        old = msgspec.convert(before["body"], SeoHealthReport)
        new = msgspec.convert(after["body"], SeoHealthReport)
    except msgspec.ValidationError:
        return None
    previous = StoredReport(report_id=before["id"], workflow_id=before["workflow_id"], offline=before["offline"],
                            body=before["body"], created_at=before["created_at"], score=before["score"])
    shift = compute_shift(new.scan, new.score, previous)

    def finding(i: Any) -> ReportFinding:
        return ReportFinding(id=i.id, area=i.check, severity=i.severity, detail=i.detail, page=i.page)

    scores = _scores([("score", old.score, new.score), ("technical_score", old.technical_score, new.technical_score)])
    return scores, {"new_findings": [finding(i) for i in shift.new_issues],
                    "resolved_findings": [finding(i) for i in shift.resolved_issues],
                    "page_changes": shift.page_changes}


def _presence(before: asyncpg.Record, after: asyncpg.Record) -> tuple[list[ScoreChange], dict[str, Any]] | None:
    try:
        old = msgspec.convert(before["body"], CrewReport)
        new = msgspec.convert(after["body"], CrewReport)
    except msgspec.ValidationError:
        return None
    areas = ("technical", "seo", "social")

    def findings(report: CrewReport) -> dict[str, ReportFinding]:
        # An audit's findings carry no id: the area and the text identify one across reports.
        found = {}
        for area in areas:
            for f in getattr(report, area).findings:
                fid = f"{area}:{f.detail}"
                found[fid] = ReportFinding(id=fid, area=area, severity=f.severity, detail=f.detail)
        return found

    old_f, new_f = findings(old), findings(new)
    scores = _scores([("score", old.overall_score, new.overall_score),
                      *((a, getattr(old, a).score, getattr(new, a).score) for a in areas)])
    return scores, {"new_findings": [f for k, f in new_f.items() if k not in old_f],
                    "resolved_findings": [f for k, f in old_f.items() if k not in new_f]}


def _competitors(before: asyncpg.Record, after: asyncpg.Record) -> tuple[list[ScoreChange], dict[str, Any]] | None:
    try:
        msgspec.convert(before["body"], CompetitorInsightReport, strict=False)
        new = msgspec.convert(after["body"], CompetitorInsightReport, strict=False)
    except msgspec.ValidationError:
        return None
    previous = StoredReport(report_id=before["id"], workflow_id=before["workflow_id"], offline=before["offline"],
                            body=before["body"], created_at=before["created_at"], score=before["score"])
    shift = competitor_shift(new.competitors, previous)
    return _scores([("score", before["score"], after["score"])]), {"competitor_changes": shift.competitors}


_COMPARERS = {SEO_HEALTH: _seo, PRESENCE_AUDIT: _presence, COMPETITOR_INSIGHT: _competitors}


def compare(before: asyncpg.Record, after: asyncpg.Record) -> ReportComparison:
    comparer = _COMPARERS.get(before["kind"])
    found = comparer(before, after) if comparer else None
    scores, changes = found if found else (_scores([("score", before["score"], after["score"])]), {})
    return ReportComparison(
        kind=before["kind"], before=_summary(before), after=_summary(after),
        same_subject=before["subject"] == after["subject"], score_delta=_delta(before["score"], after["score"]),
        scores=[s for s in scores if s.name == "score" or s.delta != 0], findings_compared=found is not None,
        **changes)


class ReportsController(Controller):
    path = "/v1/reports"
    tags = ["reports"]

    @get("/", operation_id="list_reports", summary="Reports written by workflows, newest first",
         description="Filters: `kind` (presence-audit, seo-health, competitor-insight, tenant-health), "
                     "`capability` (of the workflow that wrote it), `subject` (e.g. the website URL), and the period `since`/`until` (created "
                     "at; default: all time). Clients see their tenant's, partners their tenants', platform "
                     "staff every tenant's.",
         raises=[NotFoundException])
    async def list_reports(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                           cursor_key: NamedDependency[bytes], tenant_id: Tenant = None,
                           kind: Annotated[str | None, Parameter(pattern=SLUG_PATTERN, description="Only this kind")] = None,
                           capability: Annotated[str | None, Parameter(
                               pattern=SLUG_PATTERN, description="Only reports of this capability's workflows")] = None,
                           subject: Annotated[str | None, Parameter(
                               min_length=1, max_length=2000, pattern=r"^[^\x00-\x1f\x7f]+$",
                               description="Only reports about this subject (exact)")] = None,
                           since: Since = None, until: Until = None,
                           limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> ReportPage:
        tenants = tenant_scope(request.user, tenant_id)
        if tenants == []:
            return ReportPage(items=[])
        start, end = (None, None)
        if since is not None or until is not None:
            start, end = period(since, until, default=ALL_TIME)
        name = listing("reports", request.user, tenants, kind=kind, capability=capability, subject=subject,
                       since=since, until=until)
        where = Where()
        where.add("tenant_id = ANY({})", tenants)
        where.add("kind = {}", kind)
        where.add("split_part(workflow_id, ':', 2) = {}", capability)
        where.add("subject = {}", subject)
        where.add("created_at >= {}", start)
        where.add("created_at < {}", end)
        where.add("id < {}", last_id(cursor, cursor_key, name))
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM reports {where.sql()} ORDER BY id DESC LIMIT {where.bind(limit + 1)}",  # noqa: S608
            *where.args)
        items = [_summary(r) for r in rows[:limit]]
        more = len(rows) > limit
        return ReportPage(items=items, next_cursor=encode_cursor([items[-1].id], cursor_key, name) if more else None)

    @get("/{report_id:int}", operation_id="get_report", summary="A report, with its body")
    async def get_report(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                         report_id: _ID) -> Report:
        row = await _one(db, request.user, report_id)
        return Report(**msgspec.structs.asdict(_summary(row)), body=row["body"])

    @get("/{report_id:int}/compare/{other_id:int}", operation_id="compare_reports",
         summary="What changed from one report (before) to another of the same kind (after)",
         description="Scores that changed (the overall score always), findings new and resolved, for "
                     "seo-health the page changes, as the SEO Health Monitor computes its shift, and for "
                     "competitor-insight the changes per competitor, as the engine computes its shift. 400 (naming "
                     "`other_id`) when the two are of different kinds.")
    async def compare_reports(self, request: Request[Principal, Any, Any], db: NamedDependency[asyncpg.Pool],
                              report_id: _ID,
                              other_id: Annotated[int, PathParameter(ge=1, le=MAX_ID,
                                                                     description="The later report's id")],
                              ) -> ReportComparison:
        before = await _one(db, request.user, report_id)
        after = await _one(db, request.user, other_id)
        if before["kind"] != after["kind"]:
            raise invalid("other_id", f"report {other_id} is a {after['kind']} report, report {report_id} a "
                                      f"{before['kind']} report: only reports of one kind compare", source="path")
        return compare(before, after)


def reports_router() -> Router:
    return Router(path="/", route_handlers=[ReportsController])
