"""Decisions on the real dev server: the ``decide`` update with signed deciders, a decision that
arrives in the same workflow activation as the approval's deadline, histories from before
signed deciders replaying on today's code, and the decision key `bizosaas dev` keeps.

A decision and the deadline meet in one activation like this: the worker is stopped while the
request waits, the deadline's timer fires (TimerFired, a workflow task scheduled and nobody to
take it), then the decision is sent (the signal joins that pending task; the update is admitted
and waits for it). When the worker returns, one activation carries both the timer and the
decision. Both job orders are exercised: the SDK's current one (signals and updates first) and
the single batch (every job applied before any coroutine runs), which histories written by
newer SDKs use and in which the timeout wakes with the decision already recorded."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, UpdateWorkflowExecutionLifecycleStage
from temporalio.api.update.v1 import UpdateRef, WaitPolicy
from temporalio.api.workflowservice.v1 import PollWorkflowExecutionUpdateRequest
from temporalio.client import Client, WorkflowHandle, WorkflowHistory, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from hitl.protocol import ApprovalOutcome, ApprovalsView, Decider, DecisionInput, DecisionReceipt
from tests.support import CODEC_TEST_KEYS, ROOT, RETIRED_DECISION_KEY, assert_eventually, free_port, signed
from tests.test_approvals_timeskip import AskOnce, Recorder, campaign_like, verifier
from core.converter import data_converter
from workers.main import WORKFLOW_FAILURE_TYPES
from workers.dev import DECISION_KEYS_FILE, dev_credentials
from core.settings import Settings

OWNER = Decider(sub="owner@acme", roles=["client"], tenant_id="acme")
STORED = ROOT / "tests" / "histories" / "unsigned-decisions"


@pytest.fixture
async def client(temporal_env: WorkflowEnvironment) -> Client:
    """A client with the platform's converter on the session's dev server."""
    return await Client.connect(temporal_env.client.service_client.config.target_host,
                                namespace=temporal_env.client.namespace, data_converter=data_converter())


def worker(client: Client, task_queue: str, rec: Recorder, single_batch: bool) -> Worker:
    """No workflow cache, so a returning worker replays the history and meets the new jobs in
    one activation; ``single_batch``: every job of an activation applied before any coroutine."""
    w = Worker(client, task_queue=task_queue, workflows=[AskOnce],
               activities=[rec.notify, rec.deliver, rec.audit, verifier().verify_decision],
               workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES, max_cached_workflows=0)
    if single_batch:
        from temporalio.worker._workflow_instance import _WorkflowLogicFlag  # no public switch yet

        w._set_default_workflow_logic_flag(  # noqa: SLF001
            _WorkflowLogicFlag.PROCESS_WORKFLOW_ACTIVATION_JOBS_AS_SINGLE_BATCH, enabled=True)
    return w


async def open_request(handle: WorkflowHandle) -> None:
    """Until the request is open and announced (its ``requested`` notification done): the
    workflow waits on its deadline timer. Watched in the history (the timer starts once the
    notification is done), then the request read once: a query replays the whole history on a
    worker without a cache, too dear to poll with."""
    async def waiting() -> None:
        assert EventType.EVENT_TYPE_TIMER_STARTED in [e.event_type async for e in handle.fetch_history_events()]

    await assert_eventually(waiting)
    assert (await handle.query(AskOnce.approvals, result_type=ApprovalsView)).open is not None


async def event_types(handle: WorkflowHandle) -> list[int]:
    return [e.event_type async for e in handle.fetch_history_events()]


async def admitted(client: Client, handle: WorkflowHandle, update_id: str) -> None:
    """Until the server holds the update for the workflow's next task."""
    async def check() -> None:
        try:
            r = await client.workflow_service.poll_workflow_execution_update(PollWorkflowExecutionUpdateRequest(
                namespace=client.namespace, update_ref=UpdateRef(
                    workflow_execution=WorkflowExecution(workflow_id=handle.id), update_id=update_id),
                wait_policy=WaitPolicy(
                    lifecycle_stage=UpdateWorkflowExecutionLifecycleStage.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_ADMITTED)))
        except RPCError as err:  # not there yet
            raise AssertionError(err.message) from None
        assert r.stage >= UpdateWorkflowExecutionLifecycleStage.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_ADMITTED

    await assert_eventually(check)


# The deadline fires on the dev server's clock: it must come after the request is open and the
# worker stopped. Tried short first; a machine too busy for that gets a longer one.
RACE_DEADLINES = (8, 20, 45)


