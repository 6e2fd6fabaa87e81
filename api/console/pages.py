"""The console's pages: sign-in, Pending Actions, the Approval Hub, an action (proposal,
decisions so far, due time, the edit form, the receipt), the workflow explorer, schedules and
reports. Every page reads through the API's own functions (api/pending_actions.py,
api/workflows.py, api/schedules/) with the signed-in person as the caller, so the console sees
and may do exactly what that person's token allows through the API, and a decision takes the
same signed path as ``POST /v1/pending-actions/{action_id}/decision``.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.enums import MediaType
from litestar.exceptions import (HTTPException, NotAuthorizedException, NotFoundException,
                                 PermissionDeniedException, ValidationException)
from litestar.response import Redirect, Template
from litestar.status_codes import (HTTP_200_OK, HTTP_303_SEE_OTHER, HTTP_400_BAD_REQUEST, HTTP_403_FORBIDDEN,
                                   HTTP_404_NOT_FOUND, HTTP_409_CONFLICT, HTTP_422_UNPROCESSABLE_ENTITY,
                                   HTTP_500_INTERNAL_SERVER_ERROR, HTTP_503_SERVICE_UNAVAILABLE)
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.auth import ROLES, Principal
from api.console import forms
from api.console.session import (CONSOLE, ConsoleNotConfigured, Session, authorization_url, check_csrf, clear_flow,
                                 clear_session, current_flow, current_session, exchange_code, new_flow, oidc_ready,
                                 redirect_uri, safe_next, session_key, set_flow, set_session, signed_in,
                                 token_expiry)
from api.errors import ConflictError, RejectedError
from api.pending_actions import (HUB_ROLES, ActionDetail, DecisionBody, action_detail, client_inbox, decide_action,
                                 hub_inbox)
from api.schedules.common import SPEC_ROLES, WRITE_ROLES
from api.schedules.schedule import describe_in_scope as schedule_in_scope
from api.schedules.schedule import list_in_scope as list_schedules
from api.workflows import describe_in_scope, list_page, workflow_view
from core.names import SLUG_PATTERN
from core.settings import Settings
from workflows.catalogue import CATALOGUE

log = logging.getLogger(__name__)

STATUSES: tuple[str, ...] = ("running", "completed", "failed", "canceled", "terminated", "timed_out", "continued_as_new")
DECISION_LABELS = {"approve": "Approve", "reject": "Reject", "request_changes": "Request changes",
                   "edit": "Approve with edits"}
TIMELINE_LIMIT = 1000  # events read from a history; the page says when there were more
REPORTS_LIMIT = 100
_SLUG = re.compile(SLUG_PATTERN)
_ROLE = re.compile(r"^[a-z_]{2,32}$")
_KIND = re.compile(r"^[a-z0-9_.-]{1,64}$")


def _render(request: Request[Any, Any, Any], name: str, principal: Principal | None, session: Session | None,
            status: int = HTTP_200_OK, **context: Any) -> Template:
    return Template(template_name=name, status_code=status, context={
        "me": principal, "csrf": session.csrf if session else "", "path": request.url.path,
        "query": request.url.query, "staff": bool(principal and principal.has_any_role(HUB_ROLES)), **context})


def _filter(value: str | None, pattern: re.Pattern[str], field: str, errors: dict[str, str], message: str) -> str | None:
    value = (value or "").strip() or None
    if value is not None and not pattern.match(value):
        errors[field] = message
        return None
    return value


def _when(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _pretty(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _who_decided(detail: ActionDetail) -> str:
    if not detail.decisions:
        if detail.outcome and detail.outcome.startswith("timed_out"):
            return "It timed out before anyone decided."
        return "It is no longer open."
    last = detail.decisions[-1]
    return (f"{last.decided_by} ({last.role}) decided it first: {DECISION_LABELS.get(last.decision, last.decision)} "
            f"at {_when(last.decided_at)}.")


class ConsoleController(Controller):
    path = CONSOLE
    include_in_schema = False

    # --- sign-in -------------------------------------------------------------------------

    @get("/login", name="console:login")
    async def login_page(self, request: Request[Any, Any, Any], next: FromQuery[str | None] = None,  # noqa: A002
                         error: FromQuery[str | None] = None) -> Response[Any]:
        settings: Settings = request.app.state.settings
        oidc = settings.auth.mode == "oidc"
        try:
            (oidc_ready if oidc else session_key)(settings)
        except ConsoleNotConfigured as exc:
            return _render(request, "unavailable.html", None, None, HTTP_503_SERVICE_UNAVAILABLE, message=str(exc))
        flow = new_flow(settings, next or CONSOLE + "/", oidc=False)
        response = _render(request, "login.html", None, None, oidc=oidc, next=flow.next,
                           flow_csrf=flow.csrf, error=_LOGIN_ERRORS.get(error or "", ""))
        set_flow(response, settings, flow)
        return response

    @post("/login", name="console:login-submit", status_code=HTTP_303_SEE_OTHER)
    async def login(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Dev mode: the pasted dev token (``bizosaas token``) opens a session."""
        settings: Settings = request.app.state.settings
        form = await request.form()
        check_csrf(current_flow(request), form.get("csrf"))
        next_path = safe_next(form.get("next"))
        if settings.auth.mode != "dev":
            raise PermissionDeniedException("sign in with the identity provider")
        token = (form.get("token") or "").strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        try:
            await request.app.state.token_verifier.verify(token)
        except NotAuthorizedException:
            flow = new_flow(settings, next_path, oidc=False)
            response = _render(request, "login.html", None, None, HTTP_422_UNPROCESSABLE_ENTITY, oidc=False,
                               next=flow.next, flow_csrf=flow.csrf,
                               token_error="This token does not verify: it may have expired, or belong to another "
                                           "installation. Mint one with `bizosaas token`.")
            set_flow(response, settings, flow)
            return response
        response = Redirect(next_path, status_code=HTTP_303_SEE_OTHER)
        set_session(response, settings, token, token_expiry(token))
        clear_flow(response)
        return response

    @get("/login/oidc", name="console:login-oidc")
    async def login_oidc(self, request: Request[Any, Any, Any],
                         next: FromQuery[str | None] = None) -> Response[Any]:  # noqa: A002
        """OIDC: off to the identity provider with a fresh state, nonce and PKCE challenge."""
        settings: Settings = request.app.state.settings
        if settings.auth.mode != "oidc":
            return Redirect(CONSOLE + "/login")
        try:
            oidc_ready(settings)
        except ConsoleNotConfigured as exc:
            return _render(request, "unavailable.html", None, None, HTTP_503_SERVICE_UNAVAILABLE, message=str(exc))
        flow = new_flow(settings, next or CONSOLE + "/", oidc=True)
        response = Redirect(authorization_url(settings, flow, redirect_uri(request)))
        set_flow(response, settings, flow)
        return response

    @get("/auth/callback", name="console:oidc-callback")
    async def oidc_callback(self, request: Request[Any, Any, Any]) -> Response[Any]:
        settings: Settings = request.app.state.settings
        q = request.query_params
        code, state, error = q.get("code"), q.get("state"), q.get("error")
        flow = current_flow(request)
        if settings.auth.mode != "oidc" or flow is None or not flow.state or state != flow.state:
            return Redirect(CONSOLE + "/login?error=state")
        if error or not code:
            return Redirect(CONSOLE + "/login?error=refused")
        try:
            token = await exchange_code(settings, flow, code, redirect_uri(request))
            await request.app.state.token_verifier.verify(token)
        except NotAuthorizedException as exc:
            log.warning("console sign-in refused: %s", exc.detail)
            response = Redirect(CONSOLE + "/login?error=refused")
            clear_flow(response)
            return response
        response = Redirect(flow.next)
        set_session(response, settings, token, token_expiry(token))
        clear_flow(response)
        return response

    @post("/logout", name="console:logout", status_code=HTTP_303_SEE_OTHER)
    async def logout(self, request: Request[Any, Any, Any]) -> Response[Any]:
        form = await request.form()
        check_csrf(current_session(request), form.get("csrf"))
        response = Redirect(CONSOLE + "/login", status_code=HTTP_303_SEE_OTHER)
        clear_session(response)
        return response

    # --- home, inboxes -------------------------------------------------------------------

    @get("/", name="console:home")
    async def home(self, request: Request[Any, Any, Any]) -> Response[Any]:
        principal, _ = await signed_in(request)
        return Redirect(CONSOLE + ("/hub" if principal.has_any_role(HUB_ROLES) else "/pending"))

    @get("/pending", name="console:pending")
    async def pending(self, request: Request[Any, Any, Any], temporal: NamedDependency[Client],
                      cursor_key: NamedDependency[bytes]) -> Template:
        principal, session = await signed_in(request)
        q = request.query_params
        errors: dict[str, str] = {}
        tenant = _filter(q.get("tenant_id"), _SLUG, "tenant_id", errors, "not a tenant id (lowercase letters, digits, -)")
        capability = _filter(q.get("capability"), _SLUG, "capability", errors, "not a capability")
        page = await client_inbox(temporal, cursor_key, principal, tenant_id=tenant, capability=capability,
                                  cursor=_cursor(q.get("cursor"))) if not errors else None
        return _render(request, "inbox.html", principal, session, HTTP_400_BAD_REQUEST if errors else HTTP_200_OK,
                       title="Pending Actions", hub=False, page=page, errors=errors,
                       filters={"tenant_id": tenant or "", "capability": capability or ""},
                       capabilities=sorted(CATALOGUE), when=_when)

    @get("/hub", name="console:hub")
    async def hub(self, request: Request[Any, Any, Any], temporal: NamedDependency[Client],
                  cursor_key: NamedDependency[bytes]) -> Template:
        principal, session = await signed_in(request)
        if not principal.has_any_role(HUB_ROLES):
            raise PermissionDeniedException("the Approval Hub is for admin, finance, support and partners")
        q = request.query_params
        errors: dict[str, str] = {}
        tenant = _filter(q.get("tenant_id"), _SLUG, "tenant_id", errors, "not a tenant id (lowercase letters, digits, -)")
        capability = _filter(q.get("capability"), _SLUG, "capability", errors, "not a capability")
        role = _filter(q.get("role"), _ROLE, "role", errors, "not a role")
        overdue_text = q.get("overdue") or ""
        overdue = {"yes": True, "no": False}.get(overdue_text)
        page = await hub_inbox(temporal, cursor_key, principal, tenant_id=tenant, capability=capability, role=role,
                               overdue=overdue, cursor=_cursor(q.get("cursor"))) if not errors else None
        return _render(request, "inbox.html", principal, session, HTTP_400_BAD_REQUEST if errors else HTTP_200_OK,
                       title="Approval Hub", hub=True, page=page, errors=errors,
                       filters={"tenant_id": tenant or "", "capability": capability or "", "role": role or "",
                                "overdue": overdue_text if overdue is not None else ""},
                       capabilities=sorted(CATALOGUE), roles=ROLES, when=_when)

    # --- an action -----------------------------------------------------------------------

    @get("/actions/{action_id:str}", name="console:action")
    async def action(self, request: Request[Any, Any, Any], temporal: NamedDependency[Client],
                     action_id: FromPath[str]) -> Template:
        principal, session = await signed_in(request)
        detail = await action_detail(temporal, principal, action_id)
        return self._action_page(request, principal, session, detail)

    def _action_page(self, request: Request[Any, Any, Any], principal: Principal, session: Session,
                     detail: ActionDetail, status: int = HTTP_200_OK, *, edit_fields: list[Any] | None = None,
                     errors: dict[str, str] | None = None, notice: str = "", sent: dict[str, str] | None = None,
                     ) -> Template:
        req = detail.request
        may_decide = detail.status == "open" and principal.has_any_role(detail.roles) and not any(
            d.decided_by == principal.sub for d in detail.decisions)
        return _render(
            request, "action.html", principal, session, status, title=req.title, detail=detail,
            proposal=_pretty(req.proposal), may_decide=may_decide,
            simple=[d for d in ("approve", "request_changes", "reject") if d in req.allowed],
            labels=DECISION_LABELS, can_edit="edit" in req.allowed and bool(req.edit_schema),
            edit_fields=edit_fields if edit_fields is not None else forms.fields(req.edit_schema, req.proposal),
            errors=errors or {}, notice=notice, sent=sent or {}, when=_when)

    @post("/actions/{action_id:str}/decision", name="console:decide", status_code=HTTP_200_OK)
    async def decide(self, request: Request[Any, Any, Any], temporal: NamedDependency[Client],
                     action_id: FromPath[str]) -> Template:
        principal, session = await signed_in(request)
        form = await request.form()
        check_csrf(session, form.get("csrf"))
        settings: Settings = request.app.state.settings
        detail = await action_detail(temporal, principal, action_id)  # 404 out of scope, before anything else
        decision = form.get("decision") or ""
        comment = (form.get("comment") or "").strip()
        sent = {"comment": comment, "decision": decision}
        errors: dict[str, str] = {}
        edit_fields = None
        edits = None
        if decision not in detail.request.allowed:
            errors[""] = "choose one of the decisions offered"
        elif decision == "edit":
            edits, edit_fields, errors = forms.parse_edits(detail.request.edit_schema or {}, detail.request.proposal,
                                                          {k: v for k, v in form.items()})
        if decision == "request_changes" and not comment:
            errors["comment"] = "say what should change"
        if len(comment) > 4000:
            errors["comment"] = "must be at most 4000 characters"
        choice = form.get("choice") or None
        if decision == "approve" and detail.request.choices and choice not in detail.request.choices:
            errors["choice"] = "choose one of the options"
        if errors:
            return self._action_page(request, principal, session, detail, HTTP_422_UNPROCESSABLE_ENTITY,
                                     edit_fields=edit_fields, errors=errors, sent=sent)
        body = DecisionBody(decision=decision, comment=comment, edits=edits,  # type: ignore[arg-type]
                            choice=choice if decision == "approve" else None)
        try:
            receipt = await decide_action(temporal, settings, principal, action_id, body)
        except ConflictError as exc:
            # Someone else was quicker (or this person decided already): say who.
            now = await action_detail(temporal, principal, action_id)
            mine = [d for d in now.decisions if d.decided_by == principal.sub]
            notice = (f"You already decided this: {DECISION_LABELS.get(mine[-1].decision, mine[-1].decision)} at "
                      f"{_when(mine[-1].decided_at)}." if exc.code == "already_decided" and mine
                      else "Your decision was not recorded. " + _who_decided(now))
            return self._action_page(request, principal, session, now, HTTP_409_CONFLICT, notice=notice)
        except RejectedError as exc:
            # The workflow's validator has the last word (e.g. edits its schema refuses).
            return self._action_page(request, principal, session, detail, HTTP_422_UNPROCESSABLE_ENTITY,
                                     edit_fields=edit_fields, errors={"": str(exc.detail)}, sent=sent)
        return _render(request, "receipt.html", principal, session, title="Decision recorded", receipt=receipt,
                       detail=detail, labels=DECISION_LABELS, when=_when)

    # --- workflows -----------------------------------------------------------------------

    @get("/workflows", name="console:workflows")
    async def workflows(self, request: Request[Any, Any, Any], temporal: NamedDependency[Client],
                        cursor_key: NamedDependency[bytes]) -> Template:
        principal, session = await signed_in(request)
        q = request.query_params
        errors: dict[str, str] = {}
        tenant = _filter(q.get("tenant_id"), _SLUG, "tenant_id", errors, "not a tenant id (lowercase letters, digits, -)")
        capability = _filter(q.get("capability"), _SLUG, "capability", errors, "not a capability")
        status = q.get("status") or None
        if status is not None and status not in STATUSES:
            errors["status"] = "not a status"
            status = None
        pending_text = q.get("pending") or ""
        pending = {"yes": True, "no": False}.get(pending_text)
        page = await list_page(temporal, cursor_key, principal, tenant_id=tenant, capability=capability,
                               status=status, pending=pending,  # type: ignore[arg-type]
                               cursor=_cursor(q.get("cursor"))) if not errors else None
        return _render(request, "workflows.html", principal, session, HTTP_400_BAD_REQUEST if errors else HTTP_200_OK,
                       title="Workflows", page=page, errors=errors, statuses=STATUSES, capabilities=sorted(CATALOGUE),
                       filters={"tenant_id": tenant or "", "capability": capability or "", "status": status or "",
                                "pending": pending_text if pending is not None else ""}, when=_when)

    @get("/workflows/{workflow_id:str}", name="console:workflow")
    async def workflow(self, request: Request[Any, Any, Any], temporal: NamedDependency[Client],
                       workflow_id: FromPath[str]) -> Template:
        principal, session = await signed_in(request)
        view = await workflow_view(temporal, principal, workflow_id)  # 404 out of scope
        handle, _ = await describe_in_scope(temporal, principal, workflow_id)
        events: list[dict[str, str]] = []
        more = False
        async for event in handle.fetch_history_events(page_size=200):
            if len(events) >= TIMELINE_LIMIT:
                more = True
                break
            events.append(_event(event))
        return _render(request, "workflow.html", principal, session, title=f"Workflow {workflow_id}", view=view,
                       progress=_pretty(view.progress) if view.progress is not None else "",
                       result=_pretty(view.result) if view.result is not None else "",
                       events=events, more=more, when=_when)

    # --- schedules -----------------------------------------------------------------------

    @get("/schedules", name="console:schedules")
    async def schedules(self, request: Request[Any, Any, Any], temporal: NamedDependency[Client]) -> Template:
        principal, session = await signed_in(request)
        q = request.query_params
        errors: dict[str, str] = {}
        tenant = _filter(q.get("tenant_id"), _SLUG, "tenant_id", errors, "not a tenant id (lowercase letters, digits, -)")
        listed = await list_schedules(temporal, principal, tenant_id=tenant) if not errors else None
        done = _SCHEDULE_DONE.get(q.get("done") or "")
        return _render(request, "schedules.html", principal, session, HTTP_400_BAD_REQUEST if errors else HTTP_200_OK,
                       title="Schedules", listed=listed, errors=errors, filters={"tenant_id": tenant or ""},
                       notice=f"{done} {q.get('id')}" if done and q.get("id") else "",
                       may_write=principal.has_any_role(WRITE_ROLES), may_trigger=principal.has_any_role(SPEC_ROLES),
                       when=_when)

    @post("/schedules/{schedule_id:str}/{operation:str}", name="console:schedule-op", status_code=HTTP_303_SEE_OTHER)
    async def schedule_operation(self, request: Request[Any, Any, Any], temporal: NamedDependency[Client],
                                 schedule_id: FromPath[str], operation: FromPath[str]) -> Response[Any]:
        principal, session = await signed_in(request)
        form = await request.form()
        check_csrf(session, form.get("csrf"))
        if operation not in _SCHEDULE_DONE:
            raise NotFoundException(f"no operation {operation!r}")
        if not principal.has_any_role(SPEC_ROLES if operation == "trigger" else WRITE_ROLES):
            raise PermissionDeniedException(f"your role may not {operation} schedules")
        handle, _ = await schedule_in_scope(temporal, principal, schedule_id)  # 404 out of scope
        note = f"{operation}d by {principal.sub} in the console"
        if operation == "pause":
            await handle.pause(note=note)
        elif operation == "unpause":
            await handle.unpause(note=note)
        else:
            await handle.trigger()
        return Redirect(f"{CONSOLE}/schedules?done={operation}&id={schedule_id}", status_code=HTTP_303_SEE_OTHER)

    # --- reports -------------------------------------------------------------------------

    @get("/reports", name="console:reports")
    async def reports(self, request: Request[Any, Any, Any], db: NamedDependency[asyncpg.Pool]) -> Template:
        principal, session = await signed_in(request)
        q = request.query_params
        errors: dict[str, str] = {}
        tenant = _filter(q.get("tenant_id"), _SLUG, "tenant_id", errors, "not a tenant id (lowercase letters, digits, -)")
        kind = _filter(q.get("kind"), _KIND, "kind", errors, "not a report kind")
        rows: list[Any] = []
        if not errors:
            tenants = _tenants(principal, tenant)
            if tenants != []:
                rows = await db.fetch(
                    """SELECT id, tenant_id, kind, workflow_id, subject, offline, score, created_at FROM reports
                       WHERE ($1::text[] IS NULL OR tenant_id = ANY($1)) AND ($2::text IS NULL OR kind = $2)
                       ORDER BY created_at DESC, id DESC LIMIT $3""", tenants, kind, REPORTS_LIMIT)
        return _render(request, "reports.html", principal, session, HTTP_400_BAD_REQUEST if errors else HTTP_200_OK,
                       title="Reports", rows=rows, errors=errors, filters={"tenant_id": tenant or "", "kind": kind or ""},
                       when=_when)

    @get("/reports/{report_id:int}", name="console:report")
    async def report(self, request: Request[Any, Any, Any], db: NamedDependency[asyncpg.Pool],
                     report_id: FromPath[int]) -> Template:
        principal, session = await signed_in(request)
        row = await db.fetchrow("SELECT id, tenant_id, kind, workflow_id, subject, offline, score, body, created_at "
                                "FROM reports WHERE id = $1", report_id) if 0 < report_id < 2**63 else None
        if row is None or not principal.can_see_tenant(row["tenant_id"]):
            raise NotFoundException(f"report {report_id} not found")
        body = row["body"]
        return _render(request, "report.html", principal, session, title=f"Report: {row['kind']} of {row['subject']}",
                       row=row, body=_pretty(body if not isinstance(body, str) else msgspec.json.decode(body)),
                       when=_when)


