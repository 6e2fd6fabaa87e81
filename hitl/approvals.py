"""Human decisions inside a workflow: ``decision = await self.ask(ApprovalRequest(...))``.

A workflow class inherits :class:`HumanDecisions` (and calls its ``__init__``). That gives it:

- ``ask(request)``: opens the request, upserts ``BizPendingApproval`` and the audience, role and
  due search attributes and the ``approval`` memo (an inbox page is one visibility call), sends
  reminders, applies the timeout action (escalate, auto-reject or auto-approve), writes each
  decision to the audit log once (activity, idempotency key per request and person), clears
  the attributes and returns the :class:`~hitl.protocol.ApprovalOutcome`.
- the ``decide`` update: its validator refuses an unsigned, expired or misbound decision, a
  stale request, a decision or role not allowed, a second decision by the same person and edits
  that fail the schema before anything enters history; the handler has the signature verified
  (local activity ``approvals.verify_decision``), records the decision and answers a receipt.
- the ``decide`` signal: the same signed payload for fire-and-forget senders (``bizosaas
  approvals decide``, ``temporal workflow signal``); one that fails anywhere (not a decision,
  unsigned, forged, refused) is recorded in ``rejected_signals`` and changes nothing.
- the ``approvals`` query: the open request, the closed ones and the refused signals.

Handlers only verify and record; the workflow's own coroutine in ``ask`` reacts and runs the
activities. A decision accepted before ``ask`` acts on a deadline is always honoured: a
timeout that wakes in the same activation as a decision (or while one is being verified)
looks at the current state, never at the snapshot taken before it waited. How signatures work
and why verification is an activity: ``hitl.protocol`` ("Signed deciders").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec

    from activities.approvals import ApprovalActivities, Notify
    from activities.notify import Deliver, NotifierActivities
    from activities.decision_keys import DecisionKeyActivities, VerifyDecision
    from activities.tenants import AuditActivities, AuditEntry
    from hitl.protocol import (
        ApprovalOutcome,
        ApprovalRequest,
        ApprovalsView,
        BAD_SIGNATURE,
        MALFORMED_DECISION,
        SIGNED_DECISIONS,
        UNVERIFIED_SIGNATURE,
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
        signature_problem,
        signing_input,
        undeclared_roles,
    )
    from core.activity import raise_if_cancelled, run_activity
    from core.names import (
        APPROVAL_AUDIENCE,
        APPROVAL_DUE_AT,
        APPROVAL_ROLE,
        PENDING_APPROVAL,
        tenant_of,
    )

APPROVING = ("approve", "edit")
# The workflow.patched id of notifications that arrive: the ``requested`` and ``decided`` events
# and the delivery of every event (notifications.deliver). Runs from before it replay as they ran.
APPROVAL_NOTIFICATIONS = "approval-notifications"
DECIDED_OUTCOMES = ("approved", "rejected", "changes_requested")
MEMO_KEY = "approval"
NO_PAYLOAD = RawValue(Payload())  # a `decide` signal sent without input
T = TypeVar("T")


class UndeclaredRoles(Exception):
    """An approval request names a role its capability's ``decide_roles`` leaves out."""


