"""Social tools: posts on Meta (Facebook, Instagram), LinkedIn, X and TikTok, recorded in the outbox.

They answer in the shape of the real APIs, so a real MCP server can take their place by
configuration: ids as each platform spells them (Facebook ``{page id}_{post id}``, Instagram
media ids, LinkedIn ``urn:li:share:…``, X snowflakes), each platform's length limit (X counts
every URL as 23 characters), and the errors a real API gives:

- ``429 rate limited; retry after N s``: the MCP activity retries it after N seconds
  (``activities/mcp/errors.py`` ``tool_error``);
- ``403 duplicate content``: X refuses the same text twice for one account (permanent);
- ``400 invalid media``: a media URL whose file type the platform does not take (permanent);
- ``400 text too long`` and the like: permanent.

Failing on purpose (tests, dev, a new user trying the retries): the ``page`` (the account posted
as) decides. ``sandbox-rate-limit-N`` (N 1-9) refuses the first N attempts of each post with a
rate limit (retry after 1 s) and then publishes; ``sandbox-suspended`` refuses every post for good
(``403 account suspended``). Any other page publishes normally.

``get_social_post_metrics`` answers a published post's engagement, deterministic from its id and
the hours since it was published (growing with time, levelling off after a few days);
``delete_social_post`` takes a post down (its metrics then answer 404).
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

import asyncpg
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import Field
from typing_extensions import TypedDict

from sandboxes.mcp.common import HttpUrl, IdempotencyKey, TenantId, ToolContext, WorkflowId, earlier_response, now


SocialPlatform = Literal["facebook", "instagram", "linkedin", "x", "tiktok"]
SOCIAL_TEXT_LIMITS = {"facebook": 63206, "instagram": 2200, "linkedin": 3000, "x": 280, "tiktok": 2200}
# Instagram refuses a caption with more than 30 hashtags.
HASHTAG_LIMITS = {"instagram": 30}
X_URL_LENGTH = 23  # X counts every URL as 23 characters (t.co)
MEDIA_TYPES = {
    "facebook": {"jpg", "jpeg", "png", "gif", "webp", "mp4", "mov"},
    "instagram": {"jpg", "jpeg", "png", "mp4", "mov"},
    "linkedin": {"jpg", "jpeg", "png", "gif", "mp4"},
    "x": {"jpg", "jpeg", "png", "gif", "webp", "mp4"},
    "tiktok": {"mp4", "mov", "webm"},
}
RATE_LIMITED_PAGE = re.compile(r"^sandbox-rate-limit-([1-9])$")
SUSPENDED_PAGE = "sandbox-suspended"
RETRY_AFTER_SECONDS = 1
_URL = re.compile(r"https?://\S+")
_HASHTAG = re.compile(r"(?<!\w)#\w+")


class SocialPostResult(TypedDict):
    post_id: str
    platform: str
    status: str
    url: str
    published_at: str | None
    scheduled_at: str | None
    sandbox: bool


class SocialPostMetrics(TypedDict):
    post_id: str
    platform: str
    impressions: int
    likes: int
    comments: int
    shares: int
    clicks: int
    hours_since_published: float
    measured_at: str
    sandbox: bool


class SocialPostDeleted(TypedDict):
    post_id: str
    platform: str
    deleted: bool
    deleted_at: str
    sandbox: bool


def text_length(platform: str, text: str) -> int:
    """The length the platform counts: X weighs every URL as 23 characters."""
    if platform == "x":
        return len(_URL.sub("x" * X_URL_LENGTH, text))
    return len(text)


def _digits(*parts: str, count: int) -> str:
    """A stable number of ``count`` digits (no leading zero) from the parts."""
    value = int(hashlib.sha256("\x1f".join(parts).encode()).hexdigest(), 16)
    return str(10 ** (count - 1) + value % (9 * 10 ** (count - 1)))


def _shortcode(key: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    return "".join(alphabet[(value >> (6 * i)) & 63] for i in range(11))


def platform_ids(platform: str, key: str, page: str) -> tuple[str, str]:
    """The post's id and URL as the platform spells them."""
    if platform == "facebook":
        page_id, post_id = _digits("page", page, count=15), _digits("fb", key, count=16)
        return f"{page_id}_{post_id}", f"https://www.facebook.com/{page_id}/posts/{post_id}"
    if platform == "instagram":
        return _digits("ig", key, count=17), f"https://www.instagram.com/p/{_shortcode(key)}/"
    if platform == "linkedin":
        urn = f"urn:li:share:{_digits('li', key, count=19)}"
        return urn, f"https://www.linkedin.com/feed/update/{urn}/"
    if platform == "x":
        tweet = _digits("x", key, count=19)
        return tweet, f"https://x.com/{page}/status/{tweet}"
    video = _digits("tt", key, count=19)
    return video, f"https://www.tiktok.com/@{page}/video/{video}"


