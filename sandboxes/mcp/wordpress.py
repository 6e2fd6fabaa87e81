"""WordPress tools: posts on the tenant's own WordPress site, over the WordPress REST API.

The tenant connects its site once (``PUT /v1/tenants/{t}/connections/wordpress``: the address,
a user and an application password, kept in ``tenant_wordpress``); these tools then speak the
REST API to that site with HTTP Basic authentication (application passwords, WordPress 5.6+):

- ``create_wordpress_post``: a draft (or pending) post; categories and tags by name, the missing
  ones created.
- ``update_wordpress_post``: title, body, excerpt, slug, status; ``status="future"`` with a
  ``date_gmt`` schedules it (WordPress publishes it then); ``status="draft"`` withdraws it.
- ``publish_wordpress_post``: publish now (a scheduled post too).
- ``get_wordpress_post`` and ``list_wordpress_terms``: reads, recorded nowhere.

Each effect is recorded in the outbox once per idempotency key, in the transaction that holds
the key's lock while WordPress is called: a retried call answers the first answer and writes
nothing twice. A call WordPress refused records nothing. WordPress itself has no idempotency
key, so a create also leaves one on the site: the post's body ends with an HTML comment naming
a digest of the tenant and the key (``<!-- bizosaas-post-... -->``, invisible on the page), and
before creating, the tool looks for a post carrying it (``GET /wp/v2/posts?search=...&status=any``,
authenticated) and adopts the one it finds. So an answer lost between WordPress and the outbox
(the process dies right then, a proxy times out after WordPress made the post) never makes a
second post, and a create is tried again through a passing outage as reads and updates are.
(Stock WordPress offers no other place: post meta is writable over REST only where a plugin
registers it, and a draft's slug is neither required nor kept unique.) The marker is left out
of the tools' answers.

A tenant with no site connected gets a tool error that starts ``WordPress not connected``: the
MCP activity types it ``MCPNotConnected`` (activities/mcp/errors.py), so a workflow can end
early, before any work the post would waste.

The site is reached as ``fetch_web_page`` reaches pages (activities/netguard.py, the
``BIZ_FETCH_*`` policy): resolved once, checked, connected to by address, no redirects followed;
a site on loopback or a private network only where the policy opens them (``bizosaas dev``, the
tests). WordPress's errors become tool errors that say what was wrong (credentials refused, post
not found, which parameter was invalid); the application password never appears in them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
import httpx
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from pydantic import Field
from typing_extensions import TypedDict

from activities import netguard
from sandboxes.mcp.common import HttpUrl, IdempotencyKey, ShortText, TenantId, ToolContext, WorkflowId
from sandboxes.mcp.web import system_resolver

TIMEOUT_SECONDS = 10.0  # one request; the MCP session waits 30 s for a whole call
RETRY_DELAYS = (0.5, 2.0)  # a passing outage, tried again within the call (see WordPressAPI._send)
USER_AGENT = "BizOSaaS-WordPress/1.0"
REST_PREFIX = "/wp-json"
PostId = Annotated[int, Field(gt=0, description="The post's id on the site")]
Body = Annotated[str, Field(min_length=1, max_length=1_000_000, description="HTML")]
Excerpt = Annotated[str, Field(max_length=2000)]
Slug = Annotated[str, Field(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$", max_length=200)]
TermNames = Annotated[list[ShortText], Field(max_length=50)]
SiteUrl = Annotated[HttpUrl | None, Field(description="Default: the site the tenant connected")]


class WordPressPostResult(TypedDict):
    post_id: int
    site_url: str
    status: str
    link: str
    edit_link: str
    slug: str | None
    date_gmt: str | None
    modified_at: str | None
    title: str | None
    content: str | None
    excerpt: str | None
    categories: list[str]
    tags: list[str]
    sandbox: bool


class WordPressTerm(TypedDict):
    id: int
    name: str
    slug: str


class WordPressTermsResult(TypedDict):
    terms: list[WordPressTerm]
    taxonomy: str
    site_url: str
    sandbox: bool


@dataclass(frozen=True)
class Site:
    """A tenant's connected site (the password stays here: never logged, never answered)."""

    url: str
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Site(url={self.url!r}, username={self.username!r})"


