"""Tenant Health Guardian: an admin checks tenants over HTTP and reads who is at risk.

The signals are the tenants' own rows (approval notifications, orders, webhook deliveries, AI
spend), written here as the platform's workflows would have written them.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import httpx
from temporalio.client import Client

from activities.tenants import TenantSignals
from tests.conftest import Tokens, assert_eventually, unique
from tests.support import record_history
from workflows.tenant_health import assess


def test_assess_takes_points_per_problem_and_bounds_each_kind() -> None:
    calm = assess(TenantSignals(tenant_id="a", status="active", orders=40, ai_spend_month_usd=Decimal("3"),
                                ai_budget_usd=Decimal("50")))
    assert (calm.score, calm.level, calm.reasons) == (100, "healthy", [])

    busy = assess(TenantSignals(tenant_id="b", status="active", approvals_escalated=1, orders=10, orders_failed=1,
                                ai_spend_month_usd=Decimal("41"), ai_budget_usd=Decimal("50")))
    assert (busy.score, busy.level) == (70, "watch")  # 5 + 10 + 15 points off
    assert busy.reasons == ["1 approval(s) escalated", "1 of 10 orders failed", "AI budget 82% spent"]

    sinking = assess(TenantSignals(tenant_id="c", status="suspended", approvals_timed_out=9, webhooks_failed=4,
                                   ai_spend_month_usd=Decimal("60"), ai_budget_usd=Decimal("50")))
    assert (sinking.score, sinking.level) == (0, "at_risk")
    assert "9 approval(s) timed out undecided" in sinking.reasons and "suspended" in sinking.reasons


async def _tenant(db: asyncpg.Pool, prefix: str) -> str:
    tenant = unique(prefix)
    await db.execute("""INSERT INTO tenants (id, name, plan, owner_email, status)
                        VALUES ($1, $1, 'starter', 'o@x.io', 'active')""", tenant)
    return tenant


async def _troubled(db: asyncpg.Pool, tenant: str) -> None:
    """Two approvals nobody decided, three webhook deliveries that failed, a failed order."""
    for i in range(2):
        await db.execute(
            """INSERT INTO approval_notifications (idempotency_key, tenant_id, workflow_id, request_id, event,
                                                  audience, roles, title)
               VALUES ($1, $2, $3, 'r', 'timed_out', 'client', ARRAY['client'], 'Approve the budget')""",
            f"{tenant}-timeout-{i}", tenant, f"{tenant}:campaign:c{i}")
    for i in range(3):
        await db.execute(
            """INSERT INTO webhook_inbox (source, event_id, event_type, body_sha256, tenant_id, body, outcome)
               VALUES ('shopify', $1, 'orders/create', sha256($2::bytea), $3, $2::bytea, 'failed')""",
            f"{tenant}-evt-{i}", f"body {tenant} {i}".encode(), tenant)
    await db.execute(
        """INSERT INTO orders (workflow_id, tenant_id, order_key, source, status, total, currency, fraud_score)
           VALUES ($1, $2, 'o1', 'shopify', 'failed', 10, 'USD', 0)""", f"{tenant}:order:o1", tenant)


async def _run(http: httpx.AsyncClient, tokens: Tokens, body: dict) -> dict:
    r = await http.post("/v1/workflows/tenant-health", json=body, headers=tokens.admin())
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    assert wf_id == f"global:tenant-health:{body['key']}"

    async def done() -> dict:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.admin())).json()
        assert view["status"] == "COMPLETED", view
        return view

    return await assert_eventually(done, timeout=30)


async def test_an_admin_finds_the_tenant_at_risk_and_sees_it_recover(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client
) -> None:
    sick, well = await _tenant(db, "sick"), await _tenant(db, "well")
    await _troubled(db, sick)
    tenants = sorted([sick, well])

    first = await _run(http, tokens, {"tenant_ids": tenants, "key": unique("check")})
    result = first["result"]
    assert (result["checked"], result["at_risk"], result["newly_at_risk"]) == (2, [sick], [sick])
    scores = {t["tenant_id"]: (t["score"], t["level"]) for t in result["tenants"]}
    assert scores == {sick: (30, "at_risk"), well: (100, "healthy")}  # 30 + 15 + 25 points off
    assert first["progress"]["steps_done"] == ["signals_collected", "compared", "report_stored"]
    report = await db.fetchrow("SELECT tenant_id, kind, score, body FROM reports WHERE id = $1", result["report_id"])
    assert (report["tenant_id"], report["kind"], report["score"]) == ("global", "tenant-health", 30)
    assert report["body"]["at_risk"] == [sick]
    await record_history(client.get_workflow_handle(first["workflow_id"]), "tenant-health")

    # The failures are dealt with: the next check says the tenant recovered.
    await db.execute("DELETE FROM approval_notifications WHERE tenant_id = $1", sick)
    await db.execute("DELETE FROM webhook_inbox WHERE tenant_id = $1", sick)
    await db.execute("DELETE FROM orders WHERE tenant_id = $1", sick)
    second = (await _run(http, tokens, {"tenant_ids": tenants, "key": unique("check")}))["result"]
    assert (second["at_risk"], second["newly_at_risk"], second["recovered"]) == ([], [], [sick])


async def test_only_platform_staff_start_it_and_bad_input_names_the_field(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool
) -> None:
    tenant = await _tenant(db, "peek")
    r = await http.post("/v1/workflows/tenant-health", json={"tenant_ids": [tenant]}, headers=tokens.client(tenant))
    assert r.status_code == 403, r.text
    r = await http.post("/v1/workflows/tenant-health", json={"window_hours": 0}, headers=tokens.admin())
    assert r.status_code == 400 and "window_hours" in r.text, r.text
    r = await http.post("/v1/workflows/tenant-health", json={"tenant_ids": ["Not A Slug"]}, headers=tokens.admin())
    assert r.status_code == 400 and "tenant_ids" in r.text, r.text
    # A tenant never sees the platform's runs, nor their reports.
    started = await http.post("/v1/workflows/tenant-health", json={"tenant_ids": [tenant], "key": unique("k")},
                              headers=tokens.admin())
    assert started.status_code == 202, started.text
    wf_id = started.json()["workflow_id"]
    assert (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.client(tenant))).status_code == 404
    assert (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.admin())).status_code == 200


async def test_no_tenant_can_take_the_platform_s_id(http: httpx.AsyncClient, tokens: Tokens) -> None:
    """Platform-wide runs and reports belong to the tenant id ``global``: onboarding refuses it."""
    body = {"tenant_id": "global", "name": "Global Inc", "owner_email": "o@global.io"}
    r = await http.post("/v1/workflows/onboarding", json=body, headers=tokens.admin())
    assert r.status_code == 400 and "tenant_id" in r.text, r.text
