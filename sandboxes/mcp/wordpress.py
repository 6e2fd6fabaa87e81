"""WordPress tools: a post created as a draft, then published, each recorded in the outbox."""

from __future__ import annotations

from typing import Annotated, Literal

import asyncpg
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import Field
from typing_extensions import TypedDict

from sandboxes.mcp.common import (
    HttpUrl,
    IdempotencyKey,
    ShortText,
    TenantId,
    ToolContext,
    WorkflowId,
    derive_id,
    earlier_response,
    now,
)


class WordPressPostResult(TypedDict):
    post_id: int
    site_url: str
    status: str
    link: str
    edit_link: str
    modified_at: str
    sandbox: bool


def register(mcp: FastMCP, ctx: ToolContext) -> None:
    """Add the wordpress tools to the sandbox server."""
    outbox = ctx.outbox

    @mcp.tool(
        name="create_wordpress_post",
        description="Create a WordPress post (draft by default; publish it with publish_wordpress_post).",
        structured_output=True,
    )
    async def create_wordpress_post(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        site_url: HttpUrl,
        title: ShortText,
        content: Annotated[str, Field(min_length=1, max_length=1_000_000)],
        excerpt: Annotated[str | None, Field(max_length=2000)] = None,
        categories: Annotated[list[ShortText], Field(max_length=50)] = [],  # noqa: B006
        tags: Annotated[list[ShortText], Field(max_length=100)] = [],  # noqa: B006
        status: Literal["draft", "pending"] = "draft",
        workflow_id: WorkflowId = None,
    ) -> WordPressPostResult:
        site = site_url.rstrip("/")
        args = dict(site_url=site, title=title, content=content, excerpt=excerpt, categories=categories,
                    tags=tags, status=status)

        async def respond(conn: asyncpg.Connection) -> WordPressPostResult:
            post_id = 1000 + int(derive_id("wordpress", site, idempotency_key, length=12), 16) % 9_000_000
            return WordPressPostResult(
                post_id=post_id, site_url=site, status=status, link=f"{site}/?p={post_id}",
                edit_link=f"{site}/wp-admin/post.php?post={post_id}&action=edit", modified_at=now(), sandbox=True,
            )

        return await outbox.record(tool="create_wordpress_post", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

    @mcp.tool(
        name="publish_wordpress_post",
        description="Publish a WordPress post created by create_wordpress_post.",
        structured_output=True,
    )
    async def publish_wordpress_post(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        site_url: HttpUrl,
        post_id: Annotated[int, Field(gt=0)],
        workflow_id: WorkflowId = None,
    ) -> WordPressPostResult:
        site = site_url.rstrip("/")
        args = dict(site_url=site, post_id=post_id)

        async def respond(conn: asyncpg.Connection) -> WordPressPostResult:
            created = await earlier_response(conn, tenant_id, "create_wordpress_post", "post_id", post_id)
            if created is None or created.get("site_url") != site:
                raise ToolError(f"post {post_id} not found on {site}")
            slug = f"{site}/?p={post_id}"
            return WordPressPostResult(
                post_id=post_id, site_url=site, status="publish", link=slug,
                edit_link=f"{site}/wp-admin/post.php?post={post_id}&action=edit", modified_at=now(), sandbox=True,
            )

        return await outbox.record(tool="publish_wordpress_post", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)
