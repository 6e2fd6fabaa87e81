"""The LLM factory: one place that turns settings into a CrewAI LLM or a LangChain chat model.

Providers:
- ``offline`` (default): deterministic, no network. Answers every structured task with an
  instance of the task's output schema built from the prompt (see :func:`offline_instance`);
  everything it produced is marked ``offline`` by the caller.
- ``openai``: any OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, a LiteLLM proxy in front of
  Anthropic, Gemini, Bedrock...) at ``BIZ_LLM_BASE_URL`` with ``BIZ_LLM_MODEL``: CrewAI's
  ``openai/<model>`` here, LangChain's ``ChatOpenAI`` in the tool agent's step
  (:mod:`agents.tool_agent`), so crews and agents reach the same server. Structured output is
  asked for as JSON in the prompt and validated here, so servers without JSON-schema mode work
  too.

Only the agents worker imports this module (it imports CrewAI).
"""

from __future__ import annotations

import hashlib
import json
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from core.settings import LlmSettings

OFFLINE_MODEL = "bizosaas-offline-1"


@dataclass
class UsageMeter:
    """Token counts of every call made through one factory product (thread-safe).

    ``on_call(n, model, tokens_in, tokens_out)``, when given, runs as each call returns (the
    agent activities record the call there, so a crew that dies later has still paid for it).
    """

    calls: list[tuple[str, int, int]] = field(default_factory=list)  # (model, tokens_in, tokens_out)
    on_call: Callable[[int, str, int, int], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, model: str, tokens_in: int, tokens_out: int) -> None:
        with self._lock:
            n = len(self.calls)
            self.calls.append((model, tokens_in, tokens_out))
            if self.on_call is not None:
                self.on_call(n, model, tokens_in, tokens_out)

    @property
    def tokens_in(self) -> int:
        return sum(c[1] for c in self.calls)

    @property
    def tokens_out(self) -> int:
        return sum(c[2] for c in self.calls)


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


# --- offline ---------------------------------------------------------------------------

def _digest(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big")


def offline_instance(model: type[BaseModel], prompt: str, path: str = "") -> BaseModel:
    """A deterministic instance of ``model``: the same prompt always gives the same answer."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        values[name] = _offline_value(info.annotation, prompt, f"{path}.{name}", info)
    return model.model_validate(values)


def _offline_value(tp: Any, prompt: str, path: str, info: Any = None) -> Any:  # noqa: C901 - one branch per type
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return _offline_value(get_args(tp)[0], prompt, path, info)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _offline_value(args[0], prompt, path, info)
    if origin is Literal:
        options = get_args(tp)
        return options[_digest(prompt, path) % len(options)]
    if origin in (list, tuple, set, frozenset) or tp in (list,):
        item = get_args(tp)[0] if get_args(tp) else str
        count = 2 + _digest(prompt, path, "n") % 2
        return [_offline_value(item, prompt, f"{path}[{i}]") for i in range(count)]
    if origin is dict:
        return {}
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return offline_instance(tp, prompt, path).model_dump()
    if tp is bool:
        return _digest(prompt, path) % 2 == 0
    if tp in (int, float):
        low, high = _bounds(info)
        value = low + _digest(prompt, path) % max(1, int(high - low) + 1)
        return tp(value)
    label = path.rsplit(".", 1)[-1].replace("_", " ").strip("[]0123456789 ")
    return f"offline {label} #{_digest(prompt, path) % 1000:03d}"


def _bounds(info: Any) -> tuple[float, float]:
    low, high = 0.0, 100.0
    for meta in getattr(info, "metadata", []) or []:
        low = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else low
        high = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else high
    return low, high


def _prompt_text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    return "\n".join(str(m.get("content", "")) for m in messages)


def crewai_llm(settings: LlmSettings, meter: UsageMeter) -> Any:
    """A CrewAI LLM for the configured provider, counting tokens into ``meter``."""
    from crewai import LLM, BaseLLM

    if settings.provider == "openai":
        llm = LLM(
            model=f"openai/{settings.model}",
            base_url=settings.base_url,
            api_key=settings.api_key.get_secret_value() if settings.api_key else "not-needed",
            temperature=0.2,
        )
        return _MeteredLLM.wrap(llm, meter, settings.model)

    class OfflineLLM(BaseLLM):
        def call(self, messages, tools=None, callbacks=None, available_functions=None,  # noqa: ANN001, D102
                 from_task=None, from_agent=None, response_model=None):  # noqa: ANN001
            prompt = _prompt_text(messages)
            schema = response_model or getattr(from_task, "output_pydantic", None)
            if schema is not None:
                answer = offline_instance(schema, prompt).model_dump_json()
            else:
                answer = f"offline answer #{_digest(prompt) % 1000:03d}"
            meter.add(OFFLINE_MODEL, _approx_tokens(prompt), _approx_tokens(answer))
            if response_model is not None:
                return answer
            return f"Thought: I now know the final answer\nFinal Answer: {answer}"

        def supports_function_calling(self) -> bool:  # noqa: D102
            return False

        def get_input_tokens_count(self, messages, tools=None, response_model=None) -> int:  # noqa: ANN001, D102
            # The offline model's own count (CrewAI's fallback warns once per call that it guesses).
            return _approx_tokens(_prompt_text(messages))

    return OfflineLLM(model=OFFLINE_MODEL, provider="offline")


class _MeteredLLM:
    """Counts the token usage a CrewAI LLM reports after each call."""

    @staticmethod
    def wrap(llm: Any, meter: UsageMeter, model: str) -> Any:
        original = llm.call

        def call(*args: Any, **kwargs: Any) -> Any:
            # Structured output is asked for in the prompt (CrewAI puts the schema there) and
            # validated by CrewAI's converter, never as `response_format`: servers without
            # JSON-schema mode (many Ollama, vLLM and LiteLLM setups) refuse that with a 400.
            kwargs.pop("response_model", None)
            before = llm.get_token_usage_summary()
            result = original(*args, **kwargs)
            after = llm.get_token_usage_summary()
            tokens_in = after.prompt_tokens - before.prompt_tokens
            tokens_out = after.completion_tokens - before.completion_tokens
            if tokens_in == 0 and tokens_out == 0:
                tokens_in = _approx_tokens(_prompt_text(args[0] if args else kwargs.get("messages", "")))
                tokens_out = _approx_tokens(result if isinstance(result, str) else json.dumps(str(result)))
            meter.add(model, tokens_in, tokens_out)
            return result

        object.__setattr__(llm, "call", call)
        return llm
