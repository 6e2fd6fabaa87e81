"""Ads tools: a campaign created or updated on an ads platform, recorded in the outbox."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

import asyncpg
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import Field
from typing_extensions import TypedDict

from sandboxes.mcp.common import IdempotencyKey, TenantId, ToolContext, WorkflowId, derive_id, earlier_response


AdsPlatform = Literal["google_ads", "meta_ads", "linkedin_ads", "tiktok_ads"]


class AdsCampaignResult(TypedDict):
    campaign_id: str
    platform: str
    action: str
    name: str
    status: str
    objective: str
    daily_budget: float
    currency: str
    sandbox: bool


def register(mcp: FastMCP, ctx: ToolContext) -> None:
    """Add the ads tools to the sandbox server."""
    outbox = ctx.outbox

    @mcp.tool(
        name="upsert_ads_campaign",
        description="Create an ads campaign, or update one (give the campaign_id it was created with).",
        structured_output=True,
    )
    async def upsert_ads_campaign(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        platform: AdsPlatform,
        name: Annotated[str, Field(min_length=1, max_length=255)],
        objective: Literal["awareness", "traffic", "leads", "sales"],
        daily_budget: Annotated[float, Field(gt=0, le=1_000_000)],
        currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD",
        status: Literal["active", "paused"] = "paused",
        start_date: date | None = None,
        end_date: date | None = None,
        targeting: dict[str, Any] = {},  # noqa: B006
        campaign_id: Annotated[str | None, Field(pattern=r"^cmp_[0-9a-f]{24}$")] = None,
        workflow_id: WorkflowId = None,
    ) -> AdsCampaignResult:
        if start_date and end_date and end_date < start_date:
            raise ToolError("end_date is before start_date")
        args = dict(platform=platform, name=name, objective=objective, daily_budget=daily_budget, currency=currency,
                    status=status, start_date=start_date, end_date=end_date, targeting=targeting,
                    campaign_id=campaign_id)

        async def respond(conn: asyncpg.Connection) -> AdsCampaignResult:
            if campaign_id is None:
                cid, action = f"cmp_{derive_id('ads', idempotency_key)}", "created"
            else:
                earlier = await earlier_response(conn, tenant_id, "upsert_ads_campaign", "campaign_id", campaign_id)
                if earlier is None or earlier.get("platform") != platform:
                    raise ToolError(f"campaign {campaign_id} not found on {platform}")
                cid, action = campaign_id, "updated"
            return AdsCampaignResult(
                campaign_id=cid, platform=platform, action=action, name=name, status=status,
                objective=objective, daily_budget=daily_budget, currency=currency, sandbox=True,
            )

        return await outbox.record(tool="upsert_ads_campaign", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)
