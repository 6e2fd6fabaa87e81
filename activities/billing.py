"""The row of a tenant's billing ids (workflows queue, Postgres): ``billing.record_customer``
keeps the Stripe and Lago customer ids in ``billing_customers``. The Stripe and Lago activities
themselves are in ``activities.stripe`` and ``activities.lago`` (integrations queue).
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
import msgspec
from temporalio import activity

from core.activity import Activities
from core.names import SLUG_PATTERN, WORKFLOWS_QUEUE
from core.policies import DB

TenantId = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]


class RecordBillingCustomer(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: TenantId
    stripe_customer_id: str | None = None
    lago_customer_id: str | None = None


class BillingCustomerRecord(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    stripe_customer_id: str | None
    lago_customer_id: str | None


class BillingCustomerActivities(Activities):
    task_queue = WORKFLOWS_QUEUE
    default_policy = DB

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn(name="billing.record_customer")
    async def record_customer(self, req: RecordBillingCustomer) -> BillingCustomerRecord:
        """Keep the tenant's Stripe/Lago ids; an id already recorded is never replaced."""
        row = await self._pool.fetchrow(
            """INSERT INTO billing_customers (tenant_id, stripe_customer_id, lago_customer_id)
               VALUES ($1, $2, $3)
               ON CONFLICT (tenant_id) DO UPDATE SET
                   stripe_customer_id = coalesce(billing_customers.stripe_customer_id, EXCLUDED.stripe_customer_id),
                   lago_customer_id = coalesce(billing_customers.lago_customer_id, EXCLUDED.lago_customer_id),
                   updated_at = now()
               RETURNING tenant_id, stripe_customer_id, lago_customer_id""",
            req.tenant_id, req.stripe_customer_id, req.lago_customer_id,
        )
        return BillingCustomerRecord(
            tenant_id=row["tenant_id"], stripe_customer_id=row["stripe_customer_id"],
            lago_customer_id=row["lago_customer_id"],
        )
