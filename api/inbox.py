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
from datetime import timedelta
from typing import Literal

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


async def claim(pool: asyncpg.Pool, event: Event, body: bytes, *, workflow_id: str | None,
                outcome: Outcome) -> Claim:
    """Keep the event (``outcome``: ``received`` when a workflow is to be started, else
    ``no_trigger``), or find the delivery it replays."""
    digest = hashlib.sha256(body).digest()
    scope = scope_of(event)
    for _ in range(3):
        # One statement: keep the delivery; else find the first delivery (by the sender's id,
        # else by the body) and take it over if its handling failed or was abandoned.
        row = await pool.fetchrow(
            """WITH kept AS (
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
               FROM (SELECT) AS one LEFT JOIN seen ON true""",
            event.source, event.id, event.type, scope, digest, event.tenant_id, event.sent_at, body, outcome,
            workflow_id, ABANDONED_AFTER,
        )
        if row["kept_id"] is not None:
            return Claim(id=row["kept_id"], fresh=True, outcome=outcome, workflow_id=workflow_id)
        if row["id"] is None:  # pruned, or kept by a delivery this statement could not see yet: again
            continue
        if row["retaken_id"] is not None:
            log.info("%s event %r (id %s): taking over delivery %d that was not handled", event.source, event.type,
                     event.id, row["retaken_id"])
            return Claim(id=row["retaken_id"], fresh=True, outcome="received", workflow_id=row["retaken_workflow_id"])
        log.info("%s event %r (id %s): a replay of delivery %d (%s); nothing started", event.source, event.type,
                 event.id, row["id"], row["outcome"])
        return Claim(id=row["id"], fresh=False, outcome=row["outcome"], workflow_id=row["workflow_id"],
                     run_id=row["run_id"])
    raise RuntimeError("the webhook inbox kept conflicting with rows it could not find")


async def settle(pool: asyncpg.Pool, row_id: int, outcome: Outcome, *, workflow_id: str | None = None,
                 run_id: str | None = None) -> None:
    """What became of the delivery; returns once it is written.

    Committed without waiting for the disk (``synchronous_commit`` off for this statement's own
    transaction only, set by ``set_config(..., true)`` inside it): the claim before it was
    durable, and an outcome lost to a Postgres crash leaves the row ``received``, which the
    sender's retry takes over a minute later and settles again (its start finds the workflow:
    ``duplicate``). The delivery is answered one disk flush sooner.

    The outcomes of deliveries answered at the same time are written together, one statement
    for all that arrived while the one before was on its way (:class:`_Settles`): under load a
    delivery costs Postgres and the API about one statement fewer."""
    await _settles_of(pool).write((row_id, outcome, workflow_id, run_id))


_SETTLE = """UPDATE webhook_inbox w SET outcome = s.outcome, workflow_id = coalesce(s.workflow_id, w.workflow_id),
                                      run_id = s.run_id, updated_at = now()
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS s(id, outcome, workflow_id, run_id),
                  (SELECT set_config('synchronous_commit', 'off', true)) AS this_commit_only
             WHERE w.id = s.id"""


class _Settles:
    """The outcomes waiting to be written to one pool's inbox, and the one writer writing them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.waiting: list[tuple[tuple[int, str, str | None, str | None], asyncio.Future[None]]] = []
        self.writer: asyncio.Task[None] | None = None

    async def write(self, outcome: tuple[int, str, str | None, str | None]) -> None:
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((outcome, written))
        if self.writer is None:
            self.writer = asyncio.create_task(self._write_all())
        await written

    async def _write_all(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                rows = {row[0]: row for row, _ in batch}  # one outcome per row: the last given
                try:
                    await self.pool.execute(_SETTLE, *(list(column) for column in zip(*rows.values(), strict=True)))
                except BaseException as exc:
                    for _, written in batch:
                        if not written.done():
                            written.cancel() if isinstance(exc, asyncio.CancelledError) else written.set_exception(exc)
                    if not isinstance(exc, Exception):  # this writer is cancelled: so are those waiting
                        for _, written in self.waiting:
                            written.cancel()
                        self.waiting = []
                        raise
                    continue
                for _, written in batch:
                    if not written.done():  # (its request may have been cancelled meanwhile)
                        written.set_result(None)
        finally:
            self.writer = None


# One writer per pool: (the pool, its settles).
_settles: dict[int, tuple[asyncpg.Pool, _Settles]] = {}


def _settles_of(pool: asyncpg.Pool) -> _Settles:
    kept = _settles.get(id(pool))
    if kept is None or kept[0] is not pool:
        if len(_settles) >= 16:  # pools closed long ago (tests make many)
            for key in [k for k, (_, s) in _settles.items() if s.writer is None and not s.waiting]:
                del _settles[key]
        kept = _settles[id(pool)] = (pool, _Settles(pool))
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
