"""Usage billing sweep: LLM calls no workflow billed reach Lago all the same, once each.

A campaign an operator terminates with the ``temporal`` CLI runs no more code, so its own
"bill my usage" step never runs; the sweep bills its calls. Rows recorded by hand here stand for
what the platform's workflows leave: a late agent attempt's calls, rows billed by their workflow
at the same moment.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from temporalio.client import Client

from activities.lago import USAGE_METRIC_CODE
from core.settings import Settings
from sandboxes.lago import LagoState
from tests.conftest import Tokens, assert_eventually, unique
from tests.support import record_history, run_temporal_cli
from tests.test_campaign import pending_action, start_campaign


async def _sweep(http: httpx.AsyncClient, tokens: Tokens, body: dict[str, Any]) -> dict[str, Any]:
    r = await http.post("/v1/workflows/usage-billing", json=body, headers=tokens.admin())
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    assert wf_id == f"global:usage-billing:{body['key']}"

    async def done() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.admin())).json()
        assert view["status"] == "COMPLETED", view
        return view

    return await assert_eventually(done, timeout=30)


async def _unreported(db: asyncpg.Pool, tenant: str) -> list[str]:
    return [r["idempotency_key"] for r in await db.fetch(
        "SELECT idempotency_key FROM llm_usage WHERE tenant_id = $1 AND reported_to_lago_at IS NULL ORDER BY id", tenant)]


async def test_a_terminated_campaigns_ai_calls_are_billed_by_the_sweep_once(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, settings: Settings,
    lago_state: LagoState,
) -> None:
    tenant = unique("gym")
    wf_id = await start_campaign(http, tokens, tenant)
    await pending_action(http, tokens, tenant, wf_id)  # strategist and creative crew have run
    done = await run_temporal_cli(settings, "workflow", "terminate", "--workflow-id", wf_id,
                                  "--reason", "stopped by an operator")
    assert done.returncode == 0, done.stderr

    keys = await _unreported(db, tenant)
    agents = {r["agent"] for r in await db.fetch("SELECT agent FROM llm_usage WHERE tenant_id = $1", tenant)}
    assert keys and agents == {"campaign-strategist", "campaign-creative-crew"}
    assert lago_state.events_of(tenant, USAGE_METRIC_CODE) == []  # the campaign never billed them

    first = await _sweep(http, tokens, {"tenant_ids": [tenant], "settled_minutes": 0, "key": unique("now")})
    result = first["result"]
    assert (result["billed"], result["sent"], result["duplicates"], result["more"]) == (len(keys), len(keys), 0, False)
    assert sorted(e["transaction_id"] for e in lago_state.events_of(tenant, USAGE_METRIC_CODE)) == sorted(keys)
    # The campaign's own calls and its strategist child's (`{wf_id}:agent:campaign-strategist`).
    assert {e["properties"]["workflow_id"].startswith(wf_id) for e in lago_state.events_of(tenant)} == {True}
    assert await _unreported(db, tenant) == []
    assert first["progress"]["steps_done"] == ["usage_billed"]
    await record_history(client.get_workflow_handle(first["workflow_id"]), "usage-billing")

    # A second sweep finds nothing left: nothing is sent twice.
    posts = lago_state.event_posts
    again = (await _sweep(http, tokens, {"tenant_ids": [tenant], "settled_minutes": 0, "key": unique("again")}))
    assert (again["result"]["billed"], again["result"]["sent"]) == (0, 0)
    assert lago_state.event_posts == posts


async def test_the_sweep_leaves_recent_rows_and_counts_a_row_billed_meanwhile_once(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, lago_state: LagoState, settings: Settings,
) -> None:
    tenant, bystander = unique("bakery"), unique("florist")
    hour_ago = datetime.now(UTC) - timedelta(hours=1)

    async def row(t: str, key: str, at: datetime) -> str:
        await db.execute(
            """INSERT INTO llm_usage (idempotency_key, tenant_id, workflow_id, agent, model, provider, tokens_in,
                                      tokens_out, cost_usd, created_at)
               VALUES ($1, $2, $3, 'copywriter', 'gpt-4o-mini', 'openai', 1000, 200, 0.0003, $4)""",
            f"{t}:{key}", t, f"{t}:campaign:spring", at)
        return f"{t}:{key}"

    late = await row(tenant, "campaign:spring:copywriter:7:2:0", hour_ago)  # an attempt that finished late
    raced = await row(tenant, "campaign:spring:copywriter:7:2:1", hour_ago)
    fresh = await row(tenant, "campaign:spring:copywriter:8:1:0", datetime.now(UTC))  # its workflow still runs
    other = await row(bystander, "campaign:spring:copywriter:7:1:0", hour_ago)
    # Its workflow's own report sent `raced` to Lago a moment ago and has not marked the row yet.
    assert settings.lago.api_key is not None
    r = await http.post(f"{settings.lago.api_url}/api/v1/events",
                        headers={"Authorization": f"Bearer {settings.lago.api_key.get_secret_value()}"},
                        json={"event": {"transaction_id": raced, "code": USAGE_METRIC_CODE,
                                        "external_subscription_id": tenant}})
    assert r.status_code == 200, r.text

    result = (await _sweep(http, tokens, {"tenant_ids": [tenant], "key": unique("hourly")}))["result"]
    assert (result["billed"], result["sent"], result["duplicates"]) == (2, 1, 1)
    assert await _unreported(db, tenant) == [fresh]  # left to its workflow (30 minutes by default)
    assert sorted(e["transaction_id"] for e in lago_state.events_of(tenant)) == sorted([late, raced])
    assert await _unreported(db, bystander) == [other]  # only the named tenants

    # A bounded run bills the oldest rows first and says rows may be left; the next run takes the rest.
    backlog = [await row(bystander, f"campaign:spring:copywriter:9:1:{i}", hour_ago) for i in range(4)]
    bounded = (await _sweep(http, tokens, {"tenant_ids": [bystander], "max_rows": 3, "key": unique("part")}))["result"]
    assert (bounded["billed"], bounded["more"]) == (3, True)
    assert await _unreported(db, bystander) == backlog[2:]
    rest = (await _sweep(http, tokens, {"tenant_ids": [bystander], "max_rows": 3, "key": unique("rest")}))["result"]
    assert (rest["billed"], rest["more"]) == (2, False)
    assert await _unreported(db, bystander) == []


async def test_only_platform_staff_start_it_and_bad_input_names_the_field(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    tenant = unique("peek")
    r = await http.post("/v1/workflows/usage-billing", json={"tenant_ids": [tenant]}, headers=tokens.client(tenant))
    assert r.status_code == 403, r.text
    r = await http.post("/v1/workflows/usage-billing", json={"tenant_ids": [tenant]},
                        headers=tokens.partner([tenant]))
    assert r.status_code == 403, r.text
    # Finance closes billing periods: it may run the sweep.
    r = await http.post("/v1/workflows/usage-billing", json={"tenant_ids": [tenant], "key": unique("close")},
                        headers=tokens.finance())
    assert r.status_code == 202, r.text
    r = await http.post("/v1/workflows/usage-billing", json={"settled_minutes": -1}, headers=tokens.admin())
    assert r.status_code == 400 and "settled_minutes" in r.text, r.text
    r = await http.post("/v1/workflows/usage-billing", json={"tenant_ids": []}, headers=tokens.admin())
    assert r.status_code == 400 and "tenant_ids" in r.text, r.text
