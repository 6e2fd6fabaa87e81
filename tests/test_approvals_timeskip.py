"""The approval protocol's clock: reminders, escalation, timeout actions and quorum, on the
time-skipping test server (days pass in milliseconds). That server has no updates, so decisions
arrive as the ``decide`` signal, which fire-and-forget senders use, signed as the API and
``bizosaas approvals decide`` sign them (issued at the server's time); deciders that are not
proven are refused. The notification and audit activities are fakes registered under the real
names; the protocol code and the verifying activity (with the suite's keys) are the real ones."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import msgspec
    import pytest
    from pydantic import SecretStr
    from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
    from temporalio.exceptions import CancelledError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.approvals import Notified, Notify
    from activities.notify import Deliver, Delivered
    from activities.decision_keys import DecisionKeyActivities
    from activities.tenants import AuditEntry, AuditReceipt
    from hitl.approvals import HumanDecisions
    from hitl.protocol import ApprovalOutcome, ApprovalRequest, ApprovalsView, Decider, DecisionInput
    from tests.support import DECISION_KEYS, RETIRED_DECISION_KEY, assert_eventually, signed
    from workers.main import WORKFLOW_FAILURE_TYPES
    from workflows.campaign import ESCALATE_AFTER, ESCALATION_ROLES, REMIND_AFTER


@workflow.defn(name="AskOnce")
class AskOnce(HumanDecisions):
    def __init__(self) -> None:
        HumanDecisions.__init__(self)

    @workflow.run
    async def run(self, req: ApprovalRequest) -> ApprovalOutcome:
        outcome = await self.ask(req)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return outcome


class Recorder:
    def __init__(self) -> None:
        self.notified: list[Notify] = []
        self.delivered: list[Deliver] = []
        self.audited: dict[str, AuditEntry] = {}
        self.release = asyncio.Event()

    @activity.defn(name="approvals.notify")
    async def notify(self, n: Notify) -> Notified:
        self.notified.append(n)
        return Notified(notification_id=len(self.notified), created=True)

    @activity.defn(name="notifications.deliver")
    async def deliver(self, d: Deliver) -> Delivered:
        self.delivered.append(d)
        if d.title == SLOW_MAIL:  # a mail server that takes its time: held until the test lets it go
            await self.release.wait()
        return Delivered(sent=1)

    @activity.defn(name="audit.write")
    async def audit(self, e: AuditEntry) -> AuditReceipt:
        written = e.idempotency_key not in self.audited
        self.audited.setdefault(e.idempotency_key, e)
        return AuditReceipt(audit_id=len(self.audited), written=written)


SLOW_MAIL = "Approve the slow creative"


@pytest.fixture
async def env(time_skipping_env: WorkflowEnvironment):  # noqa: ANN201
    return time_skipping_env


def client_decider(sub: str, tenant: str = "acme") -> Decider:
    return Decider(sub=sub, roles=["client"], tenant_id=tenant)


ADMIN = Decider(sub="ops@bizosaas", roles=["admin"])


def campaign_like(**kw: object) -> ApprovalRequest:
    fields: dict[str, object] = dict(
        request_id="creative-1", kind="campaign.creative", title="Approve the creative", proposal={"budget_usd": 600},
        allowed=["approve", "reject", "request_changes", "edit"], audience="client",
        roles=["client", "partner", "admin", "super_admin"], due_in_seconds=int(ESCALATE_AFTER.total_seconds()),
        remind_after_seconds=[int(REMIND_AFTER.total_seconds())], timeout_action="escalate",
        escalate_to_audience="admin", escalate_to_roles=ESCALATION_ROLES,
        edit_schema={"type": "object", "properties": {"budget_usd": {"type": "number", "exclusiveMinimum": 0}},
                     "additionalProperties": False},
    )
    fields.update(kw)
    return ApprovalRequest(**fields)  # type: ignore[arg-type]


async def start(env: WorkflowEnvironment, req: ApprovalRequest):  # noqa: ANN201
    return await env.client.start_workflow(AskOnce.run, req, id=f"acme:test-approval:{uuid.uuid4().hex[:12]}",
                                           task_queue=TASK_QUEUE)


TASK_QUEUE = "approvals-timeskip"


async def send(env: WorkflowEnvironment, handle: WorkflowHandle, d: DecisionInput, **kw: object) -> None:
    """``d`` signed for ``handle``'s workflow at the server's time, as the ``decide`` signal."""
    now = await env.get_current_time()
    await handle.signal(AskOnce.decide_signal, signed(d, handle.id, now, **kw))  # type: ignore[arg-type]


def verifier() -> DecisionKeyActivities:
    """The real verifying activity, holding the keys a worker of the suite holds."""
    return DecisionKeyActivities({k: SecretStr(v) for k, v in DECISION_KEYS.items()})


async def opened(handle) -> None:  # noqa: ANN001
    """Until the request is open: a decision sent before it exists is refused as stale."""
    async def check() -> None:
        view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
        assert view.open is not None

    await assert_eventually(check)


@pytest.fixture
async def recorder(env: WorkflowEnvironment):  # noqa: ANN201
    rec = Recorder()
    async with Worker(env.client, task_queue=TASK_QUEUE, workflows=[AskOnce],
                      activities=[rec.notify, rec.deliver, rec.audit, verifier().verify_decision],
                      workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES):
        yield rec


async def test_reminder_after_a_day_escalation_after_three_then_an_admin_decides(
    env: WorkflowEnvironment, recorder: Recorder
) -> None:
    handle = await start(env, campaign_like())
    await env.sleep(timedelta(hours=25))
    assert [n.event for n in recorder.notified if n.workflow_id == handle.id] == ["requested", "reminder"]
    # Each recorded event is delivered once, with what the mail needs.
    assert [(d.event, d.title, d.allowed) for d in recorder.delivered if d.workflow_id == handle.id] == [
        ("requested", "Approve the creative", ["approve", "reject", "request_changes", "edit"]),
        ("reminder", "Approve the creative", ["approve", "reject", "request_changes", "edit"])]
    view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
    assert view.open is not None and view.open.audience == "client" and not view.open.escalated

    await env.sleep(timedelta(hours=48))
    assert [n.event for n in recorder.notified if n.workflow_id == handle.id] == ["requested", "reminder",
                                                                                  "escalated"]
    view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
    assert view.open.escalated and view.open.audience == "admin" and view.open.roles == ESCALATION_ROLES
    # Once escalated, the client may no longer decide: the signal is recorded and ignored.
    await send(env, handle, DecisionInput(request_id="creative-1", decision="approve", by=client_decider("owner@acme")))
    await send(env, handle, DecisionInput(request_id="creative-1", decision="edit", edits={"budget_usd": 450}, by=ADMIN))
    outcome = await handle.result()
    assert outcome.outcome == "approved" and outcome.escalated
    assert outcome.proposal == {"budget_usd": 450}
    assert [(d.decided_by, d.role, d.via) for d in outcome.decisions] == [("ops@bizosaas", "admin", "signal")]
    assert outcome.decisions[0].diff[0].path == "/budget_usd"
    decided = [n for n in recorder.notified if n.workflow_id == handle.id and n.event == "decided"]
    assert [(n.outcome, n.decided_by, n.audience) for n in decided] == [("approved", "ops@bizosaas", "admin")]
    view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
    assert [(r.decided_by, r.error_type) for r in view.rejected_signals] == [("owner@acme", "RoleNotAllowed")]
    actions = sorted(e.action for e in recorder.audited.values() if e.workflow_id == handle.id)
    assert actions == ["approval.edit", "approval.escalated"]


@pytest.mark.parametrize(("action", "outcome"), [("auto_reject", "timed_out_rejected"),
                                                  ("auto_approve", "timed_out_approved")])
async def test_timeout_actions(env: WorkflowEnvironment, recorder: Recorder, action: str, outcome: str) -> None:
    handle = await start(env, campaign_like(timeout_action=action, due_in_seconds=3600, remind_after_seconds=[]))
    result = await handle.result()
    assert result.outcome == outcome and result.decisions == []
    assert [n.event for n in recorder.notified if n.workflow_id == handle.id] == ["requested", "timed_out"]
    assert [n.outcome for n in recorder.notified if n.workflow_id == handle.id] == [None, outcome]
    assert [e.action for e in recorder.audited.values() if e.workflow_id == handle.id] == [f"approval.{outcome}"]


async def test_an_escalated_request_that_times_out_again_is_rejected(
    env: WorkflowEnvironment, recorder: Recorder
) -> None:
    handle = await start(env, campaign_like(due_in_seconds=3600, remind_after_seconds=[],
                                            escalation_due_in_seconds=7200))
    result = await handle.result()
    assert result.outcome == "timed_out_rejected" and result.escalated
    assert [n.event for n in recorder.notified if n.workflow_id == handle.id] == ["requested", "escalated",
                                                                                  "timed_out"]


async def test_a_quorum_needs_distinct_people(env: WorkflowEnvironment, recorder: Recorder) -> None:
    handle = await start(env, campaign_like(approvals_needed=2))
    await opened(handle)
    first = DecisionInput(request_id="creative-1", decision="approve", by=client_decider("a@acme"))
    await send(env, handle, first)
    await send(env, handle, first)  # the same person again
    await send(env, handle, DecisionInput(request_id="creative-9", decision="approve",
                                          by=client_decider("b@acme")))  # stale id
    await send(env, handle, DecisionInput(request_id="creative-1", decision="approve",
                                          by=client_decider("c@other", tenant="other")))

    async def refused_three() -> ApprovalsView:
        view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
        assert len(view.rejected_signals) == 3, view.rejected_signals
        return view

    view = await assert_eventually(refused_three)
    assert view.open is not None and len(view.open.decisions) == 1
    assert [r.error_type for r in view.rejected_signals] == ["AlreadyDecided", "StaleApprovalRequest",
                                                             "TenantNotAllowed"]
    await send(env, handle, DecisionInput(request_id="creative-1", decision="approve", by=client_decider("b@acme")))
    result = await handle.result()
    assert result.outcome == "approved" and [d.decided_by for d in result.decisions] == ["a@acme", "b@acme"]
    assert sorted(e.actor for e in recorder.audited.values() if e.workflow_id == handle.id) == ["a@acme", "b@acme"]


async def test_choices_an_approve_must_pick_one(env: WorkflowEnvironment, recorder: Recorder) -> None:
    handle = await start(env, campaign_like(audience="admin", roles=["admin", "finance"], allowed=["approve"],
                                            choices=["retry", "write_off", "suspend"], edit_schema=None))
    await opened(handle)
    for wrong in (DecisionInput(request_id="creative-1", decision="approve", by=ADMIN),
                  DecisionInput(request_id="creative-1", decision="approve", choice="forgive", by=ADMIN)):
        await send(env, handle, wrong)
    await send(env, handle, DecisionInput(request_id="creative-1", decision="approve", choice="write_off", by=ADMIN))
    result = await handle.result()
    assert result.outcome == "approved" and result.choice == "write_off"
    view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
    assert [r.error_type for r in view.rejected_signals] == ["DecisionNotAllowed", "DecisionNotAllowed"]


async def test_unproven_deciders_are_refused_recorded_and_change_nothing(
    env: WorkflowEnvironment, recorder: Recorder
) -> None:
    """Anyone with namespace access can send ``decide``; only a signed decider counts. Each way
    of failing is recorded in ``rejected_signals``; then a decision signed with the previous key
    (kept after a rotation) is taken."""
    handle = await start(env, campaign_like())
    await opened(handle)
    now = await env.get_current_time()

    def as_(sub: str, request_id: str = "creative-1") -> DecisionInput:
        return DecisionInput(request_id=request_id, decision="approve", by=client_decider(sub))

    good = signed(as_("forger@acme"), handle.id, now)
    unproven: dict[str, object] = {
        "unsigned@acme": as_("unsigned@acme"),
        # Signed for a client, then the decider rewritten into an admin: the MAC no longer matches.
        "forger@acme": msgspec.structs.replace(good, by=Decider(sub="forger@acme", roles=["admin"])),
        "elsewhere@acme": signed(as_("elsewhere@acme"), f"{handle.id}-other", now),  # another workflow
        # Signed for another request, then pointed at this one: the request id is signed too.
        "rebound@acme": msgspec.structs.replace(signed(as_("rebound@acme", request_id="creative-2"), handle.id, now),
                                                request_id="creative-1"),
        "late@acme": signed(as_("late@acme"), handle.id, now - timedelta(hours=2), ttl_seconds=3600),
        "retired@acme": signed(as_("retired@acme"), handle.id, now, key=RETIRED_DECISION_KEY),
        "garbled@acme": {"request_id": "creative-1", "decision": "maybe", "by": {"sub": "garbled@acme"}},
    }
    for payload in unproven.values():
        await handle.signal("decide", payload)
    await handle.signal("decide")  # no payload at all

    async def all_refused() -> ApprovalsView:
        view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
        assert len(view.rejected_signals) == len(unproven) + 1, view.rejected_signals
        return view

    view = await assert_eventually(all_refused)
    refused = {r.decided_by: (r.error_type, r.reason) for r in view.rejected_signals}
    assert {sub: kind for sub, (kind, _) in refused.items()} == {
        "unsigned@acme": "UnsignedDecision", "forger@acme": "InvalidDecisionSignature",
        "elsewhere@acme": "InvalidDecisionSignature", "rebound@acme": "InvalidDecisionSignature",
        "late@acme": "ExpiredDecisionSignature", "retired@acme": "InvalidDecisionSignature",
        "garbled@acme": "MalformedDecision", "": "MalformedDecision"}
    assert "another workflow" in refused["elsewhere@acme"][1]
    assert "does not match" in refused["forger@acme"][1] and "does not match" in refused["rebound@acme"][1]
    assert "unknown key 'test-0'" in refused["retired@acme"][1]
    assert "no payload" in refused[""][1]
    # Nothing changed: still open, undecided, nothing audited or notified but the request.
    assert view.open is not None and view.open.status == "open" and view.open.decisions == []
    assert not [e for e in recorder.audited.values() if e.workflow_id == handle.id]

    old_key = ("test-1", DECISION_KEYS["test-1"])
    await handle.signal(AskOnce.decide_signal, signed(as_("owner@acme"), handle.id, now, key=old_key))  # type: ignore[arg-type]
    outcome = await handle.result()
    assert outcome.outcome == "approved" and [(d.decided_by, d.via) for d in outcome.decisions] == [
        ("owner@acme", "signal")]
    assert [e.actor for e in recorder.audited.values() if e.workflow_id == handle.id] == ["owner@acme"]


async def test_a_cancel_while_the_request_is_being_mailed_cancels_the_run(client: Client) -> None:
    """The merchant cancels while the approval's mail is still on its way: the delivery is given
    up and the run ends canceled (not logged as an undelivered mail and left waiting). On the dev
    server: an activity left running past its workflow's end stops the time-skipping server's clock."""
    rec, task_queue = Recorder(), f"cancel-mailing-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=task_queue, workflows=[AskOnce],
                      activities=[rec.notify, rec.deliver, rec.audit, verifier().verify_decision],
                      workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES):
        handle = await client.start_workflow(AskOnce.run, campaign_like(title=SLOW_MAIL),
                                             id=f"acme:test-approval:{uuid.uuid4().hex[:12]}", task_queue=task_queue)

        async def mailing() -> None:
            assert [d.event for d in rec.delivered if d.workflow_id == handle.id] == ["requested"]

        await assert_eventually(mailing)
        await handle.cancel()
        try:
            with pytest.raises(WorkflowFailureError) as failed:
                await asyncio.wait_for(handle.result(), timeout=30)
        finally:
            rec.release.set()
    assert isinstance(failed.value.cause, CancelledError)
