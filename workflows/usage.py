"""Workflow steps that account for AI usage: the tenant's budget before an expensive step, one
``llm_usage`` row per LLM call (keyed by workflow and step, so a retry never counts twice) and
the Lago events for them (one per row: Lago keeps one event per transaction id)."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from agents.types import LlmCall
    from activities.lago import LagoActivities, ReportUsage
    from activities.usage import CheckBudget, RecordUsage, UsageActivities
    from core.activity import run_activity


async def check_ai_budget(tenant_id: str) -> None:
    """Fails the caller, non-retryable (``AIBudgetExceeded``), when the tenant is over budget."""
    await run_activity(UsageActivities.check_budget, CheckBudget(tenant_id=tenant_id))


async def record_usage(tenant_id: str, agent: str, provider: str, calls: list[LlmCall], step: str) -> list[int]:
    """One usage row per call; ``step`` makes the keys unique within the workflow."""
    wf_id = workflow.info().workflow_id
    ids = []
    for i, call in enumerate(calls):
        recorded = await run_activity(
            UsageActivities.record,
            RecordUsage(idempotency_key=f"{wf_id}:{step}:{i}", tenant_id=tenant_id, agent=agent, model=call.model,
                        provider=provider, tokens_in=call.tokens_in, tokens_out=call.tokens_out, workflow_id=wf_id),
        )
        ids.append(recorded.usage_id)
    return ids


async def account(tenant_id: str, agent: str, outcome: Any, step: str) -> list[int]:
    """The usage rows of an agent's outcome (a crew's, or an agent loop's result).

    New agent workers record every call as it returns (``usage_per_call``): their rows are
    passed on, and only calls no step recorded are recorded here. Results of older workers
    (in histories from before, which must replay the same) have their calls recorded here."""
    if getattr(outcome, "usage_per_call", False):
        ids = list(outcome.usage_ids)
        extra = list(getattr(outcome, "unrecorded_calls", []))
        if extra:
            ids += await record_usage(tenant_id, agent, outcome.provider, extra, step)
        return ids
    return await record_usage(tenant_id, agent, outcome.provider, outcome.calls, step)


async def report_usage(tenant_id: str, usage_ids: list[int]) -> None:
    """Bill the rows to Lago: these, and every unreported row of this workflow and its agent
    children (calls of attempts that died before returning are billed too)."""
    if not usage_ids:
        return
    await run_activity(
        LagoActivities.report_usage,
        ReportUsage(tenant_id=tenant_id, usage_ids=usage_ids, workflow_id=workflow.info().workflow_id),
    )
