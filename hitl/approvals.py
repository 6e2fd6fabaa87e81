"""Human decisions inside a workflow: ``decision = await self.ask(ApprovalRequest(...))``.

A workflow class inherits :class:`HumanDecisions` (and calls its ``__init__``). That gives it:

- ``ask(request)``: opens the request, upserts ``BizPendingApproval`` and the audience, role and
  due search attributes and the ``approval`` memo (an inbox page is one visibility call), sends
  reminders, applies the timeout action (escalate, auto-reject or auto-approve), writes each
  decision to the audit log once (activity, idempotency key per request and person), clears
  the attributes and returns the :class:`~hitl.protocol.ApprovalOutcome`.
- the ``decide`` update: its validator refuses a stale request, a decision or role not allowed,
  a second decision by the same person and edits that fail the schema before anything enters
  history; the handler records the decision and answers a receipt.
- the ``decide`` signal: the same payload for fire-and-forget senders (``temporal workflow
  signal``, other SDKs); an invalid one is recorded in ``rejected_signals`` and ignored.
- the ``approvals`` query: the open request, the closed ones and the refused signals.

Handlers only record; the workflow's own coroutine in ``ask`` reacts and runs the activities.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec

    from activities.approvals import ApprovalActivities, Notify
    from activities.tenants import AuditActivities, AuditEntry
    from hitl.protocol import (
        ApprovalOutcome,
        ApprovalRequest,
        ApprovalsView,
        DecisionInput,
        DecisionReceipt,
        DecisionRecord,
        DecisionRefused,
        OpenApproval,
        RejectedSignal,
        action_id,
        apply_edits,
        check_decision,
        diff,
    )
    from workflows.names import (
        APPROVAL_AUDIENCE,
        APPROVAL_DUE_AT,
        APPROVAL_ROLE,
        PENDING_APPROVAL,
        tenant_of,
    )
    from workflows.policies import DB_RETRY, DB_TIMEOUT

APPROVING = ("approve", "edit")
MEMO_KEY = "approval"


class HumanDecisions:
    """Mixin for workflows that wait for people. Call ``HumanDecisions.__init__(self)``."""

    def __init__(self) -> None:
        self._approval: OpenApproval | None = None
        self._approval_proposal: dict = {}
        self._approvals_closed: list[OpenApproval] = []
        self._rejected_signals: list[RejectedSignal] = []

    # --- messages ------------------------------------------------------------------------
    @workflow.update(name="decide")
    async def decide(self, d: DecisionInput) -> DecisionReceipt:
        # Validators of updates arriving together all run before the first handler; check again.
        try:
            return self._record(d, "update")
        except DecisionRefused as refused:
            raise ApplicationError(refused.message, type=refused.type, non_retryable=True) from None

    @decide.validator
    def _validate_decide(self, d: DecisionInput) -> None:
        try:
            check_decision(self._approval, d, tenant_of(workflow.info().workflow_id))
        except DecisionRefused as refused:
            raise ApplicationError(refused.message, type=refused.type, non_retryable=True) from None

    @workflow.signal(name="decide")
    def decide_signal(self, d: DecisionInput) -> None:
        try:
            self._record(d, "signal")
        except DecisionRefused as refused:
            workflow.logger.warning("decide signal refused (%s): %s", refused.type, refused.message)
            self._rejected_signals.append(RejectedSignal(
                request_id=d.request_id, decided_by=d.by.sub, error_type=refused.type, reason=refused.message,
                received_at=workflow.now()))

    @workflow.query(name="approvals")
    def approvals(self) -> ApprovalsView:
        return ApprovalsView(open=self._approval, closed=list(self._approvals_closed),
                             rejected_signals=list(self._rejected_signals))

    def _record(self, d: DecisionInput, via: str) -> DecisionReceipt:
        role = check_decision(self._approval, d, tenant_of(workflow.info().workflow_id))
        approval = self._approval
        assert approval is not None  # check_decision refuses a missing request
        now = workflow.now()
        changes = []
        if d.decision == "edit" and d.edits:
            edited = apply_edits(self._approval_proposal, d.edits)
            changes = diff(self._approval_proposal, edited)
            self._approval_proposal = edited
        record = DecisionRecord(
            request_id=d.request_id, decision=d.decision, decided_by=d.by.sub, role=role,
            tenant_id=d.by.tenant_id, acting_as=d.by.acting_as, decided_at=now, comment=d.comment,
            edits=d.edits, diff=changes, via=via, choice=d.choice,  # type: ignore[arg-type]
        )
        decisions = [*approval.decisions, record]
        approvals = sum(1 for r in decisions if r.decision in APPROVING)
        outcome = None
        if d.decision == "reject":
            outcome = "rejected"
        elif d.decision == "request_changes":
            outcome = "changes_requested"
        elif approvals >= approval.request.approvals_needed:
            outcome = "approved"
        self._approval = msgspec.structs.replace(
            approval, decisions=decisions, status="closed" if outcome else "open", outcome=outcome,
            closed_at=now if outcome else None)
        return DecisionReceipt(
            action_id=action_id(workflow.info().workflow_id, d.request_id), request_id=d.request_id,
            decision=d.decision, decided_by=d.by.sub, decided_at=now, approvals=approvals,
            approvals_needed=approval.request.approvals_needed, closed=outcome is not None,
        )

    # --- asking --------------------------------------------------------------------------
    async def ask(self, req: ApprovalRequest) -> ApprovalOutcome:
        """Open ``req``, wait for the decision (reminding, escalating, timing out as it says),
        audit every decision once, close it and return the outcome."""
        wf_id = workflow.info().workflow_id
        now = workflow.now()
        self._approval_proposal = dict(req.proposal)
        self._approval = OpenApproval(
            request=req, tenant_id=tenant_of(wf_id), opened_at=now, due_at=now + timedelta(seconds=req.due_in_seconds),
            audience=req.audience, roles=list(req.roles))
        self._announce()
        audited = 0
        phase_start, reminders_sent = now, 0
        while True:
            approval = self._approval
            for record in approval.decisions[audited:]:
                await self._audit_decision(record)
            audited = len(approval.decisions)
            if approval.status == "closed":
                break
            now = workflow.now()
            reminder_at = (phase_start + timedelta(seconds=req.remind_after_seconds[reminders_sent])
                           if reminders_sent < len(req.remind_after_seconds) else None)
            wake_at = min((t for t in (reminder_at, approval.due_at) if t is not None), default=None)
            try:
                await workflow.wait_condition(
                    lambda: self._approval is not None and (
                        len(self._approval.decisions) > audited or self._approval.status == "closed"),
                    timeout=max(wake_at - now, timedelta(milliseconds=1)) if wake_at else None,
                )
                continue
            except asyncio.TimeoutError:
                pass
            now = workflow.now()
            if approval.due_at is not None and now >= approval.due_at:
                if req.timeout_action == "escalate" and not approval.escalated:
                    self._escalate(req, now)
                    phase_start, reminders_sent = now, 0
                    await self._notify("escalated")
                    await self._audit_system("approval.escalated")
                else:
                    outcome = "timed_out_approved" if req.timeout_action == "auto_approve" else "timed_out_rejected"
                    self._approval = msgspec.structs.replace(approval, status="closed", outcome=outcome, closed_at=now)
                    await self._notify("timed_out")
                    await self._audit_system(f"approval.{outcome}")
            elif reminder_at is not None and now >= reminder_at:
                reminders_sent += 1
                await self._notify("reminder", f":{'esc' if approval.escalated else 'open'}:{reminders_sent}")
        closed = self._approval
        self._approval = None
        self._approvals_closed.append(closed)
        workflow.upsert_search_attributes([
            PENDING_APPROVAL.value_set(False), APPROVAL_AUDIENCE.value_unset(), APPROVAL_ROLE.value_unset(),
            APPROVAL_DUE_AT.value_unset()])
        workflow.upsert_memo({MEMO_KEY: None})
        last = closed.decisions[-1] if closed.decisions else None
        return ApprovalOutcome(
            request_id=req.request_id, outcome=closed.outcome or "timed_out_rejected",
            proposal=dict(self._approval_proposal), comment=last.comment if last else "",
            decisions=list(closed.decisions), escalated=closed.escalated, choice=last.choice if last else None)

    def _escalate(self, req: ApprovalRequest, now: datetime) -> None:
        due = now + timedelta(seconds=req.escalation_due_in_seconds) if req.escalation_due_in_seconds else None
        self._approval = msgspec.structs.replace(
            self._approval, audience=req.escalate_to_audience, roles=list(req.escalate_to_roles), escalated=True,
            due_at=due)
        self._announce()

    def _announce(self) -> None:
        """The open request into search attributes and memo: the inboxes' one visibility call."""
        a = self._approval
        assert a is not None
        updates = [PENDING_APPROVAL.value_set(True), APPROVAL_AUDIENCE.value_set(a.audience),
                   APPROVAL_ROLE.value_set(a.roles[0] if a.roles else "admin")]
        updates.append(APPROVAL_DUE_AT.value_set(a.due_at) if a.due_at else APPROVAL_DUE_AT.value_unset())
        workflow.upsert_search_attributes(updates)
        r = a.request
        workflow.upsert_memo({MEMO_KEY: {
            "request_id": r.request_id, "kind": r.kind, "title": r.title, "summary": r.summary,
            "due_at": a.due_at.isoformat() if a.due_at else None, "opened_at": a.opened_at.isoformat(),
            "audience": a.audience, "roles": a.roles, "allowed": list(r.allowed),
            "approvals_needed": r.approvals_needed, "escalated": a.escalated, "choices": list(r.choices),
        }})

    async def _audit_decision(self, record: DecisionRecord) -> None:
        a = self._approval
        assert a is not None
        await workflow.execute_activity_method(
            AuditActivities.write,
            AuditEntry(
                idempotency_key=f"{workflow.info().workflow_id}:approval:{record.request_id}:{record.decided_by}",
                tenant_id=a.tenant_id, actor=record.decided_by, action=f"approval.{record.decision}",
                workflow_id=workflow.info().workflow_id,
                details={"request_id": record.request_id, "kind": a.request.kind, "role": record.role,
                         "acting_as": record.acting_as, "decided_at": record.decided_at.isoformat(),
                         "comment": record.comment, "edits": record.edits,
                         "diff": msgspec.to_builtins(record.diff), "via": record.via,
                         "decider_tenant": record.tenant_id, "choice": record.choice},
            ),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
        )

    async def _audit_system(self, action: str) -> None:
        a = self._approval
        assert a is not None
        await workflow.execute_activity_method(
            AuditActivities.write,
            AuditEntry(idempotency_key=f"{workflow.info().workflow_id}:approval:{a.request.request_id}:{action}",
                       tenant_id=a.tenant_id, actor="system", action=action, workflow_id=workflow.info().workflow_id,
                       details={"request_id": a.request.request_id, "kind": a.request.kind,
                                "audience": a.audience, "roles": a.roles}),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
        )

    async def _notify(self, event: str, suffix: str = "") -> None:
        a = self._approval
        assert a is not None
        wf_id = workflow.info().workflow_id
        await workflow.execute_activity_method(
            ApprovalActivities.notify,
            Notify(idempotency_key=f"{wf_id}:approval:{a.request.request_id}:{event}{suffix}", tenant_id=a.tenant_id,
                   workflow_id=wf_id, request_id=a.request.request_id, event=event, audience=a.audience,
                   roles=a.roles, title=a.request.title, due_at=a.due_at),
            start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY,
        )
