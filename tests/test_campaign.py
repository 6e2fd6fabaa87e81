"""Campaign Strategy & Generation through the API, as the portals use it: start, Pending
Actions, decide (approve, edit, request changes, reject), the Approval Hub, the launch in the
outbox and the decision in the audit log. Real workers, real dev server, real HTTP, real tokens."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC
from typing import Any

import asyncpg
import httpx

from temporalio.client import Client
from temporalio.worker import Replayer

from api.app import create_app
from hitl.approvals import HumanDecisions
from hitl.protocol import ApprovalsView
from tests.conftest import Tokens, assert_eventually, serve, unique
from tests.support import dev_env, record_history
from workers.main import WORKFLOW_FAILURE_TYPES
from workflows.campaign import CampaignWorkflow
from workers.devcluster import temporal_cli
from core.settings import Settings


def campaign_body(tenant: str, key: str | None = None, **kw: Any) -> dict[str, Any]:
    body = {"tenant_id": tenant, "campaign_key": key or unique("spring"), "goal": "Sell more sourdough this spring",
            "channels": ["google_ads", "meta_ads"], "budget_usd": 600, "duration_days": 30, "objective": "sales"}
    body.update(kw)
    return body


async def start_campaign(http: httpx.AsyncClient, tokens: Tokens, tenant: str, **kw: Any) -> str:
    r = await http.post("/v1/workflows/campaign", json=campaign_body(tenant, **kw), headers=tokens.client(tenant))
    assert r.status_code == 202, r.text
    return r.json()["workflow_id"]


async def pending_action(http: httpx.AsyncClient, tokens: Tokens, tenant: str, wf_id: str,
                         request_id: str = "creative-1", timeout: float = 60) -> dict[str, Any]:
    """The action as the client's Pending Actions page lists it."""
    async def listed() -> dict[str, Any]:
        r = await http.get("/v1/pending-actions", headers=tokens.client(tenant))
        assert r.status_code == 200, r.text
        mine = [a for a in r.json()["items"] if a["workflow_id"] == wf_id and a["request_id"] == request_id]
        assert mine, r.json()
        return mine[0]

    return await assert_eventually(listed, timeout=timeout)


async def finished(http: httpx.AsyncClient, headers: dict[str, str], wf_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=headers)).json()
        assert view["status"] == "COMPLETED", view
        return view

    return await assert_eventually(done, timeout=60)


