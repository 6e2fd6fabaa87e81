"""Workflows: start a capability, read a workflow's status, state and result, cancel it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Router, get, post
from litestar.exceptions import NotFoundException
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, PathParameter
from litestar.status_codes import HTTP_202_ACCEPTED
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Principal
from api.errors import ConflictError
from workflows.catalogue import CATALOGUE, Capability
from workflows.names import CAPABILITY, TENANT_ID, WORKFLOWS_QUEUE, workflow_id


class StartResponse(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    run_id: str


class WorkflowView(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    run_id: str
    capability: str | None
    tenant_id: str | None
    status: str
    start_time: datetime | None
    close_time: datetime | None
    # The workflow's own `progress` query, as it answers it (stage, steps, ...).
    progress: Any = None
    result: Any = None
    failure: str | None = None


def _root_failure(exc: BaseException) -> str:
    """The innermost cause (e.g. the activity's ApplicationError), as `type: message`."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    kind = getattr(exc, "type", None) or exc.__class__.__name__
    return f"{kind}: {getattr(exc, 'message', None) or exc}"


async def describe_in_scope(temporal: Client, principal: Principal, wf_id: str) -> tuple[WorkflowHandle, Any]:
    """The workflow, if it exists and the caller may see its tenant; otherwise 404 alike."""
    handle = temporal.get_workflow_handle(wf_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NotFoundException(f"workflow {wf_id!r} not found") from None
        raise
    tenant = desc.typed_search_attributes.get(TENANT_ID)
    if not principal.can_see_tenant(tenant):
        raise NotFoundException(f"workflow {wf_id!r} not found")
    return handle, desc


async def _start(temporal: Client, cap: Capability, inp: Any, principal: Principal) -> StartResponse:
    tenant = cap.tenant_in_input(inp) if cap.tenant_in_input else principal.tenant_id
    if tenant is None or not principal.can_see_tenant(tenant):
        raise NotFoundException(f"tenant {tenant!r} not found")
    if hasattr(inp, "requested_by"):
        inp = msgspec.structs.replace(inp, requested_by=principal.sub)
    wf_id = workflow_id(tenant, cap.name, cap.business_key(inp))
    try:
        handle = await temporal.start_workflow(
            cap.run,
            inp,
            id=wf_id,
            task_queue=WORKFLOWS_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(TENANT_ID, tenant), SearchAttributePair(CAPABILITY, cap.name)]
            ),
        )
    except WorkflowAlreadyStartedError:
        raise ConflictError(
            f"{cap.name} for {cap.business_key(inp)!r} was already started", extra={"workflow_id": wf_id}
        ) from None
    return StartResponse(workflow_id=handle.id, run_id=handle.result_run_id or "")


def _start_handler(cap: Capability):  # noqa: ANN202 - a route handler made per capability
    async def start(data: Any, request: Request, temporal: NamedDependency[Client]) -> StartResponse:
        return await _start(temporal, cap, data, request.user)

    # The body type is the capability's input: validated by Litestar, documented in OpenAPI.
    start.__annotations__ = {
        "data": JSONBody[cap.input_type],
        "request": Request,
        "temporal": NamedDependency[Client],
        "return": StartResponse,
    }
    return post(
        f"/{cap.name}",
        operation_id=f"start_{cap.name}",
        summary=f"Start {cap.name}",
        description=cap.summary
        + " Starting the same business key twice answers 409 with the existing workflow_id.",
        status_code=HTTP_202_ACCEPTED,
        opt={"roles": cap.start_roles},
    )(start)


class WorkflowController(Controller):
    path = "/"
    tags = ["workflows"]

    @get("/{workflow_id:str}", operation_id="get_workflow", summary="A workflow's status, progress and result")
    async def get_workflow(
        self, request: Request, temporal: NamedDependency[Client], workflow_id: Annotated[str, PathParameter(max_length=400)]
    ) -> WorkflowView:
        handle, desc = await describe_in_scope(temporal, request.user, workflow_id)
        progress = result = failure = None
        try:
            progress = await handle.query("progress", result_type=Any)
        except Exception:  # noqa: BLE001 - a workflow without the query, or no worker to answer
            progress = None
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            result = await handle.result()
        elif desc.status == WorkflowExecutionStatus.FAILED:
            try:
                await handle.result()
            except Exception as exc:  # noqa: BLE001
                failure = _root_failure(exc)
        return WorkflowView(
            workflow_id=desc.id,
            run_id=desc.run_id,
            capability=desc.typed_search_attributes.get(CAPABILITY),
            tenant_id=desc.typed_search_attributes.get(TENANT_ID),
            status=desc.status.name if desc.status else "UNKNOWN",
            start_time=desc.start_time,
            close_time=desc.close_time,
            progress=progress,
            result=result,
            failure=failure,
        )

    @post(
        "/{workflow_id:str}/cancel",
        operation_id="cancel_workflow",
        summary="Ask a running workflow to cancel",
        status_code=HTTP_202_ACCEPTED,
    )
    async def cancel_workflow(self, request: Request, temporal: NamedDependency[Client], workflow_id: FromPath[str]) -> StartResponse:
        handle, desc = await describe_in_scope(temporal, request.user, workflow_id)
        if desc.status != WorkflowExecutionStatus.RUNNING:
            raise ConflictError(f"workflow {workflow_id!r} is {desc.status.name}, not running")
        await handle.cancel()
        return StartResponse(workflow_id=desc.id, run_id=desc.run_id)


def workflows_router() -> Router:
    starts = [_start_handler(cap) for cap in CATALOGUE.values()]
    return Router(path="/v1/workflows", route_handlers=[*starts, WorkflowController], tags=["workflows"])
