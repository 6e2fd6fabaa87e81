"""Side effects of Order Processing (workflows/orders.py): the tenant's order policy (review
threshold, out-of-stock SKUs, from ``tenants.settings``) and the order's record."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
from temporalio import activity

from core.activity import Activities
from core.names import WORKFLOWS_QUEUE
from core.policies import DB

# A tenant without its own threshold: orders above this total need the client's approval.
DEFAULT_REVIEW_THRESHOLD = Decimal("500")


class OrderPolicyRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str


class OrderPolicy(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    review_threshold: float  # in the order's currency units (the sandbox has no FX)
    out_of_stock_skus: list[str] = []


class OrderRecord(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str  # idempotency: one row per workflow
    tenant_id: str
    order_key: str
    source: str
    status: str
    total: float
    currency: str
    fraud_score: int
    reviewed: bool = False
    details: dict[str, Any] = {}


class OrderRecorded(msgspec.Struct, frozen=True, kw_only=True):
    order_row_id: int
    created: bool


class OrderActivities(Activities):
    task_queue = WORKFLOWS_QUEUE
    default_policy = DB

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn(name="orders.policy")
    async def policy(self, req: OrderPolicyRequest) -> OrderPolicy:
        row = await self._pool.fetchrow(
            """SELECT (settings->>'order_review_threshold')::numeric AS threshold,
                      COALESCE(settings->'out_of_stock_skus', '[]'::jsonb) AS oos
               FROM tenants WHERE id = $1""", req.tenant_id)
        threshold = row["threshold"] if row and row["threshold"] is not None else DEFAULT_REVIEW_THRESHOLD
        oos = [s for s in (row["oos"] if row else []) if isinstance(s, str)]
        return OrderPolicy(tenant_id=req.tenant_id, review_threshold=float(threshold), out_of_stock_skus=oos)

    @activity.defn(name="orders.record")
    async def record(self, rec: OrderRecord) -> OrderRecorded:
        async with self._pool.acquire() as conn:
            row_id = await conn.fetchval(
                """INSERT INTO orders (workflow_id, tenant_id, order_key, source, status, total, currency,
                                       fraud_score, reviewed, details)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                   ON CONFLICT (workflow_id) DO NOTHING RETURNING id""",
                rec.workflow_id, rec.tenant_id, rec.order_key, rec.source, rec.status, Decimal(str(rec.total)),
                rec.currency, rec.fraud_score, rec.reviewed, rec.details,
            )
            if row_id is not None:
                return OrderRecorded(order_row_id=row_id, created=True)
            row_id = await conn.fetchval("SELECT id FROM orders WHERE workflow_id = $1", rec.workflow_id)
            return OrderRecorded(order_row_id=row_id, created=False)
