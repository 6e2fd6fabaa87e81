"""The webhook inbox: every accepted inbound event, kept before it is answered.

The API writes no business rows; this table is its own record of deliveries, as the trigger
table is its configuration (migration 0023). A delivery is claimed by inserting its row, keyed
twice: by the sender's event id and by the SHA-256 of the exact body, within the source, the
event type and the scope (the tenant for generic webhooks, whose ids are each tenant's own).
An insert that hits either key is a replay: answered 200 "duplicate" with the workflow of the
first delivery, starting nothing. The body key stops replays that change unsigned headers (a
new X-Shopify-Webhook-Id or X-Lago-Unique-Key, another shop domain): the body is what the
sender signed.

A delivery whose handling failed (Temporal unreachable: answered 5xx, so the sender retries)
is marked ``failed``, and the retry takes it over; so is one still ``received`` a minute after
its handler took it (the process died between the insert and the answer).

Retention: rows older than ``BIZ_WEBHOOKS_INBOX_RETENTION_DAYS`` are deleted when the API
starts and every hour after (:func:`prune_forever`); every API process does it, and the
DELETE is the same whoever runs it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, NamedTuple

import asyncpg
import msgspec

from api.triggers import Event

log = logging.getLogger(__name__)

Outcome = Literal["received", "started", "signalled", "duplicate", "no_trigger", "failed"]
# A delivery still `received` this long after its handler took it is taken over by a retry.
ABANDONED_AFTER = timedelta(minutes=1)
PRUNE_EVERY = timedelta(hours=1)


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    # False: a replay of a delivery already handled (or being handled); nothing to do.
    fresh: bool
    outcome: Outcome
    workflow_id: str | None = None
    run_id: str | None = None


def scope_of(event: Event) -> str:
    return (event.tenant_id or "") if event.source == "generic" else ""


class _Row(NamedTuple):
    """The row a delivery gives the inbox, in the columns' order of the claim statements."""

    source: str
    event_id: str | None
    event_type: str
    scope: str
    body_sha256: bytes
    tenant_id: str | None
    sent_at: Any
    body: bytes
    outcome: Outcome
    workflow_id: str | None


async def claim(pool: asyncpg.Pool, event: Event, body: bytes, *, workflow_id: str | None,
                outcome: Outcome) -> Claim:
    """Keep the event (``outcome``: ``received`` when a workflow is to be started, else
    ``no_trigger``), or find the delivery it replays.

    Deliveries claimed at the same time are kept by one statement (:class:`_Together`): under
    load each costs Postgres one insert in a shared statement and commit rather than its own."""
    row = _Row(event.source, event.id, event.type, scope_of(event), hashlib.sha256(body).digest(),
               event.tenant_id, event.sent_at, body, outcome, workflow_id)
    return await _together(pool, "claim", _claim_all)(row)


_CLAIM_ONE = """WITH kept AS (
       INSERT INTO webhook_inbox (source, event_id, event_type, scope, body_sha256, tenant_id, sent_at,
                                  body, outcome, workflow_id)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
       ON CONFLICT DO NOTHING
       RETURNING id),
   seen AS (
       SELECT id, outcome, workflow_id, run_id FROM webhook_inbox
       WHERE NOT EXISTS (SELECT FROM kept)
         AND source = $1 AND scope = $4 AND event_type = $3
         AND ((event_id = $2 AND $2::text IS NOT NULL) OR body_sha256 = $5)
       ORDER BY (event_id IS NOT DISTINCT FROM $2) DESC, id LIMIT 1),
   retaken AS (
       UPDATE webhook_inbox w SET outcome = 'received', updated_at = now()
       FROM seen
       WHERE w.id = seen.id AND (w.outcome = 'failed'
                                 OR (w.outcome = 'received' AND w.updated_at < now() - $11::interval))
       RETURNING w.id, w.workflow_id)
   SELECT (SELECT id FROM kept) AS kept_id, seen.id, seen.outcome, seen.workflow_id, seen.run_id,
          (SELECT id FROM retaken) AS retaken_id, (SELECT workflow_id FROM retaken) AS retaken_workflow_id
   FROM (SELECT) AS one LEFT JOIN seen ON true"""


