"""One LLM step of a single agent with tools, as an activity on the agents task queue.

The durable loop (``workflows/agent_loop.py``) keeps the transcript; each turn it asks
``agents.llm_step`` what to do next: call tools (each then runs as its own ``mcp.call_tool``
activity) or answer. The step itself (``agents/tool_agent.py``: LangChain for an
OpenAI-compatible endpoint, or the deterministic offline provider) is imported only when the
activity runs, so workflow code can import these types without LangChain.

An answer that does not match the requested output schema is sent back to the model once with
the validation error; a second invalid answer fails non-retryably with ``InvalidLLMOutput``.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from activities.usage import RecordUsage, UsageLedger
from agents.types import INVALID_OUTPUT, INVALID_REQUEST, LlmCall, LlmStepRequest, LlmStepResult
from core.activity import Activities, ActivityPolicy
from core.names import AGENTS_QUEUE
from core.settings import LlmSettings

ROLES = frozenset({"user", "assistant", "tool"})

# One LLM call per attempt; a request or an answer no retry could fix is final.
LLM_STEP_TIMEOUT = timedelta(minutes=5)
LLM_STEP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(seconds=60),
                             maximum_attempts=5, non_retryable_error_types=[INVALID_OUTPUT, INVALID_REQUEST])
LLM_STEP = ActivityPolicy(start_to_close=LLM_STEP_TIMEOUT, retry=LLM_STEP_RETRY)


def check_request(req: LlmStepRequest) -> None:
    """Non-retryable rejection of a request no retry could fix."""
    problems = []
    if not req.task.strip():
        problems.append("task is empty")
    for i, m in enumerate(req.transcript):
        if m.role not in ROLES:
            problems.append(f"transcript[{i}].role {m.role!r} is not one of {sorted(ROLES)}")
        if m.role == "tool" and not m.tool_call_id:
            problems.append(f"transcript[{i}] is a tool message without tool_call_id")
    names = [(t.server, t.name) for t in req.tools]
    if len(set(names)) != len(names):
        problems.append("tools are listed twice")
    if req.output_schema is not None:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(req.output_schema)
        except SchemaError as exc:
            problems.append(f"output_schema is not a JSON schema: {exc.message}")
        if req.output_schema.get("type", "object") != "object":
            problems.append("output_schema must describe a JSON object")
    if problems:
        raise ApplicationError("; ".join(problems), type=INVALID_REQUEST, non_retryable=True)


class AgentStepActivities(Activities):
    """Holds the LLM settings and the usage ledger; the agents worker registers :meth:`llm_step`."""
    task_queue = AGENTS_QUEUE
    default_policy = LLM_STEP


    def __init__(self, llm: LlmSettings, ledger: UsageLedger | None = None) -> None:
        self._llm = llm
        self._ledger = ledger

    @activity.defn(name="agents.llm_step")
    async def llm_step(self, req: LlmStepRequest) -> LlmStepResult:
        check_request(req)
        from agents.tool_agent import run_step  # LangChain: agents worker only

        ledger = self._ledger
        if ledger is None:
            return await run_step(self._llm, req)
        ids: list[int] = []

        async def on_call(call: LlmCall) -> None:
            key, wf_id = ledger.call_key(req.agent, len(ids))
            ids.append(await ledger.record(RecordUsage(
                idempotency_key=key, tenant_id=req.tenant_id, agent=req.agent, model=call.model,
                provider=self._llm.provider, tokens_in=call.tokens_in, tokens_out=call.tokens_out, workflow_id=wf_id)))

        result = await run_step(self._llm, req, on_call)
        return msgspec.structs.replace(result, usage_per_call=True, usage_ids=ids)
