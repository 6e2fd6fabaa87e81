"""Marketing Email Sequence on the running platform (dev server, real workers, the sandbox MCP
server's send_email, real HTTP, real tokens):

- a signed ``lead.created`` event starts a lead's sequence; the tenant's steps (its settings) go
  out one after another on durable timers, each through send_email (one outbox row each), with
  the lead's name filled in; the same event delivered again starts nothing;
- ``stop-sequence`` after the first email: nothing more is sent, the result says who stopped it
  and why; a second stop is a 409, another tenant's people get 404;
- bad input: an address that is not one, steps out of order; nothing starts;
- personalized (Smart Lead Nurturing): each email written by the agent for the lead, its calls
  billed to Lago.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client

from activities.lago import USAGE_METRIC_CODE
from sandboxes.lago import LagoState

from tests.conftest import Tokens, assert_eventually, unique
from tests.support import add_tenant, record_history, workflow_exists
from tests.test_webhooks import generic_headers
from workflows.capability import Event, InvalidEvent
from workflows.email_sequence import lead_created, lead_key

STEPS = [{"after_seconds": 0, "subject": "Welcome, {name}", "text": "Hi {name}, thanks for asking about {interest}."},
         {"after_seconds": 2, "subject": "Questions about {interest}?", "text": "Hi {name}, any questions?"},
         {"after_seconds": 4, "subject": "Last note, {name}", "text": "Hi {name}, our last follow-up."}]


async def set_steps(http: httpx.AsyncClient, tokens: Tokens, client: Client, tenant: str,
                    steps: list[dict[str, Any]]) -> None:
    """The tenant's sequence, set by its own client as the portal would; returns once applied."""
    r = await http.put(f"/v1/tenants/{tenant}/settings/email-sequence", headers=tokens.client(tenant),
                       json={"steps": steps, "from_name": "Rose Bakery"})
    assert r.status_code == 202, r.text
    await client.get_workflow_handle(r.json()["workflow_id"]).result()
    got = (await http.get(f"/v1/tenants/{tenant}/settings/email-sequence", headers=tokens.client(tenant))).json()
    assert got["steps"] == steps and got["from_name"] == "Rose Bakery", got


async def finished(http: httpx.AsyncClient, headers: dict[str, str], wf_id: str, timeout: float = 60) -> dict[str, Any]:
    async def done() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=headers)).json()
        assert view["status"] == "COMPLETED", view
        return view

    return await assert_eventually(done, timeout=timeout, interval=0.2)


async def emails(db: asyncpg.Pool, wf_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT arguments FROM outbox WHERE workflow_id = $1 AND tool = 'send_email' ORDER BY id",
                          wf_id)
    return [json.loads(r["arguments"]) if isinstance(r["arguments"], str) else r["arguments"] for r in rows]


async def test_a_signed_lead_gets_the_tenants_steps_on_timers_and_a_redelivery_starts_nothing(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client,
) -> None:
    tenant = await add_tenant(db, "leads")
    await set_steps(http, tokens, client, tenant, STEPS)
    secret = "whsec-" + unique("lead")
    await db.execute("INSERT INTO webhook_secrets (tenant_id, secret) VALUES ($1, $2)", tenant, secret)
    body = json.dumps({"type": "lead.created", "id": unique("evt"), "data": {
        "email": "Ada@Example.com", "name": "Ada", "interest": "wedding cakes", "source": "contact-form"}}).encode()

    r = await http.post("/v1/webhooks/generic", content=body, headers=generic_headers(tenant, secret, body))
    assert r.status_code == 202 and r.json()["outcome"] == "started", r.text
    wf_id = r.json()["workflow_id"]
    assert wf_id == f"{tenant}:email-sequence:{lead_key('ada@example.com')}"  # no address in the id
    again = await http.post("/v1/webhooks/generic", content=body, headers=generic_headers(tenant, secret, body))
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate", again.text

    view = await finished(http, tokens.client(tenant), wf_id)
    await record_history(client.get_workflow_handle(wf_id), "email-sequence")
    result = view["result"]
    assert (result["status"], result["steps"], result["stop_reason"]) == ("completed", 3, None)
    assert [s["subject"] for s in result["sent"]] == [
        "Welcome, Ada", "Questions about wedding cakes?", "Last note, Ada"]
    # Each on its own timer: not before its after_seconds from the start.
    started = datetime.fromisoformat(view["start_time"])
    for step, sent in zip(STEPS, result["sent"], strict=True):
        assert (datetime.fromisoformat(sent["sent_at"]) - started).total_seconds() >= step["after_seconds"], sent
    mails = await emails(db, wf_id)
    assert [m["to"] for m in mails] == [["Ada@Example.com"]] * 3
    assert mails[0]["text"] == "Hi Ada, thanks for asking about wedding cakes." and mails[0]["from_name"] == "Rose Bakery"
    assert len({s["message_id"] for s in result["sent"]}) == 3


