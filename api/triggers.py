"""The trigger table: which workflow an inbound event starts (webhooks, platform events).

Each trigger is declared by the capability it starts, in its module (``CAPABILITY.triggers``:
the event's source and type, start or signal-with-start, and how the event becomes the
workflow's typed input and business key); ``TRIGGERS`` is derived from those declarations. The
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
from dataclasses import dataclass
from typing import Literal

import asyncpg
import msgspec
from temporalio.client import Client

from workflows.capability import Event, InvalidEvent, Trigger
from workflows.catalogue import CATALOGUE, triggers
from workflows.dunning import stripe_invoice
from workflows.onboarding import tenant_created
from workflows.orders import shopify_order
from workflows.starting import AlreadyStarted, CapabilityStart, start_capability

__all__ = ["TRIGGERS", "TRIGGER_MEMO", "Event", "Fired", "InvalidEvent", "Plan", "Trigger", "fire", "lookup", "plan",
           "seed_triggers", "shopify_order", "start", "stripe_invoice", "tenant_created"]

log = logging.getLogger(__name__)

Outcome = Literal["started", "duplicate", "signalled", "ignored"]
TRIGGER_MEMO = "trigger"


class Fired(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Outcome
    event_type: str
    workflow_id: str | None = None
    run_id: str | None = None


# Derived from the capabilities' declarations (each module's ``CAPABILITY.triggers``).
TRIGGERS: dict[tuple[str, str], Trigger] = {(t.source, t.event_type): t for t in triggers()}


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