async def connected_site(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, site_url: str | None) -> Site:
    """The tenant's site; a tool error when none is connected or ``site_url`` names another."""
    row = await conn.fetchrow(
        "SELECT site_url, username, application_password FROM tenant_wordpress WHERE tenant_id = $1", tenant_id)
    if row is None:
        raise ToolError(f"WordPress not connected: no WordPress site connected for tenant {tenant_id!r}: "
                        f"connect one with PUT /v1/tenants/{tenant_id}/connections/wordpress")
    site = Site(url=row["site_url"].rstrip("/"), username=row["username"], password=row["application_password"])
    if site_url is not None and site_url.rstrip("/").lower() != site.url.lower():
        raise ToolError(f"{site_url} is not the WordPress site connected for tenant {tenant_id!r} ({site.url})")
    return site


def _gmt_iso(value: str | None) -> str | None:
    """WordPress's ``date_gmt`` (UTC without a zone) as ISO 8601 with its zone."""
    if not value:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC).isoformat()


def _date_gmt(value: str) -> str:
    """An ISO 8601 time with a zone as WordPress's ``date_gmt``."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ToolError(f"date_gmt {value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ToolError(f"date_gmt {value!r} has no time zone (e.g. 2026-12-01T09:00:00+00:00)")
    return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat()


class WordPressOutage(ToolError):
    """WordPress did not answer, or answered 5xx: a passing outage, as far as the tool knows."""


MARKER_PREFIX = "bizosaas-post-"
_MARKER = re.compile(r"\s*<!-- bizosaas-post-[0-9a-f]{32} -->\s*$")


def post_marker(tenant_id: str, idempotency_key: str) -> str:
    """The token a create leaves in its post's body: a digest of the tenant and the key (the
    key names the workflow, which the page's source should not show)."""
    return MARKER_PREFIX + hashlib.sha256(f"{tenant_id}\x1f{idempotency_key}".encode()).hexdigest()[:32]


def _without_marker(content: str | None) -> str | None:
    return _MARKER.sub("", content) if content else content


class _Unreachable(Exception):
    def __init__(self, message: str, nothing_sent: bool) -> None:
        super().__init__(message)
        self.message, self.nothing_sent = message, nothing_sent


