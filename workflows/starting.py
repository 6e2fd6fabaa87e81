"""Starting a capability: the one path the API, the trigger table and the schedules take.

A capability's workflow is started under the id ``{tenant}:{capability}:{business key}`` with
the ``BizTenantId`` and ``BizCapability`` search attributes and the capability's id reuse
policy. :class:`CapabilityStart` names that once; :func:`start_capability` starts it (or
signals-with-start it) in one call to Temporal, and :meth:`CapabilityStart.schedule_action` is
the same start as a schedule's action (Temporal appends the scheduled time to the id).

A second start of a business key raises :class:`AlreadyStarted` with the existing workflow's
id; each caller answers it its own way (the API 409 ``already_started``, a webhook 200 with
the workflow it started first). A capability may declare results that leave the key free
(``Capability.starts_again``): over such a completed run, the start runs the key again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client, ScheduleActionStartWorkflow, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from core.names import CAPABILITY, TENANT_ID, WORKFLOWS_QUEUE, workflow_id
from workflows.capability import Capability


class AlreadyStarted(Exception):
    """The business key's workflow exists (running, or closed and its id not reusable)."""

    def __init__(self, capability: str, business_key: str, workflow_id: str, run_id: str | None) -> None:
        super().__init__(f"{capability} for {business_key!r} was already started")
        self.capability = capability
        self.business_key = business_key
        self.workflow_id = workflow_id
        self.run_id = run_id


@dataclass(frozen=True, slots=True)
class CapabilityStart:
    """One start of a capability: what runs, with which input, for which tenant and key."""

    capability: Capability
    input: Any
    tenant_id: str
    business_key: str

    @classmethod
    def of(cls, capability: Capability, inp: Any, tenant_id: str, business_key: str | None = None) -> CapabilityStart:
        """The start of ``inp``; its business key is the capability's unless given."""
        key = capability.business_key(inp) if business_key is None else business_key
        return cls(capability=capability, input=inp, tenant_id=tenant_id, business_key=key)

    @property
    def workflow_id(self) -> str:
        return workflow_id(self.tenant_id, self.capability.name, self.business_key)

    @property
    def search_attributes(self) -> TypedSearchAttributes:
        return TypedSearchAttributes(
            [SearchAttributePair(TENANT_ID, self.tenant_id), SearchAttributePair(CAPABILITY, self.capability.name)]
        )

    def schedule_action(self, *, task_queue: str, memo: Mapping[str, Any] | None = None) -> ScheduleActionStartWorkflow:
        """This start as a schedule's action: each run is ``{workflow_id}-{scheduled time}``."""
        return ScheduleActionStartWorkflow(
            self.capability.run,
            self.input,
            id=self.workflow_id,
            task_queue=task_queue,
            typed_search_attributes=self.search_attributes,
            memo=memo,
        )


async def start_capability(
    temporal: Client,
    start: CapabilityStart,
    *,
    memo: Mapping[str, Any] | None = None,
    signal: str | None = None,
    signal_args: Sequence[Any] = (),
    task_queue: str = WORKFLOWS_QUEUE,
    id_reuse_policy: WorkflowIDReusePolicy | None = None,
) -> WorkflowHandle[Any, Any]:
    """Start the capability's workflow, one round trip to Temporal.

    ``memo`` says who or what started it (the Idempotency-Key, the trigger's event, ...).
    With ``signal``, signal-with-start: a running workflow of the key gets the signal, none
    is started. :class:`AlreadyStarted` when the key's workflow exists (for a signal: when it
    has closed). ``id_reuse_policy`` overrides the capability's (an admin's retry of a failed run
    starts with ``ALLOW_DUPLICATE_FAILED_ONLY``)."""
    cap = start.capability
    wf_id = start.workflow_id

    async def attempt(reuse: WorkflowIDReusePolicy) -> WorkflowHandle[Any, Any]:
        return await temporal.start_workflow(
            cap.run,
            start.input,
            id=wf_id,
            task_queue=task_queue,
            id_reuse_policy=reuse,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING if signal else WorkflowIDConflictPolicy.FAIL,
            search_attributes=start.search_attributes,
            memo=memo,
            start_signal=signal,
            start_signal_args=signal_args,
        )

    try:
        return await attempt(cap.id_reuse_policy if id_reuse_policy is None else id_reuse_policy)
    except WorkflowAlreadyStartedError as exc:
        if signal is None and id_reuse_policy is None and await _key_free_again(temporal, cap, wf_id):
            try:  # a run still running (another start got here first) refuses this one
                return await attempt(WorkflowIDReusePolicy.ALLOW_DUPLICATE)
            except WorkflowAlreadyStartedError as again:
                raise AlreadyStarted(cap.name, start.business_key, wf_id, again.run_id) from None
        raise AlreadyStarted(cap.name, start.business_key, wf_id, exc.run_id) from None


async def _key_free_again(temporal: Client, cap: Capability, wf_id: str) -> bool:
    """Whether the key's last run completed with a result the capability starts again over."""
    if cap.starts_again is None:
        return False
    handle = temporal.get_workflow_handle_for(cap.run, wf_id)
    if (await handle.describe()).status != WorkflowExecutionStatus.COMPLETED:
        return False
    return cap.starts_again(await handle.result(follow_runs=False))
