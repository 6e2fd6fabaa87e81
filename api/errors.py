"""One exception map: every error the API answers is an RFC 9457 problem
(``application/problem+json``), and the OpenAPI document says which can happen on each route.

A problem carries a stable machine-readable ``code`` and, as its ``type``, the URI
``https://bizosaas.dev/problems/{code}``; clients branch on either, never on ``detail``:

========================  ======  ==========================================================
code                      status  meaning
========================  ======  ==========================================================
``validation``            400     a parameter or body field is invalid (``invalid_params``)
``malformed_body``        400     the body is not JSON: invalid UTF-8, syntax, nested too
                                  deep, or text with a NUL character
``unauthenticated``       401     missing, expired or invalid bearer token or signature
``forbidden``             403     the caller's role may not do this
``not_found``             404     no such resource, or not in the caller's tenants
``method_not_allowed``    405     the path exists, the method does not
``conflict``              409     not running, a change still in progress
``already_started``       409     this business key was started before (``workflow_id``)
``already_decided``       409     the caller decided this approval already
``approval_closed``       409     the approval was decided, withdrawn or replaced
``body_too_large``        413     the body is over the route's limit
``unprocessable``         422     refused by the workflow
``decision_not_allowed``  422     a decision the approval does not offer, or incomplete
``invalid_edits``         422     edits that do not match the approval's edit schema
``too_frequent``          422     a schedule firing more often than its capability allows
``rate_limited``          429     too many requests; ``Retry-After`` says when to retry
``internal``              500     a fault of the service (logged, never detailed)
``unavailable``           503     Temporal, Postgres or the identity provider is unreachable
========================  ======  ==========================================================

Extension members: ``invalid_params`` (400: each field, its location and what is wrong),
``workflow_id`` (409 on a start: the workflow that exists), and what an error adds of its own
(``min_interval_seconds`` of ``too_frequent``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Literal

import asyncpg
import msgspec
from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.routes import HTTPRoute
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from temporalio.service import RPCError, RPCStatusCode

from core.names import EMAIL_PATTERN, NOT_BLANK_PATTERN, SITE_PATH_PATTERN, TIME_PATTERN, WEB_URL_PATTERN

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://bizosaas.dev/problems/"

CODES: dict[int, str] = {
    400: "validation", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "body_too_large", 422: "unprocessable", 429: "rate_limited", 500: "internal",
    503: "unavailable",
}

ParamSource = Literal["body", "query", "path", "header", "cookie"]
_SOURCES: frozenset[str] = frozenset({"body", "query", "path", "header", "cookie"})


class InvalidParam(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # the field or parameter ("" for the body as a whole)
    source: ParamSource
    reason: str


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An error, as RFC 9457 problem details."""

    type: str  # https://bizosaas.dev/problems/{code}
    title: str  # the status's phrase
    status: int
    detail: str  # for people; never parse it
    code: str  # stable and machine-readable: branch on this
    instance: str | None = None  # the request's path
    invalid_params: list[InvalidParam] | None = None
    workflow_id: str | None = None


_MEMBERS = frozenset(f.name for f in msgspec.structs.fields(Problem))


