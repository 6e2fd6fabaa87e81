"""Digital Presence Audit through the API, on the offline provider (no network, no keys)."""

from __future__ import annotations

import httpx

from tests.conftest import Tokens, assert_eventually, unique


async def test_client_runs_a_presence_audit_offline(http: httpx.AsyncClient, tokens: Tokens, db) -> None:  # noqa: ANN001
    tenant = unique("audit")
    body = {"tenant_id": tenant, "website_url": "http://127.0.0.1:9/", "social_handles": {"instagram": "@shop"}}
    r = await http.post("/v1/workflows/presence-audit", json=body, headers=tokens.client(tenant))
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    assert wf_id.startswith(f"{tenant}:presence-audit:127-0-0-1-")

    async def completed() -> dict:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.client(tenant))).json()
        assert view["status"] == "COMPLETED", view
        return view

    view = await assert_eventually(completed, timeout=60)
    result = view["result"]
    assert result["offline"] is True
    report = result["report"]
    assert 0 <= report["overall_score"] <= 100
    assert {"technical", "seo", "social"} <= set(report)
    assert result["llm_calls"] == 4 and result["tokens_in"] > 0
    assert view["progress"]["stage"] == "completed"
    rows = await db.fetch("SELECT model, provider, tokens_in, cost_usd FROM llm_usage WHERE workflow_id = $1", wf_id)
    assert len(rows) == 4 and {r["provider"] for r in rows} == {"offline"}
    assert all(r["cost_usd"] == 0 and r["tokens_in"] > 0 for r in rows)


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
    assert r.status_code == 400 and r.json()["extra"][0]["key"] == "website_url"
