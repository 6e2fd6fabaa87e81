"""Outbound webhooks, end to end: endpoints registered over the real API, events delivered by
the real activity from a workflow on the dev server to a receiver on loopback, which verifies
each request with the standardwebhooks library; the delivery log and the notifications read
over the API, tenant-scoped and cursor-paged."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx
    import pytest
    import pytest_asyncio
    from standardwebhooks import Webhook, WebhookVerificationError
    from temporalio.client import Client
    from temporalio.common import RetryPolicy
    from temporalio.worker import Worker

    from activities import netguard
    from activities.outbound_webhooks import (
        DeliveryReport,
        OutboundEvent,
        OutboundWebhookActivities,
        check_endpoint_url,
        start_delivery,
    )
    from api.app import create_app
    from core.settings import OutboundWebhookSettings, Settings
    from tests.conftest import Tokens
    from tests.support import assert_eventually, serve, unique
    from workers.main import WORKFLOW_FAILURE_TYPES

# Retries a test can wait for; production backs off from 5 s to an hour (OUTBOUND_WEBHOOK).
FAST_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100), backoff_coefficient=1.5,
                         maximum_interval=timedelta(milliseconds=300), maximum_attempts=5)


@workflow.defn(name="TestOutboundWebhook")
class OutboundWebhookProbe:
    """What the notifier does per event: one call (here waited for, to see its outcome)."""

    @workflow.run
    async def run(self, event: OutboundEvent) -> DeliveryReport | None:
        return await start_delivery(event, retry_policy=FAST_RETRY, task_queue=workflow.info().task_queue)


@workflow.defn(name="TestOutboundWebhookSlowRetry")
class SlowRetryProbe:
    """The same, with retries far enough apart to stop a worker between two attempts."""

    @workflow.run
    async def run(self, event: OutboundEvent) -> DeliveryReport | None:
        return await start_delivery(event, task_queue=workflow.info().task_queue, retry_policy=RetryPolicy(
            initial_interval=timedelta(seconds=3), maximum_attempts=3))


class Receiver:
    """A webhook receiver on loopback: answers each request with the next scripted status (then
    200) and keeps what it received."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.received: list[tuple[dict[str, str], bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.received.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
        status = self.script.pop(0) if self.script else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def hooks_settings(settings: Settings) -> Settings:
    """The suite's settings with the dev/test network policy: endpoints on loopback allowed."""
    return settings.model_copy(update={"outbound": OutboundWebhookSettings(allow_private_networks=True)})


@pytest_asyncio.fixture(scope="module")
async def api(hooks_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(hooks_settings)) as url, httpx.AsyncClient(base_url=url, timeout=15) as http:
        yield http


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver()
    async with serve(r) as url:
        yield r, url


@pytest_asyncio.fixture
async def deliver(client: Client, db: asyncpg.Pool, hooks_settings: Settings, task_queue: str):
    """Runs the delivery of one event through a workflow and the real activity."""
    activities = OutboundWebhookActivities(db, hooks_settings.outbound)
    async with Worker(client, task_queue=task_queue, workflows=[OutboundWebhookProbe],
                      activities=[activities.deliver], workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES):
        async def run(event: OutboundEvent) -> DeliveryReport | None:
            return await client.execute_workflow(OutboundWebhookProbe.run, event, id=unique("hook"),
                                                 task_queue=task_queue)
        yield run


async def new_tenant(db: asyncpg.Pool) -> str:
    tenant = unique("hk")
    await db.execute("INSERT INTO tenants (id, name, plan, owner_email, status) "
                     "VALUES ($1, 'Hooks', 'starter', 'owner@example.com', 'active')", tenant)
    return tenant


def event(tenant: str, event_type: str = "approval.requested", **data: Any) -> OutboundEvent:
    return OutboundEvent(tenant_id=tenant, event_type=event_type, event_id=f"evt_{uuid.uuid4().hex}",
                         occurred_at=datetime.now(timezone.utc), data=data or {"title": "Spring sale budget"})


async def create_endpoint(api: httpx.AsyncClient, tokens: Tokens, tenant: str, url: str, **body: Any) -> dict:
    resp = await api.post(f"/v1/tenants/{tenant}/webhook-endpoints", json={"url": url, **body},
                          headers=tokens.client(tenant))
    assert resp.status_code == 201, resp.text
    return resp.json()


