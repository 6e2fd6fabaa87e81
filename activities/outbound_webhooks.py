"""Outbound webhooks: a tenant's events POSTed to the endpoints it registered, signed with the
Standard Webhooks scheme (https://www.standardwebhooks.com) so receivers' libraries verify them.

One call per event, from any workflow: ``start_delivery(OutboundEvent(tenant_id=...,
event_type="approval.requested", event_id=..., occurred_at=workflow.now(), data={...}))`` runs
the activity beside the workflow (which goes on at once) and never fails it; or
``await run_activity(OutboundWebhookActivities.deliver, event)`` to wait for the outcome.

Each attempt POSTs the event to every enabled endpoint of the tenant whose event types match
and that has not taken it yet, and writes one row per endpoint to ``webhook_deliveries``
(status code, error, duration, attempt number). The request carries ``webhook-id`` (the event
id: the same on every attempt, so receivers dedupe), ``webhook-timestamp`` (this attempt's time)
and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``; two signatures while a rotated secret
overlaps). A 2xx answer is a success; anything else (a redirect, an error, no answer in time)
fails the attempt and the activity raises ``WebhookDeliveryFailed``, so Temporal retries it
with backoff (``OUTBOUND_WEBHOOK``): retries are kept by the Temporal server, so they survive
worker restarts, and endpoints that took the event already are skipped, so no endpoint gets one
event twice after it answered 2xx. A URL the SSRF guard refuses (activities/netguard.py) is
recorded as ``refused`` and not retried.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import msgspec
from standardwebhooks import Webhook
from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from activities import netguard
from core.activity import Activities, ActivityPolicy, run_activity
from core.names import INTEGRATIONS_QUEUE
from core.settings import OutboundWebhookSettings

SECRET_PREFIX = "whsec_"
ENDPOINT_ID_PREFIX = "we_"
# An event type: lower-case words joined by dots, e.g. approval.requested.
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+){0,4}$"
# The webhook-id header: printable ASCII without spaces.
EVENT_ID_PATTERN = r"^[!-~]{1,500}$"
USER_AGENT = "BizOSaaS-Webhooks/1.0"
MAX_ERROR_CHARS = 500

# Retries of one event: from seconds to an hour apart, for at most a day (then the caller's
# activity fails with WebhookDeliveryFailed; the log keeps every attempt).
OUTBOUND_WEBHOOK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5), backoff_coefficient=2.0, maximum_interval=timedelta(hours=1))
OUTBOUND_WEBHOOK = ActivityPolicy(start_to_close=timedelta(minutes=2), schedule_to_close=timedelta(hours=24),
                                  retry=OUTBOUND_WEBHOOK_RETRY)

Status = Literal["succeeded", "failed", "refused"]


class OutboundEvent(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    event_type: Annotated[str, msgspec.Meta(pattern=EVENT_TYPE_PATTERN)]
    # The webhook-id: derived from what happened (e.g. the notification's idempotency key),
    # never random, so a retried workflow step sends the same id.
    event_id: Annotated[str, msgspec.Meta(pattern=EVENT_ID_PATTERN)]
    occurred_at: datetime
    data: dict[str, Any] = {}


class EndpointOutcome(msgspec.Struct, frozen=True, kw_only=True):
    endpoint_id: str
    status: Status
    attempt: int
    status_code: int | None = None


class DeliveryReport(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    # This attempt's outcome per endpoint; endpoints that took the event before are not listed.
    outcomes: list[EndpointOutcome] = []


def new_secret() -> str:
    """A signing secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_endpoint_id() -> str:
    return ENDPOINT_ID_PREFIX + secrets.token_hex(12)


def fetch_policy(settings: OutboundWebhookSettings) -> netguard.FetchPolicy:
    return netguard.FetchPolicy.from_settings(settings.allow_private_networks, settings.allowed_networks,
                                              settings.public_ports)


def check_endpoint_url(url: str, policy: netguard.FetchPolicy) -> str:
    """The URL as stored, if an endpoint may have it: http(s), no credentials, no fragment, and
    an IP literal the policy allows (a host name is checked at every delivery, after resolving).
    Raises :class:`netguard.URLRefused`."""
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise netguard.URLRefused(netguard.HOST, "the URL has spaces or control characters")
    target = netguard.check_url(url)
    if target.url.fragment:
        raise netguard.URLRefused(netguard.HOST, "a webhook URL has no #fragment")
    if target.literal is not None:
        netguard.check_address(target.literal, target.port, policy)
    return str(target.url)


