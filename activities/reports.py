"""Reports (presence audits, SEO health): stored once per workflow and kind, read by tenants.

``reports.store`` is idempotent on (workflow id, kind): a retried activity, or a workflow
replayed after a worker died, finds the row it wrote and answers its id. ``reports.latest``
reads a tenant's newest report of a kind on a subject (what SEO health compares against).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.activity import Activities
from core.names import WORKFLOWS_QUEUE
from core.policies import DB


class StoreReport(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    kind: str  # "presence-audit", "seo-health", ...
    workflow_id: str
    subject: str  # what the report is about (a website URL, ...)
    offline: bool  # written by the offline provider: not real content
    body: dict[str, Any]
    score: int | None = None


class ReportStored(msgspec.Struct, frozen=True, kw_only=True):
    report_id: int
    created: bool  # False: this workflow had stored it before (a retry)


class LatestReport(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    kind: str
    subject: str
    # The asking workflow: its own report is never "the previous one" (a retried run).
    exclude_workflow_id: str | None = None


class StoredReport(msgspec.Struct, frozen=True, kw_only=True):
    report_id: int
    workflow_id: str
    offline: bool
    body: dict[str, Any]
    created_at: datetime
    score: int | None = None


class LatestReportResult(msgspec.Struct, frozen=True, kw_only=True):
    report: StoredReport | None = None  # None: no such report of the tenant on this subject yet


class ReportActivities(Activities):
    task_queue = WORKFLOWS_QUEUE
    default_policy = DB

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn(name="reports.store")
    async def store(self, req: StoreReport) -> ReportStored:
        if not req.tenant_id or not req.kind or not req.workflow_id:
            raise ApplicationError("tenant_id, kind and workflow_id are required", type="InvalidReport", non_retryable=True)
        async with self._pool.acquire() as conn:
            report_id = await conn.fetchval(
                """INSERT INTO reports (tenant_id, kind, workflow_id, subject, offline, score, body)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (workflow_id, kind) DO NOTHING
                   RETURNING id""",
                req.tenant_id, req.kind, req.workflow_id, req.subject, req.offline, req.score, req.body,
            )
            if report_id is not None:
                return ReportStored(report_id=report_id, created=True)
            report_id = await conn.fetchval(
                "SELECT id FROM reports WHERE workflow_id = $1 AND kind = $2", req.workflow_id, req.kind
            )
        return ReportStored(report_id=report_id, created=False)

    @activity.defn(name="reports.latest")
    async def latest(self, req: LatestReport) -> LatestReportResult:
        row = await self._pool.fetchrow(
            """SELECT id, workflow_id, offline, score, body, created_at FROM reports
               WHERE tenant_id = $1 AND kind = $2 AND subject = $3 AND workflow_id IS DISTINCT FROM $4
               ORDER BY created_at DESC, id DESC LIMIT 1""",
            req.tenant_id, req.kind, req.subject, req.exclude_workflow_id,
        )
        if row is None:
            return LatestReportResult()
        return LatestReportResult(report=StoredReport(
            report_id=row["id"], workflow_id=row["workflow_id"], offline=row["offline"], body=row["body"],
            created_at=row["created_at"], score=row["score"]))
