"""The sandbox MCP server shipped with the project.

It implements the outside-effect tools the workflows use (email, WhatsApp, SMS, social posts,
ads campaigns, WordPress, CRM) by recording each effect in the Postgres ``outbox`` table instead
of performing it, so a fresh install shows exactly what would have been sent. Production points
the MCP registry (``mcp-servers.yaml`` / table ``mcp_servers``) at real MCP servers instead.

Every effect tool takes ``tenant_id`` and ``idempotency_key`` (and optionally ``workflow_id``)
plus its own typed arguments, and answers what the real service would (ids, status). Ids are
derived from the idempotency key, and a second call with the same key writes nothing and returns
the stored answer, so a retried activity gets the same ids. Reusing a key for a different request
(another tenant, tool or arguments) is a tool error, as with Stripe.

``fetch_web_page`` really fetches a URL (http/https) and reports what an SEO audit needs; it
records nothing. Clients and agents choose its URLs, so it fetches public addresses only (the
policy of :mod:`activities.netguard`, from the ``BIZ_FETCH_*`` settings): each hop is resolved
once, checked and connected to by address; a refused URL is a tool error.

Run it: ``python -m activities.sandbox_mcp --port 8765 --database-url postgresql://...``
(``BIZ_DATABASE_URL`` when the flag is absent; ``--transport stdio`` for a stdio server).
In-process (tests): ``async with serve_http(build_server(pool), port=P) as url: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from typing import Annotated, Any, Literal
from urllib.parse import urljoin, urlsplit

import asyncpg
import httpx
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import Field
from typing_extensions import TypedDict

from activities import netguard
from core.settings import FetchSettings, load_settings
from core.names import SLUG_PATTERN

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
SERVER_NAME = "bizosaas-sandbox"
FETCH_MAX_BYTES = 5 * 1024 * 1024
FETCH_MAX_LINKS = 500
FETCH_MAX_REDIRECTS = 5
USER_AGENT = "BizOSaaS-Sandbox/1.0 (+https://bizosaas.example/bot)"

# --- argument types (validated by FastMCP: a bad argument is a tool error) -------------------

TenantId = Annotated[str, Field(pattern=SLUG_PATTERN, description="The tenant the effect belongs to.")]
IdempotencyKey = Annotated[
    str,
    Field(min_length=1, max_length=400, description="Same key, same effect and same answer (workflow id + step)."),
]
WorkflowId = Annotated[str | None, Field(max_length=400, description="The calling workflow, for the record.")]
Email = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$", max_length=254)]
Phone = Annotated[str, Field(pattern=r"^\+[1-9]\d{6,14}$", description="E.164, e.g. +14155550123")]
HttpUrl = Annotated[str, Field(pattern=r"^https?://[^\s/$.?#][^\s]*$", max_length=2048)]
ShortText = Annotated[str, Field(min_length=1, max_length=500)]

SocialPlatform = Literal["facebook", "instagram", "linkedin", "x", "tiktok"]
SOCIAL_TEXT_LIMITS = {"facebook": 63206, "instagram": 2200, "linkedin": 3000, "x": 280, "tiktok": 2200}
SOCIAL_HOSTS = {
    "facebook": "https://www.facebook.com/{page}/posts/{id}",
    "instagram": "https://www.instagram.com/p/{id}/",
    "linkedin": "https://www.linkedin.com/feed/update/urn:li:share:{id}/",
    "x": "https://x.com/{page}/status/{id}",
    "tiktok": "https://www.tiktok.com/@{page}/video/{id}",
}
AdsPlatform = Literal["google_ads", "meta_ads", "linkedin_ads", "tiktok_ads"]


# --- results (the tools' output schemas) -------------------------------------------------------

SANDBOX_DEFAULT_STOCK = 1000


class MessageSent(TypedDict):
    message_id: str
    status: str
    channel: str
    to: list[str]
    accepted_at: str
    segments: int | None
    sandbox: bool


class SocialPostResult(TypedDict):
    post_id: str
    platform: str
    status: str
    url: str
    published_at: str | None
    scheduled_at: str | None
    sandbox: bool


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


class WordPressPostResult(TypedDict):
    post_id: int
    site_url: str
    status: str
    link: str
    edit_link: str
    modified_at: str
    sandbox: bool


class CrmContactResult(TypedDict):
    contact_id: str
    action: str
    email: str
    lifecycle_stage: str
    sandbox: bool


class StockLevel(TypedDict):
    sku: str
    available: int
    in_stock: bool


class InventoryResult(TypedDict):
    items: list[StockLevel]
    sandbox: bool


class ShippingLabelResult(TypedDict):
    label_id: str
    tracking_number: str
    carrier: str
    service: str
    label_url: str
    status: str
    sandbox: bool


class Heading(TypedDict):
    level: int
    text: str


class PageLink(TypedDict):
    href: str
    text: str
    internal: bool


class WebPage(TypedDict):
    url: str
    final_url: str | None
    ok: bool
    status_code: int | None
    content_type: str | None
    title: str | None
    meta_description: str | None
    headings: list[Heading]
    links: list[PageLink]
    word_count: int
    load_time_ms: float
    error: str | None


# --- helpers ---------------------------------------------------------------------------------

def derive_id(*parts: str, length: int = 24) -> str:
    """A stable id from the request's identity: the same key always names the same object."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    """Arguments as they are stored in jsonb (and compared on a repeated key)."""
    return json.loads(json.dumps(value, default=str))