_LOGIN_ERRORS = {"state": "The sign-in took too long or was started elsewhere; please sign in again.",
                 "refused": "The identity provider did not sign you in."}
_SCHEDULE_DONE = {"pause": "Paused", "unpause": "Resumed", "trigger": "Started a run of"}


def _cursor(value: str | None) -> str | None:
    return value or None


def _tenants(principal: Principal, tenant: str | None) -> list[str] | None:
    """Tenants to read rows of: None for any (platform staff), [] for none."""
    if tenant is not None:
        return [tenant] if principal.can_see_tenant(tenant) else []
    if principal.is_platform:
        return None
    return sorted({t for t in (principal.tenant_id, *principal.tenants) if t})


def _event(event: Any) -> dict[str, str]:
    """One history event as the timeline shows it: when, what, and the name of what it concerns
    (activity, timer, signal, update, child workflow). Payloads stay out: they are encrypted."""
    kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_").replace("_", " ").lower()
    detail = ""
    attrs = event.WhichOneof("attributes")
    a = getattr(event, attrs) if attrs else None
    if attrs == "activity_task_scheduled_event_attributes":
        detail = a.activity_type.name
    elif attrs == "timer_started_event_attributes":
        detail = f"{a.timer_id} ({a.start_to_fire_timeout.ToTimedelta()})"
    elif attrs == "workflow_execution_signaled_event_attributes":
        detail = a.signal_name
    elif attrs == "workflow_execution_update_accepted_event_attributes":
        detail = a.accepted_request.input.name
    elif attrs == "start_child_workflow_execution_initiated_event_attributes":
        detail = f"{a.workflow_type.name} {a.workflow_id}"
    elif attrs == "workflow_execution_started_event_attributes":
        detail = a.workflow_type.name
    elif attrs == "marker_recorded_event_attributes":
        detail = a.marker_name
    elif attrs in ("activity_task_failed_event_attributes", "workflow_execution_failed_event_attributes"):
        detail = a.failure.message[:300]
    return {"id": str(event.event_id), "time": _when(event.event_time.ToDatetime(tzinfo=timezone.utc)),
            "kind": kind, "detail": detail}


