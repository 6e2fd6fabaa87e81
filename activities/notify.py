"""The notifier: each approval event (requested, reminder, escalated, decided, timed_out)
delivered to its audience by their channels, once.

``notifications.deliver`` is called by the approval protocol right after ``approvals.notify``
has recorded the event (table ``approval_notifications``, the in-app feed). It runs on the
calling workflow's own queue (like ``approvals.notify``), so a notification never waits for
another queue's workers, and its policy is short (``NOTIFY``: a few attempts within minutes), so
a mail server that is down delays the approval by minutes at most: what could not be delivered
stays recorded as ``failed``. It finds the recipients, then for each channel:

- ``email``: one mail per recipient, rendered from ``activities/templates/email/approval_{event}.*``
  and sent through the ``send_email`` MCP tool (routed by the registry; the shipped sandbox
  sends over SMTP when configured, and records every mail in the outbox). Open requests carry
  signed, expiring one-click links (:mod:`core.links`) to approve or reject as proposed where
  the request allows that without edits or a choice, and always a console link.
- ``in_app``: the ``approval_notifications`` row itself, which the Pending Actions stream
  (``GET /v1/pending-actions/stream``) fans out as a ``notification`` event.
- any channel plugged in (``channels={"webhook": send}``): ``send(event)`` once per event.

Recipients: platform roles (super_admin, admin, finance, support) from
``BIZ_NOTIFY_PLATFORM_RECIPIENTS``; other roles from ``notification_recipients`` of the tenant;
a client-audience event with nobody listed goes to the tenant owner's email (onboarding).

No duplicates on retry: every (event, channel, recipient) is a row of
``notification_deliveries`` keyed by the event's idempotency key, the channel and the
recipient; a row marked ``sent`` is never sent again, and the mail's tool call carries that key
(the outbox answers a repeated key without sending). A delivery that fails is marked
``failed`` and the activity raises, so the retry sends only what is missing; on the last
attempt the failures stay recorded and the activity returns.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

import asyncpg
import msgspec
from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from activities.mail import Templates
from core.activity import Activities, ActivityPolicy
from core.links import LinkClaims, make_token
from core.names import WORKFLOWS_QUEUE
from core.settings import Settings

log = logging.getLogger(__name__)

PLATFORM_ROLES = frozenset({"super_admin", "admin", "finance", "support"})
MAX_ATTEMPTS = 4
DELIVERY_FAILED = "NotificationDeliveryFailed"
NOTIFY = ActivityPolicy(
    start_to_close=timedelta(seconds=60), schedule_to_close=timedelta(minutes=4),
    retry=RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=3.0,
                      maximum_interval=timedelta(seconds=30), maximum_attempts=MAX_ATTEMPTS))
OPEN_EVENTS = frozenset({"requested", "reminder", "escalated"})


class Deliver(msgspec.Struct, frozen=True, kw_only=True):
    """One approval event, as the workflow knows it when it happens."""

    idempotency_key: str  # the event's (as approvals.notify): workflow id + request id + event (+ round)
    tenant_id: str
    workflow_id: str
    request_id: str
    event: str  # requested | reminder | escalated | decided | timed_out
    at: datetime  # when it happened (workflow time): links expire counted from it
    audience: str
    roles: list[str]
    title: str
    summary: str = ""
    kind: str = ""
    allowed: list[str] = []
    choices: list[str] = []
    due_at: datetime | None = None
    escalated: bool = False
    outcome: str | None = None
    decided_by: str | None = None


class Delivered(msgspec.Struct, frozen=True, kw_only=True):
    sent: int = 0  # deliveries made by this attempt
    already: int = 0  # made by an earlier attempt (not repeated)
    failed: int = 0  # failed for good (last attempt)
    recipients: list[str] = []


class NotificationEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What a plugged-in channel (e.g. outbound webhooks) receives, once per event."""

    type: str  # approval.requested | approval.reminder | ...
    id: str  # the event's idempotency key: stable across retries (use it as the webhook id)
    tenant_id: str
    workflow_id: str
    action_id: str
    request_id: str
    title: str
    summary: str
    audience: str
    roles: list[str]
    at: datetime
    due_at: datetime | None = None
    outcome: str | None = None
    decided_by: str | None = None


Channel = Callable[[NotificationEvent], Awaitable[None]]


