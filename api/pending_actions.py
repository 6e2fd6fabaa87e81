"""Pending Actions (client portal) and the Approval Hub (admin portal): the inboxes of the
approval protocol, and the one endpoint where people decide.

An inbox page is one visibility call: open approvals carry ``BizPendingApproval`` and the
audience, role and due search attributes, and their title, summary and due time in the
``approval`` memo. Deciding is the workflow's ``decide`` update: its validator refuses what the
protocol refuses before anything enters history, and the receipt comes back in the answer.
The decider's identity is the verified token's, never the body's, and the API signs it with
the first of ``BIZ_DECISION_KEYS`` (bound to the workflow, valid a few minutes), so the
workflow can tell it from a decider anyone with namespace access could write.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Router, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, PermissionDeniedException, ServiceUnavailableException
from litestar.params import JSONBody, Parameter, PathParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_200_OK
from temporalio.client import (Client, WorkflowExecution, WorkflowExecutionStatus, WorkflowUpdateFailedError,
                               WorkflowUpdateRPCTimeoutOrCancelledError)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Principal
from api.errors import ConflictError, RejectedError
from api.visibility import CURSOR_PATTERN, in_list, listed_tenant, page, quote, tenant_clause, timestamp
from api.workflows import QUERY_TIMEOUT, describe_in_scope
from hitl.approvals import HumanDecisions
from hitl.protocol import (
    ALREADY_DECIDED,
    CONFLICT_TYPES,
    DECISION_ERROR_TYPES,
    DECISION_NOT_ALLOWED,
    INVALID_EDITS,
    ROLE_NOT_ALLOWED,
    SIGNATURE_TYPES,
    STALE_REQUEST,
    TENANT_NOT_ALLOWED,
    UNPROCESSABLE_TYPES,
    ApprovalRequest,
    Audience,
    Decider,
    DecisionInput,
    DecisionKind,
    DecisionReceipt,
    DecisionRecord,
    OpenApproval,
    Outcome,
    action_id,
    sign_decision,
    split_action_id,
)
from core.settings import Settings
from core.names import CAPABILITY, SLUG_PATTERN, TENANT_ID, tenant_of

log = logging.getLogger(__name__)

STREAM_POLL_SECONDS = 1.0
STREAM_MAX_POLLS = 3600  # an hour, then the client reconnects
NOTIFICATION_WINDOW_SECONDS = 60.0  # how far back the stream looks for notifications committed late
# The API's clock against the database's (created_at is the database's now()).
NOTIFICATION_CLOCK_MARGIN = timedelta(seconds=2)
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
HUB_ROLES = frozenset({"super_admin", "admin", "finance", "support", "partner"})
DECISION_SIGNATURE_TTL_SECONDS = 300  # sent at once; minutes cover clock skew between hosts
_ACTION_ID = Annotated[str, PathParameter(min_length=3, max_length=500, description="`{workflow_id}~{request_id}`")]


class ActionSummary(msgspec.Struct, frozen=True, kw_only=True):
    action_id: str
    workflow_id: str
    tenant_id: str | None
    capability: str | None
    request_id: str
    kind: str
    title: str
    summary: str
    audience: str
    roles: list[str]
    allowed: list[str]
    approvals_needed: int
    escalated: bool
    opened_at: str | None
    choices: list[str]
    due_at: str | None


class ActionPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ActionSummary]
    next_cursor: str | None = None  # pass as ?cursor= for the next page


class ActionDetail(msgspec.Struct, frozen=True, kw_only=True):
    action_id: str
    workflow_id: str
    tenant_id: str
    capability: str | None
    status: str  # open | closed
    outcome: Outcome | None
    request: ApprovalRequest  # proposal, allowed decisions, edit schema, timings
    audience: Audience
    roles: list[str]
    escalated: bool
    opened_at: datetime
    due_at: datetime | None
    decisions: list[DecisionRecord]


class DecisionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    decision: DecisionKind
    comment: Annotated[str, msgspec.Meta(max_length=4000)] = ""
    edits: dict[str, Any] | None = None  # with decision "edit": fields of the proposal, per its edit schema
    choice: Annotated[str, msgspec.Meta(max_length=41)] | None = None  # with approve, where the action offers choices


async def _summaries(executions: list[WorkflowExecution]) -> list[ActionSummary]:
    items = []
    for wf in executions:
        memo = (await wf.memo()).get("approval")
        if not isinstance(memo, dict):  # closed between the listing and now
            continue
        items.append(ActionSummary(
            action_id=action_id(wf.id, memo["request_id"]), workflow_id=wf.id,
            tenant_id=wf.typed_search_attributes.get(TENANT_ID), capability=wf.typed_search_attributes.get(CAPABILITY),
            request_id=memo["request_id"], kind=memo.get("kind", ""), title=memo.get("title", ""),
            summary=memo.get("summary", ""), audience=memo.get("audience", ""), roles=list(memo.get("roles") or []),
            allowed=list(memo.get("allowed") or []), approvals_needed=int(memo.get("approvals_needed") or 1),
            escalated=bool(memo.get("escalated")), opened_at=memo.get("opened_at"), due_at=memo.get("due_at"),
            choices=list(memo.get("choices") or []),
        ))
    return items


async def _inbox(temporal: Client, key: bytes, principal: Principal, audience: str, tenant_id: str | None, limit: int,
                 cursor: str | None, extra: list[str]) -> ActionPage:
    scope = tenant_clause(principal, listed_tenant(principal, tenant_id))
    if scope == "":
        return ActionPage(items=[])
    clauses = ["BizPendingApproval = true", f"BizApprovalAudience = {quote(audience)}",
               "ExecutionStatus = 'Running'", *extra]
    if scope:
        clauses.append(scope)
    executions, next_cursor = await page(temporal, key, clauses, limit, cursor)
    return ActionPage(items=await _summaries(executions), next_cursor=next_cursor)


def _decider(principal: Principal) -> Decider:
    return Decider(sub=principal.sub, roles=sorted(principal.roles), tenant_id=principal.tenant_id,
                   tenants=sorted(principal.tenants), acting_as=principal.acting_as)


def _signed(settings: Settings, decision: DecisionInput, wf_id: str) -> DecisionInput:
    """``decision`` signed for ``wf_id`` with the API's decision key (503 when none is set)."""
    try:
        key_id, secret = settings.decision.signing_key()
    except LookupError:
        log.error("a decision was refused: BIZ_DECISION_KEYS is not set on the API")
        raise ServiceUnavailableException("decisions are not configured on this server") from None
    return sign_decision(decision, workflow_id=wf_id, key_id=key_id, secret=secret, issued_at=int(time.time()),
                         ttl_seconds=DECISION_SIGNATURE_TTL_SECONDS)