# --- errors as pages ----------------------------------------------------------------------

_TITLES = {HTTP_400_BAD_REQUEST: "That did not work", HTTP_403_FORBIDDEN: "Not allowed",
           HTTP_404_NOT_FOUND: "Not found", HTTP_409_CONFLICT: "Already changed",
           HTTP_422_UNPROCESSABLE_ENTITY: "Refused", HTTP_503_SERVICE_UNAVAILABLE: "Unavailable"}


def _error_page(request: Request[Any, Any, Any], status: int, message: str) -> Response[Any]:
    # Set by signed_in when the session verified: the page keeps its navigation.
    principal: Principal | None = getattr(request.state, "console_principal", None)
    session = current_session(request) if principal is not None else None
    try:
        template = request.app.template_engine.get_template("error.html")
        html = template.render(me=principal, csrf=session.csrf if session and principal else "", status=status,
                               title=_TITLES.get(status, "Something went wrong"), message=message,
                               staff=bool(principal and principal.has_any_role(HUB_ROLES)), path=request.url.path)
    except Exception:  # noqa: BLE001 - the error page must not fail in turn
        log.exception("the console's error page failed")
        html = f"<!doctype html><html lang=\"en\"><title>Error</title><h1>Error {status}</h1></html>"
    return Response(html, status_code=status, media_type=MediaType.HTML)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = CONSOLE + "/"
        response = Redirect(f"{CONSOLE}/login?next={quote(target, safe='/')}", status_code=HTTP_303_SEE_OTHER)
        clear_session(response)
        return response
    if status == HTTP_404_NOT_FOUND:
        return _error_page(request, status, "There is nothing here, or it is not yours to see.")
    if status >= HTTP_500_INTERNAL_SERVER_ERROR and status != HTTP_503_SERVICE_UNAVAILABLE:
        return internal_error(request, exc)
    detail = exc.detail
    if isinstance(exc, ValidationException):
        detail = "; ".join(f"{e.get('key')}: {e.get('message')}" for e in exc.extra or [] if isinstance(e, dict)) \
            or exc.detail
    return _error_page(request, status, str(detail))


def rpc_error(request: Request[Any, Any, Any], exc: RPCError) -> Response[Any]:
    if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED):
        log.warning("temporal unavailable for console %s %s: %s", request.method, request.url.path, exc.status.name)
        return _error_page(request, HTTP_503_SERVICE_UNAVAILABLE, "The workflow service is unavailable; try again soon.")
    log.error("temporal error for console %s %s: %s %s", request.method, request.url.path, exc.status.name, exc.message)
    return _error_page(request, HTTP_500_INTERNAL_SERVER_ERROR, "The workflow service answered with an error.")


def database_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("database unavailable for console %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
    return _error_page(request, HTTP_503_SERVICE_UNAVAILABLE, "The database is unavailable; try again soon.")


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("unhandled error for console %s %s", request.method, request.url.path, exc_info=exc)
    return _error_page(request, HTTP_500_INTERNAL_SERVER_ERROR, "Something went wrong on our side.")


EXCEPTION_HANDLERS = {
    HTTPException: http_error,
    RPCError: rpc_error,
    asyncpg.PostgresConnectionError: database_error,
    ConnectionError: database_error,
    HTTP_500_INTERNAL_SERVER_ERROR: internal_error,
}
