"""Workflows: start a capability, read a workflow's status, state and result, cancel it, send
it one of its capability's commands."""

from __future__ import annotations

import asyncio
import logging
import math

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Router, get, post
from litestar.exceptions import NotFoundException, PermissionDeniedException, ServiceUnavailableException
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, Parameter, PathParameter, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED
from temporalio.client import (Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError,
                               WorkflowUpdateRPCTimeoutOrCancelledError)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Principal
from api.errors import ConflictError
from api.ratelimit import StartLimiter
from api.tenants import KnownTenants
from api.visibility import CURSOR_PATTERN, listed_tenant, page, quote, tenant_clause
from workflows.capability import Command
from workflows.catalogue import CATALOGUE, Capability, commands
from core.names import (CAPABILITY, CONTROL_QUERY, PENDING_APPROVAL, PLATFORM_TENANT, PROGRESS_QUERY, SLUG_PATTERN,
                        TENANT_ID)
from workflows.stages import ControlState, Stages
from workflows.starting import AlreadyStarted, CapabilityStart, start_capability


log = logging.getLogger(__name__)

IDEMPOTENCY_MEMO = "idempotency_key"
# A query waits for a worker to answer it: while none polls, the read answers without it.
QUERY_TIMEOUT = timedelta(seconds=5)


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
    # Workflow control (capabilities' workflows): paused or not, by whom and why, whether it has
    # stopped at a step boundary yet, and every pause and resume (workflows/stages.py).
    control: ControlState | None = None
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


async def _start(temporal: Client, cap: Capability, inp: Any, principal: Principal,
                 idempotency_key: str | None = None, limiter: StartLimiter | None = None,
                 tenants: KnownTenants | None = None) -> StartResponse:
    tenant = cap.tenant_in_input(inp) if cap.tenant_in_input else principal.tenant_id
    if tenant is None or not principal.can_see_tenant(tenant):
        raise NotFoundException(f"tenant {tenant!r} not found")
    # Platform staff name any tenant in the body: it must be one the platform knows (a client's
    # or a partner's tenants come with their identity).
    if (tenants is not None and principal.is_platform and not cap.creates_tenant and tenant != PLATFORM_TENANT
            and not await tenants.exists(tenant)):
        raise NotFoundException(f"tenant {tenant!r} not found")
    if limiter is not None:
        limiter.take(tenant)  # 429 with Retry-After: nothing started
    if hasattr(inp, "requested_by"):
        inp = msgspec.structs.replace(inp, requested_by=principal.sub)
    start = CapabilityStart.of(cap, inp, tenant)
    try:
        handle = await start_capability(
            temporal, start, memo={IDEMPOTENCY_MEMO: idempotency_key} if idempotency_key else None)
    except AlreadyStarted as exc:
        if idempotency_key:
            # A retried request (same Idempotency-Key) gets the answer the first one got.
            desc = await temporal.get_workflow_handle(exc.workflow_id).describe()
            if (await desc.memo()).get(IDEMPOTENCY_MEMO) == idempotency_key:
                return StartResponse(workflow_id=desc.id, run_id=desc.run_id)
        raise ConflictError(str(exc), extra={"workflow_id": exc.workflow_id}, code="already_started") from None
    return StartResponse(workflow_id=handle.id, run_id=handle.result_run_id or "")


async def start_change(temporal: Client, cap: Capability, change: Any, task_queue: str) -> StartResponse:
    """Start a platform change workflow (``workflows.capability.platform_change``) for a change
    the route has validated; 409 while a change of the same tenant and subject still runs."""
    tenant_id = cap.tenant_in_input(change) if cap.tenant_in_input else None
    assert tenant_id is not None, f"{cap.name} is not a platform change"
    try:
        handle = await start_capability(temporal, CapabilityStart.of(cap, change, tenant_id), task_queue=task_queue)
    except AlreadyStarted as exc:
        raise ConflictError(f"a change of {change.capability} for {tenant_id!r} is in progress; try again",
                            extra={"workflow_id": exc.workflow_id}) from None
    return StartResponse(workflow_id=handle.id, run_id=handle.result_run_id or "")


