"""Social tools: a post published (or scheduled) on a social platform, recorded in the outbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import asyncpg
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import Field
from typing_extensions import TypedDict

from sandboxes.mcp.common import HttpUrl, IdempotencyKey, TenantId, ToolContext, WorkflowId, derive_id, now


SocialPlatform = Literal["facebook", "instagram", "linkedin", "x", "tiktok"]
SOCIAL_TEXT_LIMITS = {"facebook": 63206, "instagram": 2200, "linkedin": 3000, "x": 280, "tiktok": 2200}
SOCIAL_HOSTS = {
    "facebook": "https://www.facebook.com/{page}/posts/{id}",
    "instagram": "https://www.instagram.com/p/{id}/",
    "linkedin": "https://www.linkedin.com/feed/update/urn:li:share:{id}/",
    "x": "https://x.com/{page}/status/{id}",
    "tiktok": "https://www.tiktok.com/@{page}/video/{id}",
}


class SocialPostResult(TypedDict):
    post_id: str
    platform: str
    status: str
    url: str
    published_at: str | None
    scheduled_at: str | None
    sandbox: bool


def register(mcp: FastMCP, ctx: ToolContext) -> None:
    """Add the social tools to the sandbox server."""
    outbox = ctx.outbox

    @mcp.tool(
        name="publish_social_post",
        description="Publish (or schedule, with scheduled_at) a post on a social platform.",
        structured_output=True,
    )
    async def publish_social_post(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        platform: SocialPlatform,
        text: Annotated[str, Field(min_length=1, max_length=63206)],
        media_urls: Annotated[list[HttpUrl], Field(max_length=10)] = [],  # noqa: B006
        link: HttpUrl | None = None,
        scheduled_at: datetime | None = None,
        page: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")] = None,
        workflow_id: WorkflowId = None,
    ) -> SocialPostResult:
        if len(text) > SOCIAL_TEXT_LIMITS[platform]:
            raise ToolError(f"text is {len(text)} characters; {platform} allows {SOCIAL_TEXT_LIMITS[platform]}")
        if platform == "instagram" and not media_urls:
            raise ToolError("instagram posts need at least one media URL")
        if scheduled_at is not None and scheduled_at.tzinfo is None:
            raise ToolError("scheduled_at needs a time zone")
        args = dict(platform=platform, text=text, media_urls=media_urls, link=link,
                    scheduled_at=scheduled_at.isoformat() if scheduled_at else None, page=page)

        async def respond(conn: asyncpg.Connection) -> SocialPostResult:
            post_id = str(int(derive_id("social", idempotency_key, length=15), 16))
            future = scheduled_at is not None and scheduled_at > datetime.now(UTC)
            return SocialPostResult(
                post_id=post_id, platform=platform, status="scheduled" if future else "published",
                url=SOCIAL_HOSTS[platform].format(page=page or tenant_id, id=post_id),
                published_at=None if future else now(),
                scheduled_at=scheduled_at.isoformat() if future else None, sandbox=True,
            )

        return await outbox.record(tool="publish_social_post", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)
