"""Web tools: ``fetch_web_page`` really fetches a URL (http/https) and reports what an SEO audit
needs; it records nothing. Clients and agents choose its URLs, so it fetches public addresses
only (the policy of :mod:`activities.netguard`, from the ``BIZ_FETCH_*`` settings): each hop is
resolved once, checked and connected to by address; a refused URL is a tool error."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from html.parser import HTMLParser
from typing import Annotated, Any
from urllib.parse import urljoin, urlsplit

import httpx
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import Field
from typing_extensions import TypedDict

from activities import netguard
from sandboxes.mcp.common import HttpUrl, Resolver, TenantId, ToolContext, WorkflowId
from sandboxes.mcp.page_content import TextBlock, page_content


FETCH_MAX_BYTES = 5 * 1024 * 1024
FETCH_MAX_LINKS = 500
FETCH_MAX_REDIRECTS = 5
USER_AGENT = "BizOSaaS-Sandbox/1.0 (+https://bizosaas.example/bot)"


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
    # Filled with include_content only (sandboxes/mcp/page_content.py): what the page says.
    structured_data: list[dict[str, Any]]
    microdata: list[dict[str, Any]]
    meta_properties: dict[str, str]
    text_blocks: list[TextBlock]


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
    include_content: bool = False,
) -> WebPage:
    """GET ``url`` and report what an SEO audit needs (``include_content``: and what the page
    says, its structured data, meta properties and text blocks). Every hop (the URL, each redirect) is
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
            structured_data=[], microdata=[], meta_properties={}, text_blocks=[],
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
    return page(final_url=final_url, ok=resp.is_success, status_code=resp.status_code, content_type=content_type,
                **page_fields(text, final_url), **(page_content(text) if include_content else {}))


def page_fields(html: str, final_url: str) -> dict[str, Any]:
    """What an SEO audit reads of an HTML page: title, meta description, headings, links (absolute,
    internal when on the page's host) and word count."""
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    host = urlsplit(final_url).netloc
    links: list[PageLink] = []
    seen: set[str] = set()
    for href, label in parser.links:
        if href.startswith(("#", "mailto:", "tel:", "javascript:")):
            continue
        try:
            absolute = urljoin(final_url, href)
            internal = urlsplit(absolute).netloc == host
        except ValueError:  # a link no URL parser reads (http://[1..2]/): left out, the page is still read
            continue
        if absolute in seen:
            continue
        seen.add(absolute)
        links.append(PageLink(href=absolute, text=label, internal=internal))
        if len(links) >= FETCH_MAX_LINKS:
            break
    return dict(title=parser.title, meta_description=parser.meta_description, headings=parser.headings,
                links=links, word_count=parser.words)


def register(mcp: FastMCP, ctx: ToolContext) -> None:
    """Add the web tools to the sandbox server."""
    fetch_policy, fetch_resolver, fetch_transport = ctx.fetch_policy, ctx.fetch_resolver, ctx.fetch_transport

    @mcp.tool(
        name="fetch_web_page",
        description=(
            "Fetch a web page (HTTP GET, up to 5 redirects followed) and report status, title, meta "
            "description, headings, links, word count and load time; with include_content also its JSON-LD "
            "structured data, microdata items, og:/product: meta properties and visible text blocks. Only "
            "public addresses on web ports are fetched (every redirect is checked); timeout_seconds bounds the whole fetch. Records nothing."
        ),
        structured_output=True,
    )
    async def fetch_web_page(
        tenant_id: TenantId,
        url: HttpUrl,
        idempotency_key: Annotated[str | None, Field(max_length=400)] = None,
        timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 15.0,
        workflow_id: WorkflowId = None,
        include_content: bool = False,
    ) -> WebPage:
        try:
            return await fetch_page(url, timeout=timeout_seconds, policy=fetch_policy, resolver=fetch_resolver,
                                    transport=fetch_transport, include_content=include_content)
        except netguard.URLRefused as exc:
            # Permanent: the MCP activity reports it as a non-retryable MCPToolError.
            raise ToolError(f"URL refused ({exc.reason}): {exc.message}") from None
