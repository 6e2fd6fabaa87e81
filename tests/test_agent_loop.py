"""The agent loop end to end: the real LLM-step and MCP activities on workers of their own, the
sandbox MCP server and a fixture website on loopback, and an OpenAI-compatible stub for the
``openai`` provider. Each test passes its own agents/integrations queues to the loop, so the
session's platform worker (which polls the real queues) never takes its activities."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import jsonschema
    import pytest
    from litestar import Litestar, post
    from litestar.params import JSONBody
    from pydantic import SecretStr, ValidationError
    from temporalio.api.enums.v1 import WorkflowExecutionStatus
    from temporalio.client import Client, WorkflowFailureError
    from temporalio.exceptions import ActivityError, ApplicationError
    from temporalio.worker import Replayer, Worker

    from activities.agent_steps import AgentStepActivities
    from activities.mcp import MCPActivities
    from agents.llm import OFFLINE_MODEL
    from tests.conftest import serve, unique
    from tests.support import record_history
    from workers.main import WORKFLOW_FAILURE_TYPES
    from core.settings import LlmSettings, Settings
    from workflows.agent_loop import AgentLoopInput, AgentLoopResult, AgentLoopWorkflow, ToolRef, run_agent

TITLE = "Acme Bakery | Fresh bread in Springfield"
FETCH = ToolRef(server="sandbox", tool="fetch_web_page")
EMAIL = ToolRef(server="sandbox", tool="send_email")
AUDIT_SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "minLength": 1},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "issues": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["summary", "score", "issues"],
    "additionalProperties": False,
}
STUB_MODEL = "stub-model-7"


@workflow.defn(name="TestAgentParent")
class AgentParentWorkflow:
    """A business workflow in miniature: it runs one agent as its child."""

    @workflow.run
    async def run(self, inp: AgentLoopInput) -> AgentLoopResult:
        return await run_agent(inp)


@asynccontextmanager
async def agent_workers(client: Client, db: asyncpg.Pool, task_queue: str, llm: LlmSettings) -> AsyncIterator[dict[str, str]]:
    """Workflows on ``task_queue``; the LLM step and the MCP activities on queues of their own."""
    queues = {"agents_queue": f"{task_queue}-agents", "integrations_queue": f"{task_queue}-integrations"}
    steps, mcp = AgentStepActivities(llm), MCPActivities(db)
    common: dict[str, Any] = {"workflow_failure_exception_types": WORKFLOW_FAILURE_TYPES}
    try:
        async with (
            Worker(client, task_queue=task_queue, workflows=[AgentLoopWorkflow, AgentParentWorkflow], **common),
            Worker(client, task_queue=queues["agents_queue"], activities=[steps.llm_step], **common),
            Worker(client, task_queue=queues["integrations_queue"], activities=[mcp.list_tools, mcp.call_tool], **common),
        ):
            yield queues
    finally:
        await mcp.aclose()


def agent_input(queues: dict[str, str], task: str, **kw: Any) -> AgentLoopInput:
    return AgentLoopInput(tenant_id=unique("acme"), agent="seo-auditor", task=task, **queues, **kw)


async def run_loop(client: Client, task_queue: str, inp: AgentLoopInput) -> tuple[str, AgentLoopResult]:
    wf_id = f"{inp.tenant_id}:test-agent:{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(AgentLoopWorkflow.run, inp, id=wf_id, task_queue=task_queue,
                                         execution_timeout=timedelta(seconds=90))
    return handle.first_execution_run_id or "", await handle.result()


async def transcript(client: Client, wf_id: str) -> list[Any]:
    return (await client.get_workflow_handle(wf_id).query(AgentLoopWorkflow.transcript)).messages


async def outbox_rows(db: asyncpg.Pool, tenant: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM outbox WHERE tenant_id = $1 ORDER BY id", tenant)


# --- an OpenAI-compatible stub on loopback -------------------------------------------------

class OpenAIStub:
    """Answers POST /v1/chat/completions with the next scripted assistant message; keeps what it
    was asked."""

    def __init__(self, *script: dict[str, Any]) -> None:
        self.script, self.requests = list(script), []

    def app(self) -> Litestar:
        @post("/v1/chat/completions", status_code=200)
        async def completions(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
            self.requests.append(data)
            message = self.script.pop(0)
            return {
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": 0,
                "model": data["model"],
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }

        return Litestar([completions])


def tool_call(call_id: str, name: str, **arguments: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def answer(value: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": value if isinstance(value, str) else json.dumps(value)}


def openai_settings(url: str) -> LlmSettings:
    return LlmSettings(provider="openai", base_url=f"{url}/v1", api_key=SecretStr("sk-test"), model=STUB_MODEL)


# --- offline provider ------------------------------------------------------------------------

async def test_offline_agent_fetches_the_page_and_answers_to_the_schema(
    client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str, fixture_site: str
) -> None:
    async with agent_workers(client, db, task_queue, LlmSettings()) as queues:
        inp = agent_input(queues, f"Audit the home page {fixture_site}/ for SEO.", tools=[FETCH],
                          output_schema=AUDIT_SCHEMA)
        parent_id = f"{inp.tenant_id}:test-parent:{uuid.uuid4().hex[:8]}"
        result = await client.execute_workflow(AgentParentWorkflow.run, inp, id=parent_id, task_queue=task_queue,
                                               execution_timeout=timedelta(seconds=90))
        messages = await transcript(client, f"{parent_id}:agent:seo-auditor")
        await record_history(client.get_workflow_handle(f"{parent_id}:agent:seo-auditor"), "agent-loop")

    jsonschema.validate(result.final, AUDIT_SCHEMA)
    assert result.offline and result.provider == "offline" and result.final["summary"].startswith("offline")
    assert result.turns == 2
    assert [(c.server, c.tool, c.ok) for c in result.tool_calls] == [("sandbox", "fetch_web_page", True)]
    assert [c.model for c in result.calls] == [OFFLINE_MODEL] * 2 and all(c.tokens_in > 0 for c in result.calls)
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    call = messages[1].tool_calls[0]
    assert call.arguments == {"url": f"{fixture_site}/"}
    page = json.loads(messages[2].content)
    assert messages[2].tool_call_id == call.id and page["title"] == TITLE
    assert json.loads(messages[3].content) == result.final


async def test_long_runs_continue_as_new_and_keep_the_transcript(
    client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str, fixture_site: str
) -> None:
    async with agent_workers(client, db, task_queue, LlmSettings()) as queues:
        inp = agent_input(queues, f"Audit {fixture_site}/ and mail the findings to maria@example.com.",
                          tools=[FETCH, EMAIL], turns_per_run=1)
        wf_id = f"{inp.tenant_id}:test-agent:{uuid.uuid4().hex[:8]}"
        handle = await client.start_workflow(AgentLoopWorkflow.run, inp, id=wf_id, task_queue=task_queue,
                                             execution_timeout=timedelta(seconds=90))
        result = await handle.result()
        messages = await transcript(client, wf_id)
        runs = [client.get_workflow_handle(wf_id, run_id=handle.first_execution_run_id), client.get_workflow_handle(wf_id)]
        first_run, last_run = [await run.describe() for run in runs]
        # Both runs replay without non-determinism.
        replayer = Replayer(workflows=[AgentLoopWorkflow], data_converter=client.data_converter,
                            workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES)
        for run in runs:
            await replayer.replay_workflow(await run.fetch_history())

    assert first_run.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW
    assert last_run.run_id != first_run.run_id and last_run.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED
    assert result.turns == 3 and len(result.calls) == 3 and "answer" in result.final
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert json.loads(messages[2].content)["title"] == TITLE  # carried over from the first run
    rows = await outbox_rows(db, inp.tenant_id)
    assert [(r["tool"], r["idempotency_key"]) for r in rows] == [("send_email", f"{wf_id}:turn2:offline-call-2")]
    assert rows[0]["arguments"]["to"][0] == "maria@example.com"


async def test_too_many_turns_fail_with_agent_turn_limit(
    client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str, fixture_site: str
) -> None:
    async with agent_workers(client, db, task_queue, LlmSettings()) as queues:
        inp = agent_input(queues, f"Audit {fixture_site}/.", tools=[FETCH], max_turns=1)
        with pytest.raises(WorkflowFailureError) as failed:
            await run_loop(client, task_queue, inp)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "AgentTurnLimit" and cause.non_retryable


# --- provider setting ----------------------------------------------------------------------

def test_a_provider_other_than_offline_or_openai_is_refused_with_the_way_to_reach_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Other providers are reached through an OpenAI-compatible endpoint; the refusal says how."""
    monkeypatch.setenv("BIZ_LLM_PROVIDER", "anthropic")
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert "llm.provider" in message and "BIZ_LLM_PROVIDER must be `offline` or `openai`" in message
    assert "LiteLLM proxy" in message and "BIZ_LLM_BASE_URL" in message
    monkeypatch.setenv("BIZ_LLM_PROVIDER", "openai")
    monkeypatch.setenv("BIZ_LLM_BASE_URL", "http://127.0.0.1:4000/v1")
    assert Settings().llm.provider == "openai"


