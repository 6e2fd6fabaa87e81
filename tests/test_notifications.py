"""Notifications that arrive: approval events mailed over real SMTP (an aiosmtpd sink on
loopback, reached through the sandbox MCP server's send_email), one-click links that decide,
no duplicates on retry, the 24-hour reminder on the time-skipping server, and the one shared
poller behind every Pending Actions stream. Real workers, dev server, Postgres and HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone

import asyncpg
import httpx
import pytest
import pytest_asyncio
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.approvals import ApprovalActivities
from activities.mcp import MCPActivities
from activities.notify import Deliver, NotificationEvent, NotifierActivities, mcp_email_sender
from activities.tenants import AuditEntry, AuditReceipt
from api.app import create_app
from api.auth import Principal
from api.pending_actions import PendingStream
from core.links import LinkClaims, make_token
from core.settings import Settings
from hitl.protocol import ApprovalsView
from sandboxes.smtp import SmtpSink
from tests.conftest import Tokens
from tests.support import assert_eventually, dev_settings, serve, unique
from tests.test_approvals_timeskip import AskOnce, campaign_like, verifier
from tests.test_campaign import finished, start_campaign
from workers.main import WORKFLOW_FAILURE_TYPES

LINK = re.compile(r"(http://\S+/v1/links/[A-Za-z0-9_.-]+)")


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


async def tenant_with_mail(db: asyncpg.Pool, sink: SmtpSink, prefix: str = "bakery") -> tuple[str, str]:
    """A tenant whose owner is ``owner@{tenant}.example`` and whose mail goes to ``sink`` (its
    own SMTP server, ``tenant_smtp``); returns (tenant, owner email)."""
    tenant = unique(prefix)
    owner = f"owner@{tenant}.example"
    await db.execute("INSERT INTO tenants (id, name, plan, owner_email, status) VALUES ($1, $2, 'starter', $3, 'active')",
                     tenant, f"{tenant} Ltd", owner)
    await db.execute("INSERT INTO tenant_smtp (tenant_id, host, port, from_address) VALUES ($1, '127.0.0.1', $2, $3)",
                     tenant, sink.port, f"{tenant} <no-reply@{tenant}.example>")
    return tenant, owner


async def mails(sink: SmtpSink, to: str, count: int, timeout: float = 60) -> list:
    async def arrived() -> list:
        got = sink.to(to)
        assert len(got) >= count, [m.subject for m in got]
        return got

    return await assert_eventually(arrived, timeout=timeout)


# --- the campaign's approval by email --------------------------------------------------------

async def test_a_campaign_approval_email_arrives_and_its_link_approves_it(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, sink: SmtpSink, settings: Settings
) -> None:
    tenant, owner = await tenant_with_mail(db, sink)
    wf_id = await start_campaign(http, tokens, tenant)

    [mail] = await mails(sink, owner, 1)
    assert mail.subject.startswith("Approval needed: Approve the creative and budget of campaign")
    assert mail.message["From"].addresses[0].addr_spec == f"no-reply@{tenant}.example"
    text, html = mail.body("plain"), mail.body("html")
    assert "Approve as proposed:" in text and f"/console/actions/{wf_id}~creative-1" in text
    assert "<a href=" in html and "Approve as proposed" in html
    approve_link, reject_link = LINK.findall(text)[:2]
    assert approve_link != reject_link
    # Recorded in the outbox as sent (written just after the mail went out), and in the delivery log.
    async def recorded() -> dict:
        sent = await db.fetchval("SELECT response FROM outbox WHERE tenant_id = $1 AND tool = 'send_email'", tenant)
        assert sent is not None
        return sent

    sent = await assert_eventually(recorded, timeout=20)
    assert sent["status"] == "sent" and sent["sandbox"] is False
    async def logged() -> None:
        rows = await db.fetch("SELECT event, channel, recipient, status FROM notification_deliveries "
                              "WHERE workflow_id = $1 AND event = 'requested' ORDER BY id", wf_id)
        assert [tuple(r) for r in rows] == [("requested", "email", owner, "sent"),
                                            ("requested", "in_app", f"client:{tenant}", "sent"),
                                            # the tenant's webhook endpoints (none here: nothing sent)
                                            ("requested", "webhook", "*", "sent")]

    await assert_eventually(logged)

    path = approve_link.split("/v1/links/", 1)[1]
    async with httpx.AsyncClient(base_url=str(http.base_url)) as anonymous:  # no bearer token: the link is enough
        page = await anonymous.get(f"/v1/links/{path}")
        assert page.status_code == 200 and "<form method=\"post\">" in page.text and owner in page.text
        done = await anonymous.post(f"/v1/links/{path}")
        assert done.status_code == 200, done.text
        assert "Approved" in done.text and owner in done.text
        # Used: the approval is closed, so the link (or the other one) answers 409, never 5xx.
        again = await anonymous.post(f"/v1/links/{path}")
        assert again.status_code == 409, again.text
        other = await anonymous.post(f"/v1/links/{reject_link.split('/v1/links/', 1)[1]}")
        assert other.status_code == 409, other.text

    # The campaign moves on and launches; the decision is recorded as the recipient's, via the link.
    result = (await finished(http, tokens.client(tenant), wf_id))["result"]
    assert result["status"] == "launched"
    [decision] = result["decisions"]
    assert (decision["decided_by"], decision["via"], decision["role"], decision["decision"]) == (
        owner, "link", "client", "approve")
    audit = await db.fetchrow("SELECT actor, details FROM audit_log WHERE workflow_id = $1 AND action = 'approval.approve'",
                              wf_id)
    assert audit["actor"] == owner and audit["details"]["via"] == "link"
    # And they hear that it was decided.
    decided = await mails(sink, owner, 2)
    assert decided[1].subject.startswith("Decided: ") and f"decided by {owner}" in decided[1].body("plain")


async def test_a_bad_link_is_a_clear_4xx(http: httpx.AsyncClient, settings: Settings) -> None:
    secret = settings.link_secret()
    assert secret is not None
    now = int(time.time())
    claims = LinkClaims(tenant_id="acme", workflow_id="acme:campaign:nothing-here", request_id="creative-1",
                        choice="approve", recipient="owner@acme.example", role="client", expires_at=now + 3600)
    good = make_token(claims, secret)
    body, mac = good.split(".")
    # The claims rewritten to another tenant's workflow: the signature no longer matches.
    forged_claims = LinkClaims(**{**{f: getattr(claims, f) for f in claims.__struct_fields__},
                                  "tenant_id": "other", "workflow_id": "other:campaign:theirs"})
    forged = make_token(forged_claims, b"not the platform's secret").split(".")[0] + "." + mac
    cross_tenant = make_token(LinkClaims(**{**{f: getattr(claims, f) for f in claims.__struct_fields__},
                                            "workflow_id": "other:campaign:theirs"}), secret)
    expired = make_token(LinkClaims(**{**{f: getattr(claims, f) for f in claims.__struct_fields__},
                                       "expires_at": now - 1}), secret)
    async with httpx.AsyncClient(base_url=str(http.base_url)) as anonymous:
        for token, status, code in ((forged, 400, "invalid_link"), (body + "." + "A" * 43, 400, "invalid_link"),
                                    (expired, 410, "link_expired"), (cross_tenant, 404, "not_found"),
                                    (good, 404, "not_found")):
            for method in ("GET", "POST"):
                r = await anonymous.request(method, f"/v1/links/{token}")
                assert r.status_code == status, (method, token, r.text)
                assert r.json()["code"] == code
        r = await anonymous.get("/v1/links/not-a-token")
        assert r.status_code == 400


# --- no duplicates when the notifier is retried ----------------------------------------------

async def test_a_retried_notifier_sends_each_mail_once(
    db: asyncpg.Pool, sink: SmtpSink, mcp_sandbox: str
) -> None:
    tenant, owner = await tenant_with_mail(db, sink, "florist")
    partner = f"agency@{tenant}.example"
    await db.execute("INSERT INTO notification_recipients (tenant_id, role, email) VALUES ($1, 'client', $2), "
                     "($1, 'partner', $3)", tenant, owner, partner)
    sink.refuse(partner, times=1)  # the agency's mailbox refuses the first delivery
    mcp = MCPActivities(db)
    plugged: list[NotificationEvent] = []

    async def webhook(event: NotificationEvent) -> None:  # where outbound webhooks plug in
        plugged.append(event)

    notifier = NotifierActivities(db, dev_settings(), mcp_email_sender(mcp), channels={"webhook": webhook})
    wf_id = f"{tenant}:campaign:{unique('spring')}"
    d = Deliver(idempotency_key=f"{wf_id}:approval:creative-1:requested", tenant_id=tenant, workflow_id=wf_id,
                request_id="creative-1", event="requested", at=datetime.now(timezone.utc), audience="client",
                roles=["client", "partner", "admin"], title="Approve the spring campaign", summary="2 channels",
                allowed=["approve", "reject", "edit"], due_at=datetime.now(timezone.utc) + timedelta(days=3))
    try:
        env = ActivityEnvironment()
        with pytest.raises(ApplicationError) as failed:  # attempt 1: the owner's mail goes, the agency's fails
            await env.run(notifier.deliver, d)
        assert failed.value.type == "NotificationDeliveryFailed"
        assert len(sink.to(owner)) == 1 and sink.to(partner) == []
        retry = ActivityEnvironment()
        retry.info = activity.Info(**{**env.info.__dict__, "attempt": 2})  # type: ignore[arg-type]
        second = await retry.run(notifier.deliver, d)  # the retry sends only what is missing
        third = await retry.run(notifier.deliver, d)  # and once everything went, nothing at all
    finally:
        await mcp.aclose()
    # The agency's mail only: the owner's mail, the in-app row and the webhook went on the first attempt.
    assert (second.sent, second.already, second.failed) == (1, 3, 0)
    assert (third.sent, third.already) == (0, 4)
    assert [(e.type, e.id, e.action_id) for e in plugged] == [
        ("approval.requested", d.idempotency_key, f"{wf_id}~creative-1")]
    assert len(sink.to(owner)) == 1 and len(sink.to(partner)) == 1
    assert sink.to(partner)[0].subject == "Approval needed: Approve the spring campaign"
    rows = await db.fetch("SELECT recipient, status, attempts, error FROM notification_deliveries "
                          "WHERE notification_key = $1 AND channel = 'email' ORDER BY recipient", d.idempotency_key)
    assert [(r["recipient"], r["status"], r["attempts"]) for r in rows] == [(partner, "sent", 2), (owner, "sent", 1)]
    assert rows[0]["error"] is None


# --- the 24-hour reminder, days passing in milliseconds -------------------------------------

class Auditor:
    @activity.defn(name="audit.write")
    async def audit(self, e: AuditEntry) -> AuditReceipt:
        return AuditReceipt(audit_id=1, written=True)


async def test_a_reminder_after_a_day_sends_exactly_one_mail(
    time_skipping_env: WorkflowEnvironment, db: asyncpg.Pool, sink: SmtpSink, mcp_sandbox: str
) -> None:
    env = time_skipping_env
    tenant, owner = await tenant_with_mail(db, sink, "deli")
    mcp = MCPActivities(db)
    notifier = NotifierActivities(db, dev_settings(), mcp_email_sender(mcp))
    queue = f"notify-timeskip-{uuid.uuid4().hex[:8]}"
    try:
        async with Worker(env.client, task_queue=queue, workflows=[AskOnce],
                          activities=[ApprovalActivities(db).notify, notifier.deliver, Auditor().audit,
                                      verifier().verify_decision],
                          workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES):
            handle = await env.client.start_workflow(AskOnce.run, campaign_like(title="Approve the deli campaign"),
                                                     id=f"{tenant}:test-approval:{uuid.uuid4().hex[:8]}",
                                                     task_queue=queue)
            await env.sleep(timedelta(hours=25))
            subjects = [m.subject for m in sink.to(owner)]
            assert subjects == ["Approval needed: Approve the deli campaign", "Reminder: Approve the deli campaign"]
            await env.sleep(timedelta(hours=40))  # still within the 72 hours: no second reminder
            assert [m.subject for m in sink.to(owner)] == subjects
            view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
            assert view.open is not None and not view.open.escalated
            await handle.terminate("test done")
    finally:
        await mcp.aclose()
    reminder = sink.to(owner)[1].body("plain")
    assert "still waiting for you" in reminder and "/v1/links/" in reminder
    events = await db.fetch("SELECT event FROM approval_notifications WHERE workflow_id = $1 ORDER BY id", handle.id)
    assert [e["event"] for e in events] == ["requested", "reminder"]


# --- one poller behind every stream ---------------------------------------------------------

async def read_events(response: httpx.Response, into: list[tuple[str, dict]]) -> None:
    event = None
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event:
            into.append((event, json.loads(line.split(":", 1)[1])))


@pytest_asyncio.fixture
async def own_api(settings: Settings, platform_worker: list) -> AsyncIterator[tuple[str, object]]:
    app = create_app(settings)
    async with serve(app) as url:
        yield url, app


async def test_one_shared_poller_fans_out_to_every_stream_each_in_its_scope(
    own_api: tuple[str, object], http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, sink: SmtpSink
) -> None:
    url, app = own_api
    (a, a_owner), (b, _) = await tenant_with_mail(db, sink, "cafe"), await tenant_with_mail(db, sink, "salon")
    seen: dict[str, list[tuple[str, dict]]] = {"a1": [], "a2": [], "b": []}
    async with httpx.AsyncClient(base_url=url, timeout=None) as sse:
        readers = []
        streams = []
        for name, tenant in (("a1", a), ("a2", a), ("b", b)):
            cm = sse.stream("GET", "/v1/pending-actions/stream", headers=tokens.client(tenant))
            response = await cm.__aenter__()
            assert response.status_code == 200
            streams.append(cm)
            readers.append(asyncio.create_task(read_events(response, seen[name])))
        hub = app.state.pending_stream  # type: ignore[attr-defined]
        assert hub.connections == 3
        pollers = [t for t in asyncio.all_tasks() if t.get_name() == "pending-actions-stream"]
        assert len(pollers) == 1  # one per API process, whatever the connections
        wf_a = await start_campaign(http, tokens, a)
        wf_b = await start_campaign(http, tokens, b)

        async def both_opened() -> None:
            for name, wf in (("a1", wf_a), ("a2", wf_a), ("b", wf_b)):
                opened = [d["workflow_id"] for e, d in seen[name] if e == "opened"]
                assert wf in opened, (name, seen[name])
                notes = [d for e, d in seen[name] if e == "notification"]
                assert any(n["event"] == "requested" and n["action_id"].startswith(wf) for n in notes), seen[name]

        await assert_eventually(both_opened, timeout=90)
        for name, own in (("a1", a), ("a2", a), ("b", b)):  # nobody hears of the other tenant's action
            assert {d.get("tenant_id") for _, d in seen[name]} == {own}, (name, seen[name])
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for cm in streams:
            await cm.__aexit__(None, None, None)

    async def all_closed() -> None:
        assert hub.connections == 0

    await assert_eventually(all_closed, timeout=10)
    for wf, tenant in ((wf_a, a), (wf_b, b)):
        await http.post(f"/v1/workflows/{wf}/cancel", headers=tokens.client(tenant))
    assert a_owner in {r for m in sink.received for r in m.rcpt_to}


async def test_a_connection_hears_a_notification_written_before_its_first_poll() -> None:
    """A connection opened while the poller sleeps (or waits on a slow listing) hears the
    notification written before the next poll reads it, which is its first; neither it nor a
    connection open before hears one written before they opened. The poller's Temporal and Postgres are stand-ins here: one poll at a time."""
    rows: list[dict[str, object]] = []

    class Pool:
        async def fetch(self, query: str, *args: object) -> list[dict[str, object]]:
            return list(rows)

    class Temporal:
        async def list_workflows(self, *args: object, **kw: object) -> AsyncIterator[object]:
            return
            yield

    def note(n: int, at: datetime) -> dict[str, object]:
        return {"id": n, "tenant_id": "acme", "workflow_id": f"acme:campaign:c{n}", "request_id": "creative-1",
                "event": "requested", "audience": "client", "title": f"Approve {n}", "due_at": None,
                "outcome": None, "decided_by": None, "created_at": at}

    hub = PendingStream(lambda: Temporal(), lambda: Pool(), interval=3600)  # type: ignore[arg-type, return-value]
    owner = Principal(sub="owner@acme", tenant_id="acme", roles=frozenset({"client"}))
    first = hub.subscribe(owner, "acme")
    await assert_eventually(lambda: _polled(hub, 1))  # the first poll ran; the next is an hour away
    rows.append(note(1, datetime.now(timezone.utc) - timedelta(minutes=1)))  # before either opened
    second = hub.subscribe(owner, "acme")
    rows.append(note(2, datetime.now(timezone.utc)))
    await hub._poll()  # noqa: SLF001 - the next poll, without waiting an hour
    heard = [json.loads(m.data)["title"] for m in _drain(second)]
    assert heard == ["Approve 2"]
    assert [json.loads(m.data)["title"] for m in _drain(first)] == ["Approve 2"]
    await hub.aclose()


async def _polled(hub: PendingStream, n: int) -> None:
    assert hub.polls >= n


def _drain(sub: object) -> list:
    out = []
    while not sub.queue.empty():  # type: ignore[attr-defined]
        out.append(sub.queue.get_nowait())  # type: ignore[attr-defined]
    return [m for m in out if m is not None and m.event == "notification"]