async def _claim_one(pool: asyncpg.Pool, row: _Row) -> Claim:
    """One delivery alone: keep it; else find the first delivery (by the sender's id, else by
    the body) and take it over if its handling failed or was abandoned."""
    for _ in range(3):
        found = await pool.fetchrow(_CLAIM_ONE, *row, ABANDONED_AFTER)
        if found["kept_id"] is not None:
            return Claim(id=found["kept_id"], fresh=True, outcome=row.outcome, workflow_id=row.workflow_id)
        if found["id"] is None:  # pruned, or kept by a delivery this statement could not see yet: again
            continue
        if found["retaken_id"] is not None:
            log.info("%s event %r (id %s): taking over delivery %d that was not handled", row.source, row.event_type,
                     row.event_id, found["retaken_id"])
            return Claim(id=found["retaken_id"], fresh=True, outcome="received", workflow_id=found["retaken_workflow_id"])
        return _replay(row, found)
    raise RuntimeError("the webhook inbox kept conflicting with rows it could not find")


def _replay(row: _Row, found: asyncpg.Record) -> Claim:
    log.info("%s event %r (id %s): a replay of delivery %d (%s); nothing started", row.source, row.event_type,
             row.event_id, found["id"], found["outcome"])
    return Claim(id=found["id"], fresh=False, outcome=found["outcome"], workflow_id=found["workflow_id"],
                 run_id=found["run_id"])


# Many deliveries at once: each kept, else the delivery it replays found (one that may be taken
# over, or that this statement cannot see, is left to _claim_one). No two rows given share a key.
_CLAIM_MANY = """WITH given AS (
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[],
                            $7::timestamptz[], $8::bytea[], $9::text[], $10::text[]) WITH ORDINALITY
           AS g(source, event_id, event_type, scope, body_sha256, tenant_id, sent_at, body, outcome, workflow_id, n)),
   kept AS (
       INSERT INTO webhook_inbox (source, event_id, event_type, scope, body_sha256, tenant_id, sent_at,
                                  body, outcome, workflow_id)
       SELECT source, event_id, event_type, scope, body_sha256, tenant_id, sent_at, body, outcome, workflow_id
       FROM given ORDER BY source, scope, event_type, body_sha256  -- every API process in one order
       ON CONFLICT DO NOTHING
       RETURNING id, source, scope, event_type, body_sha256)
   SELECT g.n, k.id AS kept_id, seen.id, seen.outcome, seen.workflow_id, seen.run_id, seen.retakable
   FROM given g
   LEFT JOIN kept k ON (k.source, k.scope, k.event_type, k.body_sha256) = (g.source, g.scope, g.event_type, g.body_sha256)
   LEFT JOIN LATERAL (
       SELECT w.id, w.outcome, w.workflow_id, w.run_id,
              w.outcome = 'failed' OR (w.outcome = 'received' AND w.updated_at < now() - $11::interval) AS retakable
       FROM webhook_inbox w
       WHERE k.id IS NULL AND w.source = g.source AND w.scope = g.scope AND w.event_type = g.event_type
         AND ((w.event_id = g.event_id AND g.event_id IS NOT NULL) OR w.body_sha256 = g.body_sha256)
       ORDER BY (w.event_id IS NOT DISTINCT FROM g.event_id) DESC, w.id LIMIT 1) seen ON true
   ORDER BY g.n"""


async def _claim_all(pool: asyncpg.Pool, rows: list[_Row]) -> list[Claim]:
    if len(rows) == 1:
        return [await _claim_one(pool, rows[0])]
    # Rows sharing a key with an earlier one (the same delivery twice at once) wait for the
    # statement and are claimed alone after it: they find the first one's row.
    keys: set[tuple[Any, ...]] = set()
    batch, alone = [], []
    for i, row in enumerate(rows):
        by_body = ("body", row.source, row.scope, row.event_type, row.body_sha256)
        by_id = ("id", row.source, row.scope, row.event_type, row.event_id) if row.event_id is not None else None
        if by_body in keys or by_id in keys:
            alone.append(i)
            continue
        keys.add(by_body)
        if by_id is not None:
            keys.add(by_id)
        batch.append(i)
    claims: list[Claim | None] = [None] * len(rows)
    try:
        found = await pool.fetch(_CLAIM_MANY, *(list(column) for column in zip(*(rows[i] for i in batch), strict=True)),
                                 ABANDONED_AFTER)
    except asyncpg.DeadlockDetectedError:
        # Two API processes' batches each waiting on a row of the other's (the rows are inserted
        # in one order everywhere, so only deliveries sharing a sender id with another body can
        # cross): Postgres ended this one. Each of its deliveries is claimed alone instead.
        log.info("webhook inbox: %d claims crossed another process's; claimed one by one", len(batch))
        found, alone = [], list(range(len(rows)))
        batch = []
    for i, record in zip(batch, found, strict=True):
        row = rows[i]
        if record["kept_id"] is not None:
            claims[i] = Claim(id=record["kept_id"], fresh=True, outcome=row.outcome, workflow_id=row.workflow_id)
        elif record["id"] is not None and not record["retakable"]:
            claims[i] = _replay(row, record)
        else:
            alone.append(i)
    for i, claimed in zip(alone, await asyncio.gather(*(_claim_one(pool, rows[i]) for i in alone)), strict=True):
        claims[i] = claimed
    return claims  # type: ignore[return-value]