async def test_client_approves_with_an_edited_budget_and_the_campaign_launches(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client
) -> None:
    tenant = unique("bakery")
    wf_id = await start_campaign(http, tokens, tenant)
    action = await pending_action(http, tokens, tenant, wf_id)
    assert action["title"].startswith("Approve the creative and budget")
    assert set(action["allowed"]) == {"approve", "reject", "request_changes", "edit"}

    detail = (await http.get(f"/v1/pending-actions/{action['action_id']}", headers=tokens.client(tenant))).json()
    proposal = detail["request"]["proposal"]
    assert proposal["budget_usd"] == 600 and set(proposal["ads"]) == {"google_ads", "meta_ads"}
    assert detail["request"]["edit_schema"]["properties"]["budget_usd"]["maximum"] == 1_000_000
    assert detail["status"] == "open" and detail["decisions"] == []

    edits = {"budget_usd": 900, "ads": {"meta_ads": {"headline": "Warm sourdough, every morning"}}}
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision",
                        json={"decision": "edit", "comment": "a bit more budget", "edits": edits},
                        headers=tokens.client(tenant))
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["closed"] is True and receipt["decided_by"] == f"owner@{tenant}"

    view = await finished(http, tokens.client(tenant), wf_id)
    result = view["result"]
    assert result["status"] == "launched" and result["budget_usd"] == 900 and result["offline"] is True
    assert {c["channel"] for c in result["launched"]} == {"google_ads", "meta_ads"}
    meta = next(c for c in result["launched"] if c["channel"] == "meta_ads")
    assert meta["headline"] == "Warm sourdough, every morning"
    assert meta["daily_budget"] == 15.0  # 900 over 30 days, 2 channels

    outbox = (await http.get("/v1/outbox", params={"tool": "upsert_ads_campaign"}, headers=tokens.client(tenant))).json()
    launched = {i["arguments"]["platform"]: i for i in outbox["items"] if i["workflow_id"] == wf_id}
    assert set(launched) == {"google_ads", "meta_ads"}
    assert launched["meta_ads"]["arguments"]["targeting"]["headline"] == "Warm sourdough, every morning"

    audit = await db.fetch("SELECT actor, action, details FROM audit_log WHERE workflow_id = $1 AND action LIKE 'approval.%'",
                           wf_id)
    assert [(a["actor"], a["action"]) for a in audit] == [(f"owner@{tenant}", "approval.edit")]
    diff = {d["path"]: (d["before"], d["after"]) for d in audit[0]["details"]["diff"]}
    assert diff["/budget_usd"] == (600, 900)
    assert diff["/ads/meta_ads/headline"][1] == "Warm sourdough, every morning"
    assert audit[0]["details"]["comment"] == "a bit more budget"

    # The recorded history replays on the current code (no non-determinism).
    history = await client.get_workflow_handle(wf_id).fetch_history()
    await Replayer(workflows=[CampaignWorkflow], data_converter=client.data_converter,
                   workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES).replay_workflow(history)

    # Closed: nothing pending any more, and deciding again is a conflict.
    r = await http.get("/v1/pending-actions", headers=tokens.client(tenant))
    assert [a for a in r.json()["items"] if a["workflow_id"] == wf_id] == []
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", json={"decision": "approve"},
                        headers=tokens.client(tenant, sub="someone-else@x"))
    assert r.status_code == 409, r.text


async def test_request_changes_regenerates_then_reject_ends_without_launch(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool
) -> None:
    tenant = unique("florist")
    wf_id = await start_campaign(http, tokens, tenant)
    first = await pending_action(http, tokens, tenant, wf_id)
    r = await http.post(f"/v1/pending-actions/{first['action_id']}/decision",
                        json={"decision": "request_changes", "comment": "mention free delivery"},
                        headers=tokens.client(tenant))
    assert r.status_code == 200, r.text
    second = await pending_action(http, tokens, tenant, wf_id, request_id="creative-2")
    progress = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.client(tenant))).json()["progress"]
    assert progress["round"] == 2 and "changes_requested" in progress["steps_done"]
    r = await http.post(f"/v1/pending-actions/{second['action_id']}/decision", json={"decision": "reject",
                        "comment": "not this season"}, headers=tokens.client(tenant))
    assert r.status_code == 200, r.text
    result = (await finished(http, tokens.client(tenant), wf_id))["result"]
    assert result["status"] == "rejected" and result["rounds"] == 2 and result["launched"] == []
    assert [d["decision"] for d in result["decisions"]] == ["request_changes", "reject"]
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE workflow_id = $1", wf_id) == 0
    # Both creative rounds were written by the crew and billed: usage rows for each round.
    # (The strategist runs as an agent child, `{id}:agent:campaign-strategist`.)
    rows = await db.fetch("SELECT agent, idempotency_key FROM llm_usage WHERE workflow_id = $1 "
                          "OR starts_with(workflow_id, $1 || ':')", wf_id)
    assert {r["agent"] for r in rows} == {"campaign-strategist", "campaign-creative-crew"}
    creative_runs = {r["idempotency_key"].split(":")[-3] for r in rows if r["agent"] == "campaign-creative-crew"}
    assert len(creative_runs) == 2  # one crew activity per round