# --- openai provider against the stub -----------------------------------------------------

async def test_openai_provider_calls_tools_and_answers(
    client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str, fixture_site: str
) -> None:
    final = {"summary": "Clear title, missing contact page.", "score": 72, "issues": ["/contact is 404"]}
    stub = OpenAIStub(tool_call("call_a1", "fetch_web_page", url=f"{fixture_site}/"), answer(final))
    async with serve(stub.app()) as url, agent_workers(client, db, task_queue, openai_settings(url)) as queues:
        inp = agent_input(queues, f"Audit {fixture_site}/.", system_prompt="You audit websites.", tools=[FETCH],
                          output_schema=AUDIT_SCHEMA)
        _, result = await run_loop(client, task_queue, inp)

    assert result.final == final and not result.offline and result.provider == "openai"
    assert [(c.model, c.tokens_in, c.tokens_out) for c in result.calls] == [(STUB_MODEL, 11, 7)] * 2
    assert [r["model"] for r in stub.requests] == [STUB_MODEL] * 2
    first, second = stub.requests
    function = first["tools"][0]["function"]
    assert function["name"] == "fetch_web_page" and "tenant_id" not in function["parameters"]["properties"]
    assert first["messages"][0]["role"] == "system" and "You audit websites." in first["messages"][0]["content"]
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_a1"
    assert json.loads(tool_message["content"])["title"] == TITLE


