"""One step of a single agent with tools: given the transcript, call tools or answer.

Providers (``core.settings.LlmSettings``):
- ``openai``: LangChain's ``ChatOpenAI`` (langchain-openai; messages from langchain-core) with the
  agent's MCP tools bound as functions, against any OpenAI-compatible endpoint: OpenAI, Ollama,
  vLLM, a LiteLLM proxy in front of any other provider. The final answer is asked for as JSON in
  the system prompt and validated against the output schema here; an invalid answer is sent back
  once with the error.
- ``offline`` (default): deterministic, no network. Calls each tool it was given once, in order,
  with arguments built from the tool's input schema and the task text (a URL in the task fills a
  URL argument), then answers with an instance of the output schema whose texts say "offline".

The tool arguments that ``mcp.call_tool`` fills from the request itself (tenant, idempotency key,
workflow id) are hidden from the model. Only the agents worker imports this module.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.exceptions import ApplicationError

from agents.types import INVALID_OUTPUT, AgentTool, LlmCall, LlmStepRequest, LlmStepResult, Message, ToolCall
from agents.llm import OFFLINE_MODEL, _approx_tokens, _digest
from core.settings import LlmSettings

# Filled by mcp.call_tool from the request; the model never chooses them.
IDENTITY_ARGS = frozenset({"tenant_id", "idempotency_key", "workflow_id"})
LLM_REQUEST_TIMEOUT = 120.0  # seconds per request; the activity's timeout bounds the step


async def run_step(settings: LlmSettings, req: LlmStepRequest,
                   on_call: Callable[[LlmCall], Awaitable[None]] | None = None) -> LlmStepResult:
    """One model turn. ``on_call`` runs as each request to the model returns, before anything
    can fail (the activity records the call there)."""
    if settings.provider == "openai":
        return await _openai_step(settings, req, on_call)
    result = _offline_step(req)
    if on_call is not None:
        for call in result.calls:
            await on_call(call)
    return result


# --- shared --------------------------------------------------------------------------------

def function_names(tools: list[AgentTool]) -> dict[str, AgentTool]:
    """The function name the model sees for each tool: the tool's name, prefixed with its
    server where two servers offer the same name."""
    counts = Counter(t.name for t in tools)
    names = {}
    for t in tools:
        raw = t.name if counts[t.name] == 1 else f"{t.server}__{t.name}"
        names[re.sub(r"[^A-Za-z0-9_-]", "_", raw)[:64]] = t
    return names


def model_schema(input_schema: dict[str, Any]) -> dict[str, Any]:
    """The tool's input schema without the arguments the activity fills."""
    props = {k: v for k, v in (input_schema.get("properties") or {}).items() if k not in IDENTITY_ARGS}
    required = [k for k in input_schema.get("required") or [] if k not in IDENTITY_ARGS]
    return {**input_schema, "type": "object", "properties": props, "required": required}


def schema_error(value: Any, schema: dict[str, Any] | None) -> str | None:
    """Why ``value`` does not match ``schema`` (None: it does)."""
    if schema is None:
        return None
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    return "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:5])


def _invalid(req: LlmStepRequest, why: str) -> ApplicationError:
    return ApplicationError(f"agent {req.agent}: invalid answer: {why}"[:2000], type=INVALID_OUTPUT, non_retryable=True)


def _transcript_text(req: LlmStepRequest) -> str:
    return "\n".join([req.system_prompt, req.task, *(m.content for m in req.transcript)])


# --- offline -------------------------------------------------------------------------------