class _PoolSource:
    """The pool given by the caller, or one opened from a URL on first use (and closed here)."""

    def __init__(self, pool_or_url: asyncpg.Pool | str) -> None:
        self._pool = pool_or_url if isinstance(pool_or_url, asyncpg.Pool) else None
        self._url = pool_or_url if isinstance(pool_or_url, str) else None
        self._lock = asyncio.Lock()

    async def get(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    from core.database import create_pool

                    self._pool = await create_pool(self._url, min_size=1, max_size=5)
        return self._pool

    async def aclose(self) -> None:
        if self._url is not None and self._pool is not None:
            await self._pool.close()
            self._pool = None


class Outbox:
    """Records one effect per idempotency key; a repeated key answers the stored response."""

    def __init__(self, pools: _PoolSource) -> None:
        self._pools = pools

    async def record(
        self,
        *,
        tool: str,
        tenant_id: str,
        idempotency_key: str,
        workflow_id: str | None,
        arguments: dict[str, Any],
        respond: Any,  # async (conn) -> dict: builds the answer of a first call
    ) -> dict[str, Any]:
        arguments = _jsonable(arguments)
        pool = await self._pools.get()
        async with pool.acquire() as conn, conn.transaction():
            # Concurrent calls with one key wait for each other: one writes, the other reads.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", idempotency_key)
            row = await conn.fetchrow(
                "SELECT tenant_id, tool, arguments, response FROM outbox WHERE idempotency_key = $1",
                idempotency_key,
            )
            if row is not None:
                if (row["tenant_id"], row["tool"], row["arguments"]) != (tenant_id, tool, arguments):
                    raise ToolError(
                        f"idempotency key {idempotency_key!r} was already used for a different request"
                    )
                return row["response"]
            response = _jsonable(await respond(conn))
            await conn.execute(
                """INSERT INTO outbox (idempotency_key, tenant_id, tool, arguments, response, workflow_id)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                idempotency_key, tenant_id, tool, arguments, response, workflow_id,
            )
            log.info("sandbox %s for tenant %s recorded (key %s)", tool, tenant_id, idempotency_key)
            return response


async def _earlier_response(conn: asyncpg.Connection, tenant_id: str, tool: str, field: str, value: Any) -> dict | None:
    """The newest recorded answer of ``tool`` for the tenant whose ``field`` equals ``value``."""
    return await conn.fetchval(
        """SELECT response FROM outbox
           WHERE tenant_id = $1 AND tool = $2 AND response ->> $3 = $4
           ORDER BY id DESC LIMIT 1""",
        tenant_id, tool, field, str(value),
    )


# --- the web page fetcher --------------------------------------------------------------------

class _PageParser(HTMLParser):
    _SKIP = {"script", "style", "noscript", "template", "svg"}
    _HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self.meta_description: str | None = None
        self.headings: list[Heading] = []
        self.links: list[tuple[str, str]] = []
        self.words = 0
        self._skip_depth = 0
        self._in_title = False
        self._title_parts: list[str] = []
        self._heading: tuple[int, list[str]] | None = None
        self._link: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag in self._SKIP:
            self._skip_depth += 1
        elif tag == "title" and self.title is None:
            self._in_title = True
        elif tag == "meta" and a.get("name", "").lower() == "description" and self.meta_description is None:
            self.meta_description = " ".join(a.get("content", "").split()) or None
        elif tag in self._HEADINGS:
            self._heading = (self._HEADINGS[tag], [])
        elif tag == "a" and a.get("href"):
            self._link = (a["href"], [])

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "title" and self._in_title:
            self._in_title = False
            self.title = " ".join("".join(self._title_parts).split()) or None
        elif tag in self._HEADINGS and self._heading is not None:
            level, parts = self._heading
            self.headings.append(Heading(level=level, text=" ".join("".join(parts).split())))
            self._heading = None
        elif tag == "a" and self._link is not None:
            href, parts = self._link
            self.links.append((href, " ".join("".join(parts).split())))
            self._link = None

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._in_title:
            self._title_parts.append(data)
            return
        if self._heading is not None:
            self._heading[1].append(data)
        if self._link is not None:
            self._link[1].append(data)
        self.words += len(re.findall(r"\w+", data))


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (TCP)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Unresolvable(Exception):
    pass


async def _pin(target: netguard.Target, policy: netguard.FetchPolicy, resolve: Resolver) -> netguard.IPAddress:
    """The one address this hop connects to: the literal, or the checked answer of one lookup."""
    if target.literal is not None:
        return netguard.check_address(target.literal, target.port, policy)
    try:
        addresses = await resolve(target.host, target.port)
    except OSError as exc:
        raise _Unresolvable(f"{target.host} does not resolve: {exc}") from None
    return netguard.check_addresses(target, addresses, policy)


async def fetch_page(
    url: str,
    *,
    timeout: float,
    policy: netguard.FetchPolicy | None = None,
    resolver: Resolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    max_bytes: int = FETCH_MAX_BYTES,
    max_redirects: int = FETCH_MAX_REDIRECTS,
) -> WebPage:
    """GET ``url`` and report what an SEO audit needs. Every hop (the URL, each redirect) is
    checked by ``policy`` and connects to the address it checked; ``timeout`` bounds the whole
    fetch, all hops included; the body is read up to ``max_bytes``. A refused URL raises
    :class:`netguard.URLRefused`; an unreachable or slow page is a finding (``error``)."""
    policy = policy or netguard.FetchPolicy()
    resolve = resolver or system_resolver
    started = time.perf_counter()
    deadline = started + timeout

    def page(**kw: Any) -> WebPage:
        base: dict[str, Any] = dict(
            url=url, final_url=None, ok=False, status_code=None, content_type=None, title=None,
            meta_description=None, headings=[], links=[], word_count=0, error=None,
        )
        base.update(kw)
        return WebPage(load_time_ms=round((time.perf_counter() - started) * 1000, 1), **base)

    current = httpx.URL(url)
    try:
        async with asyncio.timeout(timeout):
            for hop in range(max_redirects + 1):
                target = netguard.check_url(current)
                ip = await _pin(target, policy, resolve)
                # A client per hop: a connection is never reused for another host name.
                async with httpx.AsyncClient(
                    follow_redirects=False, trust_env=False, transport=transport,
                    timeout=max(deadline - time.perf_counter(), 0.001),
                    headers={"user-agent": USER_AGENT},
                ) as http, http.stream(
                    "GET", target.pinned(ip), headers={"host": target.host_header},
                    extensions={"sni_hostname": target.host} if target.url.scheme == "https" else None,
                ) as resp:
                    location = resp.headers.get("location")
                    if resp.is_redirect and location:
                        try:
                            current = current.join(location.strip())
                        except (httpx.InvalidURL, ValueError) as exc:
                            raise netguard.URLRefused(netguard.HOST, f"redirect to an invalid URL: {exc}") from None
                        continue
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body.extend(chunk)
                        if len(body) >= max_bytes:
                            break
                    text = bytes(body[:max_bytes]).decode(resp.encoding or "utf-8", errors="replace")
                    break
            else:
                return page(error=f"TooManyRedirects: more than {max_redirects} redirects")
    except netguard.URLRefused as exc:
        where = "" if current == httpx.URL(url) else f" (redirected to {current})"
        raise netguard.URLRefused(exc.reason, f"{exc.message}{where}") from None
    except TimeoutError:
        return page(error=f"Timeout: the page did not load within {timeout:g} s")
    except (httpx.HTTPError, _Unresolvable) as exc:
        # An unreachable page is a finding for an audit, not a failure of the tool.
        return page(error=f"{exc.__class__.__name__.lstrip('_')}: {exc}"[:500])

    content_type = resp.headers.get("content-type")
    final_url = str(current.copy_with(fragment=None))
    if content_type and "html" not in content_type.lower():
        return page(final_url=final_url, ok=resp.is_success, status_code=resp.status_code, content_type=content_type)
    parser = _PageParser()
    parser.feed(text)
    parser.close()
    host = urlsplit(final_url).netloc
    links: list[PageLink] = []
    seen: set[str] = set()
    for href, label in parser.links:
        if href.startswith(("#", "mailto:", "tel:", "javascript:")):
            continue
        absolute = urljoin(final_url, href)
        if absolute in seen:
            continue
        seen.add(absolute)
        links.append(PageLink(href=absolute, text=label, internal=urlsplit(absolute).netloc == host))
        if len(links) >= FETCH_MAX_LINKS:
            break
    return page(
        final_url=final_url, ok=resp.is_success, status_code=resp.status_code, content_type=content_type,
        title=parser.title, meta_description=parser.meta_description, headings=parser.headings,
        links=links, word_count=parser.words,
    )


# --- the server ------------------------------------------------------------------------------

def build_server(
    pool_or_url: asyncpg.Pool | str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    fetch_policy: netguard.FetchPolicy | None = None,
    fetch_resolver: Resolver | None = None,
    fetch_transport: httpx.AsyncBaseTransport | None = None,
) -> FastMCP:
    """The sandbox server (a FastMCP; streamable HTTP path ``/mcp``). Serve it with
    :func:`serve_http`, or ``await server.run_stdio_async()``. Its HTTP app runs once: build a
    new one to serve again. Given a URL rather than a pool, it opens a pool on first use; close
    that with ``await close_server(server)``. ``fetch_policy`` says where fetch_web_page may
    connect (default: public addresses on web ports only; see :mod:`activities.netguard`);
    ``fetch_resolver`` replaces the system's DNS lookup and ``fetch_transport`` the HTTP
    transport (e.g. ``httpx.MockTransport``)."""
    pools = _PoolSource(pool_or_url)
    outbox = Outbox(pools)
    mcp = FastMCP(
        SERVER_NAME,
        instructions=(
            "BizOSaaS sandbox: outside effects (email, WhatsApp, SMS, social posts, ads, WordPress, "
            "CRM) are recorded in the outbox instead of being performed. Ids derive from the "
            "idempotency key; a repeated key returns the first answer."
        ),
        host=host,
        port=port,
        log_level="WARNING",
    )
    mcp._bizosaas_pools = pools  # type: ignore[attr-defined]  # closed by close_server

    @mcp.tool(name="send_email", description="Send an email (recorded in the outbox).", structured_output=True)
    async def send_email(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        to: Annotated[list[Email], Field(min_length=1, max_length=50)],
        subject: Annotated[str, Field(min_length=1, max_length=998)],
        text: Annotated[str, Field(min_length=1, max_length=200_000)],
        html: Annotated[str | None, Field(max_length=500_000)] = None,
        cc: Annotated[list[Email], Field(max_length=50)] = [],  # noqa: B006 - copied by pydantic
        reply_to: Email | None = None,
        from_name: Annotated[str | None, Field(max_length=200)] = None,
        workflow_id: WorkflowId = None,
    ) -> MessageSent:
        args = dict(to=to, subject=subject, text=text, html=html, cc=cc, reply_to=reply_to, from_name=from_name)

        async def respond(conn: asyncpg.Connection) -> MessageSent:
            return MessageSent(
                message_id=f"msg_{derive_id('email', idempotency_key)}", status="queued", channel="email",
                to=to, accepted_at=_now(), segments=None, sandbox=True,
            )

        return await outbox.record(tool="send_email", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

    @mcp.tool(
        name="send_whatsapp",
        description="Send a WhatsApp message: free text, or an approved template with parameters.",
        structured_output=True,
    )
    async def send_whatsapp(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        to: Phone,
        text: Annotated[str | None, Field(min_length=1, max_length=4096)] = None,
        template: Annotated[str | None, Field(pattern=r"^[a-z0-9_]{1,512}$")] = None,
        template_params: Annotated[list[str], Field(max_length=20)] = [],  # noqa: B006
        workflow_id: WorkflowId = None,
    ) -> MessageSent:
        if (text is None) == (template is None):
            raise ToolError("give exactly one of text or template")
        args = dict(to=to, text=text, template=template, template_params=template_params)

        async def respond(conn: asyncpg.Connection) -> MessageSent:
            return MessageSent(
                message_id=f"wamid.{derive_id('whatsapp', idempotency_key, length=32)}", status="accepted",
                channel="whatsapp", to=[to], accepted_at=_now(), segments=None, sandbox=True,
            )

        return await outbox.record(tool="send_whatsapp", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

    @mcp.tool(name="send_sms", description="Send an SMS (long texts are split into segments).", structured_output=True)
    async def send_sms(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        to: Phone,
        text: Annotated[str, Field(min_length=1, max_length=1600)],
        sender_id: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9 ]{1,11}$")] = None,
        workflow_id: WorkflowId = None,
    ) -> MessageSent:
        args = dict(to=to, text=text, sender_id=sender_id)

        async def respond(conn: asyncpg.Connection) -> MessageSent:
            # GSM-7: 160 characters, or 153 per part when split; UCS-2: 70, or 67.
            single, part = (160, 153) if text.isascii() else (70, 67)
            segments = 1 if len(text) <= single else math.ceil(len(text) / part)
            return MessageSent(
                message_id=f"SM{derive_id('sms', idempotency_key, length=32)}", status="queued", channel="sms",
                to=[to], accepted_at=_now(), segments=segments, sandbox=True,
            )

        return await outbox.record(tool="send_sms", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

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
                published_at=None if future else _now(),
                scheduled_at=scheduled_at.isoformat() if future else None, sandbox=True,
            )

        return await outbox.record(tool="publish_social_post", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

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
                earlier = await _earlier_response(conn, tenant_id, "upsert_ads_campaign", "campaign_id", campaign_id)
                if earlier is None or earlier.get("platform") != platform:
                    raise ToolError(f"campaign {campaign_id} not found on {platform}")
                cid, action = campaign_id, "updated"
            return AdsCampaignResult(
                campaign_id=cid, platform=platform, action=action, name=name, status=status,
                objective=objective, daily_budget=daily_budget, currency=currency, sandbox=True,
            )

        return await outbox.record(tool="upsert_ads_campaign", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

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
                edit_link=f"{site}/wp-admin/post.php?post={post_id}&action=edit", modified_at=_now(), sandbox=True,
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
            created = await _earlier_response(conn, tenant_id, "create_wordpress_post", "post_id", post_id)
            if created is None or created.get("site_url") != site:
                raise ToolError(f"post {post_id} not found on {site}")
            slug = f"{site}/?p={post_id}"
            return WordPressPostResult(
                post_id=post_id, site_url=site, status="publish", link=slug,
                edit_link=f"{site}/wp-admin/post.php?post={post_id}&action=edit", modified_at=_now(), sandbox=True,
            )

        return await outbox.record(tool="publish_wordpress_post", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

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
            earlier = await _earlier_response(conn, tenant_id, "upsert_crm_contact", "contact_id", contact_id)
            return CrmContactResult(
                contact_id=contact_id, action="updated" if earlier else "created", email=normalized,
                lifecycle_stage=lifecycle_stage, sandbox=True,
            )

        return await outbox.record(tool="upsert_crm_contact", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

    @mcp.tool(
        name="fetch_web_page",
        description=(
            "Fetch a web page (HTTP GET, up to 5 redirects followed) and report status, title, meta "
            "description, headings, links, word count and load time. Only public addresses on web ports are "
            "fetched (every redirect is checked); timeout_seconds bounds the whole fetch. Records nothing."
        ),
        structured_output=True,
    )
    async def fetch_web_page(
        tenant_id: TenantId,
        url: HttpUrl,
        idempotency_key: Annotated[str | None, Field(max_length=400)] = None,
        timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 15.0,
        workflow_id: WorkflowId = None,
    ) -> WebPage:
        try:
            return await fetch_page(url, timeout=timeout_seconds, policy=fetch_policy, resolver=fetch_resolver,
                                    transport=fetch_transport)
        except netguard.URLRefused as exc:
            # Permanent: the MCP activity reports it as a non-retryable MCPToolError.
            raise ToolError(f"URL refused ({exc.reason}): {exc.message}") from None

    @mcp.tool(
        name="check_inventory",
        description=(
            "Stock levels of SKUs in the store's inventory. Sandbox stock comes from the tenant's settings: "
            "`inventory` ({sku: quantity}) and `out_of_stock_skus`; other SKUs have "
            f"{SANDBOX_DEFAULT_STOCK} available. Records nothing."
        ),
        structured_output=True,
    )
    async def check_inventory(
        tenant_id: TenantId,
        skus: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(min_length=1, max_length=500)],
        idempotency_key: Annotated[str | None, Field(max_length=400)] = None,
        workflow_id: WorkflowId = None,
    ) -> InventoryResult:
        pool = await pools.get()
        settings = await pool.fetchval("SELECT settings FROM tenants WHERE id = $1", tenant_id) or {}
        stock = settings.get("inventory") or {}
        out = set(settings.get("out_of_stock_skus") or [])
        items = []
        for sku in dict.fromkeys(skus):
            available = 0 if sku in out else int(stock.get(sku, SANDBOX_DEFAULT_STOCK))
            items.append(StockLevel(sku=sku, available=available, in_stock=available > 0))
        return InventoryResult(items=items, sandbox=True)

    @mcp.tool(
        name="create_shipping_label",
        description="Buy a shipping label for an order (recorded in the outbox); answers the tracking number.",
        structured_output=True,
    )
    async def create_shipping_label(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        order_key: Annotated[str, Field(min_length=1, max_length=100)],
        ship_to_country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")],
        parcels: Annotated[int, Field(ge=1, le=50)] = 1,
        carrier: Literal["usps", "ups", "fedex", "dhl"] = "usps",
        service: Annotated[str, Field(min_length=1, max_length=40)] = "ground",
        workflow_id: WorkflowId = None,
    ) -> ShippingLabelResult:
        args = dict(order_key=order_key, ship_to_country=ship_to_country, parcels=parcels, carrier=carrier,
                    service=service)

        async def respond(conn: asyncpg.Connection) -> ShippingLabelResult:
            label = derive_id("label", idempotency_key)
            return ShippingLabelResult(
                label_id=f"lbl_{label}", tracking_number=f"1Z{derive_id('tracking', idempotency_key, length=16).upper()}",
                carrier=carrier, service=service, label_url=f"https://labels.sandbox.invalid/{label}.pdf",
                status="purchased", sandbox=True,
            )

        return await outbox.record(tool="create_shipping_label", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

    return mcp


async def close_server(server: FastMCP) -> None:
    """Close the pool a server opened from a URL (a pool passed in stays open)."""
    pools: _PoolSource | None = getattr(server, "_bizosaas_pools", None)
    if pools is not None:
        await pools.aclose()


class _Uvicorn:
    """uvicorn serving a FastMCP app, with the app's lifespan (the MCP session manager) run
    around it, so that on stop the MCP sessions end first: open SSE streams of connected
    clients would otherwise hold uvicorn's graceful shutdown."""

    def __init__(self, server: FastMCP, host: str, port: int) -> None:
        import uvicorn

        self._mcp = server
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop = self._stop

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:  # SIGINT/SIGTERM
                loop.call_soon_threadsafe(stop.set)
                super().handle_exit(sig, frame)

        self.uvicorn = Server(uvicorn.Config(
            server.streamable_http_app(), host=host, port=port, lifespan="off",
            log_level="warning", timeout_graceful_shutdown=3,
        ))

    async def run(self) -> None:
        async with self._mcp.session_manager.run():
            serving = asyncio.create_task(self.uvicorn.serve())
            stopping = asyncio.create_task(self._stop.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            self.uvicorn.should_exit = True
        await serving

    def stop(self) -> None:
        self._stop.set()


@asynccontextmanager
async def serve_http(server: FastMCP, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> AsyncIterator[str]:
    """Serve ``server`` over streamable HTTP while the block runs; yields the MCP endpoint URL.
    (A FastMCP HTTP app runs once: build a new server to serve again.)"""
    runner = _Uvicorn(server, host, port)
    task = asyncio.create_task(runner.run(), name=f"sandbox-mcp-{port}")
    while not runner.uvicorn.started:
        if task.done():
            task.result()
            raise RuntimeError("the sandbox MCP server stopped while starting")
        await asyncio.sleep(0.01)
    try:
        yield f"http://{host}:{port}{server.settings.streamable_http_path}"
    finally:
        runner.stop()
        await task


async def serve(
    database_url: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    transport: Literal["streamable-http", "stdio"] = "streamable-http",
    fetch_policy: netguard.FetchPolicy | None = None,
) -> None:
    """Serve the sandbox (streamable HTTP on ``host:port``, or stdio) until interrupted."""
    from core.database import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=5)
    try:
        server = build_server(pool, host=host, port=port, fetch_policy=fetch_policy)
        if transport == "stdio":
            await server.run_stdio_async()
            return
        runner = _Uvicorn(server, host, port)
        log.info("sandbox MCP server on http://%s:%d%s", host, port, server.settings.streamable_http_path)
        await runner.run()
    finally:
        await pool.close()


def fetch_policy_of(settings: FetchSettings) -> netguard.FetchPolicy:
    return netguard.FetchPolicy.from_settings(settings.allow_private_networks, settings.allowed_networks,
                                              settings.public_ports)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m activities.sandbox_mcp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--database-url", default=None, help="Postgres URL (default: $BIZ_DATABASE_URL)")
    parser.add_argument("--transport", choices=("streamable-http", "stdio"), default="streamable-http")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    database_url = args.database_url or os.environ.get("BIZ_DATABASE_URL")
    if not database_url:
        parser.error("--database-url or BIZ_DATABASE_URL is required")
    # Logs go to stderr: with the stdio transport, stdout carries the protocol.
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(database_url, host=args.host, port=args.port, transport=args.transport,
                          fetch_policy=fetch_policy_of(load_settings().fetch)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