async def test_budget_above_the_cap_needs_an_admin_in_the_approval_hub(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    tenant = unique("gym")
    wf_id = await start_campaign(http, tokens, tenant, budget_usd=5000)
    action = await pending_action(http, tokens, tenant, wf_id)
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", json={"decision": "approve"},
                        headers=tokens.client(tenant))
    assert r.status_code == 200, r.text

    async def in_hub() -> dict[str, Any]:
        r = await http.get("/v1/admin/approvals", params={"tenant_id": tenant}, headers=tokens.admin())
        assert r.status_code == 200, r.text
        items = [a for a in r.json()["items"] if a["workflow_id"] == wf_id]
        assert items and items[0]["request_id"] == "budget-override", r.json()
        return items[0]

    override = await assert_eventually(in_hub, timeout=30)
    assert "above the tenant's cap" in override["title"]
    # The client may not decide it (admin audience, staff roles), and it is not in their inbox.
    r = await http.post(f"/v1/pending-actions/{override['action_id']}/decision", json={"decision": "approve"},
                        headers=tokens.client(tenant))
    assert r.status_code == 403, r.text
    r = await http.get("/v1/admin/approvals", headers=tokens.client(tenant))
    assert r.status_code == 403
    r = await http.post(f"/v1/pending-actions/{override['action_id']}/decision", json={"decision": "approve"},
                        headers=tokens.admin())
    assert r.status_code == 200, r.text
    result = (await finished(http, tokens.admin(), wf_id))["result"]
    assert result["status"] == "launched" and result["budget_usd"] == 5000
    assert [(d["request_id"], d["role"]) for d in result["decisions"]] == [("creative-1", "client"),
                                                                          ("budget-override", "admin")]


async def test_fifty_concurrent_decisions_one_wins_one_audit_row(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool
) -> None:
    tenant = unique("cafe")
    wf_id = await start_campaign(http, tokens, tenant)
    action = await pending_action(http, tokens, tenant, wf_id)
    url = f"/v1/pending-actions/{action['action_id']}/decision"

    async def decide(i: int) -> int:
        r = await http.post(url, json={"decision": "approve"}, headers=tokens.client(tenant, sub=f"member{i}@{tenant}"))
        return r.status_code

    codes = await asyncio.gather(*(decide(i) for i in range(50)))
    assert sorted(codes).count(200) == 1 and codes.count(409) == 49, codes
    await finished(http, tokens.client(tenant), wf_id)
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE workflow_id = $1 AND action LIKE 'approval.%'",
                             wf_id) == 1


async def test_bad_decisions_get_clear_4xx_and_change_nothing(http: httpx.AsyncClient, tokens: Tokens) -> None:
    tenant, other = unique("shop"), unique("rival")
    wf_id = await start_campaign(http, tokens, tenant)
    action = await pending_action(http, tokens, tenant, wf_id)
    url = f"/v1/pending-actions/{action['action_id']}/decision"
    owner = tokens.client(tenant)

    r = await http.post(url, json={"decision": "approve"})
    assert r.status_code == 401
    r = await http.post(url, content=b"{not json", headers={**owner, "content-type": "application/json"})
    assert r.status_code == 400
    r = await http.post(url, json={"decision": "maybe"}, headers=owner)
    assert r.status_code == 400 and "decision" in r.text
    r = await http.post(url, json={"decision": "edit", "edits": {"budget_usd": -5}}, headers=owner)
    assert r.status_code == 422 and "budget_usd" in r.json()["detail"]
    r = await http.post(url, json={"decision": "edit", "edits": {"ads": {"tiktok_ads": {"headline": "x"}}}},
                        headers=owner)
    assert r.status_code == 422
    r = await http.post(url, json={"decision": "request_changes"}, headers=owner)
    assert r.status_code == 422 and "comment" in r.json()["detail"]
    r = await http.post(url, json={"decision": "approve"}, headers=tokens._bearer(sub="s@x", roles=["support"]))
    assert r.status_code == 403
    # Another tenant: every endpoint given this tenant's ids answers 404, and its inbox is empty.
    for method, path in (("GET", f"/v1/pending-actions/{action['action_id']}"), ("POST", url),
                         ("GET", f"/v1/workflows/{wf_id}"), ("POST", f"/v1/workflows/{wf_id}/cancel")):
        r = await http.request(method, path, json={"decision": "approve"} if method == "POST" else None,
                               headers=tokens.client(other))
        assert r.status_code == 404, (method, path, r.text)
    r = await http.get("/v1/pending-actions", headers=tokens.client(other))
    assert r.json()["items"] == []
    r = await http.get("/v1/pending-actions", params={"tenant_id": tenant}, headers=tokens.client(other))
    assert r.status_code == 404, r.text
    r = await http.get("/v1/pending-actions/not-an-action", headers=owner)
    assert r.status_code == 404
    # Still open and undecided after all that.
    detail = (await http.get(f"/v1/pending-actions/{action['action_id']}", headers=owner)).json()
    assert detail["status"] == "open" and detail["decisions"] == []
    r = await http.post(url, json={"decision": "approve"}, headers=owner)
    assert r.status_code == 200
    r = await http.post(url, json={"decision": "approve"}, headers=owner)
    assert r.status_code == 409


