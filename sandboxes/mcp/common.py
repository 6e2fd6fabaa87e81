"""What every sandbox tool family shares: the argument types, the outbox that records each
effect once per idempotency key, stable ids, and the context a family's tools are built with."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import httpx
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import Field

from activities import netguard
from core.names import SLUG_PATTERN
from core.settings import SmtpSettings

log = logging.getLogger(__name__)

# --- argument types (validated by FastMCP: a bad argument is a tool error) -------------------

TenantId = Annotated[str, Field(pattern=SLUG_PATTERN, description="The tenant the effect belongs to.")]
IdempotencyKey = Annotated[
    str,
    Field(min_length=1, max_length=400, description="Same key, same effect and same answer (workflow id + step)."),
]
WorkflowId = Annotated[str | None, Field(max_length=400, description="The calling workflow, for the record.")]
Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$", max_length=254)]
Phone = Annotated[str, Field(pattern=r"^\+[1-9]\d{6,14}$", description="E.164, e.g. +14155550123")]
HttpUrl = Annotated[str, Field(pattern=r"^https?://[^\s/$.?#][^\s]*$", max_length=2048)]
ShortText = Annotated[str, Field(min_length=1, max_length=500)]

Resolver = Callable[[str, int], Awaitable[list[str]]]


# --- helpers ---------------------------------------------------------------------------------

def derive_id(*parts: str, length: int = 24) -> str:
    """A stable id from the request's identity: the same key always names the same object."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]



def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def jsonable(value: dict[str, Any]) -> dict[str, Any]:
    """Arguments as they are stored in jsonb (and compared on a repeated key)."""
    return json.loads(json.dumps(value, default=str))


class PoolSource:
    """The pool given by the caller, or one opened from a URL on first use (and closed here)."""

    def __init__(self, pool_or_url: asyncpg.Pool | str) -> None:
        self._pool = pool_or_url if isinstance(pool_or_url, asyncpg.Pool) else None
        self._url = pool_or_url if isinstance(pool_or_url, str) else None
        self._lock = asyncio.Lock()

    async def get(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    from core.database import create_pool

                    self._pool = await create_pool(self._url, min_size=1, max_size=5)
        return self._pool

    async def aclose(self) -> None:
        if self._url is not None and self._pool is not None:
            await self._pool.close()
            self._pool = None


class Outbox:
    """Records one effect per idempotency key; a repeated key answers the stored response."""

    def __init__(self, pools: PoolSource) -> None:
        self._pools = pools

    async def record(
        self,
        *,
        tool: str,
        tenant_id: str,
        idempotency_key: str,
        workflow_id: str | None,
        arguments: dict[str, Any],
        respond: Any,  # async (conn) -> dict: builds the answer of a first call
    ) -> dict[str, Any]:
        arguments = jsonable(arguments)
        pool = await self._pools.get()
        async with pool.acquire() as conn, conn.transaction():
            # Concurrent calls with one key wait for each other: one writes, the other reads.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", idempotency_key)
            row = await conn.fetchrow(
                "SELECT tenant_id, tool, arguments, response FROM outbox WHERE idempotency_key = $1",
                idempotency_key,
            )
            if row is not None:
                if (row["tenant_id"], row["tool"], row["arguments"]) != (tenant_id, tool, arguments):
                    raise ToolError(
                        f"idempotency key {idempotency_key!r} was already used for a different request"
                    )
                return row["response"]
            response = jsonable(await respond(conn))
            await conn.execute(
                """INSERT INTO outbox (idempotency_key, tenant_id, tool, arguments, response, workflow_id)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                idempotency_key, tenant_id, tool, arguments, response, workflow_id,
            )
            log.info("sandbox %s for tenant %s recorded (key %s)", tool, tenant_id, idempotency_key)
            return response


async def earlier_response(conn: asyncpg.Connection, tenant_id: str, tool: str, field: str, value: Any) -> dict | None:
    """The newest recorded answer of ``tool`` for the tenant whose ``field`` equals ``value``."""
    return await conn.fetchval(
        """SELECT response FROM outbox
           WHERE tenant_id = $1 AND tool = $2 AND response ->> $3 = $4
           ORDER BY id DESC LIMIT 1""",
        tenant_id, tool, field, str(value),
    )



@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """What a family's tools are built with: the tenants' database, the outbox, and where
    fetch_web_page may connect (see :func:`sandboxes.mcp.server.build_server`)."""

    pools: PoolSource
    outbox: Outbox
    fetch_policy: netguard.FetchPolicy | None = None
    fetch_resolver: Resolver | None = None
    fetch_transport: httpx.AsyncBaseTransport | None = None
    smtp: SmtpSettings | None = None  # the platform's SMTP server for send_email (None: record only)
