"""The Digital Presence Audit beyond the offline happy path: the ``openai`` provider against an
OpenAI-compatible stub on loopback, and the agents worker killed (SIGKILL) in the middle of the
crew.

Each test runs in a Temporal namespace of its own on the session's dev server, so its workers
poll the real task queue names (``biz-workflows``, ``biz-agents``, ``biz-integrations``, the only
ones ``bizosaas worker --queue`` accepts) without competing with the session's platform worker,
which polls the same names in the default namespace with the offline provider. Everything else
is the session's: Postgres, the sandbox MCP server (pages are fetched through its
``fetch_web_page`` tool from the fixture site), the Lago sandbox.
"""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar import Litestar, Response, post
from litestar.params import JSONBody
from pydantic import SecretStr
from temporalio.api.enums.v1 import EventType, PendingActivityState, TimeoutType
from temporalio.client import Client, WorkflowHandle

from agents.types import CrewReport
from activities.lago import USAGE_METRIC_CODE
from sandboxes.lago import LagoState
from activities.usage import estimate_cost
from tests.support import assert_eventually, connect_when_ready, in_namespace, platform_workers, serve, unique, worker_process
from core.settings import LlmSettings, Settings
from core.names import AGENTS_QUEUE, INTEGRATIONS_QUEUE, TASK_QUEUES, WORKFLOWS_QUEUE
from workflows.presence_audit import PresenceAuditInput, PresenceAuditResult, PresenceAuditWorkflow

pytestmark = pytest.mark.long(seconds=50)

STUB_MODEL = "stub-model-7"
TITLE = "Acme Bakery | Fresh bread in Springfield"  # the fixture site's home page
CREW_ACTIVITY = "agents.presence_crew"
# CrewAI states the output schema of a task in its prompt, after this sentence.
SCHEMA_MARK = "Format your final answer according to the following OpenAPI schema: "


# --- an OpenAI-compatible stub that answers to the schema in the prompt --------------------

