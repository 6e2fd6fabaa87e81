"""The trigger table: which workflow an inbound event starts (webhooks, platform events).

Each trigger is declared here (``TRIGGERS``): the event's source and type, the capability it
starts, and how the event becomes the workflow's typed input and business key. The
``triggers`` table is seeded from these declarations when the API starts (new rows only, so
an operator's ``enabled = false`` stays) and read on every event: a disabled or missing row
means the event is acknowledged (202) and logged, nothing is started.

The workflow id is ``{tenant}:{capability}:{business key}``, the key derived from the event
(the Shopify order id, the Stripe invoice id, the tenant id of ``tenant.created``): a second
event for the same business key finds the workflow the first one started, answers 200 with its
id and starts nothing. A replay of the same delivery is stopped before that, by the inbox
(api/inbox.py), which keeps every accepted event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec
from temporalio.client import Client

from workflows.catalogue import CATALOGUE
from workflows.dunning import PAID_SIGNAL, DunningInput, invoice_key
from workflows.onboarding import OnboardingInput
from workflows.orders import OrderInput, OrderLine
from workflows.starting import AlreadyStarted, CapabilityStart, start_capability

log = logging.getLogger(__name__)

Action = Literal["start", "signal_with_start"]
Outcome = Literal["started", "duplicate", "signalled", "ignored"]
TRIGGER_MEMO = "trigger"
MAX_TIMESTAMP = 253402300800  # 10000-01-01: past any datetime


class InvalidEvent(ValueError):
    """The event is well signed but cannot become the workflow's input (answered 400)."""


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """An inbound event after its signature was verified."""

    source: str
    type: str
    id: str | None  # the sender's event or delivery id
    tenant_id: str | None  # as resolved from the sender's own identification, when it has one
    payload: dict[str, Any]
    sender: str = "webhook"  # who it came from, recorded as requested_by
    # When the sender says it sent the event, when it says (Stripe `created`, Shopify
    # X-Shopify-Triggered-At, the generic X-Biz-Timestamp); older than the replay window is refused.
    sent_at: datetime | None = None


class Fired(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Outcome
    event_type: str
    workflow_id: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class Trigger:
    source: str
    event_type: str
    capability: str
    # The tenant, the business key and the typed input, from the event; InvalidEvent when it cannot.
    build: Callable[[Event], tuple[str, str, Any]]
    action: Action = "start"
    signal: str | None = None

    def __post_init__(self) -> None:
        if self.capability not in CATALOGUE:
            raise ValueError(f"trigger {self.source}/{self.event_type}: unknown capability {self.capability!r}")
        if (self.action == "signal_with_start") != (self.signal is not None):
            raise ValueError(f"trigger {self.source}/{self.event_type}: a signal goes with signal_with_start only")


def _money(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidEvent(f"{what} is not a number") from None


def shopify_order(event: Event) -> tuple[str, str, OrderInput]:
    """Shopify ``orders/create``: the order id is the business key (``shopify-{id}``)."""
    if event.tenant_id is None:
        raise InvalidEvent("the shop is not connected to a tenant")
    o = event.payload
    if not isinstance(o.get("id"), int | str) or not str(o["id"]).isdigit():
        raise InvalidEvent("the order has no numeric id")
    lines = o.get("line_items")
    if not isinstance(lines, list):
        raise InvalidEvent("the order has no line_items")

    def country(address: Any) -> str | None:
        return address.get("country_code") if isinstance(address, dict) else None

    key = f"shopify-{o['id']}"
    try:
        inp = msgspec.convert({
            "tenant_id": event.tenant_id, "order_key": key, "source": "shopify",
            "order_number": str(o.get("name") or ""), "currency": o.get("currency") or "USD",
            "total": _money(o.get("total_price"), "total_price"),
            "customer_email": o.get("email") or None,
            "billing_country": country(o.get("billing_address")),
            "shipping_country": country(o.get("shipping_address")),
            "lines": [msgspec.convert({"sku": str(li.get("sku") or li.get("variant_id") or li.get("id") or "unknown"),
                                       "quantity": li.get("quantity"), "unit_price": _money(li.get("price"), "price"),
                                       "title": str(li.get("title") or "")[:300]}, OrderLine)
                      for li in lines if isinstance(li, dict)],
            "requested_by": event.sender,
        }, OrderInput)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"order: {exc}") from None
    return event.tenant_id, key, inp


def tenant_created(event: Event) -> tuple[str, str, OnboardingInput]:
    """Platform ``tenant.created``: onboarding, keyed by the tenant id (one per tenant, ever)."""
    try:
        inp = msgspec.convert({**event.payload, "requested_by": event.sender}, OnboardingInput)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"tenant: {exc}") from None
    return inp.tenant_id, inp.tenant_id, inp


def stripe_invoice(event: Event) -> tuple[str, str, DunningInput]:
    """Stripe ``invoice.payment_failed`` (starts dunning) and ``invoice.paid`` (signals it, or
    starts it already paid when it comes first): keyed by the invoice id (:func:`invoice_key`),
    the tenant from the invoice's ``metadata.tenant_id``."""
    if event.tenant_id is None:
        raise InvalidEvent("the invoice names no tenant (metadata.tenant_id)")
    data = event.payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        raise InvalidEvent("the event has no invoice")
    created = event.payload.get("created")
    if isinstance(created, int) and not 0 <= created < MAX_TIMESTAMP:
        raise InvalidEvent("the event's created time is out of range")
    try:
        inp = msgspec.convert({
            "tenant_id": event.tenant_id, "invoice_id": obj["id"], "invoice_key": invoice_key(obj["id"]),
            "amount_due": obj.get("amount_due") or 0, "currency": str(obj.get("currency") or "usd").lower(),
            "customer_email": obj.get("customer_email") or None,
            "failed_at": datetime.fromtimestamp(created, UTC)
            if event.type == "invoice.payment_failed" and isinstance(created, int) else None,
            "event_id": event.id, "requested_by": event.sender,
        }, DunningInput)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"invoice: {exc}") from None
    return inp.tenant_id, inp.invoice_key, inp


