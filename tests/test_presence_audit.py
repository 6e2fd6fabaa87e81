"""Digital Presence Audit through the API, on the offline provider (no network, no keys)."""

from __future__ import annotations

import httpx
import msgspec
from temporalio.client import Client

from agents.types import CrewReport
from activities.lago import USAGE_METRIC_CODE
from sandboxes.lago import LagoState
from agents.llm import OFFLINE_MODEL
from tests.conftest import Tokens, assert_eventually, unique
from tests.support import record_history


async def test_client_runs_a_presence_audit_offline(
    http: httpx.AsyncClient, tokens: Tokens, db, lago_state: LagoState, fixture_site: str, client: Client  # noqa: ANN001
) -> None:
    """No network, no keys: started over HTTP on the running platform, the audit fetches the
    fixture site through the sandbox MCP tool, stores a typed report marked offline, records one
    usage row per LLM call and reports each to Lago once."""
    tenant = unique("audit")
    # /old-home redirects to /: only a real fetch reports the home page as its final URL.
    body = {"tenant_id": tenant, "website_url": f"{fixture_site}/", "paths": ["/about", "/old-home"],
            "social_handles": {"instagram": "@shop"}}
    r = await http.post("/v1/workflows/presence-audit", json=body, headers=tokens.client(tenant))
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    assert wf_id.startswith(f"{tenant}:presence-audit:127-0-0-1-")

    async def completed() -> dict:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.client(tenant))).json()
        assert view["status"] == "COMPLETED", view
        return view

    view = await assert_eventually(completed, timeout=60)
    await record_history(client.get_workflow_handle(wf_id), "presence-audit")
    result = view["result"]
    assert result["offline"] is True
    assert result["pages"] == [f"{fixture_site}/", f"{fixture_site}/about", f"{fixture_site}/"]
    assert view["progress"]["stage"] == "completed" and view["progress"]["pages_fetched"] == 3
    report = result["report"]
    msgspec.convert(report, CrewReport)  # typed: technical, seo, social audits, scores 0-100
    assert result["llm_calls"] == 4 and result["tokens_in"] > 0

    # The stored report: one row, typed body, marked offline.
    [row] = await db.fetch("SELECT * FROM reports WHERE workflow_id = $1", wf_id)
    assert (row["id"], row["tenant_id"], row["kind"], row["subject"]) == (
        result["report_id"], tenant, "presence-audit", f"{fixture_site}/")
    assert row["offline"] is True and row["score"] == report["overall_score"]
    assert row["body"] == report

    # One usage row per LLM call, zero cost, each reported to Lago.
    usage = await db.fetch(
        """SELECT idempotency_key, model, provider, offline, tokens_in, cost_usd, reported_to_lago_at
           FROM llm_usage WHERE workflow_id = $1 ORDER BY id""", wf_id)
    # Recorded by the crew as each call returned: {workflow}:{agent}:{activity id}:{attempt}:{n}.
    assert [u["idempotency_key"].split(":")[-2:] for u in usage] == [["1", str(i)] for i in range(4)]
    assert all(u["idempotency_key"].startswith(f"{wf_id}:presence-crew:") for u in usage)
    assert {(u["model"], u["provider"], u["offline"]) for u in usage} == {(OFFLINE_MODEL, "offline", True)}
    assert all(u["cost_usd"] == 0 and u["tokens_in"] > 0 and u["reported_to_lago_at"] for u in usage)
    assert sum(u["tokens_in"] for u in usage) == result["tokens_in"]

    # The Lago sandbox received one usage event per row, keyed by its idempotency key.
    events = [e for e in lago_state.events_of(tenant, USAGE_METRIC_CODE) if e["properties"]["workflow_id"] == wf_id]
    assert sorted(e["transaction_id"] for e in events) == [u["idempotency_key"] for u in usage]
    assert all(e["properties"]["offline"] is True and e["properties"]["model"] == OFFLINE_MODEL for e in events)


async def test_over_budget_tenant_fails_fast_naming_the_budget(http: httpx.AsyncClient, tokens: Tokens, db) -> None:  # noqa: ANN001
    tenant = unique("broke")
    await db.execute("INSERT INTO tenant_budgets (tenant_id, monthly_ai_budget_usd) VALUES ($1, 0)", tenant)
    body = {"tenant_id": tenant, "website_url": "https://shop.example"}
    wf_id = (await http.post("/v1/workflows/presence-audit", json=body, headers=tokens.client(tenant))).json()["workflow_id"]

    async def failed() -> dict:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.client(tenant))).json()
        assert view["status"] == "FAILED", view
        return view

    view = await assert_eventually(failed, timeout=20)
    assert "monthly AI budget of $0.00" in view["failure"]
    assert view["progress"]["stage"] == "failed"
    assert await db.fetchval("SELECT count(*) FROM llm_usage WHERE tenant_id = $1", tenant) == 0


async def test_a_client_cannot_audit_for_another_tenant(http: httpx.AsyncClient, tokens: Tokens) -> None:
    body = {"tenant_id": unique("victim"), "website_url": "https://example.com"}
    r = await http.post("/v1/workflows/presence-audit", json=body, headers=tokens.client(unique("intruder")))
    assert r.status_code == 404
    bad = {"tenant_id": unique("x"), "website_url": "ftp://nope"}
    r = await http.post("/v1/workflows/presence-audit", json=bad, headers=tokens.admin())
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "website_url"