async def test_a_delivery_verifies_with_the_standard_webhooks_library(
        api: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, receiver: tuple[Receiver, str], deliver) -> None:
    r, url = receiver
    tenant = await new_tenant(db)
    made = await create_endpoint(api, tokens, tenant, f"{url}/hooks", event_types=["approval.requested"])
    other = await create_endpoint(api, tokens, tenant, f"{url}/other", event_types=["approval.decided"])
    secret = made["secret"]
    assert secret.startswith("whsec_") and secret != other["secret"]

    e = event(tenant, campaign="spring-sale", budget_usd=1200)
    report = await deliver(e)
    assert [(o.endpoint_id, o.status, o.attempt) for o in report.outcomes] == [(made["id"], "succeeded", 1)]
    assert len(r.received) == 1  # the endpoint for approval.decided got nothing
    headers, body = r.received[0]
    payload = Webhook(secret).verify(body, headers)
    assert payload == {"type": "approval.requested", "timestamp": e.occurred_at.isoformat(),
                       "data": {"campaign": "spring-sale", "budget_usd": 1200}}
    assert headers["webhook-id"] == e.event_id
    with pytest.raises(WebhookVerificationError):
        Webhook(other["secret"]).verify(body, headers)

    # The same event again (a retried workflow step): the endpoint that took it gets nothing more.
    again = await deliver(e)
    assert again.outcomes == [] and len(r.received) == 1

    # Switched off, an endpoint gets nothing; switched on again, it does.
    off = await api.patch(f"/v1/tenants/{tenant}/webhook-endpoints/{made['id']}", json={"enabled": False},
                          headers=tokens.client(tenant))
    assert off.status_code == 200 and off.json()["enabled"] is False and "secret" not in off.json()
    assert (await deliver(event(tenant))).outcomes == [] and len(r.received) == 1
    on = await api.patch(f"/v1/tenants/{tenant}/webhook-endpoints/{made['id']}",
                         json={"enabled": True, "event_types": ["approval.requested", "approval.decided"]},
                         headers=tokens.client(tenant))
    assert on.json()["event_types"] == ["approval.decided", "approval.requested"]
    decided = event(tenant, "approval.decided", decision="approve")
    assert len((await deliver(decided)).outcomes) == 2 and len(r.received) == 3

    # The secret was shown once: no answer shows it again.
    listing = await api.get(f"/v1/tenants/{tenant}/webhook-endpoints", headers=tokens.client(tenant))
    one = await api.get(f"/v1/tenants/{tenant}/webhook-endpoints/{made['id']}", headers=tokens.client(tenant))
    assert listing.status_code == 200 and one.status_code == 200
    assert [i["id"] for i in listing.json()["items"]] == [made["id"], other["id"]]
    assert secret not in listing.text and secret not in one.text and "secret" not in one.json()

    log = (await api.get(f"/v1/tenants/{tenant}/webhook-deliveries", params={"event_id": e.event_id},
                         headers=tokens.client(tenant))).json()
    assert [(d["endpoint_id"], d["event_id"], d["attempt"], d["status"], d["status_code"]) for d in log["items"]] == [
        (made["id"], e.event_id, 1, "succeeded", 200)]
    assert log["next_cursor"] is None
    # Paged newest first, filtered by endpoint and event type.
    first = (await api.get(f"/v1/tenants/{tenant}/webhook-deliveries", params={"limit": 2},
                           headers=tokens.client(tenant))).json()
    assert [d["event_type"] for d in first["items"]] == ["approval.decided", "approval.decided"]
    rest = (await api.get(f"/v1/tenants/{tenant}/webhook-deliveries", params={"limit": 2, "cursor": first["next_cursor"]},
                          headers=tokens.client(tenant))).json()
    assert [d["event_id"] for d in rest["items"]] == [e.event_id] and rest["next_cursor"] is None
    theirs = (await api.get(f"/v1/tenants/{tenant}/webhook-deliveries",
                            params={"endpoint_id": other["id"], "event_type": "approval.decided"},
                            headers=tokens.client(tenant))).json()["items"]
    assert [d["endpoint_id"] for d in theirs] == [other["id"]]


