"""GET /health: Temporal and Postgres, reported separately."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

CHECK_TIMEOUT = 2.0


class PartHealth(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    latency_ms: float | None = None
    error: str | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str  # ok | unavailable
    temporal: PartHealth
    postgres: PartHealth
    detail: str | None = None


async def _timed(check) -> PartHealth:  # noqa: ANN001
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure is "down", named below
        return PartHealth(ok=False, error=exc.__class__.__name__ if not str(exc) else f"{exc.__class__.__name__}: {str(exc)[:200]}")
    return PartHealth(ok=True, latency_ms=round((loop.time() - start) * 1000, 2))


@get("/health", operation_id="health", tags=["operations"], exclude_from_auth=True, summary="Temporal and Postgres health",
     responses={HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(Health, description="Temporal or Postgres is down")})
async def health(temporal: NamedDependency[Client], db: NamedDependency[asyncpg.Pool]) -> Response[Health]:
    async def check_temporal() -> None:
        await temporal.workflow_service.get_system_info(
            GetSystemInfoRequest(),
            timeout=timedelta(seconds=CHECK_TIMEOUT),
        )

    async def check_postgres() -> None:
        async with db.acquire(timeout=CHECK_TIMEOUT) as conn:
            await conn.fetchval("SELECT 1")

    t, p = await asyncio.gather(_timed(check_temporal), _timed(check_postgres))
    down = [name for name, part in (("temporal", t), ("postgres", p)) if not part.ok]
    body = Health(
        status="unavailable" if down else "ok",
        temporal=t,
        postgres=p,
        detail=f"{' and '.join(down)} unavailable" if down else None,
    )
    return Response(body, status_code=HTTP_503_SERVICE_UNAVAILABLE if down else HTTP_200_OK)
