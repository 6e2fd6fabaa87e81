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

from typing import Any

import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.agents import LlmCall
from activities.usage import RecordUsage, UsageLedger
from core.settings import LlmSettings

INVALID_OUTPUT = "InvalidLLMOutput"
INVALID_REQUEST = "InvalidAgentStep"
ROLES = frozenset({"user", "assistant", "tool"})


# --- payloads --------------------------------------------------------------------------------
# No msgspec.Meta constraints on activity inputs: the activity checks them and fails
# non-retryably instead of failing to decode (which Temporal would retry).

class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str  # the function name the model used
    server: str  # "" when the name matches no tool the agent was given
    tool: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class Message(msgspec.Struct, frozen=True, kw_only=True):
    role: str  # user | assistant | tool
    content: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    tool_call_id: str | None = None
    is_error: bool = False  # a tool message reporting an error to the model


class AgentTool(msgspec.Struct, frozen=True, kw_only=True):
    server: str
    name: str
    description: str = ""
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)


class LlmStepRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    agent: str
    task: str
    system_prompt: str = ""
    transcript: list[Message] = msgspec.field(default_factory=list)
    tools: list[AgentTool] = msgspec.field(default_factory=list)
    output_schema: dict[str, Any] | None = None


class LlmStepResult(msgspec.Struct, frozen=True, kw_only=True):
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    final: dict[str, Any] | None = None  # the answer, valid against the output schema
    text: str = ""  # what the model said alongside
    calls: list[LlmCall] = msgspec.field(default_factory=list)  # one per request to the model
    provider: str = "offline"
    offline: bool = True
    # True: each call was recorded as it returned (``usage_ids``), the loop only passes them on.
    usage_per_call: bool = False
    usage_ids: list[int] = msgspec.field(default_factory=list)


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


class AgentStepActivities:
    """Holds the LLM settings and the usage ledger; the agents worker registers :meth:`llm_step`."""

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