class EmailSender(Protocol):
    """Sends one email through the ``send_email`` tool; returns the tool's answer."""

    async def __call__(self, tenant_id: str, idempotency_key: str, arguments: dict[str, Any]) -> dict[str, Any]: ...


def action_id(workflow_id: str, request_id: str) -> str:
    """As ``hitl.protocol.action_id`` (``{workflow_id}~{request_id}``)."""
    return f"{workflow_id}~{request_id}"


def mcp_email_sender(mcp: Any) -> EmailSender:
    """``send_email`` through the MCP registry (an ``MCPActivities``), as workflows call tools."""
    from activities.mcp import CallToolRequest

    async def send(tenant_id: str, idempotency_key: str, arguments: dict[str, Any]) -> dict[str, Any]:
        done = await mcp.call_tool(CallToolRequest(tenant_id=tenant_id, tool="send_email",
                                                   idempotency_key=idempotency_key, arguments=arguments))
        return done.content if isinstance(done.content, dict) else {"content": done.content}

    return send


def _key(*parts: str) -> str:
    """A bounded tool idempotency key for a delivery (the full key is in the delivery row)."""
    return "notify:" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def _attempt() -> int:
    try:
        return activity.info().attempt
    except RuntimeError:  # called outside an activity (a script): one attempt
        return MAX_ATTEMPTS