TRIGGERS: dict[tuple[str, str], Trigger] = {
    (t.source, t.event_type): t
    for t in (
        Trigger(source="shopify", event_type="orders/create", capability="order", build=shopify_order),
        Trigger(source="platform", event_type="tenant.created", capability="onboarding", build=tenant_created),
        Trigger(source="stripe", event_type="invoice.payment_failed", capability="dunning", build=stripe_invoice),
        Trigger(source="stripe", event_type="invoice.paid", capability="dunning", build=stripe_invoice,
                action="signal_with_start", signal=PAID_SIGNAL),
    )
}


async def seed_triggers(pool: asyncpg.Pool) -> None:
    """Insert the declared triggers that are not in the table yet (idempotent)."""
    await pool.executemany(
        """INSERT INTO triggers (source, event_type, action, capability, signal) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (source, event_type) DO NOTHING""",
        [(t.source, t.event_type, t.action, t.capability, t.signal) for t in TRIGGERS.values()],
    )
    _looked_up.clear()


# lookup's answers, per pool, source and event type: (pool, read at (monotonic), trigger or None).
LOOKUP_CACHE_SECONDS = 5.0
_looked_up: dict[tuple[int, str, str], tuple[asyncpg.Pool, float, Trigger | None]] = {}


async def lookup(pool: asyncpg.Pool, source: str, event_type: str) -> Trigger | None:
    """The enabled trigger of this event type, or None.

    The row is read at most once per ``LOOKUP_CACHE_SECONDS`` per event type and API process
    (webhooks arrive in bursts of the same type): an operator's ``UPDATE triggers SET enabled
    = false`` (or true) takes effect on every API process within 5 seconds, without a restart.
    Missing and disabled rows are kept as briefly as enabled ones; seeding forgets them all."""
    key = (id(pool), source, event_type)
    now = time.monotonic()
    cached = _looked_up.get(key)
    # The entry holds the pool itself: its id cannot be another pool's while the entry lives.
    if cached is not None and cached[0] is pool and now - cached[1] < LOOKUP_CACHE_SECONDS:
        return cached[2]
    row = await pool.fetchrow(
        "SELECT action, capability, signal FROM triggers WHERE source = $1 AND event_type = $2 AND enabled",
        source, event_type)
    trigger = None
    if row is not None:
        declared = TRIGGERS.get((source, event_type))
        if declared is None or (declared.action, declared.capability, declared.signal) != tuple(row):
            log.warning("trigger %s/%s in the table does not match the code; ignored", source, event_type)
        else:
            trigger = declared
    if len(_looked_up) >= 1000:  # event types are few; made-up ones from signed senders are bounded here
        _looked_up.clear()
    _looked_up[key] = (pool, now, trigger)
    return trigger


@dataclass(frozen=True)
class Plan:
    """What an event will do: its trigger and the capability start (tenant, input, workflow id)."""

    trigger: Trigger
    start: CapabilityStart

    @property
    def workflow_id(self) -> str:
        return self.start.workflow_id


async def plan(pool: asyncpg.Pool, event: Event) -> Plan | None:
    """The workflow this event starts or signals, or None when no trigger takes it.
    InvalidEvent when the event cannot become the workflow's input."""
    trigger = await lookup(pool, event.source, event.type)
    if trigger is None:
        log.info("%s event %r (id %s, tenant %s): no trigger, acknowledged and ignored",
                 event.source, event.type, event.id, event.tenant_id)
        return None
    tenant, key, inp = trigger.build(event)
    return Plan(trigger=trigger, start=CapabilityStart.of(CATALOGUE[trigger.capability], inp, tenant, key))


async def fire(temporal: Client, pool: asyncpg.Pool, event: Event) -> Fired:
    """Start (or signal-with-start) the workflow of this event, or acknowledge it unmatched."""
    planned = await plan(pool, event)
    if planned is None:
        return Fired(outcome="ignored", event_type=event.type)
    return await start(temporal, event, planned)


async def start(temporal: Client, event: Event, planned: Plan) -> Fired:
    """Start (or signal-with-start) the planned workflow; its id makes a second start a no-op."""
    trigger = planned.trigger
    signalled = trigger.action == "signal_with_start"
    try:
        handle = await start_capability(
            temporal, planned.start,
            memo={TRIGGER_MEMO: {"source": event.source, "event_type": event.type, "event_id": event.id}},
            signal=trigger.signal if signalled else None, signal_args=[event.payload] if signalled else (),
        )
    except AlreadyStarted as exc:
        log.info("%s event %r (id %s): workflow %s exists; nothing started", event.source, event.type, event.id,
                 exc.workflow_id)
        return Fired(outcome="duplicate", event_type=event.type, workflow_id=exc.workflow_id, run_id=exc.run_id)
    outcome: Outcome = "signalled" if signalled else "started"
    return Fired(outcome=outcome, event_type=event.type, workflow_id=handle.id, run_id=handle.result_run_id)