async def test_stop_sequence_sends_nothing_more_and_says_who_stopped_it(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client,
) -> None:
    tenant = await add_tenant(db, "leads")
    await set_steps(http, tokens, client, tenant, [STEPS[0], {**STEPS[1], "after_seconds": 600}])
    owner = tokens.client(tenant)
    r = await http.post("/v1/workflows/email-sequence", headers=owner, json={
        "tenant_id": tenant, "email": "grace@example.org", "name": "Grace", "lead_key": "grace-1"})
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    handle = client.get_workflow_handle(wf_id)

    async def first_sent() -> None:
        progress = await handle.query("progress")
        assert progress["sent"] == 1 and progress["stage"] == "waiting" and progress["next_step"] == 2, progress

    await assert_eventually(first_sent, timeout=30, interval=0.2)
    url = f"/v1/workflows/{wf_id}/commands/stop-sequence"
    other = await add_tenant(db, "other")
    assert (await http.post(url, json={"reason": "replied"}, headers=tokens.client(other))).status_code == 404
    r = await http.post(url, json={"reason": "replied"}, headers=owner)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["sent"], r.json()["next_step"]) == ("stopped", 1, None)
    view = await finished(http, owner, wf_id, timeout=20)  # not 600 s: the stop ends the wait
    result = view["result"]
    assert (result["status"], result["stop_reason"], len(result["sent"])) == ("stopped", "replied", 1)
    assert result["stopped_by"] and result["stopped_by"] != "system"
    assert len(await emails(db, wf_id)) == 1
    r = await http.post(url, json={"reason": "replied"}, headers=owner)
    assert r.status_code == 409 and r.json()["code"] == "not_running", r.text  # the run has ended


async def test_a_second_stop_is_refused_and_bad_input_starts_nothing(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client,
) -> None:
    tenant = await add_tenant(db, "leads")
    owner = tokens.client(tenant)
    r = await http.post("/v1/workflows/email-sequence", headers=owner,
                        json={"tenant_id": tenant, "email": "not an address", "lead_key": "bad-1"})
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "email", r.text
    assert not await workflow_exists(client, f"{tenant}:email-sequence:bad-1")
    r = await http.put(f"/v1/tenants/{tenant}/settings/email-sequence", headers=owner,
                       json={"steps": [STEPS[2], STEPS[0]]})
    assert r.status_code == 400 and "after_seconds" in r.text, r.text

    # The default sequence: the first email at once, the next in two days.
    r = await http.post("/v1/workflows/email-sequence", headers=owner,
                        json={"tenant_id": tenant, "email": "lin@example.net", "lead_key": "lin-1"})
    wf_id = r.json()["workflow_id"]
    handle = client.get_workflow_handle(wf_id)

    async def waiting_two_days() -> None:
        progress = await handle.query("progress")
        assert progress["sent"] == 1 and progress["next_step"] == 2, progress

    await assert_eventually(waiting_two_days, timeout=30, interval=0.2)
    url = f"/v1/workflows/{wf_id}/commands/stop-sequence"
    assert (await http.post(url, json={"reason": "unsubscribed"}, headers=owner)).status_code == 200
    r = await http.post(url, json={"reason": "other"}, headers=owner)
    # Refused: by the workflow while it winds up, or as not running once it has ended.
    assert r.status_code == 409 and r.json()["code"] in ("AlreadyStopped", "not_running"), r.text
    await asyncio.wait_for(handle.result(), 20)
    mails = await emails(db, wf_id)
    assert [m["subject"] for m in mails] == ["Thanks for getting in touch, there"]


async def test_personalized_emails_are_written_by_the_agent_for_the_lead_and_billed(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, lago_state: LagoState,
) -> None:
    """Smart Lead Nurturing: with ``personalize`` each email is the agent's (offline provider
    here), the calls are usage rows reported to Lago one event each."""
    tenant = await add_tenant(db, "leads")
    r = await http.put(f"/v1/tenants/{tenant}/settings/email-sequence", headers=tokens.client(tenant),
                       json={"steps": STEPS[:2], "personalize": True})
    assert r.status_code == 202, r.text
    await client.get_workflow_handle(r.json()["workflow_id"]).result()
    owner = tokens.client(tenant)
    r = await http.post("/v1/workflows/email-sequence", headers=owner, json={
        "tenant_id": tenant, "email": "ada@example.com", "name": "Ada", "interest": "wedding cakes",
        "lead_key": "ada-ai"})
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    result = (await finished(http, owner, wf_id))["result"]
    await record_history(client.get_workflow_handle(wf_id), "email-sequence-personalized")
    assert (result["status"], result["personalized"], result["offline"]) == ("completed", True, True)
    assert len(result["sent"]) == 2 and result["llm_calls"] >= 2
    mails = await emails(db, wf_id)
    # What went out is the agent's email, not the step's template.
    assert [m["subject"] for m in mails] == [s["subject"] for s in result["sent"]]
    assert mails[0]["text"] != "Hi Ada, thanks for asking about wedding cakes." and mails[0]["text"]
    usage = await db.fetch("SELECT agent, idempotency_key, reported_to_lago_at, workflow_id FROM llm_usage "
                           "WHERE workflow_id = $1 OR starts_with(workflow_id, $1 || ':')", wf_id)
    assert len(usage) == result["llm_calls"] and {u["agent"] for u in usage} == {"lead-writer"}
    assert all(u["reported_to_lago_at"] is not None for u in usage)
    events = [e for e in lago_state.events_of(tenant, USAGE_METRIC_CODE)
              if e["properties"]["workflow_id"] in {u["workflow_id"] for u in usage}]
    assert sorted(e["transaction_id"] for e in events) == sorted(u["idempotency_key"] for u in usage)


def test_a_lead_event_becomes_its_input_keyed_by_its_slug_id_or_a_digest_of_its_address() -> None:
    def event(**data: Any) -> Event:
        return Event(source="generic", type="lead.created", id="e1", tenant_id="rose", payload=data,
                     sender="webhook:generic:rose")

    tenant, key, inp = lead_created(event(email="ada@example.com", name="Ada", lead_id="crm-42"))
    assert (tenant, key, inp.lead_key, inp.source, inp.requested_by) == (
        "rose", "crm-42", "crm-42", "generic", "webhook:generic:rose")
    _, key, inp = lead_created(event(email="Ada@Example.com ", lead_id="Not A Slug"))
    assert key == lead_key("ada@example.com") and inp.lead_key is None
    with pytest.raises(InvalidEvent, match="email"):
        lead_created(event(name="no address"))
