"""Probes: GET /livez (the process answers), GET /readyz (Temporal and Postgres reachable, each
reported), GET /health (the same as /readyz, kept for existing monitors); GET /metrics
(Prometheus text format: the API's request counts and latencies by route template and status)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import msgspec
from litestar import MediaType, Response, get
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


class Alive(msgspec.Struct, frozen=True, kw_only=True):
    status: str  # ok


async def _readiness(temporal: Client, db: asyncpg.Pool) -> Response[Health]:
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


@get("/health", operation_id="health", tags=["operations"], exclude_from_auth=True, summary="Temporal and Postgres health",
     description="The same as /readyz (kept for existing monitors).",
     responses={HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(Health, description="Temporal or Postgres is down")})
async def health(temporal: NamedDependency[Client], db: NamedDependency[asyncpg.Pool]) -> Response[Health]:
    return await _readiness(temporal, db)


@get("/readyz", operation_id="readyz", tags=["operations"], exclude_from_auth=True,
     summary="Readiness: Temporal and Postgres reachable",
     description="200 when this API process can serve: the Temporal frontend and Postgres answer within "
                 f"{CHECK_TIMEOUT:g} s each; 503 naming what is down otherwise (take the process out of the load balancer).",
     responses={HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(Health, description="Temporal or Postgres is down")})
async def readyz(temporal: NamedDependency[Client], db: NamedDependency[asyncpg.Pool]) -> Response[Health]:
    return await _readiness(temporal, db)


@get("/livez", operation_id="livez", tags=["operations"], exclude_from_auth=True,
     summary="Liveness: the process answers",
     description="200 while the process serves requests, whatever Temporal and Postgres do (restart the process "
                 "only when this fails).")
async def livez() -> Alive:
    return Alive(status="ok")


@get("/metrics", operation_id="metrics", tags=["operations"], exclude_from_auth=True, media_type=MediaType.TEXT,
     summary="Prometheus metrics",
     description="Prometheus text exposition format: bizosaas_api_requests_total and "
                 "bizosaas_api_request_duration_seconds by method, route template (route) and status_code, "
                 "bizosaas_api_requests_in_progress, and the process's own (process_*, python_*).")
async def metrics() -> Response[str]:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    # Litestar adds the charset of a text answer itself: once, not twice.
    return Response(generate_latest(REGISTRY).decode(), media_type=CONTENT_TYPE_LATEST.replace("; charset=utf-8", ""))
