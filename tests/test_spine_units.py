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
    monkeypatch.setenv("BIZ_WORKER_MAX_CACHED_WORKFLOWS", "250")
    s = Settings(_env_file=None)
    assert s.temporal.address == "temporal.internal:7233"
    assert s.worker.agents_max_concurrent == 7
    assert s.worker.max_cached_workflows == 250
    assert s.database_url() == "postgresql://app:pw-secret@db/biz"
    shown = repr(s) + str(s.model_dump())
    assert "tc-secret-key" not in shown and "pw-secret" not in shown


def test_spans_record_an_expected_error_without_its_traceback() -> None:
    """A start of a workflow that exists (a redelivered webhook) is on its span by type and
    message; any other error keeps its stack trace."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from core.telemetry import ExpectedErrorsTracer

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = ExpectedErrorsTracer(provider.get_tracer("test"), (WorkflowAlreadyStartedError,))
    for name, error in (("exists", WorkflowAlreadyStartedError("acme:order:1", "OrderProcessing")),
                        ("broken", RuntimeError("boom"))):
        with pytest.raises(type(error)), tracer.start_as_current_span(name):
            raise error
    spans = {s.name: s for s in exported.get_finished_spans()}
    [exists] = spans["exists"].events
    assert exists.name == "exception" and exists.attributes["exception.type"] == "WorkflowAlreadyStartedError"
    assert "exception.stacktrace" not in exists.attributes
    [broken] = spans["broken"].events
    assert broken.attributes["exception.type"] == "RuntimeError" and "boom" in broken.attributes["exception.stacktrace"]
    assert spans["broken"].status.status_code == StatusCode.ERROR


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


def test_a_decider_asking_again_after_their_decision_closed_the_approval_hears_already_decided() -> None:
    """A lost answer (a 503, a cut connection) and the same decision again: 409 already_decided
    for its decider, approval_closed for anyone else (closed, or another request)."""
    from datetime import UTC, datetime

    from hitl.protocol import (
        ALREADY_DECIDED,
        STALE_REQUEST,
        ApprovalRequest,
        Decider,
        DecisionInput,
        DecisionRecord,
        DecisionRefused,
        OpenApproval,
        check_decision,
    )

    now = datetime.now(UTC)
    owner = Decider(sub="owner@shop", roles=["client"], tenant_id="shop")
    other = Decider(sub="clerk@shop", roles=["client"], tenant_id="shop")
    request = ApprovalRequest(request_id="review", kind="order.review", title="Review order o1")
    approval = OpenApproval(request=request, tenant_id="shop", opened_at=now, due_at=None, audience="client",
                            roles=["client"])
    assert check_decision(approval, DecisionInput(request_id="review", decision="approve", by=owner), "shop") == "client"
    closed = msgspec.structs.replace(approval, status="closed", outcome="approved", closed_at=now, decisions=[
        DecisionRecord(request_id="review", decision="approve", decided_by=owner.sub, role="client", tenant_id="shop",
                       acting_as=None, decided_at=now)])

    def refusal(d: DecisionInput) -> str:
        with pytest.raises(DecisionRefused) as refused:
            check_decision(closed, d, "shop")
        return refused.value.type

    assert refusal(DecisionInput(request_id="review", decision="approve", by=owner)) == ALREADY_DECIDED
    assert refusal(DecisionInput(request_id="review", decision="approve", by=other)) == STALE_REQUEST
    assert refusal(DecisionInput(request_id="earlier", decision="approve", by=owner)) == STALE_REQUEST
