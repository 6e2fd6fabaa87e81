"""Workflow control for platform admins: pause, resume, terminate, retry, and the same in bulk.

- ``POST /v1/admin/workflows/{id}/pause`` and ``.../resume``: the workflow stops at its next
  step boundary and waits there until resumed (workflows/stages.py: the step under way — an
  activity, a child workflow, an approval — runs to its end). Every capability honours it; other
  workflows (an agent loop, a tenant's settings change) answer 409, as does pausing a paused
  workflow or resuming one not paused (when its worker says so within two seconds; with no
  worker up the signal is sent, and waits for one).
- ``POST .../terminate``: ends a running workflow at once, with the reason in its history. No
  compensation runs (a cancel does that: ``POST /v1/workflows/{id}/cancel``).
- ``POST .../retry``: a new run of the same workflow id, with the input of its last run (read
  from the first event of that run's history), when that run failed, was terminated, canceled or
  timed out. A capability's own starts never reuse a closed id (a business key runs once); an
  admin's retry starts with ``ALLOW_DUPLICATE_FAILED_ONLY``, so a completed run is never run
  again. A run whose input no longer decodes is not retried (409).
- ``POST /v1/admin/workflows/bulk``: one of those over the workflows that typed filters select
  (tenant, capability, status, pending approval; user text never becomes query text). A dry run
  (the default) lists what it would touch and changes nothing; ``dry_run: false`` acts on at most
  ``limit`` (100 at most) of them, each as the single route would, and says what happened to each.

Admins (``super_admin``, ``admin``) only, in every tenant; anyone else gets 403, an unknown
workflow 404. Every control is written to the audit log (who, the workflow's tenant, what, the
reason, the run ids) by the API itself, as for the MCP registry: a terminate leaves the workflow
no step in which to write it, and the entry must not depend on the worker being up. The entry
is written once the control was accepted by Temporal.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody, PathParameter
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDReusePolicy

from api.audit import write_entry
from api.auth import Principal
from api.errors import ConflictError, invalid
from api.visibility import in_list, quote, tenant_clause
from api.workflows import describe_in_scope
from core.names import (CAPABILITY, CONTROL_QUERY, NOT_BLANK_PATTERN, PAUSE_SIGNAL, RESUME_SIGNAL, SLUG_PATTERN,
                        TENANT_ID)
from workflows.capability import ADMINS
from workflows.catalogue import CATALOGUE, Capability
from workflows.stages import ControlRequest, ControlState, Stages
from workflows.starting import AlreadyStarted, CapabilityStart, start_capability

log = logging.getLogger(__name__)

Operation = Literal["pause", "resume", "terminate", "retry"]
Status = Literal["running", "failed", "terminated", "canceled", "timed_out", "completed"]
MAX_BULK = 100
# How long a pause or resume waits for the workflow to say whether it is paused already.
STATE_TIMEOUT = timedelta(seconds=2)

_RETRYABLE = frozenset({WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.TERMINATED,
                        WorkflowExecutionStatus.CANCELED, WorkflowExecutionStatus.TIMED_OUT})
_STATUS = {"running": WorkflowExecutionStatus.RUNNING, "failed": WorkflowExecutionStatus.FAILED,
           "terminated": WorkflowExecutionStatus.TERMINATED, "canceled": WorkflowExecutionStatus.CANCELED,
           "timed_out": WorkflowExecutionStatus.TIMED_OUT, "completed": WorkflowExecutionStatus.COMPLETED}
_QUERY_STATUS = {"running": "Running", "failed": "Failed", "terminated": "Terminated", "canceled": "Canceled",
                 "timed_out": "TimedOut", "completed": "Completed"}
# The states each operation applies to (what a bulk operation selects when no status is given).
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "pause": ("running",), "resume": ("running",), "terminate": ("running",),
    "retry": ("failed", "terminated", "canceled", "timed_out"),
}
_AUDIT_ACTION = {"pause": "workflow.paused", "resume": "workflow.resumed", "terminate": "workflow.terminated",
                 "retry": "workflow.retried"}

Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=NOT_BLANK_PATTERN,
                                     description="Why (kept in the audit log; for terminate, in the history too)")]
WorkflowId = Annotated[str, PathParameter(max_length=400)]


class ControlBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Reason


class ControlAnswer(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    operation: Operation
    tenant_id: str | None
    run_id: str  # the run controlled; for a retry, the new run
    previous_run_id: str | None = None  # a retry: the run it replaces
    audit_id: int


# One of the catalogue's capabilities (an enum in the OpenAPI document).
CapabilityName = Literal[tuple(sorted(CATALOGUE))]  # type: ignore[valid-type]


class BulkBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    operation: Operation
    reason: Reason
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)] | None = None
    capability: CapabilityName | None = None
    # Default: the states the operation applies to (running; for retry the closed-unsuccessfully ones).
    status: Status | None = None
    pending_approval: bool | None = None
    # True: list what would be touched, change nothing.
    dry_run: bool = True
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_BULK)] = 20


class BulkItem(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    run_id: str
    tenant_id: str | None
    capability: str | None
    status: str
    # A dry run: "would". Otherwise "done", or "skipped" with the reason (not running any more,
    # not pausable, its input no longer decodes, ...).
    outcome: Literal["would", "done", "skipped"]
    detail: str | None = None
    new_run_id: str | None = None


class BulkAnswer(msgspec.Struct, frozen=True, kw_only=True):
    operation: Operation
    dry_run: bool
    query: str  # the visibility query the filters composed
    matched: int  # how many workflows match (the items are the first ``limit``)
    items: list[BulkItem]
    done: int = 0
    skipped: int = 0


async def _audit(db: asyncpg.Pool, actor: str, tenant: str, action: str, workflow_id: str | None,
                 details: dict[str, Any]) -> int:
    return await write_entry(db, subject="control", tenant_id=tenant, actor=actor, action=action,
                             details=details, workflow_id=workflow_id)


def _capability(desc: Any) -> Capability | None:
    return CATALOGUE.get(desc.typed_search_attributes.get(CAPABILITY) or "")


async def _retry_start(temporal: Client, principal: Principal, desc: Any, wf_id: str) -> str:
    """Start a new run of ``wf_id`` with its last run's input; the new run's id."""
    cap = _capability(desc)
    tenant = desc.typed_search_attributes.get(TENANT_ID)
    prefix = f"{tenant}:{cap.name}:" if cap is not None else ""
    if cap is None or tenant is None or not wf_id.startswith(prefix):
        raise ConflictError(f"workflow {wf_id!r} is not a capability's run: it is not retried")
    handle = temporal.get_workflow_handle(wf_id, run_id=desc.run_id)
    first = None
    async for event in handle.fetch_history_events(page_size=1):
        first = event
        break
    payloads = first.workflow_execution_started_event_attributes.input.payloads if first is not None else []
    try:
        [inp] = await temporal.data_converter.decode(list(payloads), [cap.input_type])
    except Exception as exc:  # noqa: BLE001 - a payload that does not decode is the reason it is not retried
        raise ConflictError(f"the input of {wf_id!r} does not decode as {cap.input_type.__name__} "
                            f"({exc.__class__.__name__}): it is not retried") from None
    start = CapabilityStart(capability=cap, input=inp, tenant_id=tenant, business_key=wf_id[len(prefix):])
    try:
        new = await start_capability(
            temporal, start, task_queue=desc.task_queue,
            memo={"retry_of": desc.run_id, "retried_by": principal.sub},
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY)
    except AlreadyStarted:
        raise ConflictError(f"workflow {wf_id!r} was started again meanwhile", code="already_started",
                            extra={"workflow_id": wf_id}) from None
    return new.result_run_id or ""


async def control(temporal: Client, db: asyncpg.Pool, principal: Principal, wf_id: str, op: Operation,
                  reason: str, bulk: str | None = None) -> ControlAnswer:
    """One control of one workflow, audited: 404 unknown (or out of scope), 409 when the
    workflow's state does not allow it."""
    handle, desc = await describe_in_scope(temporal, principal, wf_id)
    status = desc.status
    if op == "retry":
        if status not in _RETRYABLE:
            raise ConflictError(f"workflow {wf_id!r} is {status.name if status else 'UNKNOWN'}: only a failed, "
                                "terminated, canceled or timed out run is retried")
    elif status != WorkflowExecutionStatus.RUNNING:
        raise ConflictError(f"workflow {wf_id!r} is {status.name if status else 'UNKNOWN'}, not running")
    previous = None
    run_id = desc.run_id
    if op in ("pause", "resume"):
        cap = _capability(desc)
        if cap is None or not issubclass(cap.workflow, Stages):
            raise ConflictError(f"workflow {wf_id!r} does not pause (only capabilities' workflows do)")
        state = await _control_state(handle)
        if state is not None and state.paused == (op == "pause"):
            raise ConflictError(f"workflow {wf_id!r} is {'already' if state.paused else 'not'} paused")
        await handle.signal(PAUSE_SIGNAL if op == "pause" else RESUME_SIGNAL,
                            ControlRequest(by=principal.sub, reason=reason))
    elif op == "terminate":
        await handle.terminate(reason=f"{reason} (terminated by {principal.sub})")
    else:
        previous, run_id = desc.run_id, await _retry_start(temporal, principal, desc, wf_id)
    tenant = desc.typed_search_attributes.get(TENANT_ID)
    details: dict[str, Any] = {"reason": reason, "run_id": run_id}
    if previous:
        details["previous_run_id"] = previous
    if bulk:
        details["bulk"] = bulk
    audit_id = await _audit(db, principal.sub, tenant or "platform", _AUDIT_ACTION[op], wf_id, details)
    return ControlAnswer(workflow_id=wf_id, operation=op, tenant_id=tenant, run_id=run_id,
                         previous_run_id=previous, audit_id=audit_id)