_LIMIT = Annotated[int, Parameter(ge=1, le=MAX_LIMIT)]
_CURSOR = Annotated[str | None, Parameter(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page")]
_TENANT = Annotated[str | None, Parameter(pattern=SLUG_PATTERN, description="Only this tenant (within scope)")]
_CAPABILITY = Annotated[str | None, Parameter(pattern=SLUG_PATTERN, description="Only this capability")]


# What the controllers below and the console (api/console/) share: one way to list, read and
# decide, so a decision from a browser takes the same signed path as one from the API.

async def client_inbox(temporal: Client, key: bytes, principal: Principal, *, tenant_id: str | None = None,
                       capability: str | None = None, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> ActionPage:
    """Pending Actions: open approvals addressed to clients, in the caller's tenants."""
    extra = [f"BizCapability = {quote(capability)}"] if capability else []
    return await _inbox(temporal, key, principal, "client", tenant_id, limit, cursor, extra)


async def hub_inbox(temporal: Client, key: bytes, principal: Principal, *, tenant_id: str | None = None,
                    capability: str | None = None, role: str | None = None, overdue: bool | None = None,
                    limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> ActionPage:
    """The Approval Hub: open approvals addressed to the platform's staff, with its filters."""
    extra = []
    if capability:
        extra.append(f"BizCapability = {quote(capability)}")
    if role:
        extra.append(f"BizApprovalRole = {quote(role)}")
    if overdue is not None:
        now = timestamp(datetime.now(timezone.utc))
        extra.append(f"BizApprovalDueAt < {now}" if overdue else f"BizApprovalDueAt >= {now}")
    return await _inbox(temporal, key, principal, "admin", tenant_id, limit, cursor, extra)


async def action_detail(temporal: Client, principal: Principal, action_id: str) -> ActionDetail:
    """An approval, open or closed, of a workflow in the caller's tenants (404 otherwise)."""
    wf_id, request_id = _split(action_id)
    handle, desc = await describe_in_scope(temporal, principal, wf_id)
    try:
        view = await handle.query(HumanDecisions.approvals, rpc_timeout=QUERY_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.DEADLINE_EXCEEDED:
            raise  # no worker answered: 503
        raise NotFoundException(f"pending action {action_id!r} not found") from None
    except Exception:  # noqa: BLE001 - a workflow without approvals: nothing to show
        raise NotFoundException(f"pending action {action_id!r} not found") from None
    found = [a for a in ([view.open] if view.open else []) + view.closed if a.request.request_id == request_id]
    if not found:
        raise NotFoundException(f"pending action {action_id!r} not found")
    a: OpenApproval = found[-1]
    # A run canceled, terminated or timed out while asking ends with its request still open in
    # its state (a terminated run runs no more code): nobody can decide it any more.
    status = a.status if desc.status == WorkflowExecutionStatus.RUNNING else "closed"
    return ActionDetail(
        action_id=action_id, workflow_id=wf_id, tenant_id=a.tenant_id,
        capability=desc.typed_search_attributes.get(CAPABILITY), status=status, outcome=a.outcome,
        request=a.request, audience=a.audience, roles=a.roles, escalated=a.escalated, opened_at=a.opened_at,
        due_at=a.due_at, decisions=a.decisions)


async def decide_action(temporal: Client, settings: Settings, principal: Principal, action_id: str,
                        data: DecisionBody) -> DecisionReceipt:
    """The ``decide`` update, signed for the caller; refusals as HTTP errors (403/404/409/422/503)."""
    wf_id, request_id = _split(action_id)
    # One round trip when all is well: the workflow's validator checks the caller's tenant
    # scope (first, so another tenant learns nothing), role and the request itself. Ids
    # begin with their tenant, so a caller out of scope is answered without a call at all.
    if not principal.can_see_tenant(tenant_of(wf_id)):
        raise NotFoundException(f"pending action {action_id!r} not found")
    decision = DecisionInput(request_id=request_id, decision=data.decision, comment=data.comment,
                             edits=data.edits, choice=data.choice, by=_decider(principal))
    return await execute_decision(temporal, settings, wf_id, decision,
                                  lambda: describe_in_scope(temporal, principal, wf_id))


async def execute_decision(temporal: Client, settings: Settings, wf_id: str, decision: DecisionInput,
                           in_scope: Callable[[], Awaitable[Any]]) -> DecisionReceipt:
    """``decision`` signed with the API's key and sent as the ``decide`` update (the workflow's
    validator decides); its refusals as HTTP errors. ``in_scope()`` raises 404 when the workflow
    does not exist or is out of the caller's scope (asked only when the update fails)."""
    action = action_id(wf_id, decision.request_id)
    signed = _signed(settings, decision, wf_id)
    bound = settings.api.decision_timeout_seconds
    try:
        # Bounded: with no worker polling, Temporal would hold the call open indefinitely.
        async with asyncio.timeout(bound):
            return await temporal.get_workflow_handle(wf_id).execute_update(
                HumanDecisions.decide, signed, rpc_timeout=timedelta(seconds=bound))
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise ServiceUnavailableException(
            f"the workflow did not take the decision within {bound:g} s (its worker is not running?); the "
            "decision is recorded if the worker returns: ask again later (409 then means it was)",
            headers={"Retry-After": str(max(1, math.ceil(bound)))},
        ) from None
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        if isinstance(cause, ApplicationError) and cause.type in DECISION_ERROR_TYPES:
            raise _http_error(cause, action) from None
        # Not an approval workflow (no `decide` handler): as good as not found.
        await in_scope()
        raise NotFoundException(f"pending action {action!r} not found") from None
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        # No such workflow (404), or it has completed: its approvals are closed (409).
        await in_scope()
        raise ConflictError(f"pending action {action!r} is closed", code="approval_closed") from None


class PendingActionsController(Controller):
    path = "/v1/pending-actions"
    tags = ["pending actions"]

    @get("/", operation_id="list_pending_actions", summary="The caller's Pending Actions (client audience)",
         description="Open approvals addressed to clients, in the caller's tenants (partners: the tenants they "
                     "manage; platform staff: every tenant, or `tenant_id`; 404 for a tenant out of the caller's). One "
                     "visibility call per page.",
         raises=[NotFoundException])
    async def list_pending(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                           cursor_key: NamedDependency[bytes],
                           tenant_id: _TENANT = None, capability: _CAPABILITY = None,
                           limit: _LIMIT = DEFAULT_LIMIT, cursor: _CURSOR = None) -> ActionPage:
        return await client_inbox(temporal, cursor_key, request.user, tenant_id=tenant_id, capability=capability,
                                  limit=limit, cursor=cursor)

    @get("/stream", operation_id="stream_pending_actions", summary="Changes of the caller's Pending Actions (SSE)",
         description="Server-sent events: `opened` with the action (as the list shows it) when one appears, "
                     "`closed` with its action_id when it is decided or times out, and `notification` with each "
                     "approval event (requested, reminder, escalated, decided, timed_out) in the caller's "
                     f"tenants. One poller per API process watches visibility every {STREAM_POLL_SECONDS:g} s "
                     "for every connection; each connection sees only its own scope. Reconnect with a new "
                     "request (a connection ends after an hour). 404: `tenant_id` out of the caller's tenants.",
         raises=[NotFoundException])
    async def stream(self, request: Request[Principal, Any, Any], tenant_id: _TENANT = None) -> ServerSentEvent:
        hub: PendingStream = request.app.state.pending_stream
        subscriber = hub.subscribe(request.user, listed_tenant(request.user, tenant_id))

        async def changes() -> AsyncIterator[ServerSentEventMessage]:
            try:
                deadline = time.monotonic() + STREAM_POLL_SECONDS * STREAM_MAX_POLLS
                while time.monotonic() < deadline:
                    try:
                        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                            message = await subscriber.queue.get()
                    except TimeoutError:
                        return
                    if message is None:  # dropped (too far behind) or the API is stopping
                        return
                    yield message
            finally:
                hub.unsubscribe(subscriber)

        return ServerSentEvent(changes())

    @get("/{action_id:str}", operation_id="get_pending_action",
         summary="An approval: the proposal, allowed decisions, edit schema, due time and decisions so far")
    async def get_action(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                         action_id: _ACTION_ID) -> ActionDetail:
        return await action_detail(temporal, request.user, action_id)

    @post("/{action_id:str}/decision", operation_id="decide_pending_action", status_code=HTTP_200_OK,
          summary="Approve, reject, request changes to or edit what the AI proposed",
          description="200 with the receipt once the workflow has recorded the decision. 409: already decided "
                      "by you, or the approval is closed; 422: a decision not allowed here or edits that do not "
                      "match the edit schema; 403: your role may not decide it; 404: not in your tenants; "
                      "503 with Retry-After: the workflow's worker did not take the decision in time "
                      "(BIZ_API_DECISION_TIMEOUT_SECONDS); Temporal keeps it for the worker's return, so "
                      "asking again answers 409 once it was recorded.",
          raises=[ConflictError, RejectedError, PermissionDeniedException, ServiceUnavailableException])
    async def decide(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                     action_id: _ACTION_ID, data: JSONBody[DecisionBody]) -> DecisionReceipt:
        return await decide_action(temporal, request.app.state.settings, request.user, action_id, data)


# The protocol's refusals as stable problem codes (api/errors.py).
PROBLEM_CODES = {STALE_REQUEST: "approval_closed", ALREADY_DECIDED: "already_decided",
                 DECISION_NOT_ALLOWED: "decision_not_allowed", INVALID_EDITS: "invalid_edits"}


def _split(value: str) -> tuple[str, str]:
    try:
        return split_action_id(value)
    except ValueError:
        raise NotFoundException(f"pending action {value!r} not found") from None


def _http_error(cause: BaseException | None, action: str) -> Exception:
    kind = cause.type if isinstance(cause, ApplicationError) else None
    message = cause.message if isinstance(cause, ApplicationError) else "decision refused"
    if kind in CONFLICT_TYPES:
        return ConflictError(message, code=PROBLEM_CODES[kind])
    if kind in UNPROCESSABLE_TYPES:
        return RejectedError(message, code=PROBLEM_CODES[kind])
    if kind == ROLE_NOT_ALLOWED:
        return PermissionDeniedException(message)
    if kind == TENANT_NOT_ALLOWED:
        return NotFoundException(f"pending action {action!r} not found")
    if kind in SIGNATURE_TYPES:
        # The API signed it: the workers verify with other keys (or the clocks are far apart).
        log.error("the workflow refused the API's signed decision on %s (%s): are BIZ_DECISION_KEYS the same "
                  "on the API and the workers?", action, kind)
        return ServiceUnavailableException("the decision could not be verified; try again later")
    return RejectedError(message)


class ApprovalHubController(Controller):
    path = "/v1/admin/approvals"
    tags = ["approval hub"]

    @get("/", operation_id="list_admin_approvals", summary="Open approvals addressed to the platform's staff",
         description="The Optimization & Approvals hub across tenants (partners: the tenants they manage). "
                     "Admins decide through `POST /v1/pending-actions/{action_id}/decision`. 404: `tenant_id` out of "
                     "the caller's tenants.",
         opt={"roles": HUB_ROLES}, raises=[NotFoundException])
    async def list_approvals(self, request: Request[Principal, Any, Any], temporal: NamedDependency[Client],
                             cursor_key: NamedDependency[bytes],
                             tenant_id: _TENANT = None, capability: _CAPABILITY = None,
                             role: Annotated[str | None, Parameter(pattern=r"^[a-z_]{2,32}$",
                                                                   description="Only approvals for this role")] = None,
                             overdue: Annotated[bool | None, Parameter(description="Only those past due")] = None,
                             limit: _LIMIT = DEFAULT_LIMIT, cursor: _CURSOR = None) -> ActionPage:
        return await hub_inbox(temporal, cursor_key, request.user, tenant_id=tenant_id, capability=capability,
                               role=role, overdue=overdue, limit=limit, cursor=cursor)


class Subscriber:
    """One stream connection: its scope, what it has been told is open, and its queue."""

    QUEUE_SIZE = 1000

    def __init__(self, principal: Principal, tenant_id: str | None) -> None:
        self.principal = principal
        self.tenant_id = tenant_id
        self.seen: dict[str, ActionSummary] = {}
        self.queue: asyncio.Queue[ServerSentEventMessage | None] = asyncio.Queue(self.QUEUE_SIZE)
        # It hears the notifications written from when it opened (the database's clock, a margin
        # for the two clocks), whichever poll first reads them.
        self.since = datetime.now(timezone.utc) - NOTIFICATION_CLOCK_MARGIN

    def sees(self, tenant: str | None) -> bool:
        if self.tenant_id is not None and tenant != self.tenant_id:
            return False
        return self.principal.can_see_tenant(tenant)

    def put(self, message: ServerSentEventMessage) -> bool:
        try:
            self.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            return False


class PendingStream:
    """The API process's one poller behind every Pending Actions stream: each
    ``STREAM_POLL_SECONDS`` one visibility listing of the open client approvals of every tenant
    a connection may see, and the new rows of ``approval_notifications``, fanned out to each
    connection within its scope. It runs while at least one connection is open."""

    MAX_OPEN = 2000  # open approvals a poll reads (pages of MAX_LIMIT)

    def __init__(self, temporal: Callable[[], Client], db: Callable[[], Any] | None = None,
                 interval: float = STREAM_POLL_SECONDS) -> None:
        self._temporal = temporal
        self._db = db
        self._interval = interval
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._sent: dict[int, float] = {}  # notification ids fanned out (recent ones), monotonic time
        self.polls = 0  # visibility listings made (one per interval, whatever the connections)

    def subscribe(self, principal: Principal, tenant_id: str | None) -> Subscriber:
        sub = Subscriber(principal, tenant_id)
        self._subscribers.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="pending-actions-stream")
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    @property
    def connections(self) -> int:
        return len(self._subscribers)

    async def aclose(self) -> None:
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(None)
            except asyncio.QueueFull:
                pass
        self._subscribers.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while self._subscribers:
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Temporal or Postgres away: try again next round
                log.warning("pending actions stream: poll failed (%s)", exc.__class__.__name__)
            await asyncio.sleep(self._interval)
        self._task = None

    def _scope(self) -> str | None:
        """The tenants any connection may see, as a clause ('' none, None every tenant)."""
        tenants: set[str] = set()
        for sub in list(self._subscribers):
            clause = tenant_clause(sub.principal, sub.tenant_id)
            if clause is None:
                return None
            if sub.tenant_id is not None and clause:
                tenants.add(sub.tenant_id)
            elif clause:
                tenants |= {t for t in (sub.principal.tenant_id, *sub.principal.tenants) if t}
        return in_list("BizTenantId", sorted(tenants)) if tenants else ""

    async def _open_actions(self) -> dict[str, ActionSummary]:
        scope = self._scope()
        if scope == "":
            return {}
        clauses = ["BizPendingApproval = true", "BizApprovalAudience = 'client'", "ExecutionStatus = 'Running'"]
        if scope:
            clauses.append(scope)
        query = " AND ".join(f"({c})" for c in clauses)
        executions: list[WorkflowExecution] = []
        async for wf in self._temporal().list_workflows(query, page_size=MAX_LIMIT, limit=self.MAX_OPEN):
            executions.append(wf)
        self.polls += 1
        return {a.action_id: a for a in await _summaries(executions)}

    async def _notifications(self) -> list[Any]:
        """Rows of ``approval_notifications`` not fanned out yet. Ids are not committed in order
        (two inserts, the later id committed first), so it reads a recent window and remembers
        what it sent, rather than only what is past the highest id seen."""
        if self._db is None or not self._subscribers:
            return []
        # From when the earliest connection opened: a time, not the highest id then, which a
        # later first poll could read past rows written meanwhile (and commits come out of id
        # order anyway).
        since = min(sub.since for sub in self._subscribers)
        pool = self._db()
        rows = await pool.fetch(
            """SELECT id, tenant_id, workflow_id, request_id, event, audience, title, due_at, outcome, decided_by,
                      created_at FROM approval_notifications
                WHERE created_at >= $1 AND created_at > now() - make_interval(secs => $2) ORDER BY id LIMIT 2000""",
            since, NOTIFICATION_WINDOW_SECONDS)
        fresh = [r for r in rows if r["id"] not in self._sent]
        now = time.monotonic()
        for r in fresh:
            self._sent[r["id"]] = now
        for key in [k for k, at in self._sent.items() if now - at > 2 * NOTIFICATION_WINDOW_SECONDS]:
            del self._sent[key]
        return fresh

    async def _poll(self) -> None:
        current = await self._open_actions()
        notes = await self._notifications()
        for sub in list(self._subscribers):
            mine = {aid: a for aid, a in current.items() if sub.sees(a.tenant_id)}
            out = [ServerSentEventMessage(event="opened", id=aid, data=msgspec.json.encode(mine[aid]).decode())
                   for aid in mine.keys() - sub.seen.keys()]
            out += [ServerSentEventMessage(event="closed", id=aid, data=msgspec.json.encode({"action_id": aid}).decode())
                    for aid in sub.seen.keys() - mine.keys()]
            for n in notes:  # a connection hears the events from after it opened
                if n["created_at"] >= sub.since and sub.sees(n["tenant_id"]) and (
                        n["audience"] == "client" or sub.principal.is_platform):
                    out.append(ServerSentEventMessage(event="notification", id=f"n{n['id']}", data=msgspec.json.encode({
                        "event": n["event"], "action_id": action_id(n["workflow_id"], n["request_id"]),
                        "tenant_id": n["tenant_id"], "title": n["title"], "audience": n["audience"],
                        "due_at": n["due_at"], "outcome": n["outcome"], "decided_by": n["decided_by"],
                        "at": n["created_at"]}).decode()))
            sub.seen = mine
            for message in out:
                if not sub.put(message):  # too far behind: end its stream, it reconnects
                    self.unsubscribe(sub)
                    while not sub.queue.empty():
                        sub.queue.get_nowait()
                    sub.queue.put_nowait(None)
                    break


def pending_actions_router() -> Router:
    return Router(path="/", route_handlers=[PendingActionsController, ApprovalHubController])