def schema_instance(schema: dict[str, Any], defs: dict[str, Any], tag: str) -> Any:
    """A value valid against ``schema`` (the subset pydantic emits), its strings tagged."""
    if "$ref" in schema:
        return schema_instance(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, tag)
    if "enum" in schema:
        return schema["enum"][-1]
    kind = schema.get("type")
    if kind == "object":
        return {name: schema_instance(sub, defs, tag) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [schema_instance(schema["items"], defs, tag)]
    if kind == "integer":
        return int(schema.get("maximum", 100)) - 13
    if kind == "number":
        return float(schema.get("maximum", 100)) - 13
    if kind == "boolean":
        return True
    return f"{tag}: {schema.get('title', 'text')}"


class CrewStub:
    """POST /v1/chat/completions of a server without JSON-schema mode: a request that asks for
    ``response_format`` is refused (400, as such servers do); it reads the output schema CrewAI
    put in the prompt and answers a JSON instance of it. Keeps every request and answer. The
    ``hold_at``-th request (1-based) waits for ``release()``."""

    def __init__(self, hold_at: int | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[str] = []
        self.refused = 0  # requests that asked for JSON-schema mode
        self._hold_at = hold_at
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    def app(self) -> Litestar:
        @post("/v1/chat/completions", status_code=200)
        async def completions(data: JSONBody[dict[str, Any]]) -> Any:
            if "response_format" in data:
                self.refused += 1
                return Response({"error": {"message": "response_format is not supported", "type": "invalid_request_error"}},
                                status_code=400)
            self.requests.append(data)
            if len(self.requests) == self._hold_at:
                await self._released.wait()
            prompt = data["messages"][-1]["content"]
            schema, _ = json.JSONDecoder().raw_decode(prompt[prompt.index(SCHEMA_MARK) + len(SCHEMA_MARK):])
            role = data["messages"][0]["content"].split(".", 1)[0].removeprefix("You are ")
            content = json.dumps(schema_instance(schema, schema.get("$defs", {}), f"stub {role}"))
            self.answers.append(content)
            return {
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": 0,
                "model": data["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }

        return Litestar([completions])


@asynccontextmanager
async def serving(stub: CrewStub) -> AsyncIterator[str]:
    """The stub on a loopback port; yields its base URL."""
    async with serve(stub.app()) as url:
        try:
            yield url
        finally:
            stub.release()  # a held call must not hold up the server's shutdown


def openai_llm(url: str) -> LlmSettings:
    return LlmSettings(provider="openai", base_url=f"{url}/v1", api_key=SecretStr("sk-test"), model=STUB_MODEL)


async def start_audit(client: Client, tenant: str, site: str) -> WorkflowHandle[Any, PresenceAuditResult]:
    inp = PresenceAuditInput(tenant_id=tenant, website_url=f"{site}/", paths=["/about"],
                             social_handles={"instagram": "@acmebakery"})
    return await client.start_workflow(
        PresenceAuditWorkflow.run, inp, id=f"{tenant}:presence-audit:{uuid.uuid4().hex[:8]}",
        task_queue=WORKFLOWS_QUEUE, execution_timeout=timedelta(minutes=3))


async def usage_rows(db: asyncpg.Pool, wf_id: str) -> list[asyncpg.Record]:
    return await db.fetch(
        """SELECT idempotency_key, model, provider, offline, tokens_in, tokens_out, cost_usd, reported_to_lago_at
           FROM llm_usage WHERE workflow_id = $1 ORDER BY id""", wf_id)


def lago_events(lago: LagoState, tenant: str, wf_id: str) -> list[dict[str, Any]]:
    return [e for e in lago.events_of(tenant, USAGE_METRIC_CODE) if e["properties"]["workflow_id"] == wf_id]


# --- the openai provider -------------------------------------------------------------------

async def test_openai_provider_runs_the_crew_against_a_compatible_server(
    settings: Settings, namespace: str, db: asyncpg.Pool, lago_state: LagoState, mcp_sandbox: str, fixture_site: str
) -> None:
    stub = CrewStub()
    async with serving(stub) as url:
        ours = in_namespace(settings, namespace, openai_llm(url))
        client = await connect_when_ready(ours)
        async with platform_workers(client, ours, db, TASK_QUEUES):
            tenant = unique("acme")
            handle = await start_audit(client, tenant, fixture_site)
            result = await asyncio.wait_for(handle.result(), timeout=90)

    # The stub saw the configured model, once per agent, with the pages fetched through MCP.
    assert [r["model"] for r in stub.requests] == [STUB_MODEL] * 4
    roles = [r["messages"][0]["content"].split(".", 1)[0] for r in stub.requests]
    assert roles == ["You are Technical Auditor", "You are SEO Auditor", "You are Social Media Auditor",
                     "You are Report Writer"]
    assert TITLE in stub.requests[0]["messages"][-1]["content"]
    assert "@acmebakery" in stub.requests[2]["messages"][-1]["content"]
    # The writer's answer is the typed report, not marked offline.
    assert not result.offline and result.report == msgspec.json.decode(stub.answers[-1], type=CrewReport)
    assert result.report.summary == "stub Report Writer: Summary" and result.report.overall_score == 87
    assert result.pages == [f"{fixture_site}/", f"{fixture_site}/about"]
    assert (result.llm_calls, result.tokens_in, result.tokens_out) == (4, 44, 28)

    [report] = await db.fetch("SELECT id, offline, score, body FROM reports WHERE workflow_id = $1", handle.id)
    assert (report["id"], report["offline"], report["score"]) == (result.report_id, False, 87)
    assert report["body"] == msgspec.to_builtins(result.report)
    usage = await usage_rows(db, handle.id)
    assert [(u["model"], u["provider"], u["offline"], u["tokens_in"], u["tokens_out"]) for u in usage] == [
        (STUB_MODEL, "openai", False, 11, 7)] * 4
    assert all(u["cost_usd"] == estimate_cost(STUB_MODEL, 11, 7) > 0 and u["reported_to_lago_at"] for u in usage)
    events = lago_events(lago_state, tenant, handle.id)
    assert sorted(e["transaction_id"] for e in events) == [u["idempotency_key"] for u in usage]
    assert {(e["properties"]["model"], e["properties"]["offline"]) for e in events} == {(STUB_MODEL, False)}


# --- SIGKILL of the agents worker during the crew ----------------------------------------

async def test_agents_worker_killed_during_the_crew_completes_once(
    settings: Settings, namespace: str, db: asyncpg.Pool, lago_state: LagoState, mcp_sandbox: str, fixture_site: str
) -> None:
    # The crew's first LLM call is answered (and paid for); its second hangs until the worker is dead.
    stub = CrewStub(hold_at=2)
    with tempfile.TemporaryDirectory(prefix="bizosaas-agents-worker-") as tmp:
        state, log = Path(tmp), Path(tmp) / "worker.log"
        async with serving(stub) as url:
            ours = in_namespace(settings, namespace, openai_llm(url))
            client = await connect_when_ready(ours)
            # Workflows and integrations in this process; the agents queue in a process of its own.
            async with platform_workers(client, ours, db, [WORKFLOWS_QUEUE, INTEGRATIONS_QUEUE]):
                tenant = unique("acme")
                async with worker_process(ours, [AGENTS_QUEUE], state, log) as first:
                    handle = await start_audit(client, tenant, fixture_site)

                    async def crew_is_thinking() -> None:
                        assert first.poll() is None, log.read_text(errors="replace")[-3000:]
                        assert len(stub.requests) == 2
                        [pending] = (await handle.describe()).raw_description.pending_activities
                        assert pending.activity_type.name == CREW_ACTIVITY and pending.attempt == 1
                        assert pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED

                    await assert_eventually(crew_is_thinking, timeout=120)
                    first.kill()  # SIGKILL: no drain, no activity failure reported
                    assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
                async with worker_process(ours, [AGENTS_QUEUE], state, log):
                    # Temporal notices the missing heartbeats (CREW_HEARTBEAT) and retries the crew.
                    result = await asyncio.wait_for(handle.result(), timeout=150)
                history = [e async for e in handle.fetch_history_events()]

    # The crew ran again on the new worker: attempt 2, after a heartbeat timeout of attempt 1.
    crew = {e.event_id for e in history if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name == CREW_ACTIVITY}
    [started] = [e.activity_task_started_event_attributes for e in history
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                 and e.activity_task_started_event_attributes.scheduled_event_id in crew]
    assert started.attempt == 2
    assert started.last_failure.timeout_failure_info.timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT
    assert len(stub.requests) == 2 + 4 and result.llm_calls == 4 and not result.offline

    # One report. Usage: every call that returned is a row, once: the dead attempt's first call
    # (paid for before the worker died) and the retried crew's four; each reported to Lago once
    # and counted against the tenant's budget.
    reports = await db.fetch("SELECT id, offline FROM reports WHERE workflow_id = $1", handle.id)
    assert [(r["id"], r["offline"]) for r in reports] == [(result.report_id, False)]
    usage = await usage_rows(db, handle.id)
    assert [u["idempotency_key"].split(":")[-2:] for u in usage] == [["1", "0"], *[["2", str(i)] for i in range(4)]]
    assert all(u["idempotency_key"].startswith(f"{handle.id}:presence-crew:") for u in usage)
    assert sum(u["tokens_in"] for u in usage) == 5 * 11 and result.tokens_in == 44
    assert all(u["reported_to_lago_at"] is not None for u in usage)
    events = lago_events(lago_state, tenant, handle.id)
    assert sorted(e["transaction_id"] for e in events) == sorted(u["idempotency_key"] for u in usage)
    spent = await db.fetchval("SELECT sum(cost_usd) FROM llm_usage WHERE tenant_id = $1", tenant)
    assert spent == sum(u["cost_usd"] for u in usage) > 0
    # The audit's only tool is fetch_web_page, which records nothing: no outbox rows at all.
    assert await db.fetch("SELECT id FROM outbox WHERE tenant_id = $1", tenant) == []
