"""A single agent with tools as a durable loop, run as a child workflow by business workflows.

Each turn is one ``agents.llm_step`` activity (agents queue) followed by one ``mcp.call_tool``
activity per tool call (integrations queue), so a crash resumes at the last finished step and no
tool runs twice (idempotency key: workflow id, turn and call id). The transcript is workflow
state (``transcript`` query). A tool the agent was not given, or a tool that fails for good, is
reported to the model as a tool error and the agent may recover; an unknown or disabled MCP
server fails the loop. More than ``max_turns`` LLM steps fails with ``AgentTurnLimit``. After
``turns_per_run`` turns (or when Temporal suggests it) the run continues as new, carrying the
transcript, so long runs keep a short history.

Parents call :func:`run_agent`; each step records its LLM calls as they return, and the parent
reports them (``workflows.usage.account``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec  # not re-imported into the workflow sandbox on every run
    from activities.agent_steps import AgentStepActivities
    from activities.mcp import SERVER_DISABLED, SERVER_NOT_FOUND, CallToolRequest, ListToolsRequest, MCPActivities
    from agents.types import AgentTool, LlmCall, LlmStepRequest, Message, ToolCall
    from core.activity import raise_if_cancelled, run_activity
    from core.names import AGENTS_QUEUE, INTEGRATIONS_QUEUE, SLUG_PATTERN

TURN_LIMIT = "AgentTurnLimit"
# Errors that mean the agent's tools are not there at all: the loop fails instead of the model
# being told.
FATAL_TOOL_ERRORS = frozenset({SERVER_DISABLED, SERVER_NOT_FOUND})
TOOL_RESULT_MAX_CHARS = 8000  # per tool result in the transcript (workflow state)


class ToolRef(msgspec.Struct, frozen=True, kw_only=True):
    """A tool given to the agent: by name (``server`` None: the MCP registry routes it for the
    tenant, as for every workflow), or one server's tool."""

    server: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] | None = None
    tool: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:/-]{1,128}$")]


class ToolCallRecord(msgspec.Struct, frozen=True, kw_only=True):
    turn: int
    call_id: str
    server: str
    tool: str
    ok: bool
    error: str | None = None


class AgentLoopInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    agent: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]  # part of the child's id
    task: Annotated[str, msgspec.Meta(min_length=1, max_length=20000)]
    system_prompt: str = ""
    tools: list[ToolRef] = []
    output_schema: dict[str, Any] | None = None
    max_turns: Annotated[int, msgspec.Meta(ge=1, le=200)] = 8
    turns_per_run: Annotated[int, msgspec.Meta(ge=1, le=200)] = 20
    agents_queue: str = AGENTS_QUEUE
    integrations_queue: str = INTEGRATIONS_QUEUE
    # Carried across continue-as-new; callers leave them empty.
    transcript: list[Message] = []
    turns_done: int = 0
    calls: list[LlmCall] = []
    tool_calls: list[ToolCallRecord] = []
    tool_specs: list[AgentTool] | None = None  # listed once, in the first run
    offline: bool = False
    # Usage: rows the steps recorded as their calls returned, and calls no step recorded (steps
    # of older agent workers), which the parent records. False: a run continued from a version
    # that did not track this, whose ``calls`` are all unrecorded.
    usage_tracked: bool = False
    usage_ids: list[int] = []
    unrecorded_calls: list[LlmCall] = []


class AgentLoopResult(msgspec.Struct, frozen=True, kw_only=True):
    agent: str
    final: dict[str, Any]
    offline: bool
    provider: str
    turns: int
    calls: list[LlmCall]  # one per LLM request
    tool_calls: list[ToolCallRecord]
    # True: ``usage_ids`` are the rows of the calls, recorded by the steps as they returned, and
    # the parent records only ``unrecorded_calls``. False (older runs): it records ``calls``.
    usage_per_call: bool = False
    usage_ids: list[int] = []
    unrecorded_calls: list[LlmCall] = []


class AgentTranscript(msgspec.Struct, frozen=True, kw_only=True):
    turns: int
    messages: list[Message]


class _Allowed(msgspec.Struct, frozen=True, kw_only=True):
    named: set[tuple[str, str]]  # (server, tool) given with their server
    by_name: set[str]  # tools given by name

    def server(self, call: ToolCall) -> str | None | Literal[False]:
        """The server to name in the call (None: routed by the registry), or False: a tool the
        agent was not given."""
        if (call.server, call.tool) in self.named:
            return call.server
        if call.server and call.tool in self.by_name:
            return None
        return False


