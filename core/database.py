"""Postgres: the asyncpg pool and the numbered plain-SQL migrations.

Migrations live in ``core/migrations/NNNN_name.sql`` and are applied in order at
start-up by every process that opens a pool, under a Postgres advisory lock: processes that
start together wait for each other and each migration is applied exactly once, recorded in
``schema_migrations`` with its checksum.

Every pool statement is bound by a command timeout (``BIZ_DATABASE_COMMAND_TIMEOUT_SECONDS``).
An activity that breaks a constraint or sends data Postgres refuses fails at once, not retried
(:class:`DatabaseErrorInterceptor`, on every worker): retrying the same statement cannot help.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from asyncpg.exceptions._base import DataError as ArgumentDataError  # a query argument asyncpg cannot encode
from temporalio import worker
from temporalio.exceptions import ApplicationError

log = logging.getLogger(__name__)

DEFAULT_COMMAND_TIMEOUT = 30.0
# Error types of the permanent database failures (callers match on these).
CONSTRAINT_VIOLATION = "DatabaseConstraintViolation"
DATA_ERROR = "DatabaseDataError"

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# pg_advisory_lock key: "bizosaas" as a number, shared by every process.
_MIGRATION_LOCK = 0x62697A6F73616173 & 0x7FFFFFFFFFFFFFFF
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must be NNNN_name.sql: {path.name}")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers in {directory}")
    return migrations


async def apply_migrations(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is missing, in order; returns the versions this call applied."""
    migrations = load_migrations() if migrations is None else migrations
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")}
        for m in migrations:
            if m.version in done:
                if done[m.version] != m.checksum:
                    log.warning("migration %04d_%s changed after it was applied", m.version, m.name)
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum,
                )
            applied_now.append(m.version)
            log.info("applied migration %04d_%s", m.version, m.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


class SchemaBehind(RuntimeError):
    """The database lacks migrations this build needs (``bizosaas migrate`` applies them)."""


async def check_schema(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> None:
    """Raise :class:`SchemaBehind` unless every migration of this build is applied. A schema
    ahead of the build (a newer release migrated first, during a rolling deploy) is fine:
    migrations only add."""
    migrations = load_migrations() if migrations is None else migrations
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")} if exists else set()
    missing = [f"{m.version:04d}_{m.name}" for m in migrations if m.version not in done]
    if missing:
        raise SchemaBehind(f"the database lacks {len(missing)} migration(s) this build needs "
                           f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): run `bizosaas migrate` "
                           "first (a release step), or set BIZ_DATABASE_MIGRATE_ON_START=true")


async def _init_connection(conn: asyncpg.Connection) -> None:
    import json

    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pool's reset that sends nothing: asyncpg still rolls back a transaction left open."""


async def create_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, migrate: bool = True,
    command_timeout: float | None = DEFAULT_COMMAND_TIMEOUT, reset_session: bool = True,
) -> asyncpg.Pool:
    """Open a pool (jsonb as Python objects; a statement longer than ``command_timeout``
    seconds is cancelled with ``TimeoutError``) and bring the schema up to date (on a
    connection of its own, without that bound: a migration or the wait for another process's
    migration may take longer).

    ``reset_session=False`` skips asyncpg's reset query on every release (``SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``, one more round trip per
    statement through the pool); an open transaction is still rolled back. Only for a pool
    whose users never leave session state behind (no SET, LISTEN, advisory lock or open
    cursor): the API's.

    ``migrate=False``: the schema is only checked (:class:`SchemaBehind` if a migration of this
    build is missing): the API and workers of a deployment where ``bizosaas migrate`` runs as a
    release step, so that no serving process runs DDL."""
    conn = await asyncpg.connect(url)
    try:
        if migrate:
            await apply_migrations(conn)
        else:
            await check_schema(conn)
    finally:
        await conn.close()
    return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init_connection,
                                     command_timeout=command_timeout,
                                     reset=None if reset_session else _keep_session)


def permanent_database_error(exc: BaseException) -> ApplicationError | None:
    """The non-retryable error for a database failure no retry can fix (a constraint
    violation, data Postgres refuses), or None. The message names the table, constraint and
    column, never the values (they may be personal data, and failures are stored in clear)."""
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        kind = CONSTRAINT_VIOLATION
    elif isinstance(exc, asyncpg.DataError | ArgumentDataError):
        kind = DATA_ERROR
    else:
        return None
    where = [f"{name} {value}" for name, value in (
        ("table", getattr(exc, "table_name", None)), ("constraint", getattr(exc, "constraint_name", None)),
        ("column", getattr(exc, "column_name", None)), ("type", getattr(exc, "data_type_name", None)),
    ) if value]
    sqlstate = getattr(exc, "sqlstate", None)
    message = f"{exc.__class__.__name__}" + (f" (SQLSTATE {sqlstate})" if sqlstate else "")
    if where:
        message += ": " + ", ".join(where)
    return ApplicationError(message, type=kind, non_retryable=True)


class _PermanentDatabaseErrors(worker.ActivityInboundInterceptor):
    async def execute_activity(self, input: worker.ExecuteActivityInput) -> object:
        try:
            return await self.next.execute_activity(input)
        except Exception as exc:
            permanent = permanent_database_error(exc)
            if permanent is None:
                raise
            log.warning("activity %s failed permanently: %s", input.fn.__name__, permanent.message)
            raise permanent from None


class DatabaseErrorInterceptor(worker.Interceptor):
    """Turns constraint violations and data errors raised by any activity into non-retryable
    ``DatabaseConstraintViolation`` / ``DatabaseDataError`` failures."""

    def intercept_activity(self, next: worker.ActivityInboundInterceptor) -> worker.ActivityInboundInterceptor:
        return _PermanentDatabaseErrors(next)