class _Instance:
    """A deterministic value for a JSON schema: the same seed always gives the same value.
    Strings with a pattern or a URL/email format take the first matching word of ``hints``."""

    def __init__(self, root: dict[str, Any], seed: str, hints: str) -> None:
        self._root, self._seed = root, seed
        self._words = [w.strip(".,;:!?'\"()[]{}<>") for w in hints.split()]

    def value(self, schema: dict[str, Any], path: str) -> Any:  # noqa: C901, PLR0911 - one branch per keyword
        if "$ref" in schema:
            target: Any = self._root
            for part in schema["$ref"].lstrip("#/").split("/"):
                target = target[part] if part else target
            return self.value(target, path)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][_digest(self._seed, path) % len(schema["enum"])]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                variants = [v for v in schema[key] if v.get("type") != "null"] or schema[key]
                return self.value(variants[0], path)
        if schema.get("allOf"):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = {**merged, **part}
            return self.value(merged, path)
        kind = schema.get("type") or ("object" if "properties" in schema else "array" if "items" in schema else "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object":
            return {k: self.value(v, f"{path}.{k}") for k, v in (schema.get("properties") or {}).items()}
        if kind == "array":
            count = max(schema.get("minItems", 0), min(2, schema.get("maxItems", 2)))
            items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
            return [self.value(items, f"{path}[{i}]") for i in range(count)]
        if kind in ("integer", "number"):
            low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
            high = schema.get("maximum", schema.get("exclusiveMaximum", 101) - 1)
            value = low + _digest(self._seed, path) % max(1, int(high - low) + 1)
            return int(value) if kind == "integer" else float(value)
        if kind == "boolean":
            return _digest(self._seed, path) % 2 == 0
        if kind == "null":
            return None
        return self._string(schema, path)

    def _string(self, schema: dict[str, Any], path: str) -> str:
        name, fmt, pattern = path.rsplit(".", 1)[-1], schema.get("format", ""), schema.get("pattern")
        wanted = None
        if pattern:
            wanted = re.compile(pattern)
        elif fmt in ("uri", "url") or "url" in name.lower():
            wanted = re.compile(r"^https?://\S+$")
        elif fmt == "email":
            wanted = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
        found = next((w for w in self._words if wanted.search(w)), None) if wanted else None
        if found:
            return found
        if fmt == "date-time":
            return "2000-01-01T00:00:00Z"
        if fmt == "date":
            return "2000-01-01"
        label = name.replace("_", " ").strip("[]0123456789 ") or "text"
        text = f"offline {label} #{_digest(self._seed, path) % 1000:03d}"
        return text[: schema.get("maxLength", len(text))].ljust(schema.get("minLength", 0), ".")


def offline_arguments(tool: AgentTool, task: str) -> dict[str, Any]:
    """Arguments for the tool's required inputs, from its schema and the task text."""
    schema = model_schema(tool.input_schema)
    builder = _Instance(tool.input_schema, f"{task}\x1f{tool.server}/{tool.name}", task)
    return {k: builder.value(schema["properties"].get(k, {}), k) for k in schema["required"]}


def _offline_step(req: LlmStepRequest) -> LlmStepResult:
    prompt = _transcript_text(req)
    asked = [c for m in req.transcript if m.role == "assistant" for c in m.tool_calls]
    done = {(c.server, c.tool) for c in asked}
    names = {(t.server, t.name): n for n, t in function_names(req.tools).items()}
    pending = next((t for t in req.tools if (t.server, t.name) not in done), None)
    if pending is not None:
        call = ToolCall(id=f"offline-call-{len(asked) + 1}", name=names[(pending.server, pending.name)],
                        server=pending.server, tool=pending.name, arguments=offline_arguments(pending, req.task))
        text = f"offline: calling {pending.server}/{pending.name}"
        usage = LlmCall(model=OFFLINE_MODEL, tokens_in=_approx_tokens(prompt),
                        tokens_out=_approx_tokens(text + json.dumps(call.arguments)))
        return LlmStepResult(tool_calls=[call], text=text, calls=[usage], provider="offline", offline=True)
    tools_used = ", ".join(f"{c.server}/{c.tool}" for c in asked) or "no tools"
    if req.output_schema is None:
        final: dict[str, Any] = {"answer": f"offline answer #{_digest(prompt) % 1000:03d} (used {tools_used})"}
    else:
        final = _Instance(req.output_schema, prompt, req.task).value(req.output_schema, "")
        error = schema_error(final, req.output_schema)
        if error:  # deterministic: asking again gives the same answer
            raise _invalid(req, f"the offline provider cannot satisfy the schema: {error}")
    text = json.dumps(final)
    usage = LlmCall(model=OFFLINE_MODEL, tokens_in=_approx_tokens(prompt), tokens_out=_approx_tokens(text))
    return LlmStepResult(final=final, text=text, calls=[usage], provider="offline", offline=True)


# --- openai (LangChain) ----------------------------------------------------------------------

def _system_prompt(req: LlmStepRequest) -> str:
    parts = [req.system_prompt or f"You are the {req.agent} agent. Use the tools you are given when they help."]
    if req.output_schema is not None:
        parts.append("When you have the final answer, reply with only a JSON object (no prose, no code fence) "
                     f"valid against this JSON schema:\n{json.dumps(req.output_schema)}")
    return "\n\n".join(parts)


def _lc_messages(req: LlmStepRequest) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    out: list[Any] = [SystemMessage(_system_prompt(req))]
    for m in req.transcript or [Message(role="user", content=req.task)]:
        if m.role == "user":
            out.append(HumanMessage(m.content))
        elif m.role == "assistant":
            calls = [{"id": c.id, "name": c.name, "args": dict(c.arguments), "type": "tool_call"} for c in m.tool_calls]
            out.append(AIMessage(content=m.content, tool_calls=calls))
        else:
            out.append(ToolMessage(m.content, tool_call_id=m.tool_call_id or "", status="error" if m.is_error else "success"))
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content or [])