async def bizosaas(settings: Settings, *args: str) -> tuple[int, str, str]:
    """Run the ``bizosaas`` command (this checkout's) against the test stack's settings."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BIZ_")}, **dev_env(settings),
           "BIZ_TEMPORAL_ADDRESS": settings.temporal.address, "BIZ_TEMPORAL_NAMESPACE": settings.temporal.namespace,
           "BIZ_DEV_STATE_DIR": str(settings.dev.state_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.cli", *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def approvals_view(client: Client, wf_id: str) -> ApprovalsView:
    return await client.get_workflow_handle(wf_id).query(HumanDecisions.approvals)


async def test_signed_cli_decisions_move_the_campaign_on_and_forged_ones_do_not(
    http: httpx.AsyncClient, tokens: Tokens, settings: Settings, client: Client, api_url: str
) -> None:
    """Fire-and-forget senders decide with the `decide` signal, signed by `bizosaas approvals
    decide`: sent by it, or printed by it for the `temporal` CLI. A hand-written decider is refused."""
    tenant = unique("deli")
    wf_id = await start_campaign(http, tokens, tenant)
    await pending_action(http, tokens, tenant, wf_id)

    async def temporal_signal(payload: str, *codec: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            temporal_cli(), "workflow", "signal", "--address", settings.temporal.address,
            "--namespace", settings.temporal.namespace, "--workflow-id", wf_id, "--name", "decide",
            "--input", payload, *codec, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, err.decode()

    # What the README used to show: a decider anyone can write. Refused, recorded, nothing moves.
    await temporal_signal(json.dumps({"request_id": "creative-1", "decision": "approve", "by": {
        "sub": f"owner@{tenant}", "roles": ["client"], "tenant_id": tenant}}))
    # Signed by the CLI, then the decider rewritten into an admin: refused too.
    code, out, err = await bizosaas(settings, "approvals", "decide", "--workflow-id", wf_id, "--request", "creative-1",
                                    "--decision", "approve", "--as", f"owner@{tenant}", "--role", "client",
                                    "--tenant", tenant, "--print")
    assert code == 0, err
    forged = json.loads(out)
    forged["by"] = {"sub": "boss@bizosaas", "roles": ["admin"]}
    await temporal_signal(json.dumps(forged))

    async def refused_two() -> ApprovalsView:
        view = await approvals_view(client, wf_id)
        assert [r.error_type for r in view.rejected_signals] == ["UnsignedDecision", "InvalidDecisionSignature"]
        return view

    view = await assert_eventually(refused_two, timeout=15)
    assert view.open is not None and view.open.decisions == []

    # Printed by the CLI and sent with `temporal workflow signal --input` through the API's codec
    # endpoint (as the README shows): request changes. The comment is ciphertext in history.
    code, out, err = await bizosaas(settings, "approvals", "decide", "--workflow-id", wf_id, "--request", "creative-1",
                                    "--decision", "request_changes", "--comment", "mention the bakery's name",
                                    "--as", f"owner@{tenant}", "--role", "client", "--tenant", tenant, "--print")
    assert code == 0, err
    await temporal_signal(out.strip(), "--codec-endpoint", f"{api_url}/codec",
                          "--codec-auth", tokens.admin()["authorization"])
    await pending_action(http, tokens, tenant, wf_id, request_id="creative-2")
    encodings = [e.workflow_execution_signaled_event_attributes.input.payloads[0].metadata["encoding"]
                 async for e in client.get_workflow_handle(wf_id).fetch_history_events()
                 if e.HasField("workflow_execution_signaled_event_attributes")]
    assert encodings == [b"json/plain", b"json/plain", b"binary/encrypted"]
    # Sent by the CLI itself: approve the second creative.
    code, out, err = await bizosaas(settings, "approvals", "decide", "--workflow-id", wf_id, "--request", "creative-2",
                                    "--decision", "approve", "--comment", "ok from the CLI", "--as", f"owner@{tenant}",
                                    "--role", "client", "--tenant", tenant)
    assert code == 0, err
    assert f"sent the decide signal to {wf_id}" in out
    result = (await finished(http, tokens.client(tenant), wf_id))["result"]
    assert result["status"] == "launched"
    assert [(d["decided_by"], d["via"], d["decision"], d["comment"]) for d in result["decisions"]] == [
        (f"owner@{tenant}", "signal", "request_changes", "mention the bakery's name"),
        (f"owner@{tenant}", "signal", "approve", "ok from the CLI")]


async def test_an_api_whose_decision_keys_the_workers_do_not_hold_answers_503_and_changes_nothing(
    http: httpx.AsyncClient, tokens: Tokens, settings: Settings
) -> None:
    tenant = unique("grocer")
    wf_id = await start_campaign(http, tokens, tenant)
    action = await pending_action(http, tokens, tenant, wf_id)
    path = f"/v1/pending-actions/{action['action_id']}/decision"
    other_key = settings.model_copy(update={"decision": type(settings.decision)(
        keys={"stray-1": "a-key-the-workers-never-heard-of-0123456789"})})
    no_key = settings.model_copy(update={"decision": type(settings.decision)()})
    for misconfigured in (other_key, no_key):
        async with serve(create_app(misconfigured)) as url, httpx.AsyncClient(base_url=url, timeout=15) as api:
            r = await api.post(path, json={"decision": "approve"}, headers=tokens.client(tenant))
            assert r.status_code == 503, r.text
            assert "stray-1" not in r.text and "never-heard" not in r.text
    detail = (await http.get(f"/v1/pending-actions/{action['action_id']}", headers=tokens.client(tenant))).json()
    assert detail["status"] == "open" and detail["decisions"] == []
    r = await http.post(path, json={"decision": "approve"}, headers=tokens.client(tenant))
    assert r.status_code == 200, r.text


async def test_approvals_decide_refuses_bad_input_without_sending(settings: Settings) -> None:
    base = ["approvals", "decide", "--workflow-id", "acme:campaign:x", "--request", "creative-1", "--as", "o@acme",
            "--role", "client", "--tenant", "acme", "--print"]
    code, out, err = await bizosaas(settings, *base, "--decision", "edit", "--edits", "{not json")
    assert code == 2 and out == "" and "bizosaas approvals decide:" in err
    code, out, err = await bizosaas(settings, *base, "--decision", "approve", "--ttl", "90000")
    assert code == 2 and "86400" in err
    code, _, err = await bizosaas(settings, *base, "--decision", "approve", "--comment", "x" * 4001)
    assert code == 2 and "comment" in err
    # The signing key never shows: not in the payload, not in an error.
    code, out, err = await bizosaas(settings, *base, "--decision", "approve")
    assert code == 0 and json.loads(out)["signature"]["key_id"] == next(iter(settings.decision.keys))
    assert not any(v.get_secret_value() in out + err for v in settings.decision.keys.values())


async def test_idempotency_key_list_filters_and_cancel(http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool,
                                                       client: Client) -> None:
    tenant = unique("salon")
    body = campaign_body(tenant)
    headers = {**tokens.client(tenant), "idempotency-key": "req-7f3a"}
    first = await http.post("/v1/workflows/campaign", json=body, headers=headers)
    again = await http.post("/v1/workflows/campaign", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202), again.text
    assert first.json() == again.json()
    other_key = await http.post("/v1/workflows/campaign", json=body,
                                headers={**tokens.client(tenant), "idempotency-key": "req-other"})
    assert other_key.status_code == 409 and other_key.json()["workflow_id"] == first.json()["workflow_id"]
    wf_id = first.json()["workflow_id"]
    action = await pending_action(http, tokens, tenant, wf_id)

    async def listed(**params: Any) -> list[str]:
        r = await http.get("/v1/workflows", params=params, headers=tokens.client(tenant))
        assert r.status_code == 200, r.text
        return [w["workflow_id"] for w in r.json()["items"]]

    assert await listed(pending="true") == [wf_id]
    assert await listed(capability="campaign", status="running") == [wf_id]
    assert await listed(capability="onboarding") == []
    r = await http.get("/v1/workflows", headers=tokens.client(unique("nobody")))
    assert r.json()["items"] == []
    r = await http.get("/v1/workflows", params={"status": "sideways"}, headers=tokens.client(tenant))
    assert r.status_code == 400

    r = await http.post(f"/v1/workflows/{wf_id}/cancel", headers=tokens.client(tenant))
    assert r.status_code == 202, r.text

    async def canceled() -> None:
        assert await listed(status="canceled") == [wf_id]
        r = await http.get("/v1/pending-actions", headers=tokens.client(tenant))
        assert r.json()["items"] == []

    await assert_eventually(canceled, timeout=15)
    # Its request ended with it: closed where it is shown, no longer waiting in the list.
    r = await http.get(f"/v1/pending-actions/{action['action_id']}", headers=tokens.client(tenant))
    assert r.status_code == 200 and r.json()["status"] == "closed", r.text
    assert await listed(pending="true") == []
    assert wf_id in await listed(pending="false")
    r = await http.get("/v1/workflows", params={"status": "canceled"}, headers=tokens.client(tenant))
    assert [w["pending_approval"] for w in r.json()["items"]] == [False]
    # The AI work done before the cancel is billed all the same (strategist and creative crew),
    # by the campaign as it stops.
    usage = await db.fetch("SELECT id, agent, idempotency_key, created_at, reported_to_lago_at FROM llm_usage "
                           "WHERE workflow_id = $1 OR starts_with(workflow_id, $1 || ':')", wf_id)
    assert {u["agent"] for u in usage} == {"campaign-strategist", "campaign-creative-crew"}
    unbilled = [u for u in usage if u["reported_to_lago_at"] is None]
    if unbilled:
        # Only a call recorded after the campaign's report started may be left: an agent attempt
        # that timed out (a loaded machine) and finished its calls late. The hourly usage-billing
        # sweep bills those; run it now.
        history = await client.get_workflow_handle(wf_id).fetch_history()
        reports = [e.event_time.ToDatetime().replace(tzinfo=UTC) for e in history.events
                   if e.HasField("activity_task_scheduled_event_attributes")
                   and e.activity_task_scheduled_event_attributes.activity_type.name == "lago.report_usage"]
        assert reports and all(u["created_at"] > reports[-1] for u in unbilled), \
            f"usage not billed after the cancel: {[dict(u) for u in usage]}; the report was scheduled at {reports}"
        r = await http.post("/v1/workflows/usage-billing", headers=tokens.admin(),
                            json={"tenant_ids": [tenant], "settled_minutes": 0, "key": unique("late")})
        assert r.status_code == 202, r.text

        async def billed() -> None:
            left = await db.fetchval("SELECT count(*) FROM llm_usage WHERE (workflow_id = $1 OR starts_with("
                                     "workflow_id, $1 || ':')) AND reported_to_lago_at IS NULL", wf_id)
            assert left == 0

        await assert_eventually(billed, timeout=30)


async def test_pending_actions_stream_shows_an_approval_open_and_close(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    tenant = unique("bistro")
    events: list[tuple[str, str]] = []
    notes: list[tuple[str, str]] = []

    async def listen() -> None:
        async with http.stream("GET", "/v1/pending-actions/stream", headers=tokens.client(tenant),
                               timeout=None) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            kind = None
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind:
                    data = json.loads(line.split(":", 1)[1])
                    if kind == "notification":  # the approval's events (requested, decided)
                        notes.append((data["event"], data["action_id"]))
                        continue
                    events.append((kind, data["action_id"]))
                    if kind == "closed":
                        return

    listener = asyncio.create_task(listen())
    wf_id = await start_campaign(http, tokens, tenant)
    action = await pending_action(http, tokens, tenant, wf_id)

    async def opened() -> None:
        assert events == [("opened", action["action_id"])]

    await assert_eventually(opened, timeout=10)
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", json={"decision": "approve"},
                        headers=tokens.client(tenant))
    assert r.status_code == 200
    await asyncio.wait_for(listener, timeout=15)
    assert events == [("opened", action["action_id"]), ("closed", action["action_id"])]
    assert ("requested", action["action_id"]) in notes


async def test_a_cancel_while_the_approval_notice_is_being_delivered_still_cleans_up(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client
) -> None:
    """The cancel reaches a running activity (the approval's notice, whose email the tenant's
    mail server does not take: it retries): it arrives as that activity's error, and the
    campaign still ends canceled with its cleanup done: the AI work billed."""
    from tests.support import add_tenant
    from workers.devcluster import free_port

    tenant = await add_tenant(db, "bistro")  # its owner gets the notice
    owner = tokens.client(tenant)
    r = await http.put(f"/v1/admin/mcp/servers/{unique('down')}", headers=tokens.admin(), json={
        "transport": "streamable-http", "url": f"http://127.0.0.1:{free_port()}/mcp", "category": "email",
        "timeout_seconds": 5, "tools": [{"tool": "send_email", "tenants": [tenant]}]})
    assert r.status_code == 200, r.text
    wf_id = await start_campaign(http, tokens, tenant)
    handle = client.get_workflow_handle(wf_id)

    async def delivering() -> None:
        desc = await handle.describe()
        assert [a for a in desc.raw_description.pending_activities
                if a.activity_type.name == "notifications.deliver" and a.attempt >= 2], "not retrying yet"

    await assert_eventually(delivering, timeout=60)
    r = await http.post(f"/v1/workflows/{wf_id}/cancel", headers=owner)
    assert r.status_code == 202, r.text

    async def canceled() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=owner)).json()
        assert view["status"] == "CANCELED", view
        return view

    view = await assert_eventually(canceled, timeout=60)
    assert view["progress"]["stage"] == "canceled", view
    assert {"cancel_requested", "usage_reported"} <= set(view["progress"]["steps_done"]), view
    unbilled = await db.fetchval("SELECT count(*) FROM llm_usage WHERE workflow_id = $1 AND reported_to_lago_at IS NULL",
                                 wf_id)
    assert unbilled == 0 and await db.fetchval("SELECT count(*) FROM llm_usage WHERE workflow_id = $1", wf_id) > 0
    await record_history(handle, "campaign-canceled-during-an-activity")
