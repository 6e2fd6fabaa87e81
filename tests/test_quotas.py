"""Cost limits a tenant meets: the per-tenant start rate limit (429 with Retry-After, over real
HTTP through the real app), the default monthly AI budget of a tenant without a budget row
(the worker's activities, real Postgres), and the minimum interval of scheduled capabilities
(how often a spec fires, as the catalogue holds its declarations to it)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal

import asyncpg
import httpx
import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from activities.usage import CheckBudget, RecordUsage, UsageActivities
from api.app import create_app
from api.ratelimit import StartLimiter
from schedules.catalogue import SCHEDULES
from schedules.frequency import shortest_gap
from tests.conftest import Tokens, serve, unique
from tests.support import workflow_exists
from workers.main import registrations
from core.settings import Settings
from core.names import WORKFLOWS_QUEUE


def campaign(tenant: str, key: str) -> dict[str, object]:
    return {"tenant_id": tenant, "campaign_key": key, "goal": "Sell more sourdough this spring",
            "channels": ["google_ads"], "budget_usd": 100, "duration_days": 7}


# --- start rate limit ---------------------------------------------------------------------

async def test_a_tenant_starting_too_fast_gets_429_with_retry_after_and_nothing_starts(
    settings: Settings, tokens: Tokens, client: Client
) -> None:
    limited = settings.model_copy(update={"api": settings.api.model_copy(
        update={"start_rate_per_minute": 2.0, "start_burst": 2})})
    tenant, other = unique("busy"), unique("calm")
    keys = [unique("spring") for _ in range(3)]
    async with serve(create_app(limited)) as url, httpx.AsyncClient(base_url=url, timeout=15) as http:
        answers = [await http.post("/v1/workflows/campaign", json=campaign(tenant, k), headers=tokens.client(tenant))
                   for k in keys]
        assert [a.status_code for a in answers] == [202, 202, 429], [a.text for a in answers]
        # One token back every 30 s at 2 a minute; the answer says when, in whole seconds.
        assert 1 <= int(answers[2].headers["retry-after"]) <= 30, answers[2].headers
        assert tenant in answers[2].json()["detail"]
        assert not await workflow_exists(client, f"{tenant}:campaign:{keys[2]}")
        # A retried start of one already going spends a token too: it is still a start request.
        again = await http.post("/v1/workflows/campaign", json=campaign(tenant, keys[0]), headers=tokens.client(tenant))
        assert again.status_code == 429
        # Another tenant has its own bucket.
        r = await http.post("/v1/workflows/campaign", json=campaign(other, keys[2]), headers=tokens.client(other))
        assert r.status_code == 202, r.text
    for wf_id in (f"{tenant}:campaign:{keys[0]}", f"{tenant}:campaign:{keys[1]}", f"{other}:campaign:{keys[2]}"):
        try:
            await client.get_workflow_handle(wf_id).terminate("test over")
        except RPCError:  # already ended (no such tenant)
            pass


def test_the_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    now = [1000.0]
    limiter = StartLimiter(rate_per_minute=6, burst=3, clock=lambda: now[0])  # a token every 10 s
    assert [limiter.retry_after("acme") for _ in range(3)] == [0, 0, 0]
    assert limiter.retry_after("acme") == pytest.approx(10)
    now[0] += 4
    assert limiter.retry_after("acme") == pytest.approx(6)
    now[0] += 6
    assert limiter.retry_after("acme") == 0
    now[0] += 3600  # a long pause refills to the burst, never beyond it
    assert [limiter.retry_after("acme") for _ in range(4)][-1] == pytest.approx(10)
    assert limiter.retry_after("globex") == 0


# --- default AI budget --------------------------------------------------------------------

def _spend(tenant: str, key: str, usd: str) -> RecordUsage:
    return RecordUsage(idempotency_key=f"{tenant}:campaign:x:llm:{key}", tenant_id=tenant, agent="copywriter",
                       model="gpt-4o", provider="openai", tokens_in=1, tokens_out=1, cost_usd=Decimal(usd))


async def test_a_tenant_without_a_budget_row_is_held_to_the_default_from_settings(
    settings: Settings, db: asyncpg.Pool
) -> None:
    with_default = settings.model_copy(update={"ai": settings.ai.model_copy(
        update={"default_monthly_budget_usd": Decimal("2.00")})})
    # The worker's own activities, built from settings as `bizosaas worker` builds them.
    acts = {a.__temporal_activity_definition.name: a
            for a in registrations(with_default, db, [WORKFLOWS_QUEUE])[WORKFLOWS_QUEUE].activities}
    record, check_budget = acts["usage.record"], acts["usage.check_budget"]
    tenant, rich = unique("nobudget"), unique("rich")
    assert await db.fetchval("SELECT count(*) FROM tenant_budgets WHERE tenant_id = $1", tenant) == 0

    status = await check_budget(CheckBudget(tenant_id=tenant))
    assert (status.budget_usd, status.remaining_usd) == (Decimal("2.00"), Decimal("2.00"))
    await record(_spend(tenant, "1", "2.50"))
    with pytest.raises(ApplicationError) as over:
        await check_budget(CheckBudget(tenant_id=tenant))
    assert over.value.type == "AIBudgetExceeded" and over.value.non_retryable
    assert over.value.message == f"tenant {tenant} is over its monthly AI budget of $2.00 (spent $2.50)"

    # A row of its own (higher or lower) wins over the default.
    await db.execute("INSERT INTO tenant_budgets (tenant_id, monthly_ai_budget_usd) VALUES ($1, 100)", rich)
    await record(_spend(rich, "1", "2.50"))
    status = await check_budget(CheckBudget(tenant_id=rich))
    assert (status.budget_usd, status.remaining_usd) == (Decimal("100.00"), Decimal("97.50"))
    # The shipped default is $50 a month.
    assert Settings(_env_file=None).ai.default_monthly_budget_usd == Decimal("50")
    with pytest.raises(ValueError):
        UsageActivities(db, Decimal("-1"))


# --- minimum intervals of scheduled capabilities -------------------------------------------

@pytest.mark.parametrize(("cron", "every", "gap"), [
    (["0 6 * * 1"], None, timedelta(days=1)),  # weekly reads as "at most daily": never too often
    (["* * * * *"], None, timedelta(minutes=1)),
    (["*/5 * * * *"], None, timedelta(minutes=5)),
    (["0 */2 * * *"], None, timedelta(hours=2)),
    (["0 9-17 * * 1-5"], None, timedelta(hours=1)),
    (["0 23 * * *", "30 0 * * *"], None, timedelta(hours=1, minutes=30)),  # across midnight
    (["*/10 * * * * * *"], None, timedelta(seconds=10)),  # 7 fields: seconds first
    (["@hourly"], None, timedelta(hours=1)),
    (["@weekly"], None, timedelta(days=1)),
    (["@every 90m"], None, timedelta(minutes=90)),
    ([], 60, timedelta(minutes=1)),
    (["@every 1h", "0 6 * * *"], None, None),  # cannot be bounded: refused by callers
    (["0 L * * *"], None, None),
])
def test_shortest_gap_of_a_spec(cron: list[str], every: int | None, gap: timedelta | None) -> None:
    assert shortest_gap(cron, every) == gap


def test_declarations_keep_to_their_minimum_interval_and_overlap() -> None:
    from temporalio.client import ScheduleOverlapPolicy

    audit = SCHEDULES["presence-audit-weekly"]
    assert audit.min_interval == timedelta(days=1) and SCHEDULES["seo-health-weekly"].min_interval == timedelta(days=1)
    with pytest.raises(ValueError, match="more often than its min_interval"):
        dataclasses.replace(audit, cron=("0 */6 * * *",))
    with pytest.raises(ValueError, match="overlap must be SKIP or BUFFER_ONE"):
        dataclasses.replace(audit, overlap=ScheduleOverlapPolicy.ALLOW_ALL)
