"""Settings, the payload converter, the dev-cluster declaration, migrations."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import msgspec
import pytest

from core.database import apply_migrations, load_migrations
from core.converter import MsgspecPayloadConverter
from workers.devcluster import load_dev_cluster
from core.settings import Settings
from core.names import SEARCH_ATTRIBUTES
from workflows.onboarding import OnboardingInput

ROOT = Path(__file__).resolve().parent.parent


def test_settings_come_from_biz_environment_and_hide_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIZ_TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("BIZ_TEMPORAL_API_KEY", "tc-secret-key")
    monkeypatch.setenv("BIZ_DATABASE_URL", "postgresql://app:pw-secret@db/biz")
    monkeypatch.setenv("BIZ_WORKER_AGENTS_MAX_CONCURRENT", "7")
    s = Settings(_env_file=None)
    assert s.temporal.address == "temporal.internal:7233"
    assert s.worker.agents_max_concurrent == 7
    assert s.database_url() == "postgresql://app:pw-secret@db/biz"
    shown = repr(s) + str(s.model_dump())
    assert "tc-secret-key" not in shown and "pw-secret" not in shown


def test_dev_cluster_declares_every_search_attribute_of_the_code() -> None:
    cluster = load_dev_cluster(ROOT / "temporal-dev.yaml")
    assert {k.name for k in cluster.search_attribute_keys()} == {k.name for k in SEARCH_ATTRIBUTES}
    args = cluster.server_args(Path("/tmp/state"))
    assert "journal_mode=WAL" in args and "history.transferProcessorMaxPollRPS=1000" in args
    assert str(Path("/tmp/state") / "temporal.db") in args


def test_converter_round_trips_structs_and_rejects_invalid_input() -> None:
    conv = MsgspecPayloadConverter()
    inp = OnboardingInput(tenant_id="acme", name="Acme", owner_email="o@acme.io")
    [payload] = conv.to_payloads([inp])
    assert payload.metadata["encoding"] == b"json/plain"
    assert conv.from_payloads([payload], [OnboardingInput]) == [inp]
    [bad] = conv.to_payloads([{"tenant_id": "Not A Slug", "name": "x", "owner_email": "o@acme.io"}])
    with pytest.raises(Exception) as info:
        conv.from_payloads([bad], [OnboardingInput])
    assert isinstance(info.value, msgspec.ValidationError) or isinstance(info.value.__cause__, msgspec.ValidationError)


async def test_two_processes_migrating_together_apply_each_migration_once(postgres_server_url: str) -> None:
    from tests.conftest import _with_database, unique

    name = unique("mig").replace("-", "_")
    admin = await asyncpg.connect(postgres_server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _with_database(postgres_server_url, name)
        a, b = await asyncpg.connect(url), await asyncpg.connect(url)
        try:
            applied = await asyncio.gather(apply_migrations(a), apply_migrations(b))
            versions = [m.version for m in load_migrations()]
            # One of them applied everything, the other found it done.
            assert sorted(applied, key=len) == [[], versions]
            rows = await a.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == versions
            assert await apply_migrations(a) == []
            tables = {r["tablename"] for r in await a.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
            assert {"tenants", "audit_log", "outbox", "schema_migrations"} <= tables
        finally:
            await a.close()
            await b.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