async def deadline_without_worker(client: Client, task_queue: str, rec: Recorder, single_batch: bool) -> WorkflowHandle:
    """A request open and announced, then its deadline's timer fired while no worker ran (the
    workflow task it scheduled waits for a worker)."""
    for due in RACE_DEADLINES:
        req = campaign_like(timeout_action="auto_reject", due_in_seconds=due, remind_after_seconds=[])
        async with worker(client, task_queue, rec, single_batch):
            handle = await client.start_workflow(AskOnce.run, req, id=f"acme:race:{uuid.uuid4().hex[:10]}",
                                                 task_queue=task_queue)
            await open_request(handle)

        async def deadline_passed() -> None:
            assert EventType.EVENT_TYPE_TIMER_FIRED in await event_types(handle)

        await assert_eventually(deadline_passed, timeout=due + 15)
        if (await event_types(handle))[-2:] == [EventType.EVENT_TYPE_TIMER_FIRED,
                                                EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED]:
            return handle
        await handle.terminate("the deadline fired before the worker stopped")
    raise AssertionError(f"the worker never stopped before a deadline of {RACE_DEADLINES[-1]} s")


async def decision_with_the_deadline(client: Client, via: str, single_batch: bool) -> None:
    """One decision (by ``via``) sent after the deadline's timer fired while no worker ran; the
    worker returns to one activation carrying both."""
    task_queue, rec = f"race-{uuid.uuid4().hex[:10]}", Recorder()
    handle = await deadline_without_worker(client, task_queue, rec, single_batch)
    decision = signed(DecisionInput(request_id="creative-1", decision="approve", by=OWNER), handle.id)
    receipt: DecisionReceipt | None = None
    if via == "signal":
        await handle.signal(AskOnce.decide_signal, decision)  # type: ignore[arg-type]
        # The timer and the signal wait in one workflow task for the worker.
        tail = (await event_types(handle))[-3:]
        assert tail == [EventType.EVENT_TYPE_TIMER_FIRED, EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
                        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
        async with worker(client, task_queue, rec, single_batch):
            outcome = await handle.result()
    else:
        update = asyncio.create_task(handle.execute_update(AskOnce.decide, decision, id="decide-1",
                                                           result_type=DecisionReceipt))
        await admitted(client, handle, "decide-1")
        # The update waits with the timer for the worker (an admitted update is not in history).
        assert (await event_types(handle))[-2:] == [EventType.EVENT_TYPE_TIMER_FIRED,
                                                    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED]
        async with worker(client, task_queue, rec, single_batch):
            receipt = await update
            outcome = await handle.result()
        assert receipt.closed and receipt.decided_by == "owner@acme"

    # The decision came with the deadline: it is the outcome, audited, and nothing timed out.
    assert isinstance(outcome, ApprovalOutcome)
    assert outcome.outcome == "approved" and [d.decided_by for d in outcome.decisions] == ["owner@acme"]
    assert [e.action for e in rec.audited.values() if e.workflow_id == handle.id] == ["approval.approve"]
    assert [n.event for n in rec.notified if n.workflow_id == handle.id] == ["requested", "decided"]
    history = await handle.fetch_history()
    await Replayer(workflows=[AskOnce], data_converter=data_converter(),
                   workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES).replay_workflow(history)


async def test_a_decision_arriving_with_the_deadline_is_honoured(client: Client) -> None:
    """Every way (update, signal) in both job orders; each on a task queue and workflow of its
    own, so the four wait out their deadlines side by side."""
    variants = [(via, single_batch) for via in ("update", "signal") for single_batch in (False, True)]
    results = await asyncio.gather(*(decision_with_the_deadline(client, via, sb) for via, sb in variants),
                                   return_exceptions=True)
    failed = []
    for (via, single_batch), result in zip(variants, results):
        if isinstance(result, BaseException):
            result.add_note(f"decision by {via}, {'single-batch' if single_batch else 'signals-first'} job order")
            failed.append(result)
    if failed:
        raise BaseExceptionGroup("a decision arriving with the deadline", failed)


async def test_the_decide_update_takes_only_signed_deciders(client: Client) -> None:
    task_queue, rec = f"signed-{uuid.uuid4().hex[:10]}", Recorder()
    async with worker(client, task_queue, rec, single_batch=False):
        handle = await client.start_workflow(AskOnce.run, campaign_like(), id=f"acme:signed:{uuid.uuid4().hex[:10]}",
                                             task_queue=task_queue)
        await open_request(handle)
        approve = DecisionInput(request_id="creative-1", decision="approve", by=OWNER)
        good = signed(approve, handle.id)

        async def refused(d: DecisionInput) -> ApplicationError:
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update(AskOnce.decide, d, result_type=DecisionReceipt)
            assert isinstance(err.value.cause, ApplicationError)
            return err.value.cause

        before = len(await event_types(handle))
        # Refused by the validator: nothing enters history.
        assert (await refused(approve)).type == "UnsignedDecision"
        assert (await refused(signed(approve, f"{handle.id}-other"))).type == "InvalidDecisionSignature"
        assert (await refused(signed(approve, handle.id, ttl_seconds=1, now=datetime.now(timezone.utc) - timedelta(hours=1)))).type == \
            "ExpiredDecisionSignature"
        assert len(await event_types(handle)) == before
        # Refused once the MAC is checked: a rewritten decider, a retired key.
        forged = await refused(msgspec.structs.replace(good, by=Decider(sub="owner@acme", roles=["admin"])))
        assert forged.type == "InvalidDecisionSignature" and "does not match" in forged.message
        retired = await refused(signed(approve, handle.id, key=RETIRED_DECISION_KEY))
        assert retired.type == "InvalidDecisionSignature" and "unknown key" in retired.message
        view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
        assert view.open is not None and view.open.decisions == []

        receipt = await handle.execute_update(AskOnce.decide, good, result_type=DecisionReceipt)
        assert receipt.closed and receipt.decided_by == "owner@acme"
        outcome = await handle.result()
    assert outcome.outcome == "approved" and [(d.decided_by, d.via) for d in outcome.decisions] == [
        ("owner@acme", "update")]


@pytest.mark.parametrize("name", sorted(p.name for p in STORED.glob("*.json")))
async def test_histories_from_before_signed_deciders_replay(name: str) -> None:
    """Unsigned decisions by signal and update (and a malformed signal the SDK dropped then), and
    a receipt the deadline overrode in the single-batch job order: recorded on the code before
    signed deciders; today's code replays them (``workflow.patched("signed-decisions")``)."""
    record = json.loads((STORED / name).read_text())
    history = WorkflowHistory.from_json(record["workflow_id"], record["history"])
    await Replayer(workflows=[AskOnce], data_converter=data_converter(),
                   workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES).replay_workflow(history)


@pytest.fixture
def no_keys_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIZ_")}
    env.update({"BIZ_ENVIRONMENT": "dev", "BIZ_DEV_STATE_DIR": str(tmp_path / "state")})
    return env


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.cli", *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_bizosaas_dev_keeps_a_decision_key_in_its_state_dir(no_keys_env: dict[str, str]) -> None:
    decide = ["approvals", "decide", "--workflow-id", "demo:campaign:spring-sale", "--request", "creative-1",
              "--decision", "approve", "--as", "owner@demo", "--role", "client", "--tenant", "demo", "--print"]
    code, out, err = await run_cli(no_keys_env, *decide)
    assert code == 2 and out == "" and "BIZ_DECISION_KEYS" in err  # no key anywhere: nothing signed

    state = Path(no_keys_env["BIZ_DEV_STATE_DIR"])
    bare = Settings(_env_file=None, environment="dev", dev={"state_dir": state})

    def made_now() -> dict[str, str]:  # what `bizosaas dev` does at start
        return {k: v.get_secret_value() for k, v in dev_credentials(bare, create=True).decision.keys.items()}

    made = made_now()
    assert len(made) == 1 and made_now() == made  # kept, not made again
    assert stat.S_IMODE((state / DECISION_KEYS_FILE).stat().st_mode) == 0o600
    code, out, err = await run_cli(no_keys_env, *decide)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["signature"]["key_id"] == next(iter(made)) and payload["by"]["sub"] == "owner@demo"
    assert next(iter(made.values())) not in out + err


async def test_production_refuses_to_run_the_api_without_decision_keys(no_keys_env: dict[str, str]) -> None:
    env = {**no_keys_env, "BIZ_ENVIRONMENT": "production", "BIZ_AUTH_MODE": "oidc",
           "BIZ_AUTH_OIDC_ISSUER": "https://auth.example.com/", "BIZ_AUTH_OIDC_AUDIENCE": "bizosaas-api",
           "BIZ_AUTH_OIDC_JWKS_URL": "https://auth.example.com/jwks/", "BIZ_CODEC_KEYS": CODEC_TEST_KEYS,
           "BIZ_API_PORT": str(free_port())}
    code, out, err = await run_cli(env, "api")
    assert code == 2 and "BIZ_DECISION_KEYS is not set" in err, err


def test_a_refused_decision_key_is_named_never_shown() -> None:
    from pydantic import ValidationError

    for keys, named in (({"d1": "too-short-a-secret"}, "shorter than 32"),
                        ({"d 1": "a-long-enough-secret-0123456789abcdef"}, "must match")):
        with pytest.raises(ValidationError) as err:
            Settings(_env_file=None, environment="dev", decision={"keys": keys})
        assert named in str(err.value) and next(iter(keys.values())) not in str(err.value)
