"""The tools workflows call, typed: one arguments Struct per tool, carrying the tool's name and
its result type.

A workflow builds the arguments (``SendEmail(to=[...], subject=..., text=...)``) and calls
``workflows.tools.call_tool(tenant_id, args, step=...)``, which sends them as ``mcp.call_tool``
(no server named: the registry routes the tool) and decodes the answer into ``args.RESULT``.
Any MCP server that implements a tool with these arguments can take it, for every tenant or for
one (see :mod:`activities.mcp.registry`).

The arguments leave out what the activity fills from the request (``tenant_id``,
``idempotency_key``, ``workflow_id``: see :mod:`activities.mcp.activities`), and unset optional
fields are not sent, so a server need not know the sandbox's optional extras. Results keep the
fields workflows read required and the rest optional, and ignore fields they do not know; they
match what the shipped sandbox answers (``sandboxes/mcp``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

import msgspec

R = TypeVar("R", bound="ToolResult")


class ToolResult(msgspec.Struct, frozen=True, kw_only=True):
    """Base of tool results."""


class ToolArgs(msgspec.Struct, Generic[R], frozen=True, kw_only=True, omit_defaults=True):
    """Base of tool arguments: subclasses set ``TOOL`` (the tool's name) and ``RESULT``."""

    TOOL: ClassVar[str]
    RESULT: ClassVar[type[ToolResult]]


# --- messaging -------------------------------------------------------------------------------

class MessageSent(ToolResult, frozen=True, kw_only=True):
    message_id: str
    status: str
    channel: str = "email"
    to: list[str] = []
    accepted_at: str | None = None
    segments: int | None = None
    sandbox: bool = False


class SendEmail(ToolArgs[MessageSent], frozen=True, kw_only=True, omit_defaults=True):
    TOOL: ClassVar[str] = "send_email"
    RESULT: ClassVar[type[ToolResult]] = MessageSent

    to: list[str]
    subject: str
    text: str
    html: str | None = None
    cc: list[str] = []
    reply_to: str | None = None
    from_name: str | None = None


PHONE_PATTERN = r"^\+[1-9][0-9]{6,14}$"  # E.164, as the messaging tools take it


class SendSms(ToolArgs[MessageSent], frozen=True, kw_only=True, omit_defaults=True):
    TOOL: ClassVar[str] = "send_sms"
    RESULT: ClassVar[type[ToolResult]] = MessageSent

    to: str  # E.164
    text: str  # at most 1,600 characters; long texts go as several segments
    sender_id: str | None = None


# --- ads -------------------------------------------------------------------------------------

class AdsCampaign(ToolResult, frozen=True, kw_only=True):
    campaign_id: str
    platform: str
    status: str
    daily_budget: float
    action: str | None = None  # created | updated
    name: str | None = None
    objective: str | None = None
    currency: str | None = None
    sandbox: bool = False


class UpsertAdsCampaign(ToolArgs[AdsCampaign], frozen=True, kw_only=True, omit_defaults=True):
    """Create an ads campaign, or update one (``campaign_id``): e.g. pause it with
    ``status="paused"``."""

    TOOL: ClassVar[str] = "upsert_ads_campaign"
    RESULT: ClassVar[type[ToolResult]] = AdsCampaign

    platform: str
    name: str
    objective: Literal["awareness", "traffic", "leads", "sales"]
    daily_budget: float
    currency: str | None = None
    status: Literal["active", "paused"] | None = None
    start_date: date | None = None
    end_date: date | None = None
    targeting: dict[str, Any] | None = None
    campaign_id: str | None = None


# --- social --------------------------------------------------------------------------------

SocialPlatform = Literal["facebook", "instagram", "linkedin", "x", "tiktok"]


class SocialPost(ToolResult, frozen=True, kw_only=True):
    post_id: str  # as the platform spells it (Facebook "{page}_{post}", LinkedIn "urn:li:share:...")
    platform: str
    status: str  # published | scheduled
    url: str
    published_at: str | None = None
    scheduled_at: str | None = None
    sandbox: bool = False


class PublishSocialPost(ToolArgs[SocialPost], frozen=True, kw_only=True, omit_defaults=True):
    """Publish a post now (or have the platform schedule it, ``scheduled_at``). Errors as the
    platform's API gives them: a rate limit is retried (``MCPRateLimited``), duplicate content,
    invalid media or a text over the limit fail for good (``MCPToolError``)."""

    TOOL: ClassVar[str] = "publish_social_post"
    RESULT: ClassVar[type[ToolResult]] = SocialPost

    platform: SocialPlatform
    text: str
    media_urls: list[str] = []
    link: str | None = None
    scheduled_at: datetime | None = None
    page: str | None = None  # the account or page posted as (default: the tenant's)


class SocialMetrics(ToolResult, frozen=True, kw_only=True):
    post_id: str
    platform: str
    impressions: int
    likes: int
    comments: int
    shares: int
    clicks: int
    hours_since_published: float | None = None
    measured_at: str | None = None
    sandbox: bool = False


class GetSocialPostMetrics(ToolArgs[SocialMetrics], frozen=True, kw_only=True, omit_defaults=True):
    TOOL: ClassVar[str] = "get_social_post_metrics"
    RESULT: ClassVar[type[ToolResult]] = SocialMetrics

    platform: SocialPlatform
    post_id: str


class SocialPostDeleted(ToolResult, frozen=True, kw_only=True):
    post_id: str
    platform: str
    deleted: bool
    deleted_at: str | None = None
    sandbox: bool = False


class DeleteSocialPost(ToolArgs[SocialPostDeleted], frozen=True, kw_only=True, omit_defaults=True):
    TOOL: ClassVar[str] = "delete_social_post"
    RESULT: ClassVar[type[ToolResult]] = SocialPostDeleted

    platform: SocialPlatform
    post_id: str


# --- commerce --------------------------------------------------------------------------------

class StockLevel(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    available: int
    in_stock: bool | None = None


class Inventory(ToolResult, frozen=True, kw_only=True):
    items: list[StockLevel]
    sandbox: bool = False


class CheckInventory(ToolArgs[Inventory], frozen=True, kw_only=True, omit_defaults=True):
    TOOL: ClassVar[str] = "check_inventory"
    RESULT: ClassVar[type[ToolResult]] = Inventory

    skus: list[str]


class ShippingLabel(ToolResult, frozen=True, kw_only=True):
    label_id: str
    tracking_number: str
    carrier: str | None = None
    service: str | None = None
    label_url: str | None = None
    status: str | None = None
    sandbox: bool = False


class CreateShippingLabel(ToolArgs[ShippingLabel], frozen=True, kw_only=True, omit_defaults=True):
    TOOL: ClassVar[str] = "create_shipping_label"
    RESULT: ClassVar[type[ToolResult]] = ShippingLabel

    order_key: str
    ship_to_country: str
    parcels: int | None = None
    carrier: str | None = None
    service: str | None = None


# --- web -------------------------------------------------------------------------------------

class Heading(msgspec.Struct, frozen=True, kw_only=True):
    level: int
    text: str = ""


class PageLink(msgspec.Struct, frozen=True, kw_only=True):
    href: str
    text: str = ""
    internal: bool = False


class TextBlock(msgspec.Struct, frozen=True, kw_only=True):
    tag: str  # the innermost block element of the text: "h2", "p", "li", ... ("body" outside any)
    text: str = ""


class WebPage(ToolResult, frozen=True, kw_only=True):
    """A fetched page (or why it could not be fetched: ``ok`` false, ``error``). The last four
    fields come with ``include_content`` only (a server that does not know it leaves them empty)."""

    url: str
    ok: bool
    final_url: str | None = None
    status_code: int | None = None
    content_type: str | None = None
    title: str | None = None
    meta_description: str | None = None
    headings: list[Heading] = []
    links: list[PageLink] = []
    word_count: int = 0
    load_time_ms: float = 0.0
    error: str | None = None
    structured_data: list[dict[str, Any]] = []  # JSON-LD objects, as the page wrote them
    microdata: list[dict[str, Any]] = []  # microdata items, JSON-LD-like ("@type" and properties)
    meta_properties: dict[str, str] = {}  # og:* and product:* meta properties
    text_blocks: list[TextBlock] = []  # the visible text, block by block (struck-out text left out)


class FetchWebPage(ToolArgs[WebPage], frozen=True, kw_only=True, omit_defaults=True):
    TOOL: ClassVar[str] = "fetch_web_page"
    RESULT: ClassVar[type[ToolResult]] = WebPage

    url: str
    timeout_seconds: float | None = None
    # Also what the page says (structured data, meta properties, text blocks): a price tracker's read.
    include_content: bool | None = None


# --- wordpress -------------------------------------------------------------------------------

class WordPressPost(ToolResult, frozen=True, kw_only=True):
    """A post on the tenant's WordPress site, as WordPress reports it after the call.

    ``status`` is WordPress's: draft, pending, future (scheduled for ``date_gmt``), publish.
    ``title`` and ``content`` are the raw (editable) texts, when the server returns them."""

    post_id: int
    site_url: str
    status: str
    link: str
    edit_link: str | None = None
    slug: str | None = None
    date_gmt: str | None = None  # ISO 8601, UTC
    modified_at: str | None = None
    title: str | None = None
    content: str | None = None
    excerpt: str | None = None
    categories: list[str] = []
    tags: list[str] = []
    sandbox: bool = False


class CreateWordPressPost(ToolArgs[WordPressPost], frozen=True, kw_only=True, omit_defaults=True):
    """Create a post (a draft unless ``status="pending"``). Categories and tags are names; the
    missing ones are created. ``site_url`` defaults to the site the tenant connected."""

    TOOL: ClassVar[str] = "create_wordpress_post"
    RESULT: ClassVar[type[ToolResult]] = WordPressPost

    title: str
    content: str  # HTML
    excerpt: str | None = None
    slug: str | None = None
    categories: list[str] = []
    tags: list[str] = []
    status: Literal["draft", "pending"] = "draft"
    site_url: str | None = None


class UpdateWordPressPost(ToolArgs[WordPressPost], frozen=True, kw_only=True, omit_defaults=True):
    """Change a post: only the fields given. ``status="future"`` with a ``date_gmt`` in the future
    schedules it (WordPress publishes it at that time); ``status="draft"`` withdraws it."""

    TOOL: ClassVar[str] = "update_wordpress_post"
    RESULT: ClassVar[type[ToolResult]] = WordPressPost

    post_id: int
    title: str | None = None
    content: str | None = None
    excerpt: str | None = None
    slug: str | None = None
    status: Literal["draft", "pending", "future", "publish"] | None = None
    date_gmt: str | None = None  # ISO 8601 with a zone, e.g. 2026-12-01T09:00:00+00:00
    site_url: str | None = None


class PublishWordPressPost(ToolArgs[WordPressPost], frozen=True, kw_only=True, omit_defaults=True):
    """Publish a post now (status ``publish``)."""

    TOOL: ClassVar[str] = "publish_wordpress_post"
    RESULT: ClassVar[type[ToolResult]] = WordPressPost

    post_id: int
    site_url: str | None = None


class GetWordPressPost(ToolArgs[WordPressPost], frozen=True, kw_only=True, omit_defaults=True):
    """Read a post as it is now (with its raw title and content)."""

    TOOL: ClassVar[str] = "get_wordpress_post"
    RESULT: ClassVar[type[ToolResult]] = WordPressPost

    post_id: int
    site_url: str | None = None


class WordPressTerm(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    name: str
    slug: str


class WordPressTerms(ToolResult, frozen=True, kw_only=True):
    terms: list[WordPressTerm]
    taxonomy: str | None = None
    site_url: str | None = None
    sandbox: bool = False


class ListWordPressTerms(ToolArgs[WordPressTerms], frozen=True, kw_only=True, omit_defaults=True):
    """The site's categories or tags."""

    TOOL: ClassVar[str] = "list_wordpress_terms"
    RESULT: ClassVar[type[ToolResult]] = WordPressTerms

    taxonomy: Literal["categories", "tags"]
    site_url: str | None = None


FETCH_WEB_PAGE = FetchWebPage.TOOL

# Every typed tool, by name.
TOOLS: dict[str, type[ToolArgs[Any]]] = {
    t.TOOL: t
    for t in (
        SendEmail, UpsertAdsCampaign, PublishSocialPost, GetSocialPostMetrics, DeleteSocialPost,
        CheckInventory, CreateShippingLabel, FetchWebPage,
        CreateWordPressPost, UpdateWordPressPost, PublishWordPressPost, GetWordPressPost, ListWordPressTerms,
    )
}


def arguments(args: ToolArgs[Any]) -> dict[str, Any]:
    """The arguments as sent to the server (unset optional fields left out)."""
    return msgspec.to_builtins(args)


def decode_result(args: ToolArgs[R], content: Any) -> R:
    """The tool's answer as its typed result; ``msgspec.ValidationError`` when it does not fit."""
    return msgspec.convert(content, args.RESULT)  # type: ignore[return-value]
