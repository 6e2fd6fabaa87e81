"""One exception map: domain and Temporal errors into HTTP answers."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import (
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from temporalio.service import RPCError, RPCStatusCode

log = logging.getLogger(__name__)


class ConflictError(HTTPException):
    """409: already started, already decided, not running."""

    status_code = HTTP_409_CONFLICT


class RejectedError(HTTPException):
    """422: a workflow's validator rejected the message."""

    status_code = HTTP_422_UNPROCESSABLE_ENTITY


def rpc_error_handler(request: Request[Any, Any, Any], exc: RPCError) -> Response[dict[str, Any]]:
    """Temporal unreachable or overloaded: 503, never a stack trace."""
    if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED):
        log.warning("temporal unavailable for %s %s: %s", request.method, request.url.path, exc.status.name)
        return Response({"status_code": 503, "detail": "temporal is unavailable"}, status_code=HTTP_503_SERVICE_UNAVAILABLE)
    log.error("temporal error for %s %s: %s %s", request.method, request.url.path, exc.status.name, exc.message)
    return Response({"status_code": 500, "detail": "workflow service error"}, status_code=HTTP_500_INTERNAL_SERVER_ERROR)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Anything unexpected: logged with its traceback, answered without it."""
    log.error("unhandled error for %s %s", request.method, request.url.path, exc_info=exc)
    return Response({"status_code": 500, "detail": "Internal Server Error"}, status_code=HTTP_500_INTERNAL_SERVER_ERROR)


EXCEPTION_HANDLERS = {RPCError: rpc_error_handler, HTTP_500_INTERNAL_SERVER_ERROR: internal_error_handler}
