"""Agent activities: CrewAI crews as heartbeating sync activities on the agents task queue.

The crew runs in a worker thread (the agents worker's bounded executor); a heartbeat thread
keeps Temporal informed while it thinks, so a dead worker is noticed within the heartbeat
timeout and the activity is retried elsewhere.
"""

from __future__ import annotations

import contextvars
import threading

from typing import Any

import msgspec
from temporalio import activity

from core.activity import Activities
from core.names import AGENTS_QUEUE
from core.policies import CREW

from activities.usage import RecordUsage, UsageLedger
from agents.types import (AdCopy, ContentOutcome, ContentRequest, CreativeOutcome, CreativeRequest, CrewOutcome,
                          CrewRequest, LlmCall)
from core.settings import LlmSettings

HEARTBEAT_EVERY = 5.0
# The agent names of the crews' usage rows (the workflows record older results under these too).
PRESENCE_CREW = "presence-crew"
CREATIVE_CREW = "campaign-creative-crew"
CONTENT_CREW = "seo-content-crew"


class _Heartbeat:
    def __init__(self, detail: str) -> None:
        self._stop = threading.Event()
        self._detail = detail
        # The activity context is a context variable: the heartbeat thread runs in a copy.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._beat,), daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            activity.heartbeat(self._detail)

    def __enter__(self) -> None:
        activity.heartbeat(self._detail)
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class AgentActivities(Activities):
    """The crews. With a usage ledger, every LLM call is a usage row as soon as it returns."""
    task_queue = AGENTS_QUEUE
    default_policy = CREW


    def __init__(self, llm: LlmSettings, ledger: UsageLedger | None = None) -> None:
        self._llm = llm
        self._ledger = ledger

    def _meter(self, tenant_id: str, agent: str) -> tuple[Any, list[int]]:
        from agents.llm import UsageMeter

        ids: list[int] = []
        ledger, provider = self._ledger, self._llm.provider
        if ledger is None:
            return UsageMeter(), ids

        def on_call(n: int, model: str, tokens_in: int, tokens_out: int) -> None:
            key, wf_id = ledger.call_key(agent, n)
            ids.append(ledger.record_from_thread(RecordUsage(
                idempotency_key=key, tenant_id=tenant_id, agent=agent, model=model, provider=provider,
                tokens_in=tokens_in, tokens_out=tokens_out, workflow_id=wf_id)))

        return UsageMeter(on_call=on_call), ids

    @activity.defn(name="agents.presence_crew")
    def presence_crew(self, req: CrewRequest) -> CrewOutcome:
        from agents.presence import run_presence_crew

        meter, usage_ids = self._meter(req.tenant_id, PRESENCE_CREW)
        with _Heartbeat("presence crew running"):
            report = run_presence_crew(self._llm, req.website_url, dict(req.social_handles), list(req.pages), meter)
        return CrewOutcome(
            report=report,
            offline=self._llm.provider == "offline",
            provider=self._llm.provider,
            calls=[LlmCall(model=m, tokens_in=i, tokens_out=o) for m, i, o in meter.calls],
            usage_per_call=self._ledger is not None,
            usage_ids=usage_ids,
        )

    @activity.defn(name="agents.campaign_creative_crew")
    def campaign_creative_crew(self, req: CreativeRequest) -> CreativeOutcome:
        from agents.campaign import run_creative_crew

        meter, usage_ids = self._meter(req.tenant_id, CREATIVE_CREW)
        with _Heartbeat("creative crew running"):
            ads, summary = run_creative_crew(
                self._llm, goal=req.goal, objective=req.objective, channels=list(req.channels),
                strategy=dict(req.strategy), feedback=list(req.feedback), meter=meter)
        return CreativeOutcome(
            ads={channel: msgspec.convert(ad.model_dump(), AdCopy) for channel, ad in ads.items()},
            summary=summary,
            offline=self._llm.provider == "offline",
            provider=self._llm.provider,
            calls=[LlmCall(model=m, tokens_in=i, tokens_out=o) for m, i, o in meter.calls],
            usage_per_call=self._ledger is not None,
            usage_ids=usage_ids,
        )

    @activity.defn(name="agents.content_crew")
    def content_crew(self, req: ContentRequest) -> ContentOutcome:
        from agents.content import run_content_crew

        meter, usage_ids = self._meter(req.tenant_id, CONTENT_CREW)
        with _Heartbeat("content crew running"):
            draft = run_content_crew(self._llm, req, meter)
        return ContentOutcome(
            draft=draft,
            offline=self._llm.provider == "offline",
            provider=self._llm.provider,
            calls=[LlmCall(model=m, tokens_in=i, tokens_out=o) for m, i, o in meter.calls],
            usage_per_call=self._ledger is not None,
            usage_ids=usage_ids,
        )