def _start_handler(cap: Capability, limiter: StartLimiter | None):  # noqa: ANN202 - a route handler per capability
    async def start(data: Any, request: Request, temporal: NamedDependency[Client],
                    idempotency_key: str | None = None) -> StartResponse:
        return await _start(temporal, cap, data, request.user, idempotency_key, limiter,
                            request.app.state.known_tenants)

    # The body type is the capability's input: validated by Litestar, documented in OpenAPI.
    start.__annotations__ = {
        "data": JSONBody[cap.input_type],
        "request": Request,
        "temporal": NamedDependency[Client],
        "idempotency_key": Annotated[str | None, HeaderParameter(
            name="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$",
            description="Retrying with the same key answers 202 with the workflow the first request started")],
        "return": StartResponse,
    }
    return post(
        f"/{cap.name}",
        operation_id=f"start_{cap.name}",
        summary=f"Start {cap.name}",
        description=cap.summary
        + " Starting the same business key twice answers 409 with the existing workflow_id, unless the "
        "request repeats the Idempotency-Key that started it (then 202 with the same ids). Too many starts for "
        "one tenant in a short time answer 429 with Retry-After.",
        status_code=HTTP_202_ACCEPTED,
        opt={"roles": cap.start_roles, "rate_limited": True},
        raises=[ConflictError, NotFoundException],
    )(start)


