"""Calling a tool by name from a workflow: ``await call_tool(tenant_id, SendEmail(...), step="email:1")``.

The call is one ``mcp.call_tool`` activity (integrations queue, the MCP policy) that names no
server: the registry routes the tool for the tenant (the default server, another MCP server
per tool and per tenant when one is set). The idempotency key is the workflow id and ``step``.
The answer comes back as the tool's typed result; an answer that does not fit it fails the call
for good (``MCPToolError``): the server does not implement the tool as workflows expect.
"""

from __future__ import annotations

from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec
    from activities.mcp import TOOL_ERROR, CallToolRequest, MCPActivities
    from activities.mcp.tools import ToolArgs, ToolResult, arguments, decode_result
    from core.activity import run_activity

R = TypeVar("R", bound=ToolResult)


async def call_tool(tenant_id: str, args: ToolArgs[R], *, step: str, **options: Any) -> R:
    """Run ``args``' tool for the tenant and decode its answer; ``options`` override the
    activity's (as for ``run_activity``)."""
    done = await run_activity(
        MCPActivities.call_tool,
        CallToolRequest(tenant_id=tenant_id, tool=args.TOOL, idempotency_key=f"{workflow.info().workflow_id}:{step}",
                        arguments=arguments(args)),
        **options,
    )
    try:
        return decode_result(args, done.content)
    except msgspec.ValidationError as exc:
        raise ApplicationError(f"{done.server}/{args.TOOL} answered what the tool's result cannot hold: {exc}",
                               type=TOOL_ERROR, non_retryable=True) from None
