"""Errors of the MCP activities, split for Temporal (callers match on the type, never on text).

The tool reported an error or the request is invalid → non-retryable ``MCPToolError``; the server
cannot be reached, times out or answers 5xx → retryable ``MCPUnavailable`` (Temporal retries with
backoff); a server that is unknown or disabled (or no server takes the tool) → non-retryable
``MCPServerNotFound`` / ``MCPServerDisabled``; a 401/403-like answer (a misconfigured server, not
an outage) → non-retryable ``MCPServerRejected``. A tool error whose text says the caller was
rate limited (``rate limited … retry after N s``, as the social tools answer a 429) is the one
tool error retried: ``MCPRateLimited``, next attempt after the delay the server named. A tool
error whose text says the tenant's account or site is ``not connected`` (``WordPress not
connected: ...``, as the WordPress tools answer a tenant with no site) is ``MCPNotConnected``,
non-retryable: nothing changes until the tenant connects one, and a workflow may end early on
it. A server of the tenant's own that takes these tools says so the same way.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import anyio
import httpx
from mcp import McpError
from mcp import types as mcp_types
from temporalio.exceptions import ApplicationError

SERVER_NOT_FOUND = "MCPServerNotFound"
SERVER_DISABLED = "MCPServerDisabled"
TOOL_ERROR = "MCPToolError"
UNAVAILABLE = "MCPUnavailable"
REJECTED = "MCPServerRejected"  # 401/403/...: configuration, not a passing outage
RATE_LIMITED = "MCPRateLimited"  # the tool's service said "rate limited": retried after its delay
NOT_CONNECTED = "MCPNotConnected"  # the tenant has not connected the account or site the tool acts on

_RATE_LIMITED = re.compile(r"rate[ -]?limited", re.IGNORECASE)
_NOT_CONNECTED = re.compile(r"\bnot[ _-]connected\b", re.IGNORECASE)
_RETRY_AFTER = re.compile(r"retry after (\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
MAX_RETRY_AFTER = timedelta(minutes=5)  # a server asking for longer waits at most this per attempt

# JSON-RPC errors that mean the request itself is wrong: retrying cannot help.
_PERMANENT_RPC_CODES = frozenset({
    mcp_types.PARSE_ERROR, mcp_types.INVALID_REQUEST, mcp_types.METHOD_NOT_FOUND, mcp_types.INVALID_PARAMS,
})
# The session is gone (connection closed; 32600: the server no longer knows the session id,
# e.g. it restarted): reconnect.
SESSION_GONE_CODES = frozenset({mcp_types.CONNECTION_CLOSED, 32600})
_RETRYABLE_HTTP_4XX = frozenset({404, 408, 409, 425, 429})


def invalid(message: str) -> ApplicationError:
    """A request that cannot succeed as it is (bad names, arguments or result)."""
    return ApplicationError(message, type=TOOL_ERROR, non_retryable=True)


def tool_error(server: str, tool: str, text: str) -> ApplicationError:
    """The error a tool answered: permanent, unless its service rate limited the call (then
    retried, after the ``retry after N s`` it named, capped at :data:`MAX_RETRY_AFTER`); a
    tenant that connected nothing for the tool is told apart (``MCPNotConnected``, permanent)."""
    message = f"{server}/{tool}: {text}"
    if _NOT_CONNECTED.search(text):
        return ApplicationError(message, type=NOT_CONNECTED, non_retryable=True)
    if _RATE_LIMITED.search(text):
        after = _RETRY_AFTER.search(text)
        delay = min(timedelta(seconds=float(after.group(1))), MAX_RETRY_AFTER) if after else None
        return ApplicationError(message, type=RATE_LIMITED, next_retry_delay=delay)
    return ApplicationError(message, type=TOOL_ERROR, non_retryable=True)


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}"[:500] if text else exc.__class__.__name__


def unavailable(server: str, exc: BaseException | str) -> ApplicationError:
    why = exc if isinstance(exc, str) else describe(exc)
    return ApplicationError(f"MCP server {server!r} unavailable: {why}", type=UNAVAILABLE)


def connection_error(server: str, exc: BaseException) -> ApplicationError:
    """A failure of the connection itself: retryable, except a 4xx that means misconfiguration."""
    found = leaves(exc)
    for leaf in found:
        if isinstance(leaf, httpx.HTTPStatusError):
            status = leaf.response.status_code
            if 400 <= status < 500 and status not in _RETRYABLE_HTTP_4XX:
                return ApplicationError(
                    f"MCP server {server!r} refused the request: HTTP {status}", type=REJECTED, non_retryable=True
                )
    interesting = [e for e in found if not isinstance(e, asyncio.CancelledError | anyio.get_cancelled_exc_class())]
    return unavailable(server, (interesting or found)[0])


def request_error(server: str, what: str, exc: BaseException) -> ApplicationError:
    """A failure of one request on a live session."""
    if isinstance(exc, McpError):
        if exc.error.code in _PERMANENT_RPC_CODES:
            return ApplicationError(f"{server}/{what}: {exc.error.message}", type=TOOL_ERROR, non_retryable=True)
        return unavailable(server, f"{what}: {exc.error.message} (code {exc.error.code})")
    if isinstance(exc, RuntimeError):
        # The client found the tool's output invalid against its declared output schema.
        return ApplicationError(f"{server}/{what}: {exc}", type=TOOL_ERROR, non_retryable=True)
    return connection_error(server, exc)


class ConnectionLost(Exception):
    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(describe(cause) if cause else "connection closed")
        self.cause = cause