class WordPressAPI:
    """The REST API of one site, for one tool call."""

    def __init__(self, site: Site, ctx: ToolContext) -> None:
        self.site = site
        self._policy = ctx.fetch_policy or netguard.FetchPolicy()
        self._resolve = ctx.fetch_resolver or system_resolver
        self._transport = ctx.fetch_transport
        token = base64.b64encode(f"{site.username}:{site.password}".encode()).decode()
        self._auth = f"Basic {token}"
        self._plain_permalinks = False

    def _url(self, route: str, params: dict[str, Any] | None) -> httpx.URL:
        if self._plain_permalinks:
            return httpx.URL(f"{self.site.url}/", params={"rest_route": route, **(params or {})})
        return httpx.URL(f"{self.site.url}{REST_PREFIX}{route}", params=params or {})

    async def _send(self, method: str, url: httpx.URL, body: dict[str, Any] | None,
                    idempotent: bool = False) -> httpx.Response:
        """One request; a passing outage is tried again a few times here (tool errors are final
        for the caller): a connection refused always, as nothing was sent, and a timeout or a 5xx
        answer when the request may be repeated (a read, or an update with the same body)."""
        for delay in (*RETRY_DELAYS, None):
            try:
                resp = await self._send_once(method, url, body)
            except _Unreachable as exc:
                if delay is None or not (exc.nothing_sent or idempotent):
                    raise WordPressOutage(exc.message) from None
            else:
                if delay is None or not (resp.status_code in (502, 503, 504) and idempotent):
                    return resp
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _send_once(self, method: str, url: httpx.URL, body: dict[str, Any] | None) -> httpx.Response:
        try:
            target = netguard.check_url(url)
            if target.literal is not None:
                ip = netguard.check_address(target.literal, target.port, self._policy)
            else:
                try:
                    addresses = await self._resolve(target.host, target.port)
                except OSError as exc:
                    raise ToolError(f"WordPress site {self.site.url}: {target.host} does not resolve: {exc}") from None
                ip = netguard.check_addresses(target, addresses, self._policy)
        except netguard.URLRefused as exc:
            raise ToolError(f"WordPress site {self.site.url} refused by the network policy ({exc.reason}): "
                            f"{exc.message}") from None
        try:
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False, transport=self._transport,
                                         timeout=TIMEOUT_SECONDS) as http:
                return await http.request(
                    method, target.pinned(ip), json=body,
                    headers={"host": target.host_header, "authorization": self._auth, "user-agent": USER_AGENT,
                             "accept": "application/json"},
                    extensions={"sni_hostname": target.host} if target.url.scheme == "https" else None)
        except httpx.HTTPError as exc:
            raise _Unreachable(f"WordPress at {self.site.url} did not answer: {exc.__class__.__name__}: "
                               f"{str(exc)[:200]}", nothing_sent=isinstance(exc, httpx.ConnectError)) from None

    async def call(self, method: str, route: str, *, params: dict[str, Any] | None = None,
                   body: dict[str, Any] | None = None, post_id: int | None = None) -> Any:
        """WordPress's JSON answer; its errors as tool errors that say what was wrong."""
        idempotent = method == "GET" or (method == "POST" and post_id is not None)
        resp = await self._send(method, self._url(route, params), body, idempotent)
        if resp.status_code == 404 and not self._plain_permalinks and not _is_json(resp):
            # A site without pretty permalinks serves the REST API at /?rest_route= only.
            self._plain_permalinks = True
            resp = await self._send(method, self._url(route, params), body, idempotent)
        if resp.is_redirect:
            raise ToolError(f"WordPress at {self.site.url} redirects to {resp.headers.get('location')!r}: "
                            "connect the site with its final address")
        try:
            answer = resp.json()
        except ValueError:
            if resp.status_code >= 500:
                raise WordPressOutage(f"WordPress at {self.site.url} failed: HTTP {resp.status_code}") from None
            raise ToolError(f"{self.site.url} answered HTTP {resp.status_code} to {method} {route} without "
                            "WordPress's JSON: is it a WordPress site with the REST API on?") from None
        if resp.is_success:
            return answer
        raise self._error(resp.status_code, answer if isinstance(answer, dict) else {}, method, route, post_id)

    def _error(self, status: int, answer: dict[str, Any], method: str, route: str, post_id: int | None) -> ToolError:
        code, message = str(answer.get("code") or "unknown"), str(answer.get("message") or "")[:300]
        data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
        site, user = self.site.url, self.site.username
        if code in ("incorrect_password", "invalid_username", "invalid_email", "rest_not_logged_in") or status == 401:
            return ToolError(f"WordPress at {site} refused the credentials of user {user!r} ({code}: {message}): "
                             "connect the site again with a valid application password")
        if status == 403:
            return ToolError(f"WordPress at {site}: user {user!r} may not do this ({code}: {message})")
        if code == "rest_post_invalid_id" or (status == 404 and post_id is not None and code != "rest_no_route"):
            return ToolError(f"post {post_id} not found on {site}")
        if code == "rest_no_route":
            return ToolError(f"{site} does not serve {method} {route} of the WordPress REST API ({code})")
        if code == "rest_invalid_param":
            params = data.get("params") if isinstance(data.get("params"), dict) else {}
            named = "; ".join(f"{k}: {v}" for k, v in params.items()) or message
            return ToolError(f"WordPress at {site} refused the request: invalid parameter(s) {named}")
        if status >= 500:
            return WordPressOutage(f"WordPress at {site} failed: HTTP {status} ({code}: {message})")
        return ToolError(f"WordPress at {site} refused {method} {route}: HTTP {status} ({code}: {message})")

    # --- terms ---------------------------------------------------------------------------
    async def term_ids(self, taxonomy: Literal["categories", "tags"], names: list[str]) -> list[int]:
        """The ids of terms named ``names`` (case-insensitive), each created when missing."""
        ids: list[int] = []
        for name in dict.fromkeys(" ".join(n.split()) for n in names):
            found = await self.call("GET", f"/wp/v2/{taxonomy}", params={"search": name, "per_page": 100})
            match = next((t for t in found if _same_name(t.get("name", ""), name)), None)
            if match is None:
                try:
                    match = await self.call("POST", f"/wp/v2/{taxonomy}", body={"name": name})
                except ToolError:
                    # Created meanwhile (term_exists carries its id), or a real refusal.
                    again = await self.call("GET", f"/wp/v2/{taxonomy}", params={"search": name, "per_page": 100})
                    match = next((t for t in again if _same_name(t.get("name", ""), name)), None)
                    if match is None:
                        raise
            ids.append(int(match["id"]))
        return ids

    async def term_names(self, taxonomy: Literal["categories", "tags"], ids: list[int]) -> list[str]:
        if not ids:
            return []
        found = await self.call("GET", f"/wp/v2/{taxonomy}",
                                params={"include": ",".join(map(str, ids)), "per_page": 100})
        names = {int(t["id"]): _unescape(t["name"]) for t in found}
        return [names[i] for i in ids if i in names]

    # --- posts ---------------------------------------------------------------------------
    async def post_by_marker(self, marker: str) -> dict[str, Any] | None:
        """The post (any status but trashed) whose body carries ``marker``: WordPress's search
        reads titles, excerpts and bodies; the raw body (``context=edit``) confirms it."""
        found = await self.call("GET", "/wp/v2/posts", params={"search": marker, "status": "any", "context": "edit",
                                                               "per_page": 10})
        return next((p for p in found if marker in (_raw(p.get("content")) or "")), None)

    async def post_result(self, post: dict[str, Any], categories: list[str] | None = None,
                          tags: list[str] | None = None) -> WordPressPostResult:
        if categories is None:
            categories = await self.term_names("categories", [int(i) for i in post.get("categories", [])])
        if tags is None:
            tags = await self.term_names("tags", [int(i) for i in post.get("tags", [])])
        post_id = int(post["id"])
        return WordPressPostResult(
            post_id=post_id, site_url=self.site.url, status=post["status"], link=post.get("link") or "",
            edit_link=f"{self.site.url}/wp-admin/post.php?post={post_id}&action=edit",
            slug=post.get("slug") or post.get("generated_slug") or None,
            date_gmt=_gmt_iso(post.get("date_gmt")), modified_at=_gmt_iso(post.get("modified_gmt")),
            title=_raw(post.get("title")), content=_without_marker(_raw(post.get("content"))),
            excerpt=_raw(post.get("excerpt")),
            categories=categories, tags=tags, sandbox=False,
        )