def _parse_final(text: str, schema: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    if schema is None:
        return {"answer": text}, None
    start, end = text.find("{"), text.rfind("}")
    try:
        value = json.loads(text[start:end + 1]) if start >= 0 else None
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(value, dict):
        return None, "the answer is not a JSON object"
    error = schema_error(value, schema)
    return (None, error) if error else (value, None)


async def _openai_step(settings: LlmSettings, req: LlmStepRequest,
                       on_call: Callable[[LlmCall], Awaitable[None]] | None = None) -> LlmStepResult:
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_openai import ChatOpenAI

    functions = function_names(req.tools)
    llm = ChatOpenAI(model=settings.model, base_url=settings.base_url, max_retries=1, timeout=LLM_REQUEST_TIMEOUT,
                     api_key=settings.api_key.get_secret_value() if settings.api_key else "not-needed")
    specs = [{"type": "function", "function": {"name": name, "description": (t.description or name)[:1024],
                                               "parameters": model_schema(t.input_schema)}}
             for name, t in functions.items()]
    model = llm.bind_tools(specs) if specs else llm
    messages, calls, error = _lc_messages(req), [], ""
    for _attempt in range(2):  # one retry with the validation error
        reply = await model.ainvoke(messages)
        used = reply.usage_metadata or {}
        calls.append(LlmCall(
            model=reply.response_metadata.get("model_name") or settings.model,
            tokens_in=used.get("input_tokens") or _approx_tokens(str([m.content for m in messages])),
            tokens_out=used.get("output_tokens") or _approx_tokens(_text(reply.content) + str(reply.tool_calls)),
        ))
        if on_call is not None:
            await on_call(calls[-1])
        text = _text(reply.content)
        if reply.invalid_tool_calls:
            error = f"tool call arguments are not valid JSON: {reply.invalid_tool_calls[0].get('error')}"
        elif reply.tool_calls:
            tool_calls = [
                ToolCall(id=tc.get("id") or f"call_{len(req.transcript)}_{i}", name=tc["name"],
                         server=functions[tc["name"]].server if tc["name"] in functions else "",
                         tool=functions[tc["name"]].name if tc["name"] in functions else tc["name"],
                         arguments=dict(tc.get("args") or {}))
                for i, tc in enumerate(reply.tool_calls)
            ]
            return LlmStepResult(tool_calls=tool_calls, text=text, calls=calls, provider="openai", offline=False)
        else:
            final, error = _parse_final(text, req.output_schema)
            if final is not None:
                return LlmStepResult(final=final, text=text, calls=calls, provider="openai", offline=False)
        messages = [*messages, AIMessage(content=text), HumanMessage(
            f"Your answer is not valid: {error}. Reply again: call a tool, or answer with only a JSON object "
            "valid against the schema.")]
    raise _invalid(req, error)