async def test_a_tool_the_agent_was_not_given_is_not_called(
    client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str, fixture_site: str
) -> None:
    stub = OpenAIStub(
        tool_call("call_x", "send_email", to=["maria@example.com"], subject="Hi", text="Buy now"),
        answer({"summary": "Could not send.", "score": 0, "issues": []}),
    )
    async with serve(stub.app()) as url, agent_workers(client, db, task_queue, openai_settings(url)) as queues:
        inp = agent_input(queues, f"Audit {fixture_site}/.", tools=[FETCH], output_schema=AUDIT_SCHEMA)
        _, result = await run_loop(client, task_queue, inp)

    assert await outbox_rows(db, inp.tenant_id) == []
    assert [(c.tool, c.ok) for c in result.tool_calls] == [("send_email", False)]
    told = stub.requests[1]["messages"][-1]
    assert told["role"] == "tool" and "not available to this agent" in told["content"]
    assert result.final["summary"] == "Could not send."


async def test_an_invalid_answer_is_retried_once_then_fails(
    client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str
) -> None:
    stub = OpenAIStub(answer({"summary": "ok", "score": 300, "issues": []}), answer("I think the site is fine."))
    async with serve(stub.app()) as url, agent_workers(client, db, task_queue, openai_settings(url)) as queues:
        inp = agent_input(queues, "Audit https://acme.example/.", output_schema=AUDIT_SCHEMA)
        with pytest.raises(WorkflowFailureError) as failed:
            await run_loop(client, task_queue, inp)

    assert isinstance(failed.value.cause, ActivityError)
    cause = failed.value.cause.cause
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidLLMOutput" and cause.non_retryable
    assert len(stub.requests) == 2  # one retry inside the step, none by Temporal
    assert "300 is greater than the maximum of 100" in stub.requests[1]["messages"][-1]["content"]


# --- tool failures ---------------------------------------------------------------------------

async def test_a_failing_tool_is_reported_to_the_agent_which_goes_on(
    client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str
) -> None:
    async with agent_workers(client, db, task_queue, LlmSettings()) as queues:
        # No address in the task: the offline agent's "to" is not an email and the tool refuses it.
        inp = agent_input(queues, "Tell the owner the audit is done.", tools=[EMAIL])
        _, result = await run_loop(client, task_queue, inp)

    assert result.turns == 2 and "answer" in result.final
    [record] = result.tool_calls
    assert (record.tool, record.ok) == ("send_email", False) and "validation error" in (record.error or "")
    assert await outbox_rows(db, inp.tenant_id) == []


async def test_an_unknown_mcp_server_fails_the_loop(client: Client, db: asyncpg.Pool, task_queue: str) -> None:
    async with agent_workers(client, db, task_queue, LlmSettings()) as queues:
        inp = agent_input(queues, "Do it.", tools=[ToolRef(server="no-such-server", tool="anything")])
        with pytest.raises(WorkflowFailureError) as failed:
            await run_loop(client, task_queue, inp)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "MCPServerNotFound" and cause.non_retryable
