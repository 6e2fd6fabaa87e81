"""Stored histories replay on the current code: a deploy never meets a running workflow it
cannot continue.

``tests/histories/`` keeps one history per capability (and one campaign still waiting in its
approval), recorded from real runs by ``BIZ_RECORD_HISTORIES=1 make test`` (tests/test_restart.py
and the capability tests). They are replayed in a fresh interpreter, as a newly started worker
would: nothing cached from the run that wrote them. A change to workflow code that alters the
commands of a running workflow must be guarded with ``workflow.patched`` (README: Versioning);
the last test shows what that buys on a stored onboarding.
"""

from __future__ import annotations

import json
import subprocess
import sys

from temporalio import workflow

# The sandbox imports this module again for the workflows below: everything else passes through.
with workflow.unsafe.imports_passed_through():
    import pytest
    from temporalio.client import WorkflowHistory
    from temporalio.worker import Replayer
    from temporalio.workflow import NondeterminismError

    from activities.tenants import AuditActivities, AuditEntry
    from tests.support import HISTORIES, ROOT, dev_settings
    from core.client import platform_data_converter
    from workers.main import ALL_WORKFLOWS, WORKFLOW_FAILURE_TYPES
    from workflows.onboarding import OnboardingInput, OnboardingResult, OnboardingWorkflow
    from core.policies import DB_RETRY, DB_TIMEOUT

def stored() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(HISTORIES.glob("*.json"))}


def workflow_type(record: dict) -> str:
    first = record["history"]["events"][0]
    return first["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]


def closed(record: dict) -> bool:
    return any(e["eventType"].startswith("EVENT_TYPE_WORKFLOW_EXECUTION_") and e["eventType"].endswith(
        ("COMPLETED", "FAILED", "CANCELED", "TERMINATED", "TIMED_OUT", "CONTINUED_AS_NEW"))
        for e in record["history"]["events"])


def test_every_workflow_type_has_a_stored_history_and_one_waits_in_an_approval() -> None:
    records = stored()
    names = {getattr(w, "__temporal_workflow_definition").name for w in ALL_WORKFLOWS}
    assert names <= {workflow_type(r) for r in records.values()}, "record with BIZ_RECORD_HISTORIES=1 make test"
    waiting = records["campaign-waiting-for-approval"]
    assert not closed(waiting)
    # The platform's own attributes (a patch marker upserts Temporal's TemporalChangeVersion too).
    attrs = [e for e in waiting["history"]["events"] if e["eventType"] == "EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"
             and "Biz" in json.dumps(e)]
    assert attrs and "BizPendingApproval" in json.dumps(attrs[-1])


def test_stored_histories_replay_in_a_fresh_interpreter() -> None:
    """Today's recordings and those of earlier releases (``released/``: runs they started may
    still be open when this code is deployed)."""
    proc = subprocess.run([sys.executable, "-m", "tests.replay_histories"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    replayed = [line for line in proc.stdout.splitlines() if line.startswith("ok ")]
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    released = list((HISTORIES / "released").glob("*.json"))
    assert len(replayed) == len(stored()) + len(released) and len(stored()) >= len(ALL_WORKFLOWS)
    # Earlier releases' recordings stay; a workflow type added since has none (nothing of it runs).
    assert released


def test_every_payload_type_resolves_outside_the_sandbox_in_a_fresh_interpreter() -> None:
    """The cause of the lost-approval bug: a Struct whose string annotations only resolve where
    it was first used. Every Struct a worker loads must resolve ahead of the sandbox."""
    code = ("import workers.main, api.app; from core.converter import resolve_struct_annotations; "
            "import sys; failures = resolve_struct_annotations(); print('\\n'.join(failures)); "
            "sys.stdout.flush(); import os; os._exit(1 if failures else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]


# --- Versioning: a change to running code, guarded by workflow.patched ------------------------

WELCOME_PATCH = "onboarding-welcome-audit"


async def _welcome(inp: OnboardingInput) -> None:
    await workflow.execute_activity_method(
        AuditActivities.write,
        AuditEntry(idempotency_key=f"{workflow.info().workflow_id}:tenant.welcomed", tenant_id=inp.tenant_id,
                   actor="system", action="tenant.welcomed", workflow_id=workflow.info().workflow_id),
        start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY)


@workflow.defn(name="Onboarding")
class PatchedOnboarding(OnboardingWorkflow):
    """The next release of onboarding: a welcome step first, for new runs only."""

    @workflow.run
    async def run(self, inp: OnboardingInput) -> OnboardingResult:
        if workflow.patched(WELCOME_PATCH):
            await _welcome(inp)
        return await super().run(inp)


@workflow.defn(name="Onboarding")
class UnguardedOnboarding(OnboardingWorkflow):
    """The same change, shipped without the guard."""

    @workflow.run
    async def run(self, inp: OnboardingInput) -> OnboardingResult:
        await _welcome(inp)
        return await super().run(inp)


async def replay_onboarding(workflow_cls: type) -> None:
    record = stored()["onboarding"]
    history = WorkflowHistory.from_json(record["workflow_id"], record["history"])
    await Replayer(workflows=[workflow_cls], data_converter=platform_data_converter(dev_settings()),
                   workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES).replay_workflow(history)


async def test_a_patched_change_keeps_an_old_history_replayable() -> None:
    await replay_onboarding(OnboardingWorkflow)  # today's code
    await replay_onboarding(PatchedOnboarding)  # the next release, guarded
    with pytest.raises(NondeterminismError):
        await replay_onboarding(UnguardedOnboarding)  # what the guard prevents
