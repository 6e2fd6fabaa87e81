"""CRM tools: a contact created or updated (matched by email within the tenant), recorded in the outbox."""

from __future__ import annotations

from typing import Annotated, Literal

import asyncpg
from mcp.server.fastmcp import FastMCP
from pydantic import Field
from typing_extensions import TypedDict

from sandboxes.mcp.common import (
    Email,
    IdempotencyKey,
    Phone,
    ShortText,
    TenantId,
    ToolContext,
    WorkflowId,
    derive_id,
    earlier_response,
)


class CrmContactResult(TypedDict):
    contact_id: str
    action: str
    email: str
    lifecycle_stage: str
    sandbox: bool


def register(mcp: FastMCP, ctx: ToolContext) -> None:
    """Add the crm tools to the sandbox server."""
    outbox = ctx.outbox

    @mcp.tool(
        name="upsert_crm_contact",
        description="Create or update a CRM contact, matched by email within the tenant.",
        structured_output=True,
    )
    async def upsert_crm_contact(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        email: Email,
        first_name: Annotated[str | None, Field(max_length=200)] = None,
        last_name: Annotated[str | None, Field(max_length=200)] = None,
        phone: Phone | None = None,
        company: Annotated[str | None, Field(max_length=300)] = None,
        lifecycle_stage: Literal["subscriber", "lead", "opportunity", "customer"] = "lead",
        tags: Annotated[list[ShortText], Field(max_length=100)] = [],  # noqa: B006
        properties: dict[str, str | int | float | bool | None] = {},  # noqa: B006
        workflow_id: WorkflowId = None,
    ) -> CrmContactResult:
        normalized = email.strip().lower()
        args = dict(email=normalized, first_name=first_name, last_name=last_name, phone=phone, company=company,
                    lifecycle_stage=lifecycle_stage, tags=tags, properties=properties)

        async def respond(conn: asyncpg.Connection) -> CrmContactResult:
            contact_id = f"ct_{derive_id('crm', tenant_id, normalized)}"
            earlier = await earlier_response(conn, tenant_id, "upsert_crm_contact", "contact_id", contact_id)
            return CrmContactResult(
                contact_id=contact_id, action="updated" if earlier else "created", email=normalized,
                lifecycle_stage=lifecycle_stage, sandbox=True,
            )

        return await outbox.record(tool="upsert_crm_contact", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)