def signature(secrets_: list[str], event_id: str, at: datetime, body: str) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per secret, space separated."""
    return " ".join(Webhook(s).sign(msg_id=event_id, timestamp=at, data=body) for s in secrets_)


def event_body(event: OutboundEvent) -> str:
    """The payload, the same bytes on every attempt: ``{"type", "timestamp", "data"}``."""
    occurred = event.occurred_at if event.occurred_at.tzinfo else event.occurred_at.replace(tzinfo=timezone.utc)
    return msgspec.json.encode({"type": event.event_type, "timestamp": occurred.isoformat(),
                                "data": event.data}).decode()


async def _address(target: netguard.Target, policy: netguard.FetchPolicy) -> netguard.IPAddress:
    if target.literal is not None:
        return netguard.check_address(target.literal, target.port, policy)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConnectionError(f"{target.host} does not resolve: {exc}") from None
    return netguard.check_addresses(target, dict.fromkeys(str(i[4][0]) for i in infos), policy)


class OutboundWebhookActivities(Activities):
    task_queue = INTEGRATIONS_QUEUE
    default_policy = OUTBOUND_WEBHOOK

    def __init__(self, pool: asyncpg.Pool, settings: OutboundWebhookSettings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._pool = pool
        self._settings = settings
        self._policy = fetch_policy(settings)
        self._transport = transport

    @activity.defn(name="webhooks.deliver")
    async def deliver(self, event: OutboundEvent) -> DeliveryReport:
        async with self._pool.acquire() as conn:
            endpoints = await conn.fetch(
                """SELECT e.id, e.url, e.secret, e.previous_secret, e.previous_secret_until,
                          (SELECT coalesce(max(d.attempt), 0) FROM webhook_deliveries d
                            WHERE d.endpoint_id = e.id AND d.event_id = $3) AS attempts
                   FROM webhook_endpoints e
                   WHERE e.tenant_id = $1 AND e.enabled
                     AND (cardinality(e.event_types) = 0 OR $2 = ANY(e.event_types))
                     AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = e.id
                                     AND d.event_id = $3 AND d.status IN ('succeeded', 'refused'))
                   ORDER BY e.created_at, e.id""",
                event.tenant_id, event.event_type, event.event_id)
        if not endpoints:
            return DeliveryReport(event_id=event.event_id)
        body = event_body(event)
        outcomes = await asyncio.gather(*(self._send(event, dict(e), body) for e in endpoints))
        failed = [o for o in outcomes if o.status == "failed"]
        if failed:
            shown = ", ".join(f"{o.endpoint_id} ({o.status_code or 'no answer'})" for o in failed)
            raise ApplicationError(f"webhook {event.event_id} not delivered to {len(failed)} endpoint(s): {shown}",
                                   type="WebhookDeliveryFailed")
        return DeliveryReport(event_id=event.event_id, outcomes=list(outcomes))

    async def _send(self, event: OutboundEvent, endpoint: dict[str, Any], body: str) -> EndpointOutcome:
        attempt = endpoint["attempts"] + 1
        now = datetime.now(timezone.utc)
        keys = [endpoint["secret"]]
        if endpoint["previous_secret"] and endpoint["previous_secret_until"] and endpoint["previous_secret_until"] > now:
            keys.append(endpoint["previous_secret"])
        started = time.perf_counter()
        status: Status = "failed"
        code: int | None = None
        error: str | None = None
        try:
            target = netguard.check_url(endpoint["url"])
            ip = await _address(target, self._policy)
            headers = {
                "host": target.host_header, "content-type": "application/json", "user-agent": USER_AGENT,
                "webhook-id": event.event_id, "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signature(keys, event.event_id, now, body),
            }
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False, transport=self._transport,
                                         timeout=self._settings.timeout_seconds) as http:
                resp = await http.post(
                    target.pinned(ip), content=body.encode(), headers=headers,
                    extensions={"sni_hostname": target.host} if target.url.scheme == "https" else None)
            code = resp.status_code
            if resp.is_success:
                status = "succeeded"
            else:
                error = f"HTTP {code}" + (" (redirects are not followed)" if resp.is_redirect else "")
        except netguard.URLRefused as exc:
            status, error = "refused", f"refused by the network policy: {exc}"
        except (httpx.HTTPError, ConnectionError, OSError) as exc:
            error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        duration = (time.perf_counter() - started) * 1000
        async with self._pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO webhook_deliveries (tenant_id, endpoint_id, url, event_id, event_type, attempt,
                                                  status, status_code, error, duration_ms)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING""",
                event.tenant_id, endpoint["id"], endpoint["url"], event.event_id, event.event_type, attempt,
                status, code, error[:MAX_ERROR_CHARS] if error else None, duration)
        if status != "succeeded":
            activity.logger.warning("webhook %s to endpoint %s, attempt %d: %s", event.event_id, endpoint["id"],
                                    attempt, error)
        return EndpointOutcome(endpoint_id=endpoint["id"], status=status, attempt=attempt, status_code=code)


def start_delivery(event: OutboundEvent, *, retry_policy: RetryPolicy | None = None,
                   task_queue: str | None = None) -> asyncio.Task[DeliveryReport | None]:
    """From workflow code: deliver ``event`` in the background, with the activity's retries; the
    workflow goes on at once. A delivery that still fails after its retries is logged and ends
    as None: a receiver that is down never fails the workflow. Await the task (e.g. before the
    workflow returns) to keep retries going that long: a workflow that has closed abandons them.
    ``retry_policy`` and ``task_queue``: for tests."""

    async def deliver() -> DeliveryReport | None:
        try:
            return await run_activity(OutboundWebhookActivities.deliver, event, retry_policy=retry_policy,
                                      task_queue=task_queue)
        except ActivityError as exc:
            workflow.logger.log(logging.WARNING, "webhook %s (%s) not delivered: %s", event.event_id,
                                event.event_type, exc.cause or exc)
            return None

    return asyncio.create_task(deliver())


def notification_channel(activities: OutboundWebhookActivities) -> Callable[[Any], Awaitable[None]]:
    """The notifier's ``webhook`` channel (activities/notify.py): each approval event goes to the
    tenant's matching endpoints as ``approval.<event>``, its idempotency key the webhook-id. Run
    inside the notifier's activity: an endpoint that fails raises ``WebhookDeliveryFailed``, so
    the notifier's retries (with backoff) try again, skipping the endpoints that took it."""

    async def send(event: Any) -> None:  # activities.notify.NotificationEvent
        await activities.deliver(OutboundEvent(
            tenant_id=event.tenant_id, event_type=event.type, event_id=event.id, occurred_at=event.at,
            data={"workflow_id": event.workflow_id, "action_id": event.action_id, "request_id": event.request_id,
                  "title": event.title, "summary": event.summary, "audience": event.audience,
                  "roles": list(event.roles), "due_at": event.due_at.isoformat() if event.due_at else None,
                  "outcome": event.outcome, "decided_by": event.decided_by}))

    return send