async def test_a_failing_receiver_gets_the_same_webhook_id_until_it_succeeds(
        api: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, receiver: tuple[Receiver, str], deliver) -> None:
    r, url = receiver
    tenant = await new_tenant(db)
    made = await create_endpoint(api, tokens, tenant, f"{url}/flaky")
    r.script = [500, 503]  # fails twice, then answers 200

    e = event(tenant, "approval.reminder")
    report = await deliver(e)
    assert [(o.status, o.attempt) for o in report.outcomes] == [("succeeded", 3)]
    assert [h["webhook-id"] for h, _ in r.received] == [e.event_id] * 3
    for headers, body in r.received:  # each attempt signed afresh, each verifies
        assert Webhook(made["secret"]).verify(body, headers)["type"] == "approval.reminder"

    log = (await api.get(f"/v1/tenants/{tenant}/webhook-deliveries", params={"event_id": e.event_id},
                         headers=tokens.client(tenant))).json()["items"]
    assert [(d["attempt"], d["status"], d["status_code"]) for d in log] == [
        (3, "succeeded", 200), (2, "failed", 503), (1, "failed", 500)]
    assert log[1]["error"] == "HTTP 503"
    failed = (await api.get(f"/v1/tenants/{tenant}/webhook-deliveries", params={"status": "failed"},
                            headers=tokens.client(tenant))).json()["items"]
    assert [d["attempt"] for d in failed] == [2, 1]


async def test_a_retry_survives_a_worker_restart(
        api: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, hooks_settings: Settings,
        receiver: tuple[Receiver, str], task_queue: str) -> None:
    """The retry schedule is kept by the Temporal server: the worker that made the first attempt
    stops, another takes the second."""
    r, url = receiver
    tenant = await new_tenant(db)
    made = await create_endpoint(api, tokens, tenant, f"{url}/restart")
    r.script = [502]
    e = event(tenant)

    def worker() -> Worker:
        return Worker(client, task_queue=task_queue, workflows=[SlowRetryProbe],
                      activities=[OutboundWebhookActivities(db, hooks_settings.outbound).deliver],
                      workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES)

    async with worker():
        handle = await client.start_workflow(SlowRetryProbe.run, e, id=unique("hook"), task_queue=task_queue)

        async def first_attempt_logged() -> None:
            assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", e.event_id) == 1

        await assert_eventually(first_attempt_logged)
    assert len(r.received) == 1  # the first worker is gone before the retry is due
    async with worker():
        report = await handle.result()
    assert report is not None and [(o.status, o.attempt) for o in report.outcomes] == [("succeeded", 2)]
    assert [h["webhook-id"] for h, _ in r.received] == [e.event_id] * 2
    rows = await db.fetch("SELECT attempt, status, status_code FROM webhook_deliveries WHERE endpoint_id = $1 "
                          "ORDER BY attempt", made["id"])
    assert [tuple(row) for row in rows] == [(1, "failed", 502), (2, "succeeded", 200)]


async def test_a_receiver_that_never_succeeds_does_not_fail_the_workflow(
        api: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, receiver: tuple[Receiver, str], deliver) -> None:
    r, url = receiver
    tenant = await new_tenant(db)
    await create_endpoint(api, tokens, tenant, f"{url}/down")
    r.script = [500] * 10
    assert await deliver(event(tenant)) is None  # given up after its retries; the workflow completed
    assert len(r.received) == 5
    log = (await api.get(f"/v1/tenants/{tenant}/webhook-deliveries", headers=tokens.client(tenant))).json()["items"]
    assert [d["attempt"] for d in log] == [5, 4, 3, 2, 1] and {d["status"] for d in log} == {"failed"}