class HumanDecisions:
    """Mixin for workflows that wait for people. Call ``HumanDecisions.__init__(self)``."""

    # The roles that may decide this workflow's approvals: its capability's ``decide_roles``
    # (workflows/capability.py sets it). A request naming any other role is a bug of the
    # workflow: asking it fails the workflow task (retried until a fixed build is deployed).
    decide_roles: ClassVar[frozenset[str] | None] = None

    def __init__(self) -> None:
        self._approval: OpenApproval | None = None
        self._approval_proposal: dict = {}
        self._approvals_closed: list[OpenApproval] = []
        self._rejected_signals: list[RejectedSignal] = []
        # Decisions take effect in the order they arrived, though each is verified on its own:
        # tickets handed out, and taken into effect (recorded or refused). A deadline waits
        # until every decision that arrived before it has taken effect.
        self._decisions_arrived = 0
        self._decisions_done = 0

    # --- messages ------------------------------------------------------------------------
    @workflow.update(name="decide")
    async def decide(self, d: DecisionInput) -> DecisionReceipt:
        if not workflow.patched(SIGNED_DECISIONS):  # a run from before signed deciders
            return _or_application_error(lambda: self._record(d, "update"))
        ticket = self._ticket()
        try:
            refused = await self._verify(d)
            await self._turn(ticket)
            if refused is not None:
                raise ApplicationError(refused.message, type=refused.type, non_retryable=True)
            # The validator ran before verifying (and before other decisions took effect): check again.
            return _or_application_error(lambda: self._record(d, "update"))
        finally:
            self._decisions_done += 1

    @decide.validator
    def _validate_decide(self, d: DecisionInput) -> None:
        # Only what needs no key: the MAC is verified by the handler (validators cannot run
        # activities). Validators run on new updates only, never on replay.
        wf_id = workflow.info().workflow_id
        problem = signature_problem(d, wf_id, workflow.now())
        if problem is not None:
            raise ApplicationError(problem.message, type=problem.type, non_retryable=True)
        _or_application_error(lambda: check_decision(self._approval, d, tenant_of(wf_id)))

    @workflow.signal(name="decide")
    async def decide_signal(self, payload: RawValue = NO_PAYLOAD) -> None:
        """A ``DecisionInput``, decoded here rather than by the SDK: a payload that is not a
        decision (or none at all) is recorded as refused, not dropped with a log line."""
        d: DecisionInput | None = None
        refused: DecisionRefused | None = None
        received_at = workflow.now()
        try:
            if not payload.payload.metadata:
                raise ValueError("the signal has no payload")
            d = workflow.payload_converter().from_payload(payload.payload, DecisionInput)
            who = (d.request_id, d.by.sub)
        except Exception as exc:  # noqa: BLE001 - any undecodable payload is refused the same way
            who = _signal_fields(payload)
            refused = DecisionRefused(MALFORMED_DECISION, f"the signal is not a decision: {exc}"[:500])
        if not workflow.patched(SIGNED_DECISIONS):  # a run from before signed deciders
            self._take_signal(d, who, refused, received_at)
            return
        ticket = self._ticket()
        try:
            if d is not None:
                refused = await self._verify(d)
            await self._turn(ticket)
            self._take_signal(d, who, refused, received_at)
        finally:
            self._decisions_done += 1

    @workflow.query(name="approvals")
    def approvals(self) -> ApprovalsView:
        return ApprovalsView(open=self._approval, closed=list(self._approvals_closed),
                             rejected_signals=list(self._rejected_signals))

    def _take_signal(self, d: DecisionInput | None, who: tuple[str, str], refused: DecisionRefused | None,
                     received_at: datetime) -> None:
        """Record the signalled decision, or record why it is refused."""
        if refused is None and d is not None:
            try:
                self._record(d, "signal")
                return
            except DecisionRefused as exc:
                refused = exc
        assert refused is not None
        workflow.logger.warning("decide signal refused (%s): %s", refused.type, refused.message)
        self._rejected_signals.append(RejectedSignal(
            request_id=who[0], decided_by=who[1], error_type=refused.type, reason=refused.message,
            received_at=received_at))

    def _ticket(self) -> int:
        self._decisions_arrived += 1
        return self._decisions_arrived - 1

    async def _turn(self, ticket: int) -> None:
        """Until every decision that arrived before ``ticket`` has taken effect."""
        await workflow.wait_condition(lambda: self._decisions_done == ticket)

    async def _verify(self, d: DecisionInput) -> DecisionRefused | None:
        """Why ``d``'s decider is not proven (or the protocol refuses it already), else None:
        signed, for this workflow, unexpired, and its MAC verifies with one of the worker's
        decision keys (local activity; replay reads the verdict from history)."""
        wf_id = workflow.info().workflow_id
        problem = signature_problem(d, wf_id, workflow.now())
        if problem is not None:
            return problem
        try:
            check_decision(self._approval, d, tenant_of(wf_id))  # no activity for what is refused anyway
        except DecisionRefused as refused:
            return refused
        sig = d.signature
        assert sig is not None  # signature_problem refuses an unsigned decision
        try:
            verdict = await run_activity(
                DecisionKeyActivities.verify_decision,
                VerifyDecision(key_id=sig.key_id, message=signing_input(d, sig).decode(), mac=sig.mac))
        except ActivityError as err:
            raise_if_cancelled(err)
            return DecisionRefused(UNVERIFIED_SIGNATURE, f"the signature could not be verified: {err.cause}")
        return None if verdict.valid else DecisionRefused(BAD_SIGNATURE, verdict.reason)

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
            edits=d.edits, diff=changes, via=d.via or via, choice=d.choice,  # type: ignore[arg-type]
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
        undeclared = undeclared_roles(req, type(self).decide_roles)
        if undeclared:
            raise UndeclaredRoles(f"request {req.request_id!r} lets roles {undeclared} decide, which the "
                                  f"capability does not declare in decide_roles {sorted(type(self).decide_roles or ())}")
        wf_id = workflow.info().workflow_id
        now = workflow.now()
        self._approval_proposal = dict(req.proposal)
        self._approval = OpenApproval(
            request=req, tenant_id=tenant_of(wf_id), opened_at=now, due_at=now + timedelta(seconds=req.due_in_seconds),
            audience=req.audience, roles=list(req.roles))
        self._announce()
        if workflow.patched(APPROVAL_NOTIFICATIONS):
            await self._notify("requested")
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
            # Woken by the clock. A decision that arrived with the timer, or is still being
            # verified, came first: it is honoured (its receipt may be out already).
            if self._decisions_done < self._decisions_arrived:
                await workflow.wait_condition(lambda: self._decisions_done == self._decisions_arrived)
            current = self._approval
            if (current is not None and (len(current.decisions) > audited or current.status == "closed")
                    and workflow.patched(SIGNED_DECISIONS)):
                continue
            # Past this point nothing arrived since `approval` was read, except in a run from
            # before signed deciders replaying what it did then (the decision lost to the timer).
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
        # Off the inboxes first, then the people asked hear who decided.
        if closed.outcome in DECIDED_OUTCOMES and workflow.patched(APPROVAL_NOTIFICATIONS):
            await self._notify("decided", approval=closed, outcome=closed.outcome,
                               decided_by=last.decided_by if last else None)
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
        await run_activity(
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
        )

    async def _audit_system(self, action: str) -> None:
        a = self._approval
        assert a is not None
        await run_activity(
            AuditActivities.write,
            AuditEntry(idempotency_key=f"{workflow.info().workflow_id}:approval:{a.request.request_id}:{action}",
                       tenant_id=a.tenant_id, actor="system", action=action, workflow_id=workflow.info().workflow_id,
                       details={"request_id": a.request.request_id, "kind": a.request.kind,
                                "audience": a.audience, "roles": a.roles}),
        )

    async def _notify(self, event: str, suffix: str = "", *, approval: OpenApproval | None = None,
                      outcome: str | None = None, decided_by: str | None = None) -> None:
        """Record the event (``approvals.notify``: the in-app feed), then deliver it to the
        audience by their channels (``notifications.deliver``). A delivery that fails for good
        is logged and recorded, never fails the approval. ``approval``: a closed one (default: the open one)."""
        a = approval or self._approval
        assert a is not None
        wf_id = workflow.info().workflow_id
        key = f"{wf_id}:approval:{a.request.request_id}:{event}{suffix}"
        outcome = outcome or (a.outcome if event == "timed_out" else None)
        await run_activity(
            ApprovalActivities.notify,
            Notify(idempotency_key=key, tenant_id=a.tenant_id,
                   workflow_id=wf_id, request_id=a.request.request_id, event=event, audience=a.audience,
                   roles=a.roles, title=a.request.title, due_at=a.due_at, outcome=outcome, decided_by=decided_by),
        )
        if not workflow.patched(APPROVAL_NOTIFICATIONS):
            return
        r = a.request
        try:
            await run_activity(NotifierActivities.deliver, Deliver(
                idempotency_key=key, tenant_id=a.tenant_id, workflow_id=wf_id, request_id=r.request_id, event=event,
                at=workflow.now(), audience=a.audience, roles=list(a.roles), title=r.title, summary=r.summary,
                kind=r.kind, allowed=list(r.allowed), choices=list(r.choices), due_at=a.due_at,
                escalated=a.escalated, outcome=outcome, decided_by=decided_by))
        except ActivityError as err:
            raise_if_cancelled(err)
            workflow.logger.warning("approval %s of %s not delivered: %s", event, r.request_id, err.cause)


def _or_application_error(take: Callable[[], T]) -> T:
    """``take()``, a protocol refusal raised as the ApplicationError the caller sees (its type
    is the refusal's: the API maps it to HTTP)."""
    try:
        return take()
    except DecisionRefused as refused:
        raise ApplicationError(refused.message, type=refused.type, non_retryable=True) from None


def _signal_fields(payload: RawValue) -> tuple[str, str]:
    """``(request_id, decider)`` of an undecodable ``decide`` signal, as far as they can be read."""
    if not payload.payload.metadata:
        return "", ""
    try:
        value: Any = workflow.payload_converter().from_payload(payload.payload)
    except Exception:  # noqa: BLE001 - not even JSON
        return "", ""
    if not isinstance(value, dict):
        return "", ""
    by = value.get("by")
    request_id = value.get("request_id")
    sub = by.get("sub") if isinstance(by, dict) else None
    return (request_id[:100] if isinstance(request_id, str) else "", sub[:320] if isinstance(sub, str) else "")