async def _control_state(handle: Any) -> ControlState | None:
    """The workflow's control state, or None when no worker answers soon (the signal is sent
    all the same: it takes effect when a worker picks the workflow up)."""
    try:
        return await handle.query(CONTROL_QUERY, result_type=ControlState, rpc_timeout=STATE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - no worker, or a run from before workflow control
        log.info("no control state for %s: %s", handle.id, exc)
        return None


def _bulk_query(principal: Principal, body: BulkBody) -> str:
    statuses = APPLIES_TO[body.operation]
    if body.status is not None:
        if body.status not in statuses:
            raise invalid("status", f"{body.operation} applies to {', '.join(statuses)} workflows only", "body")
        statuses = (body.status,)
    scope = tenant_clause(principal, body.tenant_id)
    if scope == "":  # a tenant out of the caller's scope: as good as unknown
        raise NotFoundException(f"tenant {body.tenant_id!r} not found")
    clauses = [scope or "BizTenantId IS NOT NULL"]
    if body.capability:
        clauses.append(f"BizCapability = {quote(body.capability)}")
    clauses.append(in_list("ExecutionStatus", [_QUERY_STATUS[s] for s in statuses]))
    if body.pending_approval is not None:
        clauses.append("BizPendingApproval = true" if body.pending_approval else
                       "(BizPendingApproval = false OR BizPendingApproval IS NULL)")
    return " AND ".join(f"({c})" for c in clauses)


_DESCRIPTION = ("Admins only, in any tenant (403 for anyone else; 404: no such workflow; 409: its state does not "
                "allow it). Audited with the caller and the reason.")


class AdminWorkflowController(Controller):
    path = "/v1/admin/workflows"
    tags = ["workflow control"]
    opt = {"roles": ADMINS}

    @post("/{workflow_id:str}/pause", operation_id="pause_workflow", status_code=200,
          summary="Pause a workflow at its next step boundary",
          description="The step under way (an activity, a child workflow, an approval) runs to its end; the "
                      "workflow then waits until resumed. `GET /v1/workflows/{id}` shows `control.paused` and, once "
                      "it has stopped, `control.waiting`. Capabilities' workflows only. " + _DESCRIPTION,
          raises=[ConflictError])
    async def pause(self, request: Request, temporal: NamedDependency[Client], db: NamedDependency[asyncpg.Pool],
                    workflow_id: WorkflowId, data: JSONBody[ControlBody]) -> ControlAnswer:
        return await control(temporal, db, request.user, workflow_id, "pause", data.reason)

    @post("/{workflow_id:str}/resume", operation_id="resume_workflow", status_code=200,
          summary="Resume a paused workflow", description="A workflow not paused goes on as it was. " + _DESCRIPTION,
          raises=[ConflictError])
    async def resume(self, request: Request, temporal: NamedDependency[Client], db: NamedDependency[asyncpg.Pool],
                     workflow_id: WorkflowId, data: JSONBody[ControlBody]) -> ControlAnswer:
        return await control(temporal, db, request.user, workflow_id, "resume", data.reason)

    @post("/{workflow_id:str}/terminate", operation_id="terminate_workflow", status_code=200,
          summary="Terminate a running workflow now, with a reason",
          description="No compensation runs (cancel does that). " + _DESCRIPTION, raises=[ConflictError])
    async def terminate(self, request: Request, temporal: NamedDependency[Client], db: NamedDependency[asyncpg.Pool],
                        workflow_id: WorkflowId, data: JSONBody[ControlBody]) -> ControlAnswer:
        return await control(temporal, db, request.user, workflow_id, "terminate", data.reason)

    @post("/{workflow_id:str}/retry", operation_id="retry_workflow", status_code=202,
          summary="Run a failed, terminated, canceled or timed out workflow again",
          description="A new run of the same workflow id with its last run's input, on the same task queue. "
                      "A completed or running workflow is not retried (409). " + _DESCRIPTION,
          raises=[ConflictError])
    async def retry(self, request: Request, temporal: NamedDependency[Client], db: NamedDependency[asyncpg.Pool],
                    workflow_id: WorkflowId, data: JSONBody[ControlBody]) -> ControlAnswer:
        return await control(temporal, db, request.user, workflow_id, "retry", data.reason)

    @post("/bulk", operation_id="bulk_workflow_control", status_code=200,
          summary="Pause, resume, terminate or retry the workflows that filters select (dry run first)",
          description="Filters are typed (tenant, capability, status, pending approval). `dry_run` (the default) "
                      "lists the first `limit` matches and changes nothing; `dry_run: false` applies the operation "
                      f"to them (at most {MAX_BULK}), each as its single route would, and audits each. A workflow "
                      "whose state changed meanwhile is skipped with the reason. Admins only.")
    async def bulk(self, request: Request, temporal: NamedDependency[Client], db: NamedDependency[asyncpg.Pool],
                   data: JSONBody[BulkBody]) -> BulkAnswer:
        principal: Principal = request.user
        query = _bulk_query(principal, data)
        matched = (await temporal.count_workflows(query)).count
        executions = []
        async for wf in temporal.list_workflows(query, limit=data.limit, page_size=data.limit):
            executions.append(wf)
        items: list[BulkItem] = []
        bulk_id = uuid.uuid4().hex
        done = skipped = 0
        seen: set[str] = set()
        for wf in executions:
            base = dict(workflow_id=wf.id, run_id=wf.run_id, tenant_id=wf.typed_search_attributes.get(TENANT_ID),
                        capability=wf.typed_search_attributes.get(CAPABILITY),
                        status=wf.status.name if wf.status else "UNKNOWN")
            if data.dry_run:
                items.append(BulkItem(**base, outcome="would"))
                continue
            if wf.id in seen:  # an earlier run of a workflow listed already (retries list every run)
                items.append(BulkItem(**base, outcome="skipped", detail="another run of this workflow is listed"))
                skipped += 1
                continue
            seen.add(wf.id)
            try:
                answer = await control(temporal, db, principal, wf.id, data.operation, data.reason, bulk=bulk_id)
            except (ConflictError, NotFoundException) as exc:
                items.append(BulkItem(**base, outcome="skipped", detail=exc.detail))
                skipped += 1
                continue
            items.append(BulkItem(**base, outcome="done",
                                  new_run_id=answer.run_id if data.operation == "retry" else None))
            done += 1
        if not data.dry_run:
            await _audit(db, principal.sub, "platform", "workflow.bulk", None, {
                "bulk": bulk_id, "operation": data.operation, "reason": data.reason, "query": query,
                "matched": matched, "done": done, "skipped": skipped})
        return BulkAnswer(operation=data.operation, dry_run=data.dry_run, query=query, matched=matched,
                          items=items, done=done, skipped=skipped)