async def test_a_rotated_secret_signs_beside_the_previous_one(
        api: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, receiver: tuple[Receiver, str], deliver) -> None:
    r, url = receiver
    tenant = await new_tenant(db)
    made = await create_endpoint(api, tokens, tenant, f"{url}/rotating")
    rotated = await api.post(f"/v1/tenants/{tenant}/webhook-endpoints/{made['id']}/rotate-secret",
                             headers=tokens.client(tenant))
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()["secret"]
    assert new.startswith("whsec_") and new != made["secret"]

    await deliver(event(tenant))
    headers, body = r.received[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(body, headers)
    Webhook(made["secret"]).verify(body, headers)  # the receiver may not have switched yet


async def test_a_url_the_worker_policy_refuses_is_logged_and_not_retried(
        api: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, receiver: tuple[Receiver, str],
        task_queue: str) -> None:
    r, url = receiver
    tenant = await new_tenant(db)
    made = await create_endpoint(api, tokens, tenant, f"{url}/inside")
    strict = OutboundWebhookActivities(db, OutboundWebhookSettings())  # production: public addresses only
    async with Worker(client, task_queue=task_queue, workflows=[OutboundWebhookProbe], activities=[strict.deliver],
                      workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES):
        report = await client.execute_workflow(OutboundWebhookProbe.run, event(tenant), id=unique("hook"),
                                               task_queue=task_queue)
    assert [(o.endpoint_id, o.status) for o in report.outcomes] == [(made["id"], "refused")]
    assert r.received == []
    log = (await api.get(f"/v1/tenants/{tenant}/webhook-deliveries", headers=tokens.client(tenant))).json()["items"]
    assert len(log) == 1 and log[0]["status"] == "refused" and "loopback" in log[0]["error"]


def test_endpoint_urls_go_through_the_ssrf_guard() -> None:
    strict, dev = netguard.FetchPolicy(), netguard.FetchPolicy(allow_private_networks=True)
    assert check_endpoint_url("https://hooks.example.com/in?src=biz", strict) == "https://hooks.example.com/in?src=biz"
    assert check_endpoint_url("http://127.0.0.1:9000/in", dev) == "http://127.0.0.1:9000/in"
    for url, policy, reason in [
        ("http://127.0.0.1:9000/in", strict, netguard.LOOPBACK),
        ("http://10.0.0.5/in", strict, netguard.PRIVATE),
        ("http://169.254.169.254/latest/meta-data", dev, netguard.LINK_LOCAL),
        ("http://2130706433/in", dev, netguard.IPV4_SPELLING),
        ("ftp://hooks.example.com/in", strict, netguard.SCHEME),
        ("https://user:pw@hooks.example.com/in", strict, netguard.CREDENTIALS),
        ("https://hooks.example.com/in#x", strict, netguard.HOST),
        ("https://hooks.example.com/a b", strict, netguard.HOST),
    ]:
        with pytest.raises(netguard.URLRefused) as refused:
            check_endpoint_url(url, policy)
        assert refused.value.reason == reason, url


async def test_other_tenants_get_404_and_bad_input_4xx(
        api: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, receiver: tuple[Receiver, str]) -> None:
    _, url = receiver
    tenant, stranger = await new_tenant(db), await new_tenant(db)
    made = await create_endpoint(api, tokens, tenant, f"{url}/mine")
    base, theirs = f"/v1/tenants/{tenant}", tokens.client(stranger)
    for method, path in [("GET", "/webhook-endpoints"), ("GET", f"/webhook-endpoints/{made['id']}"),
                         ("PATCH", f"/webhook-endpoints/{made['id']}"),
                         ("DELETE", f"/webhook-endpoints/{made['id']}"),
                         ("POST", f"/webhook-endpoints/{made['id']}/rotate-secret"),
                         ("GET", "/webhook-deliveries"), ("GET", "/notifications")]:
        resp = await api.request(method, base + path, headers=theirs, json={} if method == "PATCH" else None)
        assert resp.status_code == 404, (method, path, resp.text)
    resp = await api.post(f"{base}/webhook-endpoints", json={"url": f"{url}/x"}, headers=theirs)
    assert resp.status_code == 404
    # The stranger's own endpoint id does not reach into this tenant either.
    assert (await api.get(f"/v1/tenants/{stranger}/webhook-endpoints/{made['id']}", headers=theirs)).status_code == 404

    mine = tokens.client(tenant)

    async def refused(body: dict, field: str) -> None:
        resp = await api.post(f"{base}/webhook-endpoints", json=body, headers=mine)
        assert resp.status_code == 400, resp.text
        assert field in resp.text, resp.text

    await refused({"url": "http://169.254.169.254/latest/meta-data"}, "url")
    await refused({"url": "ftp://example.com/hook"}, "url")
    await refused({"url": "not a url"}, "url")
    await refused({"url": f"{url}/x", "event_types": ["Not A Type"]}, "event_types")
    await refused({"url": f"{url}/x", "secret": "whsec_mine"}, "secret")  # the platform makes secrets
    await refused({}, "url")
    assert (await api.post(f"{base}/webhook-endpoints", json={"url": f"{url}/x"},
                           headers=tokens.finance())).status_code == 403
    assert (await api.post(f"/v1/tenants/{unique('nope')}/webhook-endpoints", json={"url": f"{url}/x"},
                           headers=tokens.admin())).status_code == 404
    assert (await api.delete(f"{base}/webhook-endpoints/we_nope", headers=mine)).status_code == 400
    for params in [{"cursor": "AAAA"}, {"status": "maybe"}, {"since": "yesterday"}, {"limit": "0"},
                   {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}]:
        resp = await api.get(f"{base}/webhook-deliveries", params=params, headers=mine)
        assert resp.status_code == 400, (params, resp.text)

    # Deleted: gone from the list, a second delete is 404, and it is audited.
    assert (await api.delete(f"{base}/webhook-endpoints/{made['id']}", headers=mine)).status_code == 204
    assert (await api.delete(f"{base}/webhook-endpoints/{made['id']}", headers=mine)).status_code == 404
    assert (await api.get(f"{base}/webhook-endpoints", headers=mine)).json()["items"] == []
    actions = await db.fetch("SELECT action, details FROM audit_log WHERE tenant_id = $1 ORDER BY id", tenant)
    assert [a["action"] for a in actions] == ["webhook_endpoint.created", "webhook_endpoint.deleted"]
    assert made["secret"] not in json.dumps([dict(a["details"]) for a in actions])


async def test_notifications_are_listed_per_tenant_in_pages(
        api: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool) -> None:
    tenant, other = await new_tenant(db), await new_tenant(db)
    wf = f"{tenant}:campaign:spring-sale"
    for n, (who, event_name) in enumerate([(tenant, "reminder"), (tenant, "escalated"), (other, "reminder"),
                                           (tenant, "reminder")]):
        await db.execute(
            """INSERT INTO approval_notifications (idempotency_key, tenant_id, workflow_id, request_id, event,
                                                   audience, roles, title, due_at)
               VALUES ($1, $2, $3, 'budget-1', $4, 'client', ARRAY['client'], 'Approve the budget', now())""",
            f"{wf}:budget-1:{event_name}:{n}", who, wf if who == tenant else f"{other}:campaign:x", event_name)
    mine = tokens.client(tenant)
    first = (await api.get(f"/v1/tenants/{tenant}/notifications", params={"limit": 2}, headers=mine)).json()
    assert [i["idempotency_key"].rsplit(":", 2)[1:] for i in first["items"]] == [["reminder", "3"], ["escalated", "1"]]
    assert first["next_cursor"]
    second = (await api.get(f"/v1/tenants/{tenant}/notifications", params={"limit": 2, "cursor": first["next_cursor"]},
                            headers=mine)).json()
    assert [i["event"] for i in second["items"]] == ["reminder"] and second["next_cursor"] is None
    assert second["items"][0]["workflow_id"] == wf and second["items"][0]["roles"] == ["client"]

    reminders = (await api.get(f"/v1/tenants/{tenant}/notifications", params={"event": "reminder"},
                               headers=mine)).json()["items"]
    assert len(reminders) == 2
    future = (await api.get(f"/v1/tenants/{tenant}/notifications",
                            params={"since": (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()},
                            headers=mine)).json()["items"]
    assert future == []
    # A cursor pages only the listing it came from.
    resp = await api.get(f"/v1/tenants/{tenant}/notifications",
                         params={"limit": 2, "event": "reminder", "cursor": first["next_cursor"]}, headers=mine)
    assert resp.status_code == 400 and "cursor" in resp.text
    # Platform staff see any tenant; the partner of another tenant does not.
    assert len((await api.get(f"/v1/tenants/{tenant}/notifications", headers=tokens.finance())).json()["items"]) == 3
    assert (await api.get(f"/v1/tenants/{tenant}/notifications",
                          headers=tokens.partner([other]))).status_code == 404
