"""LLM usage and AI budgets: the light Postgres activities of the workflows queue.

Every LLM call is recorded once, with its tokens and cost: by the agent activity that made it,
as it returns (:class:`UsageLedger`), or, for results of agent workers that predate that, by
the workflow (``usage.record``, idempotent on the key the workflow derives from its id and
step); ``lago.report_usage`` later sends the rows to
Lago. Before an expensive step a workflow calls ``usage.check_budget``: a tenant whose spend
this calendar month (UTC) has reached its budget gets a non-retryable ``AIBudgetExceeded``.
A tenant's budget is its ``tenant_budgets`` row, or else the platform's default
(``BIZ_AI_DEFAULT_MONTHLY_BUDGET_USD``, given to the class by the worker): no tenant has an
unlimited AI budget unless the operator turns the default off.
"""

from __future__ import annotations

import asyncio
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated

import asyncpg
import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.activity import Activities
from core.names import WORKFLOWS_QUEUE
from core.policies import DB

# The provider name of the deterministic offline LLM: no network, no cost, not billed.
OFFLINE_PROVIDER = "offline"

_PER_MILLION = Decimal(1_000_000)
_MICRO_USD = Decimal("0.000001")  # llm_usage.cost_usd is numeric(12, 6)
_CENT = Decimal("0.01")

# USD per 1M tokens (input, output), list prices of well-known OpenAI models. A dated
# snapshot ("gpt-4o-mini-2024-07-18") or a routed name ("openai/gpt-4o") takes the price of
# its longest matching prefix.
MODEL_PRICES: dict[str, tuple[Decimal, Decimal]] = {
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "gpt-4.1": (Decimal("2.00"), Decimal("8.00")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("1.60")),
    "gpt-4.1-nano": (Decimal("0.10"), Decimal("0.40")),
    "gpt-4-turbo": (Decimal("10.00"), Decimal("30.00")),
    "gpt-3.5-turbo": (Decimal("0.50"), Decimal("1.50")),
    "o1": (Decimal("15.00"), Decimal("60.00")),
    "o1-mini": (Decimal("1.10"), Decimal("4.40")),
    "o3-mini": (Decimal("1.10"), Decimal("4.40")),
    "o4-mini": (Decimal("1.10"), Decimal("4.40")),
}
# Unknown models (self-hosted, new releases) are priced like a large hosted model, so a
# budget errs on the side of stopping early rather than overspending.
DEFAULT_PRICE: tuple[Decimal, Decimal] = (Decimal("2.50"), Decimal("10.00"))


