"""Migrations are a release step: `bizosaas migrate` applies them, and the API and workers of a
deployment only check the schema, refusing to start behind it with a line that says what to run
(unless BIZ_DATABASE_MIGRATE_ON_START=true)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from core.database import SchemaBehind, check_schema, create_pool, load_migrations
from tests.conftest import _with_database
from tests.support import dev_env, free_port, dev_settings


@pytest.fixture
async def empty_database(postgres_server_url: str) -> AsyncIterator[str]:
    name = f"migrate_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(postgres_server_url, name)  # the embedded server's URL has a path in its query
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def bizosaas(*args: str, **env: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.cli", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode or 0, out.decode()


async def test_serving_processes_refuse_a_database_behind_then_migrate_brings_it_up(
        empty_database: str, settings: object) -> None:
    env = {**dev_env(settings), "BIZ_DATABASE_URL": empty_database, "BIZ_LOG_LEVEL": "WARNING"}  # type: ignore[arg-type]
    code, out = await bizosaas("api", "--port", str(free_port()), **env)
    assert code == 2 and "bizosaas migrate" in out and "Traceback" not in out, out
    code, out = await bizosaas("worker", "--queue", "biz-workflows", **env)
    assert code == 2 and "bizosaas migrate" in out and "Traceback" not in out, out
    conn = await asyncpg.connect(empty_database)
    try:
        # Nothing was created by the refused processes: no DDL ran.
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        code, out = await bizosaas("migrate", **env)
        assert code == 0 and f"applied {len(load_migrations())} migration(s)" in out, out
        await check_schema(conn)  # up to date now
        code, out = await bizosaas("migrate", **env)
        assert code == 0 and "schema is up to date" in out, out
    finally:
        await conn.close()


async def test_a_pool_without_migrate_checks_the_schema(empty_database: str) -> None:
    with pytest.raises(SchemaBehind, match="bizosaas migrate"):
        await create_pool(empty_database, migrate=False)
    pool = await create_pool(empty_database, migrate=True)
    await pool.close()
    pool = await create_pool(empty_database, migrate=False)
    await pool.close()
    assert dev_settings().database.migrate_on_start is False