class NotifierActivities(Activities):
    task_queue = WORKFLOWS_QUEUE
    default_policy = NOTIFY

    def __init__(self, pool: asyncpg.Pool, settings: Settings, send_email: EmailSender,
                 channels: Mapping[str, Channel] | None = None, templates: Templates | None = None) -> None:
        """``channels``: plugged-in channels by name (e.g. ``{"webhook": send_webhook}``), each
        called once per event with a :class:`NotificationEvent`."""
        self._pool = pool
        self._settings = settings
        self._send_email = send_email
        self._channels = dict(channels or {})
        self._templates = templates or Templates()

    async def recipients(self, d: Deliver) -> list[tuple[str, str]]:
        """``(email, role)`` of everyone the event is for, each address once."""
        found: dict[str, str] = {}
        platform = self._settings.notify.platform_recipients
        tenant_roles = [r for r in d.roles if r not in PLATFORM_ROLES]
        for role in d.roles:
            if role in PLATFORM_ROLES and d.audience == "admin":
                for email in platform.get(role, []):
                    found.setdefault(email.strip().lower(), role)
        if tenant_roles:
            rows = await self._pool.fetch(
                "SELECT email, role FROM notification_recipients WHERE tenant_id = $1 AND role = ANY($2::text[]) "
                "ORDER BY array_position($2::text[], role), email", d.tenant_id, tenant_roles)
            for r in rows:
                found.setdefault(r["email"].lower(), r["role"])
        if d.audience == "client" and not found and "client" in d.roles:
            owner = await self._pool.fetchval("SELECT owner_email FROM tenants WHERE id = $1", d.tenant_id)
            if owner:
                found[owner.lower()] = "client"
        return list(found.items())

    def _links(self, d: Deliver, email: str, role: str) -> dict[str, Any]:
        base = self._settings.link_base_url()
        aid = action_id(d.workflow_id, d.request_id)
        links: dict[str, Any] = {"console_url": f"{base}/console/actions/{aid}", "approve_url": None,
                                 "reject_url": None, "links_expire_at": None}
        secret = self._settings.link_secret()
        if d.event not in OPEN_EVENTS or secret is None or d.choices:
            return links
        expires = d.at + timedelta(hours=self._settings.notify.link_ttl_hours)
        if d.due_at is not None and d.due_at > d.at:
            expires = min(expires, d.due_at)
        for choice in ("approve", "reject"):
            if choice not in d.allowed:
                continue
            token = make_token(LinkClaims(
                tenant_id=d.tenant_id, workflow_id=d.workflow_id, request_id=d.request_id, choice=choice,
                recipient=email, role=role, audience="admin" if d.audience == "admin" else "client",
                expires_at=int(expires.timestamp())), secret)
            links[f"{choice}_url"] = f"{base}/v1/links/{token}"
        if links["approve_url"] or links["reject_url"]:
            links["links_expire_at"] = expires.strftime("%Y-%m-%d %H:%M UTC")
        return links

    async def _claim(self, key: str, d: Deliver, channel: str, recipient: str) -> bool:
        """True when this (event, channel, recipient) still has to be delivered."""
        status = await self._pool.fetchval(
            """INSERT INTO notification_deliveries
                   (idempotency_key, notification_key, tenant_id, workflow_id, event, channel, recipient, status)
               VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')
               ON CONFLICT (idempotency_key) DO UPDATE SET updated_at = now()
               RETURNING status""",
            key, d.idempotency_key, d.tenant_id, d.workflow_id, d.event, channel, recipient)
        return status != "sent"

    async def _done(self, key: str, detail: dict[str, Any]) -> None:
        await self._pool.execute(
            "UPDATE notification_deliveries SET status = 'sent', attempts = attempts + 1, detail = $2, error = NULL, "
            "updated_at = now() WHERE idempotency_key = $1", key, detail)

    async def _failed(self, key: str, error: str) -> None:
        await self._pool.execute(
            "UPDATE notification_deliveries SET status = 'failed', attempts = attempts + 1, error = $2, "
            "updated_at = now() WHERE idempotency_key = $1", key, error[:1000])

    def event_of(self, d: Deliver) -> NotificationEvent:
        return NotificationEvent(
            type=f"approval.{d.event}", id=d.idempotency_key, tenant_id=d.tenant_id, workflow_id=d.workflow_id,
            action_id=action_id(d.workflow_id, d.request_id), request_id=d.request_id, title=d.title,
            summary=d.summary, audience=d.audience, roles=list(d.roles), at=d.at, due_at=d.due_at,
            outcome=d.outcome, decided_by=d.decided_by)

    @activity.defn(name="notifications.deliver")
    async def deliver(self, d: Deliver) -> Delivered:
        channels = list(dict.fromkeys([*self._settings.notify.channels, *self._channels]))
        recipients = await self.recipients(d) if "email" in channels else []
        sent = already = 0
        failures: list[str] = []
        if "email" in channels:
            for email, role in recipients:
                key = f"{d.idempotency_key}:email:{email}"
                if not await self._claim(key, d, "email", email):
                    already += 1
                    continue
                data = {**msgspec.to_builtins(d), "recipient": email, "role": role,
                        "due_at": d.due_at.strftime("%Y-%m-%d %H:%M UTC") if d.due_at else None,
                        **self._links(d, email, role)}
                try:
                    mail = self._templates.render(f"approval_{d.event}", data)
                    args: dict[str, Any] = {"to": [email], "subject": mail.subject, "text": mail.text}
                    if mail.html:
                        args["html"] = mail.html
                    answer = await self._send_email(d.tenant_id, _key(key), args)
                except Exception as exc:  # noqa: BLE001 - recorded per recipient; the others still go
                    await self._failed(key, f"{exc.__class__.__name__}: {exc}")
                    failures.append(email)
                    log.warning("approval %s email to a recipient of %s failed: %s", d.event, d.tenant_id,
                                exc.__class__.__name__)
                    continue
                await self._done(key, {"message_id": answer.get("message_id"), "status": answer.get("status")})
                sent += 1
        if "in_app" in channels:
            # The approval_notifications row (written by approvals.notify) is the in-app message.
            key = f"{d.idempotency_key}:in_app:{d.tenant_id}"
            if await self._claim(key, d, "in_app", f"{d.audience}:{d.tenant_id}"):
                await self._done(key, {"stream": "pending-actions"})
                sent += 1
            else:
                already += 1
        for name, channel in self._channels.items():
            if name not in channels:
                continue
            key = f"{d.idempotency_key}:{name}"
            if not await self._claim(key, d, name, "*"):
                already += 1
                continue
            try:
                await channel(self.event_of(d))
            except Exception as exc:  # noqa: BLE001
                await self._failed(key, f"{exc.__class__.__name__}: {exc}")
                failures.append(name)
                continue
            await self._done(key, {})
            sent += 1
        if failures and _attempt() < MAX_ATTEMPTS:
            raise ApplicationError(f"{len(failures)} delivery(ies) of approval {d.event} failed; retrying those",
                                   type=DELIVERY_FAILED)
        return Delivered(sent=sent, already=already, failed=len(failures), recipients=[e for e, _ in recipients])