@workflow.defn(name="AgentLoop")
class AgentLoopWorkflow:
    def __init__(self) -> None:
        self._transcript: list[Message] = []
        self._turns = 0

    @workflow.run
    async def run(self, inp: AgentLoopInput) -> AgentLoopResult:
        self._transcript = list(inp.transcript) or [Message(role="user", content=inp.task)]
        self._turns = inp.turns_done
        calls, records, offline = list(inp.calls), list(inp.tool_calls), inp.offline
        usage_ids = list(inp.usage_ids)
        unrecorded = list(inp.unrecorded_calls) if inp.usage_tracked else list(inp.calls)
        specs = inp.tool_specs if inp.tool_specs is not None else await self._list_tools(inp)
        allowed = _Allowed(named={(t.server, t.tool) for t in inp.tools if t.server is not None},
                           by_name={t.tool for t in inp.tools if t.server is None})
        turns_this_run = 0
        while True:
            if self._turns >= inp.max_turns:
                raise ApplicationError(f"agent {inp.agent} did not answer within {inp.max_turns} turns",
                                       type=TURN_LIMIT, non_retryable=True)
            if turns_this_run and (turns_this_run >= inp.turns_per_run or workflow.info().is_continue_as_new_suggested()):
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(msgspec.structs.replace(
                    inp, transcript=self._transcript, turns_done=self._turns, calls=calls, tool_calls=records,
                    tool_specs=specs, offline=offline, usage_tracked=True, usage_ids=usage_ids,
                    unrecorded_calls=unrecorded))
            step = await run_activity(
                AgentStepActivities.llm_step,
                LlmStepRequest(tenant_id=inp.tenant_id, agent=inp.agent, task=inp.task, system_prompt=inp.system_prompt,
                               transcript=list(self._transcript), tools=specs, output_schema=inp.output_schema),
                task_queue=inp.agents_queue,
            )
            self._turns += 1
            turns_this_run += 1
            calls.extend(step.calls)
            if step.usage_per_call:
                usage_ids.extend(step.usage_ids)
            else:
                unrecorded.extend(step.calls)
            offline = offline or step.offline
            if step.final is not None:
                self._transcript.append(Message(role="assistant", content=json.dumps(step.final)))
                return AgentLoopResult(agent=inp.agent, final=step.final, offline=offline, provider=step.provider,
                                       turns=self._turns, calls=calls, tool_calls=records, usage_per_call=True,
                                       usage_ids=usage_ids, unrecorded_calls=unrecorded)
            self._transcript.append(Message(role="assistant", content=step.text, tool_calls=step.tool_calls))
            for call in step.tool_calls:
                error = await self._call_tool(inp, call, allowed)
                records.append(ToolCallRecord(turn=self._turns, call_id=call.id, server=call.server,
                                              tool=call.tool, ok=error is None, error=error))

    async def _list_tools(self, inp: AgentLoopInput) -> list[AgentTool]:
        """One listing per server named, and one for the tools given by name (each from the
        server it routes to for the tenant)."""
        listed: dict[tuple[str | None, str], AgentTool] = {}
        for server in dict.fromkeys(t.server for t in inp.tools):
            request = (ListToolsRequest(tenant_id=inp.tenant_id, server=server) if server is not None else
                       ListToolsRequest(tenant_id=inp.tenant_id, tools=[t.tool for t in inp.tools if t.server is None]))
            try:
                listing = await run_activity(
                    MCPActivities.list_tools, request,
                    task_queue=inp.integrations_queue,  # the input names the queues (tests run their own)
                )
            except ActivityError as err:  # permanent (MCP_TOOL_RETRY retries the rest): fail on its type
                raise_if_cancelled(err)
                raise _same_type(err) from err
            listed.update({(server, t.name): AgentTool(server=server or t.server or "", name=t.name,
                                                       description=t.description or "", input_schema=t.input_schema)
                           for t in listing.tools})
        # A tool the server does not offer is not shown to the model.
        return [listed[(t.server, t.tool)] for t in inp.tools if (t.server, t.tool) in listed]

    async def _call_tool(self, inp: AgentLoopInput, call: ToolCall, allowed: _Allowed) -> str | None:
        """Run one tool call and add its result to the transcript; returns the error, if any."""
        server = allowed.server(call)
        if server is False:
            error = f"tool {call.name!r} is not available to this agent; use only the tools you were given"
        else:
            try:
                result = await run_activity(
                    MCPActivities.call_tool,
                    CallToolRequest(tenant_id=inp.tenant_id, server=server, tool=call.tool,
                                    arguments=dict(call.arguments),
                                    idempotency_key=f"{workflow.info().workflow_id}:turn{self._turns}:{call.id}"),
                    task_queue=inp.integrations_queue,
                )
            except ActivityError as err:
                raise_if_cancelled(err)
                cause = err.cause
                if isinstance(cause, ApplicationError) and cause.type in FATAL_TOOL_ERRORS:
                    raise _same_type(err) from err
                error = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
            else:
                content = json.dumps(result.content, default=str)
                if len(content) > TOOL_RESULT_MAX_CHARS:
                    content = content[:TOOL_RESULT_MAX_CHARS] + " …(truncated)"
                self._transcript.append(Message(role="tool", content=content, tool_call_id=call.id))
                return None
        self._transcript.append(Message(role="tool", content=f"error: {error}", tool_call_id=call.id, is_error=True))
        return error

    @workflow.query(name="transcript")
    def transcript(self) -> AgentTranscript:
        return AgentTranscript(turns=self._turns, messages=list(self._transcript))


def _same_type(err: ActivityError) -> ApplicationError:
    """The activity's error as the loop's own, so the parent matches on one type at one depth."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return ApplicationError(cause.message, type=cause.type, non_retryable=True)
    return ApplicationError(str(cause or err), type="AgentToolsUnavailable", non_retryable=True)


async def run_agent(inp: AgentLoopInput, *, key: str | None = None) -> AgentLoopResult:
    """Run the agent loop as a child of the calling workflow: id ``{parent id}:agent:{agent}``,
    plus ``:{key}`` when the parent runs the same agent more than once (e.g. per revision)."""
    return await workflow.execute_child_workflow(
        AgentLoopWorkflow.run, inp,
        id=f"{workflow.info().workflow_id}:agent:{inp.agent}" + (f":{key}" if key else ""),
        task_queue=workflow.info().task_queue,
    )
