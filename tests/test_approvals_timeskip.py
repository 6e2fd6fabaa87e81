"""The approval protocol's clock: reminders, escalation, timeout actions and quorum, on the
time-skipping test server (days pass in milliseconds). That server has no updates, so decisions
arrive as the ``decide`` signal, which fire-and-forget senders use. The notification and audit
activities are fakes registered under the real names; the protocol code is the real one."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import pytest
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.approvals import Notified, Notify
    from activities.tenants import AuditEntry, AuditReceipt
    from hitl.approvals import HumanDecisions
    from hitl.protocol import ApprovalOutcome, ApprovalRequest, ApprovalsView, Decider, DecisionInput
    from tests.support import assert_eventually
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
        self.audited: dict[str, AuditEntry] = {}

    @activity.defn(name="approvals.notify")
    async def notify(self, n: Notify) -> Notified:
        self.notified.append(n)
        return Notified(notification_id=len(self.notified), created=True)

    @activity.defn(name="audit.write")
    async def audit(self, e: AuditEntry) -> AuditReceipt:
        written = e.idempotency_key not in self.audited
        self.audited.setdefault(e.idempotency_key, e)
        return AuditReceipt(audit_id=len(self.audited), written=written)


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


async def opened(handle) -> None:  # noqa: ANN001
    """Until the request is open: a decision sent before it exists is refused as stale."""
    async def check() -> None:
        view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
        assert view.open is not None

    await assert_eventually(check)


@pytest.fixture
async def recorder(env: WorkflowEnvironment):  # noqa: ANN201
    rec = Recorder()
    async with Worker(env.client, task_queue=TASK_QUEUE, workflows=[AskOnce], activities=[rec.notify, rec.audit],
                      workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES):
        yield rec


async def test_reminder_after_a_day_escalation_after_three_then_an_admin_decides(
    env: WorkflowEnvironment, recorder: Recorder
) -> None:
    handle = await start(env, campaign_like())
    await env.sleep(timedelta(hours=25))
    assert [n.event for n in recorder.notified if n.workflow_id == handle.id] == ["reminder"]
    view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
    assert view.open is not None and view.open.audience == "client" and not view.open.escalated

    await env.sleep(timedelta(hours=48))
    assert [n.event for n in recorder.notified if n.workflow_id == handle.id] == ["reminder", "escalated"]
    view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
    assert view.open.escalated and view.open.audience == "admin" and view.open.roles == ESCALATION_ROLES
    # Once escalated, the client may no longer decide: the signal is recorded and ignored.
    await handle.signal(AskOnce.decide_signal, DecisionInput(request_id="creative-1", decision="approve",
                                                               by=client_decider("owner@acme")))
    await handle.signal(AskOnce.decide_signal, DecisionInput(request_id="creative-1", decision="edit",
                                                               edits={"budget_usd": 450}, by=ADMIN))
    outcome = await handle.result()
    assert outcome.outcome == "approved" and outcome.escalated
    assert outcome.proposal == {"budget_usd": 450}
    assert [(d.decided_by, d.role, d.via) for d in outcome.decisions] == [("ops@bizosaas", "admin", "signal")]
    assert outcome.decisions[0].diff[0].path == "/budget_usd"
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
    assert [n.event for n in recorder.notified if n.workflow_id == handle.id] == ["timed_out"]
    assert [e.action for e in recorder.audited.values() if e.workflow_id == handle.id] == [f"approval.{outcome}"]


async def test_an_escalated_request_that_times_out_again_is_rejected(
    env: WorkflowEnvironment, recorder: Recorder
) -> None:
    handle = await start(env, campaign_like(due_in_seconds=3600, remind_after_seconds=[],
                                            escalation_due_in_seconds=7200))
    result = await handle.result()
    assert result.outcome == "timed_out_rejected" and result.escalated
    assert [n.event for n in recorder.notified if n.workflow_id == handle.id] == ["escalated", "timed_out"]


async def test_a_quorum_needs_distinct_people(env: WorkflowEnvironment, recorder: Recorder) -> None:
    handle = await start(env, campaign_like(approvals_needed=2))
    await opened(handle)
    first = DecisionInput(request_id="creative-1", decision="approve", by=client_decider("a@acme"))
    await handle.signal(AskOnce.decide_signal, first)
    await handle.signal(AskOnce.decide_signal, first)  # the same person again
    await handle.signal(AskOnce.decide_signal, DecisionInput(request_id="creative-9", decision="approve",
                                                               by=client_decider("b@acme")))  # stale id
    await handle.signal(AskOnce.decide_signal, DecisionInput(request_id="creative-1", decision="approve",
                                                               by=client_decider("c@other", tenant="other")))
    view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
    assert view.open is not None and len(view.open.decisions) == 1
    assert [r.error_type for r in view.rejected_signals] == ["AlreadyDecided", "StaleApprovalRequest",
                                                             "TenantNotAllowed"]
    await handle.signal(AskOnce.decide_signal, DecisionInput(request_id="creative-1", decision="approve",
                                                               by=client_decider("b@acme")))
    result = await handle.result()
    assert result.outcome == "approved" and [d.decided_by for d in result.decisions] == ["a@acme", "b@acme"]
    assert sorted(e.actor for e in recorder.audited.values() if e.workflow_id == handle.id) == ["a@acme", "b@acme"]


async def test_choices_an_approve_must_pick_one(env: WorkflowEnvironment, recorder: Recorder) -> None:
    handle = await start(env, campaign_like(audience="admin", roles=["admin", "finance"], allowed=["approve"],
                                            choices=["retry", "write_off", "suspend"], edit_schema=None))
    await opened(handle)
    for wrong in (DecisionInput(request_id="creative-1", decision="approve", by=ADMIN),
                  DecisionInput(request_id="creative-1", decision="approve", choice="forgive", by=ADMIN)):
        await handle.signal(AskOnce.decide_signal, wrong)
    await handle.signal(AskOnce.decide_signal, DecisionInput(request_id="creative-1", decision="approve",
                                                               choice="write_off", by=ADMIN))
    result = await handle.result()
    assert result.outcome == "approved" and result.choice == "write_off"
    view = await handle.query(AskOnce.approvals, result_type=ApprovalsView)
    assert [r.error_type for r in view.rejected_signals] == ["DecisionNotAllowed", "DecisionNotAllowed"]