class ApiError(HTTPException):
    """An HTTP error with a specific problem ``code`` (the status's default code otherwise)."""

    code: str | None = None

    def __init__(self, *args: Any, code: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if code is not None:
            self.code = code


class ConflictError(ApiError):
    """409: already started, already decided, not running."""

    status_code = HTTP_409_CONFLICT


class RejectedError(ApiError):
    """422: a workflow's validator rejected the message."""

    status_code = HTTP_422_UNPROCESSABLE_ENTITY


class MalformedBody(ApiError):
    """400: the body cannot be read as JSON."""

    status_code = HTTP_400_BAD_REQUEST
    code = "malformed_body"


class BodyTooLarge(ApiError):
    """413: the body is over the route's limit (raised by Litestar while reading it)."""

    status_code = HTTP_413_REQUEST_ENTITY_TOO_LARGE


def invalid(name: str, reason: str, source: ParamSource = "query") -> ValidationException:
    """400 naming the field, shaped like Litestar's own validation errors."""
    return ValidationException(detail=f"{name}: {reason}", extra=[{"key": name, "message": reason, "source": source}])


def problem(request: Request[Any, Any, Any] | None, status: int, detail: str, *, code: str | None = None,
            invalid_params: list[InvalidParam] | None = None, extensions: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> Response[dict[str, Any]]:
    """The problem answer; ``extensions``: further members (e.g. ``workflow_id``), plain values only."""
    code = code or CODES.get(status) or _snake(HTTPStatus(status).phrase)
    extensions = extensions or {}
    workflow_id = extensions.get("workflow_id")
    params = [InvalidParam(name=_shown(p.name), reason=_shown(p.reason), source=p.source) for p in invalid_params or ()]
    body = msgspec.to_builtins(Problem(
        type=PROBLEM_TYPE_BASE + code, title=HTTPStatus(status).phrase, status=status, detail=_shown(detail),
        code=code, instance=_shown(request.url.path) if request is not None else None, invalid_params=params or None,
        workflow_id=workflow_id if isinstance(workflow_id, str) else None))
    for name, value in extensions.items():
        if name not in _MEMBERS and isinstance(value, str | int | float | bool):
            body[name] = value
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _shown(text: str) -> str:
    """Text of the request echoed in a problem (a member's name, a path) with NUL spelled out:
    the answer carries no character the document says a string cannot hold."""
    return text.replace("\x00", "\\u0000")


def _snake(phrase: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


# Patterns too long to be read in an answer, said in words instead (the document keeps them).
_PATTERN_WORDS = {
    WEB_URL_PATTERN: "a web address: http(s)://, a host name or IP address, an optional port and path; "
                     "no spaces, control characters or user:password@",
    NOT_BLANK_PATTERN: "text that is not blank, without NUL characters",
    EMAIL_PATTERN: "an email address: one @, a domain ending in letters (example.com), no spaces or control characters",
    SITE_PATH_PATTERN: "a path on the site: starting with /, no spaces or control characters",
    TIME_PATTERN: "a date and time (RFC 3339, e.g. 2026-11-26T09:30:00Z; UTC when no offset is given)",
}


def _reason(message: str) -> str:
    for pattern, words in _PATTERN_WORDS.items():
        message = message.replace(f"matching regex {pattern!r}", f"that is {words}")
    return message


def _invalid_params(extra: Any) -> list[InvalidParam]:
    """Litestar's validation errors (``[{"key", "message", "source"}]``) as invalid_params."""
    if not isinstance(extra, list):
        return []
    params = []
    for item in extra:
        if isinstance(item, dict) and item.get("message"):
            source = item.get("source") or "body"
            source = str(getattr(source, "value", source))  # Litestar's ParamType is an Enum
            name, reason = str(item.get("key") or ""), _reason(str(item["message"]))
            if source == "body" and name == "data":  # the body as a whole
                name, reason = "", "a JSON body is required" if reason == "'data'" else reason
            params.append(InvalidParam(name=name, reason=reason,
                                       source=source if source in _SOURCES else "body"))  # type: ignore[arg-type]
    return params


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    """Every HTTPException (Litestar's own, ours, the auth middleware's) as a problem."""
    status = exc.status_code
    if status >= HTTP_500_INTERNAL_SERVER_ERROR and status != HTTP_503_SERVICE_UNAVAILABLE:
        return internal_error_handler(request, exc)
    params = _invalid_params(exc.extra)
    detail = exc.detail
    if params:
        detail = "; ".join(f"{p.source} {p.name}: {p.reason}" if p.name else f"{p.source}: {p.reason}" for p in params)
    elif status == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        handler = request.scope.get("route_handler")
        limit = handler.resolve_request_max_body_size() if handler is not None else None
        detail = f"the request body is over the limit of {limit} bytes" if limit else "the request body is too large"
    return problem(request, status, detail, code=getattr(exc, "code", None), invalid_params=params,
                   extensions=exc.extra if isinstance(exc.extra, dict) else None, headers=exc.headers)


def rpc_error_handler(request: Request[Any, Any, Any], exc: RPCError) -> Response[dict[str, Any]]:
    """Temporal unreachable or overloaded: 503, never a stack trace."""
    if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED):
        log.warning("temporal unavailable for %s %s: %s", request.method, request.url.path, exc.status.name)
        return problem(request, HTTP_503_SERVICE_UNAVAILABLE, "temporal is unavailable")
    if exc.status == RPCStatusCode.NOT_FOUND:
        # The workflow closed (or was deleted) between the API's look at it and its call: a race
        # with another client (a terminate, its last step), not a fault of the platform.
        log.info("temporal: %s %s: %s", request.method, request.url.path, exc.message)
        if "already completed" in exc.message:
            return problem(request, HTTP_409_CONFLICT, "the workflow closed meanwhile, it is not running",
                           code="not_running")
        return problem(request, HTTP_404_NOT_FOUND, "the workflow was not found")
    log.error("temporal error for %s %s: %s %s", request.method, request.url.path, exc.status.name, exc.message)
    return problem(request, HTTP_500_INTERNAL_SERVER_ERROR, "workflow service error")


def database_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Postgres unreachable: 503, as for Temporal."""
    log.warning("database unavailable for %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
    return problem(request, HTTP_503_SERVICE_UNAVAILABLE, "the database is unavailable")


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Anything unexpected: logged with its traceback, answered without it."""
    log.error("unhandled error for %s %s", request.method, request.url.path, exc_info=exc)
    return problem(request, HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")


EXCEPTION_HANDLERS = {
    HTTPException: http_error_handler,
    RPCError: rpc_error_handler,
    asyncpg.PostgresConnectionError: database_error_handler,
    ConnectionError: database_error_handler,
    HTTP_500_INTERNAL_SERVER_ERROR: internal_error_handler,
}


# --- the OpenAPI document: which problems each route can answer ----------------------------

DESCRIPTIONS: dict[int, str] = {
    400: "Invalid input: `invalid_params` names each field and what is wrong (`validation`), or a body "
         "that is not JSON (`malformed_body`)",
    401: "Missing, expired or invalid credentials",
    403: "The caller's role may not do this",
    404: "Not found, or not in the caller's tenants",
    409: "Conflicts with the resource's state (already started, decided or closed)",
    413: "The request body is over the limit",
    422: "Refused by the workflow",
    429: "Too many requests: retry after the `Retry-After` seconds",
    503: "Temporal, the database or the identity provider is unavailable; retry later",
}
# Names a handler receives that are not inputs of the caller's.
_RESERVED = frozenset({"request", "state", "scope", "socket", "self"})


def _inputs(handler: Any, route: HTTPRoute) -> tuple[bool, bool]:
    """(takes any parameter, takes a body) as the handler declares them."""
    dependencies = set(handler.resolve_dependencies())
    names = set(handler.parsed_fn_signature.parameters) - _RESERVED - dependencies
    has_body = "data" in names or "body" in names
    return bool(names or route.path_parameters), has_body


def is_public(route: HTTPRoute, handler: Any, public_paths: Iterable[str]) -> bool:
    """No bearer token needed: probes, metrics, signed webhooks and links."""
    return bool(handler.opt.get("exclude_from_auth") or any(re.search(p, route.path) for p in public_paths))


def error_statuses(route: HTTPRoute, handler: Any, public_paths: Iterable[str]) -> set[int]:
    """The errors a route can answer, from its facts: bearer auth (401), required roles (403),
    inputs (400), a body (413), a path id (404), a dependency that can be down (503), a start rate limit
    (``opt["rate_limited"]``: 429), and the exceptions it declares in ``raises``."""
    statuses: set[int] = set()
    public = is_public(route, handler, public_paths)
    if not public:
        statuses.add(401)
    if handler.opt.get("roles"):
        statuses.add(403)
    takes_input, has_body = _inputs(handler, route)
    if takes_input:
        statuses.add(400)
    if has_body:
        statuses.add(413)
    if route.path_parameters:
        statuses.add(404)
    # The identity provider (OIDC keys), Temporal, Postgres.
    if not public or {"temporal", "db"} & set(handler.parsed_fn_signature.parameters):
        statuses.add(503)
    if handler.opt.get("rate_limited"):
        statuses.add(429)
    statuses.update(exc.status_code for exc in handler.raises or ())
    return statuses


def document_errors(app: Litestar, public_paths: Iterable[str]) -> None:
    """Give every documented route its error responses, all with the one Problem schema.
    Call once the app is built, before the OpenAPI document is first served."""
    public_paths = list(public_paths)
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.include_in_schema:
                continue
            documented = {
                status: ResponseSpec(data_container=Problem, media_type=PROBLEM_JSON, generate_examples=False,
                                     description=DESCRIPTIONS.get(status, HTTPStatus(status).phrase))
                for status in sorted(error_statuses(route, handler, public_paths))
            }
            handler.responses = {**documented, **(handler.responses or {})}
            # Litestar's own error schema would otherwise stand beside ours.
            handler.raises = None
            if is_public(route, handler, public_paths):
                # Said per operation, as the document's default requires a bearer token. (An
                # empty list would be dropped as "not set"; one empty requirement means "none needed".)
                handler.security = [{}]