class WorkflowSummary(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    run_id: str
    workflow_type: str
    capability: str | None
    tenant_id: str | None
    status: str
    pending_approval: bool
    start_time: datetime | None
    close_time: datetime | None


class WorkflowPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[WorkflowSummary]
    next_cursor: str | None = None  # pass as ?cursor= for the next page


Status = Literal["running", "completed", "failed", "canceled", "terminated", "timed_out", "continued_as_new"]


# Shared by the controller below and the console (api/console/).

async def list_page(temporal: Client, key: bytes, principal: Principal, *, tenant_id: str | None = None,
                    capability: str | None = None, status: Status | None = None, pending: bool | None = None,
                    limit: int = 50, cursor: str | None = None) -> WorkflowPage:
    """A page of workflows in the caller's tenants, newest first, with the typed filters."""
    scope = tenant_clause(principal, listed_tenant(principal, tenant_id))
    if scope == "":
        return WorkflowPage(items=[])
    clauses = [scope] if scope else ["BizTenantId IS NOT NULL"]
    if capability:
        clauses.append(f"BizCapability = {quote(capability)}")
    if status:
        clauses.append(f"ExecutionStatus = {quote(_STATUS_NAMES[status])}")
    if pending is not None:  # a run that ended while asking keeps the attribute: not waiting
        clauses.append("BizPendingApproval = true AND ExecutionStatus = 'Running'" if pending else
                       "(BizPendingApproval = false OR BizPendingApproval IS NULL OR ExecutionStatus != 'Running')")
    executions, next_cursor = await page(temporal, key, clauses, limit, cursor)
    return WorkflowPage(items=[WorkflowSummary(
        workflow_id=wf.id, run_id=wf.run_id, workflow_type=wf.workflow_type,
        capability=wf.typed_search_attributes.get(CAPABILITY), tenant_id=wf.typed_search_attributes.get(TENANT_ID),
        status=wf.status.name if wf.status else "UNKNOWN",
        pending_approval=bool(wf.typed_search_attributes.get(PENDING_APPROVAL))
        and wf.status == WorkflowExecutionStatus.RUNNING,
        start_time=wf.start_time, close_time=wf.close_time) for wf in executions], next_cursor=next_cursor)


async def workflow_view(temporal: Client, principal: Principal, workflow_id: str) -> WorkflowView:
    """A workflow's status, its own progress query, its result or failure (404 out of scope)."""
    handle, desc = await describe_in_scope(temporal, principal, workflow_id)
    progress = result = failure = control = None
    try:
        progress = await handle.query(PROGRESS_QUERY, result_type=Any, rpc_timeout=QUERY_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - a workflow without the query, or no worker to answer
        log.info("no progress for %s: %s", workflow_id, exc)
        progress = None
    capability = CATALOGUE.get(desc.typed_search_attributes.get(CAPABILITY) or "")
    if progress is not None and capability is not None and issubclass(capability.workflow, Stages):
        try:
            control = await handle.query(CONTROL_QUERY, result_type=ControlState, rpc_timeout=QUERY_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a run from before workflow control
            log.info("no control state for %s: %s", workflow_id, exc)
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
        control=control,
        result=result,
        failure=failure,
    )


class WorkflowController(Controller):
    path = "/"
    tags = ["workflows"]

    @get("/", operation_id="list_workflows", summary="Workflows in the caller's tenants, newest first",
         description="Clients see their tenant, partners the tenants they manage, platform staff every tenant "
                     "(or `tenant_id`, 404 out of the caller's tenants). Filters are typed; page with `cursor` = "
                     "the previous `next_cursor`.",
         raises=[NotFoundException])
    async def list_workflows(
        self, request: Request, temporal: NamedDependency[Client], cursor_key: NamedDependency[bytes],
        tenant_id: Annotated[str | None, Parameter(pattern=SLUG_PATTERN)] = None,
        capability: Annotated[str | None, Parameter(pattern=SLUG_PATTERN)] = None,
        status: Annotated[Status | None, QueryParameter(description="Only workflows in this state")] = None,
        pending: Annotated[bool | None, Parameter(description="Only those waiting (or not) for a person")] = None,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Parameter(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page")] = None,
    ) -> WorkflowPage:
        return await list_page(temporal, cursor_key, request.user, tenant_id=tenant_id, capability=capability,
                               status=status, pending=pending, limit=limit, cursor=cursor)

    @get("/{workflow_id:str}", operation_id="get_workflow", summary="A workflow's status, progress and result")
    async def get_workflow(
        self, request: Request, temporal: NamedDependency[Client], workflow_id: Annotated[str, PathParameter(max_length=400)]
    ) -> WorkflowView:
        return await workflow_view(temporal, request.user, workflow_id)

    @post(
        "/{workflow_id:str}/cancel",
        operation_id="cancel_workflow",
        summary="Ask a running workflow to cancel",
        description="Each capability names the roles that may cancel it (403 otherwise; a client never cancels "
                    "its own dunning). Workflows holding money compensate: a canceled order releases its payment "
                    "(canceled, or refunded if captured) and is recorded as `canceled`. 409: not running.",
        status_code=HTTP_202_ACCEPTED,
        raises=[ConflictError, PermissionDeniedException],
    )
    async def cancel_workflow(self, request: Request, temporal: NamedDependency[Client], workflow_id: FromPath[str]) -> StartResponse:
        handle, desc = await describe_in_scope(temporal, request.user, workflow_id)
        capability = CATALOGUE.get(desc.typed_search_attributes.get(CAPABILITY) or "")
        # Workflows outside the catalogue (an agent loop, a tenant's capabilities) are the
        # platform's own: admins only.
        may_cancel = capability.cancel_roles if capability else frozenset({"super_admin", "admin"})
        if not request.user.roles & may_cancel:
            raise PermissionDeniedException(
                f"your role may not cancel {workflow_id!r} (allowed: {', '.join(sorted(may_cancel))})")
        if desc.status != WorkflowExecutionStatus.RUNNING:
            raise ConflictError(f"workflow {workflow_id!r} is {desc.status.name}, not running")
        await handle.cancel()
        return StartResponse(workflow_id=desc.id, run_id=desc.run_id)


_STATUS_NAMES = {"running": "Running", "completed": "Completed", "failed": "Failed", "canceled": "Canceled",
                 "terminated": "Terminated", "timed_out": "TimedOut", "continued_as_new": "ContinuedAsNew"}


async def send_command(temporal: Client, principal: Principal, wf_id: str, command: Command, data: Any,
                       timeout_seconds: float) -> Any:
    """Run ``command``'s update on the workflow for ``principal`` and answer its result.

    404: not in the caller's tenants, or its capability has no such command; 403: the caller's
    role may not send it; 409: not running, or the workflow's validator refused it (the problem
    code is the refusal's type); 503: no worker took it within ``timeout_seconds``."""
    handle, desc = await describe_in_scope(temporal, principal, wf_id)
    capability = CATALOGUE.get(desc.typed_search_attributes.get(CAPABILITY) or "")
    if capability is None or command not in capability.commands:
        raise NotFoundException(f"workflow {wf_id!r} takes no command {command.name!r}")
    if not principal.roles & command.roles:
        raise PermissionDeniedException(
            f"your role may not send {command.name!r} (allowed: {', '.join(sorted(command.roles))})")
    if desc.status != WorkflowExecutionStatus.RUNNING:
        raise ConflictError(f"workflow {wf_id!r} is {desc.status.name}, not running", code="not_running")
    if "requested_by" in getattr(type(data), "__struct_fields__", ()):
        data = msgspec.structs.replace(data, requested_by=principal.sub)
    try:
        async with asyncio.timeout(timeout_seconds):  # with no worker polling, Temporal would hold it open
            return await handle.execute_update(command.update, data, rpc_timeout=timedelta(seconds=timeout_seconds))
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise ServiceUnavailableException(
            f"the workflow did not take {command.name!r} within {timeout_seconds:g} s (its worker is not "
            "running?); it runs if the worker returns: read the workflow before sending it again",
            headers={"Retry-After": str(max(1, math.ceil(timeout_seconds)))}) from None
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError):
            raise ConflictError(cause.message, code=cause.type or "refused") from None
        raise
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        raise ConflictError(f"workflow {wf_id!r} is closed, not running", code="not_running") from None


def _command_handler(cap: Capability, command: Command):  # noqa: ANN202 - a route handler per command
    async def send(data: Any, request: Request, temporal: NamedDependency[Client],
                   workflow_id: Annotated[str, PathParameter(max_length=400)]) -> Any:
        return await send_command(temporal, request.user, workflow_id, command, data,
                                  request.app.state.settings.api.decision_timeout_seconds)

    send.__annotations__ = {
        "data": JSONBody[command.input_type],
        "request": Request,
        "temporal": NamedDependency[Client],
        "workflow_id": Annotated[str, PathParameter(max_length=400)],
        "return": Any,
    }
    return post(
        f"/{{workflow_id:str}}/commands/{command.name}",
        operation_id=f"command_{command.name.replace('-', '_')}",
        summary=f"{cap.name}: {command.name}",
        description=(command.summary or f"The {command.name} command of a running {cap.name} workflow.")
        + f" Roles: {', '.join(sorted(command.roles))}. 200 with the workflow's answer; 409: not running, or the "
        "workflow refused it now (the code says why); 404: not in your tenants or not a "
        f"{cap.name} workflow; 503 with Retry-After: no worker took it in time.",
        status_code=200,
        raises=[ConflictError, NotFoundException, PermissionDeniedException, ServiceUnavailableException],
    )(send)


def workflows_router(limiter: StartLimiter | None = None) -> Router:
    """``limiter``: the per-tenant start rate limit (create_app always gives one)."""
    starts = [_start_handler(cap, limiter) for cap in CATALOGUE.values()]
    sends = [_command_handler(cap, command) for cap, command in commands().values()]
    return Router(path="/v1/workflows", route_handlers=[*starts, *sends, WorkflowController], tags=["workflows"])
