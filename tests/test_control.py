"""Workflow control for admins over real HTTP, real workers, the dev server and Postgres: pause a
campaign and see it stop at its next step boundary, resume it, terminate one with a reason, retry
a failed onboarding, bulk-pause a tenant's campaigns after a dry run, and pause an onboarding
while no worker runs it. Each control is in the audit log with its admin and reason."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from sandboxes.lago import LagoState
from tests.conftest import Tokens, assert_eventually, unique
from tests.support import record_history
from tests.test_campaign import finished, pending_action, start_campaign
from tests.test_onboarding import _worker as onboarding_worker
from workflows.onboarding import CAPABILITY as ONBOARDING, OnboardingInput, OnboardingWorkflow
from workflows.starting import CapabilityStart, start_capability

ADMIN = "admin@bizosaas"


async def view(http: httpx.AsyncClient, tokens: Tokens, wf_id: str) -> dict[str, Any]:
    r = await http.get(f"/v1/workflows/{wf_id}", headers=tokens.admin())
    assert r.status_code == 200, r.text
    return r.json()


async def launched_ads(http: httpx.AsyncClient, tokens: Tokens, tenant: str, wf_id: str) -> list[dict[str, Any]]:
    outbox = (await http.get("/v1/outbox", params={"tool": "upsert_ads_campaign"}, headers=tokens.client(tenant))).json()
    return [i for i in outbox["items"] if i["workflow_id"] == wf_id]


async def audit(db: asyncpg.Pool, wf_id: str) -> list[tuple[str, str, str]]:
    rows = await db.fetch("SELECT actor, action, details FROM audit_log WHERE workflow_id = $1 AND action LIKE 'workflow.%'"
                          " ORDER BY id", wf_id)
    return [(r["actor"], r["action"], r["details"]["reason"]) for r in rows]


async def test_a_paused_campaign_stops_at_its_next_step_and_completes_once_resumed(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client
) -> None:
    tenant = unique("paused")
    wf_id = await start_campaign(http, tokens, tenant)
    action = await pending_action(http, tokens, tenant, wf_id)

    # Paused while it waits for the client: the approval stays open (a step under way ends).
    r = await http.post(f"/v1/admin/workflows/{wf_id}/pause", json={"reason": "ad account under review"},
                        headers=tokens.admin())
    assert r.status_code == 200, r.text
    assert r.json()["operation"] == "pause" and r.json()["tenant_id"] == tenant

    async def paused() -> dict[str, Any]:
        control = (await view(http, tokens, wf_id))["control"]
        assert control["paused"] and control["paused_by"] == ADMIN and control["reason"] == "ad account under review"
        return control

    control = await assert_eventually(paused)
    assert control["stage"] == "awaiting_client_approval" and not control["waiting"]
    r = await http.post(f"/v1/admin/workflows/{wf_id}/pause", json={"reason": "twice"}, headers=tokens.admin())
    assert r.status_code == 409 and "already paused" in r.json()["detail"], r.text

    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", json={"decision": "approve"},
                        headers=tokens.client(tenant))
    assert r.status_code == 200, r.text

    # It stops before launching: nothing goes out while paused.
    async def stopped() -> dict[str, Any]:
        body = await view(http, tokens, wf_id)
        assert body["control"]["waiting"] and body["progress"]["stage"] == "launching", body
        return body

    body = await assert_eventually(stopped, timeout=30)
    assert body["status"] == "RUNNING" and "client_approved" in body["progress"]["steps_done"]
    assert await launched_ads(http, tokens, tenant, wf_id) == []

    r = await http.post(f"/v1/admin/workflows/{wf_id}/resume", json={"reason": "review passed"}, headers=tokens.admin())
    assert r.status_code == 200, r.text
    done = await finished(http, tokens.admin(), wf_id)
    assert done["result"]["status"] == "launched"
    assert {a["arguments"]["platform"] for a in await launched_ads(http, tokens, tenant, wf_id)} == {"google_ads", "meta_ads"}
    assert done["control"]["paused"] is False
    assert [(h["action"], h["by"]) for h in done["control"]["history"]] == [("pause", ADMIN), ("resume", ADMIN)]
    # Its history (with the pause and the resume in it) is kept and replayed by tests/test_histories.py.
    await record_history(client.get_workflow_handle(wf_id), "campaign-paused-and-resumed")
    assert await audit(db, wf_id) == [(ADMIN, "workflow.paused", "ad account under review"),
                                      (ADMIN, "workflow.resumed", "review passed")]

    # Closed: nothing to pause any more.
    r = await http.post(f"/v1/admin/workflows/{wf_id}/pause", json={"reason": "again"}, headers=tokens.admin())
    assert r.status_code == 409, r.text


async def test_terminate_takes_a_reason_admins_only_and_is_audited(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool
) -> None:
    tenant = unique("stopped")
    wf_id = await start_campaign(http, tokens, tenant)
    await pending_action(http, tokens, tenant, wf_id)

    # Its own client may not; an unknown workflow is 404; the reason is required.
    r = await http.post(f"/v1/admin/workflows/{wf_id}/terminate", json={"reason": "mine"}, headers=tokens.client(tenant))
    assert r.status_code == 403, r.text
    r = await http.post(f"/v1/admin/workflows/{tenant}:campaign:nope/terminate", json={"reason": "x"},
                        headers=tokens.admin())
    assert r.status_code == 404, r.text
    r = await http.post(f"/v1/admin/workflows/{wf_id}/terminate", json={}, headers=tokens.admin())
    assert r.status_code == 400 and "reason" in r.text, r.text
    assert (await view(http, tokens, wf_id))["status"] == "RUNNING"

    r = await http.post(f"/v1/admin/workflows/{wf_id}/terminate", json={"reason": "duplicate of spring-2"},
                        headers=tokens.admin())
    assert r.status_code == 200, r.text
    assert (await view(http, tokens, wf_id))["status"] == "TERMINATED"
    assert await audit(db, wf_id) == [(ADMIN, "workflow.terminated", "duplicate of spring-2")]
    r = await http.post(f"/v1/admin/workflows/{wf_id}/terminate", json={"reason": "again"}, headers=tokens.admin())
    assert r.status_code == 409, r.text


async def test_a_failed_onboarding_is_retried_under_the_same_id_and_completes(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, lago_state: LagoState
) -> None:
    tenant = unique("retried")
    body = {"tenant_id": tenant, "name": "Retried Ltd", "owner_email": f"owner@{tenant}.example", "plan": "enterprise"}
    lago_state.plans = {"starter", "growth"}  # Lago has no enterprise plan yet: the run fails for good
    try:
        r = await http.post("/v1/workflows/onboarding", json=body, headers=tokens.admin())
        assert r.status_code == 202, r.text
        wf_id, first_run = r.json()["workflow_id"], r.json()["run_id"]

        async def failed() -> dict[str, Any]:
            v = await view(http, tokens, wf_id)
            assert v["status"] == "FAILED", v
            return v

        assert "plan_not_found" in (await assert_eventually(failed, timeout=30))["failure"]
        # An ordinary start of the same tenant is still refused: a business key runs once.
        r = await http.post("/v1/workflows/onboarding", json=body, headers=tokens.admin())
        assert r.status_code == 409, r.text
        # Only admins retry.
        r = await http.post(f"/v1/admin/workflows/{wf_id}/retry", json={"reason": "x"}, headers=tokens.finance())
        assert r.status_code == 403, r.text

        lago_state.plans = None  # the plan now exists
        r = await http.post(f"/v1/admin/workflows/{wf_id}/retry", json={"reason": "enterprise plan added in Lago"},
                            headers=tokens.admin())
        assert r.status_code == 202, r.text
        answer = r.json()
        assert answer["previous_run_id"] == first_run and answer["run_id"] != first_run
    finally:
        lago_state.plans = None

    done = await finished(http, tokens.admin(), wf_id)
    assert done["run_id"] == answer["run_id"] and done["result"]["status"] == "active"
    assert await db.fetchval("SELECT plan FROM tenants WHERE id = $1", tenant) == "enterprise"
    assert await audit(db, wf_id) == [(ADMIN, "workflow.retried", "enterprise plan added in Lago")]
    # A completed run is not run again.
    r = await http.post(f"/v1/admin/workflows/{wf_id}/retry", json={"reason": "again"}, headers=tokens.admin())
    assert r.status_code == 409, r.text


async def test_bulk_pause_lists_first_then_acts_within_its_filters(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool
) -> None:
    tenant, other = unique("bulk"), unique("bystander")
    mine = {await start_campaign(http, tokens, tenant) for _ in range(3)}
    theirs = await start_campaign(http, tokens, other)
    for wf_id in [*mine, theirs]:
        await pending_action(http, tokens, wf_id.split(":", 1)[0], wf_id)
    request = {"operation": "pause", "reason": "tenant asked to hold everything", "tenant_id": tenant,
               "capability": "campaign"}

    async def listed() -> dict[str, Any]:
        r = await http.post("/v1/admin/workflows/bulk", json=request, headers=tokens.admin())
        assert r.status_code == 200, r.text
        assert r.json()["matched"] == 3 and {i["workflow_id"] for i in r.json()["items"]} == mine, r.json()
        return r.json()

    dry = await assert_eventually(listed)
    assert dry["dry_run"] is True and {i["outcome"] for i in dry["items"]} == {"would"}
    for wf_id in mine:  # a dry run changes nothing
        assert (await view(http, tokens, wf_id))["control"]["paused"] is False
    assert [await audit(db, wf_id) for wf_id in mine] == [[], [], []]

    # Bad filters are 400s naming the field; non-admins 403.
    r = await http.post("/v1/admin/workflows/bulk", json={**request, "status": "completed"}, headers=tokens.admin())
    assert r.status_code == 400 and "status" in r.text, r.text
    r = await http.post("/v1/admin/workflows/bulk", json={**request, "capability": "no-such-thing"}, headers=tokens.admin())
    assert r.status_code == 400 and "capability" in r.text, r.text
    r = await http.post("/v1/admin/workflows/bulk", json={**request, "tenant_id": "Not a slug"}, headers=tokens.admin())
    assert r.status_code == 400, r.text
    r = await http.post("/v1/admin/workflows/bulk", json=request, headers=tokens.client(tenant))
    assert r.status_code == 403, r.text

    r = await http.post("/v1/admin/workflows/bulk", json={**request, "dry_run": False}, headers=tokens.admin())
    assert r.status_code == 200, r.text
    acted = r.json()
    assert acted["done"] == 3 and {i["outcome"] for i in acted["items"]} == {"done"}
    for wf_id in mine:
        assert (await view(http, tokens, wf_id))["control"]["paused"] is True
        assert await audit(db, wf_id) == [(ADMIN, "workflow.paused", "tenant asked to hold everything")]
    assert (await view(http, tokens, theirs))["control"]["paused"] is False  # another tenant: untouched
    again = (await http.post("/v1/admin/workflows/bulk", json={**request, "dry_run": False}, headers=tokens.admin())).json()
    assert (again["done"], again["skipped"]) == (0, 3) and {i["detail"] for i in again["items"]} == {
        f"workflow {w!r} is already paused" for w in mine}

    # Clean up: terminate them all in bulk (capped by limit), audited each.
    r = await http.post("/v1/admin/workflows/bulk", json={"operation": "terminate", "reason": "test over",
                        "tenant_id": tenant, "dry_run": False, "limit": 2}, headers=tokens.admin())
    assert r.status_code == 200 and r.json()["done"] == 2, r.text
    terminated = {i["workflow_id"] for i in r.json()["items"]}
    for wf_id in mine:
        assert (await view(http, tokens, wf_id))["status"] == ("TERMINATED" if wf_id in terminated else "RUNNING")
    for wf_id in [*(mine - terminated), theirs]:
        r = await http.post(f"/v1/admin/workflows/{wf_id}/terminate", json={"reason": "test over"}, headers=tokens.admin())
        assert r.status_code == 200, r.text


async def test_a_pause_sent_while_no_worker_runs_stops_the_onboarding_before_its_first_step(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, task_queue: str,
    platform_worker: list[Worker],
) -> None:
    """The pause is a signal: it waits in history for a worker, and the onboarding that worker
    then runs stops at its first boundary (no tenant row) until resumed."""
    tenant = unique("held")
    inp = OnboardingInput(tenant_id=tenant, name="Held Ltd", owner_email=f"owner@{tenant}.example")
    handle = await start_capability(client, CapabilityStart.of(ONBOARDING, inp, tenant), task_queue=task_queue)
    r = await http.post(f"/v1/admin/workflows/{handle.id}/pause", json={"reason": "KYC pending"}, headers=tokens.admin())
    assert r.status_code == 200, r.text

    async with onboarding_worker(client, db, task_queue):
        async def waiting() -> None:
            state = await handle.query(OnboardingWorkflow.control)
            assert state.paused and state.waiting and state.stage == "creating_tenant", state

        await assert_eventually(waiting, timeout=20)
        assert await db.fetchval("SELECT count(*) FROM tenants WHERE id = $1", tenant) == 0
        r = await http.post(f"/v1/admin/workflows/{handle.id}/resume", json={"reason": "KYC done"}, headers=tokens.admin())
        assert r.status_code == 200, r.text
        result = await handle.result()
    assert result.status == "active"
    assert await audit(db, handle.id) == [(ADMIN, "workflow.paused", "KYC pending"), (ADMIN, "workflow.resumed", "KYC done")]


async def test_a_workflow_that_closes_between_the_apis_look_and_its_call_is_a_409_not_a_500(
    client: Client, db: asyncpg.Pool
) -> None:
    """Two admins at once: one terminates a run while the other's pause is on its way. The
    pause's signal then meets a closed workflow; Temporal answers NOT_FOUND, the API 409."""
    from litestar import Request
    from temporalio.service import RPCError

    from api.errors import rpc_error_handler
    from core.names import PAUSE_SIGNAL

    tenant = unique("race")
    await db.execute("INSERT INTO tenants (id, name, plan, owner_email, status) VALUES ($1, $1, 'starter', "
                     "'o@x.io', 'active')", tenant)
    handle = await start_capability(client, CapabilityStart.of(ONBOARDING, OnboardingInput(
        tenant_id=tenant, name="Race Co", owner_email="o@race.example"), tenant), task_queue=unique("nobody"))
    await handle.terminate(reason="the other admin")
    try:
        await handle.signal(PAUSE_SIGNAL, {"by": "admin", "reason": "pause"})
    except RPCError as exc:
        raced = exc
    else:
        raise AssertionError("a signal to a closed workflow was taken")
    request = Request(scope={"type": "http", "method": "POST", "path": f"/v1/admin/workflows/{handle.id}/pause",
                             "raw_path": b"/", "headers": [], "query_string": b"", "root_path": "", "scheme": "http",
                             "server": ("test", 80), "state": {}})
    answer = rpc_error_handler(request, raced)
    assert (answer.status_code, answer.content["code"]) == (409, "not_running")