def engagement(post_id: str, hours: float) -> dict[str, int]:
    """A post's counters ``hours`` after publishing: deterministic from its id, never shrinking
    (a saturating curve: most of the reach comes in the first day or two)."""
    seed = int(hashlib.sha256(post_id.encode()).hexdigest(), 16)
    reach = 300 + seed % 2700
    share = 1 - math.exp(-max(hours, 0.0) / 18)
    impressions = int(reach * share)
    return {"impressions": impressions, "likes": impressions * (2 + seed % 5) // 100,
            "comments": impressions * (1 + seed % 3) // 400, "shares": impressions * (1 + seed % 4) // 500,
            "clicks": impressions * (1 + seed % 6) // 150}


def register(mcp: FastMCP, ctx: ToolContext) -> None:
    """Add the social tools to the sandbox server."""
    outbox = ctx.outbox
    attempts: dict[str, int] = {}  # rate-limited pages: attempts seen per idempotency key

    @mcp.tool(
        name="publish_social_post",
        description="Publish (or schedule, with scheduled_at) a post on a social platform. Errors as the platform's "
                    "API gives them: '429 rate limited; retry after N s', '403 duplicate content' (X), "
                    "'400 invalid media', '400 text too long'. Sandbox pages: sandbox-rate-limit-N, sandbox-suspended.",
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
        account = page or tenant_id
        limited = RATE_LIMITED_PAGE.match(account)
        if limited:
            seen = attempts[idempotency_key] = attempts.get(idempotency_key, 0) + 1
            if seen <= int(limited.group(1)):
                raise ToolError(f"429 Too Many Requests: {platform} rate limited this account; "
                                f"retry after {RETRY_AFTER_SECONDS} s")
        if account == SUSPENDED_PAGE:
            raise ToolError(f"403 Forbidden: the {platform} account {account!r} is suspended and cannot publish")
        length, limit = text_length(platform, text), SOCIAL_TEXT_LIMITS[platform]
        if length > limit:
            raise ToolError(f"400 text too long: {length} characters; {platform} allows {limit}")
        tags = _HASHTAG.findall(text)
        if platform in HASHTAG_LIMITS and len(tags) > HASHTAG_LIMITS[platform]:
            raise ToolError(f"400 too many hashtags: {len(tags)}; {platform} allows {HASHTAG_LIMITS[platform]}")
        for url in media_urls:
            ext = urlsplit(url).path.rsplit(".", 1)[-1].lower() if "." in urlsplit(url).path else ""
            if ext not in MEDIA_TYPES[platform]:
                raise ToolError(f"400 invalid media: {url} is not a file type {platform} takes "
                                f"({', '.join(sorted(MEDIA_TYPES[platform]))})")
        if platform in ("instagram", "tiktok") and not media_urls:
            raise ToolError(f"400 invalid media: {platform} posts need at least one media URL")
        if platform == "instagram" and link is not None:
            raise ToolError("400 instagram captions take no link attachment (links in captions are not clickable)")
        if scheduled_at is not None and scheduled_at.tzinfo is None:
            raise ToolError("400 scheduled_at needs a time zone")
        args = dict(platform=platform, text=text, media_urls=media_urls, link=link,
                    scheduled_at=scheduled_at.isoformat() if scheduled_at else None, page=page)

        async def respond(conn: asyncpg.Connection) -> SocialPostResult:
            if platform == "x":
                # X refuses a text the account already posted (another post, not a retry of this one).
                same = await conn.fetchval(
                    """SELECT 1 FROM outbox WHERE tenant_id = $1 AND tool = 'publish_social_post'
                       AND arguments ->> 'platform' = 'x' AND arguments ->> 'text' = $2
                       AND coalesce(arguments ->> 'page', '') = $3 AND idempotency_key <> $4 LIMIT 1""",
                    tenant_id, text, page or "", idempotency_key)
                if same:
                    raise ToolError("403 Forbidden: duplicate content: this account already posted the same text")
            post_id, url = platform_ids(platform, idempotency_key, account)
            future = scheduled_at is not None and scheduled_at > datetime.now(UTC)
            return SocialPostResult(
                post_id=post_id, platform=platform, status="scheduled" if future else "published", url=url,
                published_at=None if future else now(),
                scheduled_at=scheduled_at.isoformat() if future else None, sandbox=True,
            )

        return await outbox.record(tool="publish_social_post", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

    async def _published(conn: asyncpg.Connection, tenant_id: str, platform: str, post_id: str) -> dict:
        post = await earlier_response(conn, tenant_id, "publish_social_post", "post_id", post_id)
        if post is None or post.get("platform") != platform:
            raise ToolError(f"404 Not Found: no {platform} post {post_id!r}")
        return post

    @mcp.tool(
        name="get_social_post_metrics",
        description="A published post's engagement so far: impressions, likes, comments, shares, clicks.",
        structured_output=True,
    )
    async def get_social_post_metrics(
        tenant_id: TenantId,
        platform: SocialPlatform,
        post_id: Annotated[str, Field(min_length=1, max_length=100)],
    ) -> SocialPostMetrics:
        pool = await ctx.pools.get()
        async with pool.acquire() as conn:
            post = await _published(conn, tenant_id, platform, post_id)
            gone = await earlier_response(conn, tenant_id, "delete_social_post", "post_id", post_id)
        if gone is not None:
            raise ToolError(f"404 Not Found: the {platform} post {post_id!r} was deleted")
        at = datetime.now(UTC)
        published = datetime.fromisoformat(post["published_at"] or post["scheduled_at"])
        hours = max((at - published).total_seconds() / 3600, 0.0)
        return SocialPostMetrics(post_id=post_id, platform=platform, **engagement(post_id, hours),
                                 hours_since_published=round(hours, 2), measured_at=at.isoformat(timespec="seconds"),
                                 sandbox=True)

    @mcp.tool(
        name="delete_social_post",
        description="Take a published post down.",
        structured_output=True,
    )
    async def delete_social_post(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        platform: SocialPlatform,
        post_id: Annotated[str, Field(min_length=1, max_length=100)],
        workflow_id: WorkflowId = None,
    ) -> SocialPostDeleted:
        async def respond(conn: asyncpg.Connection) -> SocialPostDeleted:
            await _published(conn, tenant_id, platform, post_id)
            return SocialPostDeleted(post_id=post_id, platform=platform, deleted=True, deleted_at=now(), sandbox=True)

        return await outbox.record(tool="delete_social_post", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=dict(platform=platform, post_id=post_id),
                                   respond=respond)