async def settle(pool: asyncpg.Pool, row_id: int, outcome: Outcome, *, workflow_id: str | None = None,
                 run_id: str | None = None) -> None:
    """What became of the delivery; returns once it is written.

    Committed without waiting for the disk (``synchronous_commit`` off for this statement's own
    transaction only, set by ``set_config(..., true)`` inside it): the claim before it was
    durable, and an outcome lost to a Postgres crash leaves the row ``received``, which the
    sender's retry takes over a minute later and settles again (its start finds the workflow:
    ``duplicate``). The delivery is answered one disk flush sooner.

    The outcomes of deliveries answered at the same time are written together, like claims."""
    await _together(pool, "settle", _settle_all)((row_id, outcome, workflow_id, run_id))


_SETTLE = """UPDATE webhook_inbox w SET outcome = s.outcome, workflow_id = coalesce(s.workflow_id, w.workflow_id),
                                      run_id = s.run_id, updated_at = now()
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS s(id, outcome, workflow_id, run_id),
                  (SELECT set_config('synchronous_commit', 'off', true)) AS this_commit_only
             WHERE w.id = s.id"""


async def _settle_all(pool: asyncpg.Pool, outcomes: list[tuple[int, str, str | None, str | None]]) -> list[None]:
    rows = {row[0]: row for row in outcomes}  # one outcome per row: the last given
    await pool.execute(_SETTLE, *(list(column) for column in zip(*rows.values(), strict=True)))
    return [None] * len(outcomes)


class _Together:
    """Calls of one kind to one pool, sent together: those that arrive while a statement is on
    its way go as the next one. One call alone is sent at once, as before; under load the
    calls of a moment share one statement, one round trip and one commit."""

    def __init__(self, pool: asyncpg.Pool, send: Callable[[asyncpg.Pool, list[Any]], Awaitable[list[Any]]]) -> None:
        self.pool, self.send = pool, send
        self.waiting: list[tuple[Any, asyncio.Future[Any]]] = []
        self.writer: asyncio.Task[None] | None = None

    async def __call__(self, item: Any) -> Any:
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, answer))
        if self.writer is None:
            self.writer = asyncio.create_task(self._send_all())
        return await answer

    async def _send_all(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    results = await self.send(self.pool, [item for item, _ in batch])
                except BaseException as exc:
                    for _, answer in batch:
                        if not answer.done():
                            answer.cancel() if isinstance(exc, asyncio.CancelledError) else answer.set_exception(exc)
                    if not isinstance(exc, Exception):  # this writer is cancelled: so are those waiting
                        for _, answer in self.waiting:
                            answer.cancel()
                        self.waiting = []
                        raise
                    continue
                for (_, answer), result in zip(batch, results, strict=True):
                    if not answer.done():  # (its request may have been cancelled meanwhile)
                        answer.set_result(result)
        finally:
            self.writer = None


# One writer per pool and kind: (the pool, its writer).
_writers: dict[tuple[int, str], tuple[asyncpg.Pool, _Together]] = {}


def _together(pool: asyncpg.Pool, kind: str, send: Callable[[asyncpg.Pool, list[Any]], Awaitable[list[Any]]]) -> _Together:
    kept = _writers.get((id(pool), kind))
    if kept is None or kept[0] is not pool:
        if len(_writers) >= 32:  # pools closed long ago (tests make many)
            for key in [k for k, (_, w) in _writers.items() if w.writer is None and not w.waiting]:
                del _writers[key]
        kept = _writers[(id(pool), kind)] = (pool, _Together(pool, send))
    return kept[1]


async def prune(pool: asyncpg.Pool, retention: timedelta) -> int:
    """Delete deliveries older than ``retention``; how many."""
    status = await pool.execute("DELETE FROM webhook_inbox WHERE received_at < now() - $1::interval", retention)
    return int(status.rsplit(" ", 1)[-1])


async def prune_forever(pool: asyncpg.Pool, retention: timedelta, every: timedelta = PRUNE_EVERY) -> None:
    """Prune now and then every ``every``, until cancelled (the API's lifespan runs it)."""
    while True:
        try:
            deleted = await prune(pool, retention)
            if deleted:
                log.info("webhook inbox: %d deliveries older than %s deleted", deleted, retention)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # the next round tries again
            log.warning("webhook inbox prune failed: %s", exc)
        await asyncio.sleep(every.total_seconds())