def _is_json(resp: httpx.Response) -> bool:
    return "json" in resp.headers.get("content-type", "")


def _unescape(text: str) -> str:
    return html.unescape(text)


def _same_name(a: str, b: str) -> bool:
    return " ".join(_unescape(a).split()).lower() == " ".join(b.split()).lower()


def _raw(field: Any) -> str | None:
    if isinstance(field, dict):
        return field.get("raw", field.get("rendered"))
    return field if isinstance(field, str) else None


def register(mcp: FastMCP, ctx: ToolContext) -> None:
    """Add the wordpress tools to the sandbox server."""
    outbox = ctx.outbox

    async def site_of(tenant_id: str, site_url: str | None) -> Site:
        pool = await ctx.pools.get()
        return await connected_site(pool, tenant_id, site_url)

    @mcp.tool(
        name="create_wordpress_post",
        description=("Create a post on the tenant's WordPress site: a draft unless status is pending. Categories "
                     "and tags are names; the missing ones are created. Answers the post (id, status, links)."),
        structured_output=True,
    )
    async def create_wordpress_post(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        title: ShortText,
        content: Body,
        excerpt: Excerpt | None = None,
        slug: Slug | None = None,
        categories: TermNames = [],  # noqa: B006
        tags: TermNames = [],  # noqa: B006
        status: Literal["draft", "pending"] = "draft",
        site_url: SiteUrl = None,
        workflow_id: WorkflowId = None,
    ) -> WordPressPostResult:
        site = await site_of(tenant_id, site_url)
        args = dict(site_url=site.url, title=title, content=content, excerpt=excerpt, slug=slug,
                    categories=categories, tags=tags, status=status)

        async def respond(conn: asyncpg.Connection) -> WordPressPostResult:
            wp = WordPressAPI(site, ctx)
            marker = post_marker(tenant_id, idempotency_key)
            for delay in (*RETRY_DELAYS, None):
                # A post this key made already (its answer lost, or WordPress failed after making
                # it) is the answer; else create it. Safe to repeat through an outage: each round
                # looks first, and the key's lock keeps the key's other calls out meanwhile.
                try:
                    made = await wp.post_by_marker(marker)
                    if made is not None:
                        return await wp.post_result(made)
                    body: dict[str, Any] = {"title": title, "content": f"{content}\n<!-- {marker} -->",
                                            "status": status, "categories": await wp.term_ids("categories", categories),
                                            "tags": await wp.term_ids("tags", tags)}
                    if excerpt is not None:
                        body["excerpt"] = excerpt
                    if slug is not None:
                        body["slug"] = slug
                    return await wp.post_result(await wp.call("POST", "/wp/v2/posts", body=body))
                except WordPressOutage:
                    if delay is None:
                        raise
                await asyncio.sleep(delay)
            raise AssertionError("unreachable")

        return await outbox.record(tool="create_wordpress_post", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

    @mcp.tool(
        name="update_wordpress_post",
        description=("Change a post on the tenant's WordPress site: only the fields given. status future with a "
                     "date_gmt (ISO 8601 with a zone) schedules it: WordPress publishes it at that time. status "
                     "draft withdraws a scheduled or published post."),
        structured_output=True,
    )
    async def update_wordpress_post(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        post_id: PostId,
        title: ShortText | None = None,
        content: Body | None = None,
        excerpt: Excerpt | None = None,
        slug: Slug | None = None,
        status: Literal["draft", "pending", "future", "publish"] | None = None,
        date_gmt: Annotated[str | None, Field(max_length=64)] = None,
        site_url: SiteUrl = None,
        workflow_id: WorkflowId = None,
    ) -> WordPressPostResult:
        site = await site_of(tenant_id, site_url)
        when = _date_gmt(date_gmt) if date_gmt is not None else None
        if status == "future" and when is None:
            raise ToolError("status future needs date_gmt: the time WordPress publishes the post")
        change = {k: v for k, v in (("title", title), ("content", content), ("excerpt", excerpt), ("slug", slug),
                                    ("status", status), ("date_gmt", when)) if v is not None}
        if not change:
            raise ToolError("nothing to change: give at least one of title, content, excerpt, slug, status, date_gmt")
        args = dict(site_url=site.url, post_id=post_id, **change)

        async def respond(conn: asyncpg.Connection) -> WordPressPostResult:
            wp = WordPressAPI(site, ctx)
            post = await wp.call("POST", f"/wp/v2/posts/{post_id}", body=change, post_id=post_id)
            return await wp.post_result(post)

        return await outbox.record(tool="update_wordpress_post", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

    @mcp.tool(
        name="publish_wordpress_post",
        description="Publish a post on the tenant's WordPress site now (a draft, or a scheduled post ahead of time).",
        structured_output=True,
    )
    async def publish_wordpress_post(
        tenant_id: TenantId,
        idempotency_key: IdempotencyKey,
        post_id: PostId,
        site_url: SiteUrl = None,
        workflow_id: WorkflowId = None,
    ) -> WordPressPostResult:
        site = await site_of(tenant_id, site_url)
        args = dict(site_url=site.url, post_id=post_id)

        async def respond(conn: asyncpg.Connection) -> WordPressPostResult:
            wp = WordPressAPI(site, ctx)
            post = await wp.call("GET", f"/wp/v2/posts/{post_id}", params={"context": "edit"}, post_id=post_id)
            if post["status"] != "publish":
                # Now, not at the post's own date: WordPress keeps a date ahead as a schedule.
                now = datetime.now(UTC).replace(tzinfo=None, microsecond=0).isoformat()
                post = await wp.call("POST", f"/wp/v2/posts/{post_id}", body={"status": "publish", "date_gmt": now},
                                     post_id=post_id)
            return await wp.post_result(post)

        return await outbox.record(tool="publish_wordpress_post", tenant_id=tenant_id, idempotency_key=idempotency_key,
                                   workflow_id=workflow_id, arguments=args, respond=respond)

    @mcp.tool(
        name="get_wordpress_post",
        description="A post on the tenant's WordPress site as it is now: status, date, links, raw title and body. "
                    "Records nothing.",
        structured_output=True,
    )
    async def get_wordpress_post(
        tenant_id: TenantId,
        post_id: PostId,
        site_url: SiteUrl = None,
        idempotency_key: Annotated[str | None, Field(max_length=400)] = None,
        workflow_id: WorkflowId = None,
    ) -> WordPressPostResult:
        wp = WordPressAPI(await site_of(tenant_id, site_url), ctx)
        post = await wp.call("GET", f"/wp/v2/posts/{post_id}", params={"context": "edit"}, post_id=post_id)
        return await wp.post_result(post)

    @mcp.tool(
        name="list_wordpress_terms",
        description="The categories or tags of the tenant's WordPress site (id, name, slug). Records nothing.",
        structured_output=True,
    )
    async def list_wordpress_terms(
        tenant_id: TenantId,
        taxonomy: Literal["categories", "tags"],
        site_url: SiteUrl = None,
        idempotency_key: Annotated[str | None, Field(max_length=400)] = None,
        workflow_id: WorkflowId = None,
    ) -> WordPressTermsResult:
        wp = WordPressAPI(await site_of(tenant_id, site_url), ctx)
        terms: list[WordPressTerm] = []
        for page in range(1, 51):  # 5000 terms at most
            found = await wp.call("GET", f"/wp/v2/{taxonomy}", params={"per_page": 100, "page": page})
            terms.extend(WordPressTerm(id=int(t["id"]), name=_unescape(t["name"]), slug=t["slug"]) for t in found)
            if len(found) < 100:
                break
        return WordPressTermsResult(terms=terms, taxonomy=taxonomy, site_url=wp.site.url, sandbox=False)