def model_price(model: str) -> tuple[Decimal, Decimal]:
    """(input, output) USD per 1M tokens for ``model``."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    best = max((p for p in MODEL_PRICES if name == p or name.startswith(p + "-")), key=len, default=None)
    return MODEL_PRICES[best] if best else DEFAULT_PRICE


def estimate_cost(model: str, tokens_in: int, tokens_out: int, *, provider: str = "openai") -> Decimal:
    """USD cost of one call, to the micro-dollar; the offline provider costs nothing."""
    if provider == OFFLINE_PROVIDER:
        return Decimal(0).quantize(_MICRO_USD)
    price_in, price_out = model_price(model)
    cost = (price_in * tokens_in + price_out * tokens_out) / _PER_MILLION
    return cost.quantize(_MICRO_USD, rounding=ROUND_HALF_UP)


class RecordUsage(msgspec.Struct, frozen=True, kw_only=True):
    # Derived from the workflow id and step (e.g. "acme:campaign:spring:llm:draft:1"), so a
    # retried activity records the call once.
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=400)]
    tenant_id: Annotated[str, msgspec.Meta(min_length=1)]
    agent: Annotated[str, msgspec.Meta(min_length=1)]
    model: Annotated[str, msgspec.Meta(min_length=1)]
    provider: Annotated[str, msgspec.Meta(min_length=1)]
    tokens_in: Annotated[int, msgspec.Meta(ge=0)]
    tokens_out: Annotated[int, msgspec.Meta(ge=0)]
    workflow_id: str | None = None
    # What the provider charged, when it says; otherwise estimated from MODEL_PRICES.
    cost_usd: Decimal | None = None  # >= 0 (msgspec has no bounds on Decimal: checked below)


class UsageRecorded(msgspec.Struct, frozen=True, kw_only=True):
    usage_id: int
    cost_usd: Decimal
    # False: the same idempotency key was recorded before (a retried activity).
    recorded: bool


class CheckBudget(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(min_length=1)]


class BudgetStatus(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    spent_usd: Decimal
    # The tenant's row, else the platform default; None: no row and no default (unlimited).
    budget_usd: Decimal | None = None
    remaining_usd: Decimal | None = None


async def insert_usage(pool: asyncpg.Pool, req: RecordUsage) -> UsageRecorded:
    """One ``llm_usage`` row, once per idempotency key (a second insert returns the first row)."""
    offline = req.provider == OFFLINE_PROVIDER
    if offline:
        cost = Decimal(0)
    elif req.cost_usd is not None:
        if not req.cost_usd.is_finite() or req.cost_usd < 0:
            raise ApplicationError(
                f"cost_usd must be a non-negative amount, not {req.cost_usd}",
                type="InvalidUsage", non_retryable=True,
            )
        cost = req.cost_usd.quantize(_MICRO_USD, rounding=ROUND_HALF_UP)
    else:
        cost = estimate_cost(req.model, req.tokens_in, req.tokens_out, provider=req.provider)
    async with pool.acquire() as conn:
        usage_id = await conn.fetchval(
            """INSERT INTO llm_usage (idempotency_key, tenant_id, workflow_id, agent, model, provider,
                                      tokens_in, tokens_out, cost_usd, offline)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (idempotency_key) DO NOTHING
               RETURNING id""",
            req.idempotency_key, req.tenant_id, req.workflow_id, req.agent, req.model, req.provider,
            req.tokens_in, req.tokens_out, cost, offline,
        )
        if usage_id is not None:
            return UsageRecorded(usage_id=usage_id, cost_usd=cost, recorded=True)
        row = await conn.fetchrow(
            "SELECT id, cost_usd FROM llm_usage WHERE idempotency_key = $1", req.idempotency_key
        )
    return UsageRecorded(usage_id=row["id"], cost_usd=row["cost_usd"], recorded=False)


class UsageLedger:
    """Records each LLM call the moment it returns, from inside the agent activity that made it.

    A crew or agent step that dies after paying for calls (a killed worker, a timeout, output
    that never validates) has still spent the money: its calls are rows at once, so they count
    against the tenant's budget and are billed with the workflow's usage. Keys name the
    activity attempt (``{workflow}:{agent}:{activity id}:{attempt}:{n}``): a retried attempt's
    calls are new calls, each recorded once.
    """

    def __init__(self, pool: asyncpg.Pool, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._pool = pool
        self._loop = loop or asyncio.get_running_loop()

    async def record(self, req: RecordUsage) -> int:
        return (await insert_usage(self._pool, req)).usage_id

    def record_from_thread(self, req: RecordUsage, timeout: float = 30.0) -> int:
        """The same, from a sync activity's thread (CrewAI crews), on the worker's event loop."""
        return asyncio.run_coroutine_threadsafe(self.record(req), self._loop).result(timeout)

    @staticmethod
    def call_key(agent: str, n: int) -> tuple[str, str]:
        """The row key of the ``n``-th call of the running activity attempt, and its workflow id."""
        info = activity.info()
        return f"{info.workflow_id}:{agent}:{info.activity_id}:{info.attempt}:{n}", info.workflow_id


class UsageActivities(Activities):
    """Holds the pool and the default monthly AI budget of tenants without a
    ``tenant_budgets`` row (from settings: activities never read the environment); the worker
    registers the bound methods on the workflows queue.

    The default is applied at check time rather than written as a row at onboarding, so
    changing the setting reaches every tenant at once (no backfill of rows, no tenant left
    without a row because it was onboarded before the setting existed), while a row still
    gives a tenant its own budget, higher or lower."""
    task_queue = WORKFLOWS_QUEUE
    default_policy = DB


    def __init__(self, pool: asyncpg.Pool, default_monthly_budget_usd: Decimal | None = None) -> None:
        self._pool = pool
        if default_monthly_budget_usd is not None and not (
                default_monthly_budget_usd.is_finite() and default_monthly_budget_usd >= 0):
            raise ValueError("the default monthly AI budget must be a non-negative amount")
        self._default_budget = default_monthly_budget_usd

    @activity.defn(name="usage.record")
    async def record(self, req: RecordUsage) -> UsageRecorded:
        return await insert_usage(self._pool, req)

    @activity.defn(name="usage.check_budget")
    async def check_budget(self, req: CheckBudget) -> BudgetStatus:
        row = await self._pool.fetchrow(
            """SELECT b.monthly_ai_budget_usd AS budget,
                      (SELECT coalesce(sum(u.cost_usd), 0) FROM llm_usage u
                        WHERE u.tenant_id = $1
                          AND u.created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                      ) AS spent
               FROM (SELECT 1) AS one
               LEFT JOIN tenant_budgets b ON b.tenant_id = $1""",
            req.tenant_id,
        )
        budget: Decimal | None = row["budget"] if row["budget"] is not None else self._default_budget
        spent: Decimal = row["spent"]
        if budget is None:
            return BudgetStatus(tenant_id=req.tenant_id, spent_usd=spent)
        if spent >= budget:
            raise ApplicationError(
                f"tenant {req.tenant_id} is over its monthly AI budget of ${budget.quantize(_CENT)}"
                f" (spent ${spent.quantize(_CENT, rounding=ROUND_HALF_UP)})",
                {"tenant_id": req.tenant_id, "budget_usd": str(budget), "spent_usd": str(spent)},
                type="AIBudgetExceeded",
                non_retryable=True,
            )
        return BudgetStatus(
            tenant_id=req.tenant_id, spent_usd=spent, budget_usd=budget, remaining_usd=budget - spent
        )
