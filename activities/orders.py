"""Side effects of Order Processing (workflows/orders.py): the tenant's order policy (review
threshold, out-of-stock SKUs: the order capability's settings, ``OrderSettings``) and the
order's record."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
from temporalio import activity

from activities.tenants import SettingsOf
from core.activity import Activities
from core.names import WORKFLOWS_QUEUE
from core.policies import DB


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

    def __init__(self, pool: asyncpg.Pool, settings: SettingsOf[Any]) -> None:
        """``settings``: the order capability's (``CAPABILITY.settings_of`` of workflows/orders.py)."""
        self._pool = pool
        self._settings = settings

    @activity.defn(name="orders.policy")
    async def policy(self, req: OrderPolicyRequest) -> OrderPolicy:
        s = await self._settings.read(self._pool, req.tenant_id)
        return OrderPolicy(tenant_id=req.tenant_id, review_threshold=float(s.review_threshold),
                           out_of_stock_skus=list(s.out_of_stock_skus))

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
