"""The WordPress connector: the WordPress tools over the real sandbox MCP server and the real MCP
activities, against the WordPress sandbox (sandboxes/wordpress.py) on loopback; the connections
API over HTTP; and the sandbox itself answering as WordPress does."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.mcp import CallToolRequest, MCPActivities, ServerConfig, register_server
from activities.mcp.tools import (
    CreateWordPressPost,
    GetWordPressPost,
    ListWordPressTerms,
    PublishWordPressPost,
    ToolArgs,
    UpdateWordPressPost,
    WordPressPost,
    arguments,
    decode_result,
)
from activities.netguard import FetchPolicy
from api.app import PUBLIC_PATHS
from api.auth import BearerAuthMiddleware, TokenVerifier, role_guard
from api.connections import ConnectionsController
from api.errors import EXCEPTION_HANDLERS
from core.settings import FetchSettings, Settings
from sandboxes.wordpress import WordPressState
from tests.conftest import Tokens, assert_eventually, serve, unique
from tests.support import WORDPRESS_PASSWORD, WORDPRESS_USER, connect_wordpress, serve_sandbox, wordpress_site

USER, PASSWORD = WORDPRESS_USER, WORDPRESS_PASSWORD


@pytest_asyncio.fixture(scope="module")
async def site() -> AsyncIterator[WordPressState]:
    async with wordpress_site() as state:
        yield state


async def new_tenant(db: asyncpg.Pool, prefix: str = "blog") -> str:
    tenant = unique(prefix)
    await db.execute("INSERT INTO tenants (id, name, plan, owner_email, status) VALUES ($1, $2, 'starter', $3, 'active')",
                     tenant, f"{tenant} Ltd", f"owner@{tenant}.example")
    return tenant


async def connected_tenant(db: asyncpg.Pool, site: WordPressState, password: str = PASSWORD) -> str:
    tenant = await new_tenant(db)
    await connect_wordpress(db, tenant, site, password)
    return tenant


Call = Callable[..., Awaitable[Any]]


@asynccontextmanager
async def tools(db: asyncpg.Pool, server: str | None = None) -> AsyncIterator[Call]:
    """Call a tool as a workflow does: typed arguments, the registry's server, the typed result."""
    env, mcp = ActivityEnvironment(), MCPActivities(db)

    async def call(tenant: str, args: ToolArgs[Any], key: str | None = None) -> Any:
        done = await env.run(mcp.call_tool, CallToolRequest(
            tenant_id=tenant, server=server, tool=args.TOOL, arguments=arguments(args),
            idempotency_key=key or unique(f"{tenant}:step")))
        return decode_result(args, done.content)

    try:
        yield call
    finally:
        await mcp.aclose()


async def refused(call: Awaitable[Any], error_type: str = "MCPToolError") -> str:
    with pytest.raises(ApplicationError) as failed:
        await call
    assert failed.value.type == error_type and failed.value.non_retryable
    return failed.value.message


def ours(state: WordPressState, title: str) -> list[int]:
    """The site's posts with ``title``, trashed ones left out."""
    return [p["id"] for p in state.posts.values() if p["title"] == title and p["status"] != "trash"]


async def outbox_tools(db: asyncpg.Pool, tenant: str) -> list[str]:
    return [r["tool"] for r in await db.fetch("SELECT tool FROM outbox WHERE tenant_id = $1 ORDER BY id", tenant)]


def names(state: WordPressState, ids: list[int]) -> set[str]:
    return {state.terms[i]["name"] for i in ids}


# --- the tools ---------------------------------------------------------------------------

async def test_a_draft_with_categories_and_tags_by_name_lands_on_the_site(
    db: asyncpg.Pool, mcp_sandbox: str, site: WordPressState
) -> None:
    tenant = await connected_tenant(db, site)
    site._add_term("category", "Baking", "baking")  # there already: used, not made twice
    async with tools(db) as call:
        post = await call(tenant, CreateWordPressPost(
            title="Five breads to bake this spring", content="<p>Rye first.</p><h2>Spelt</h2>",
            excerpt="Our spring list.", categories=["baking", "Sourdough Tips"], tags=["rye", "Spelt"]))
        terms = await call(tenant, ListWordPressTerms(taxonomy="categories"))
        tags = await call(tenant, ListWordPressTerms(taxonomy="tags"))
    assert isinstance(post, WordPressPost)
    stored = site.posts[post.post_id]
    assert (stored["status"], stored["title"]) == ("draft", "Five breads to bake this spring")
    # The body as given, then the comment that marks the post as this create's (not answered back).
    assert re.fullmatch(r"<p>Rye first\.</p><h2>Spelt</h2>\n<!-- bizosaas-post-[0-9a-f]{32} -->", stored["content"])
    assert post.content == "<p>Rye first.</p><h2>Spelt</h2>"
    assert names(site, stored["categories"]) == {"Baking", "Sourdough Tips"}
    assert names(site, stored["tags"]) == {"rye", "Spelt"}
    assert [t["name"] for t in site.terms.values()].count("Baking") == 1
    assert (post.status, post.site_url, post.title, post.excerpt) == (
        "draft", site.site_url, "Five breads to bake this spring", "Our spring list.")
    assert set(post.categories) == {"Baking", "Sourdough Tips"} and set(post.tags) == {"rye", "Spelt"}
    # A draft has no address of its own yet; the slug it will get is the title's.
    assert post.link == f"{site.site_url}/?p={post.post_id}" and post.slug == "five-breads-to-bake-this-spring"
    assert post.edit_link == f"{site.site_url}/wp-admin/post.php?post={post.post_id}&action=edit"
    assert {"Baking", "Sourdough Tips", "Uncategorized"} <= {t.name for t in terms.terms}
    assert {"rye", "Spelt"} <= {t.name for t in tags.terms}
    assert await outbox_tools(db, tenant) == ["create_wordpress_post"]  # reads record nothing


async def test_edit_publish_and_read_back(db: asyncpg.Pool, mcp_sandbox: str, site: WordPressState) -> None:
    tenant = await connected_tenant(db, site)
    async with tools(db) as call:
        draft = await call(tenant, CreateWordPressPost(title="Opening hours", content="<p>9 to 5.</p>"))
        edited = await call(tenant, UpdateWordPressPost(post_id=draft.post_id, title="New opening hours",
                                                        content="<p>8 to 6, every day.</p>"))
        read = await call(tenant, GetWordPressPost(post_id=draft.post_id))
        live = await call(tenant, PublishWordPressPost(post_id=draft.post_id))
        again = await call(tenant, PublishWordPressPost(post_id=draft.post_id))
    assert (edited.title, edited.content, edited.status) == ("New opening hours", "<p>8 to 6, every day.</p>", "draft")
    assert (read.title, read.content, read.categories) == ("New opening hours", "<p>8 to 6, every day.</p>",
                                                         ["Uncategorized"])
    assert live.status == "publish" and site.posts[draft.post_id]["status"] == "publish"
    assert live.slug == "new-opening-hours" and live.link == f"{site.site_url}/new-opening-hours/"
    assert again.status == "publish" and again.date_gmt == live.date_gmt  # published once, its date kept
    assert await outbox_tools(db, tenant) == ["create_wordpress_post", "update_wordpress_post",
                                              "publish_wordpress_post", "publish_wordpress_post"]


async def test_a_scheduled_post_is_published_when_its_time_passes(
    db: asyncpg.Pool, mcp_sandbox: str, site: WordPressState
) -> None:
    tenant = await connected_tenant(db, site)
    async with tools(db) as call:
        soon = await call(tenant, CreateWordPressPost(title="Tomorrow's special", content="<p>Brioche.</p>"))
        later = await call(tenant, CreateWordPressPost(title="Next week's special", content="<p>Stollen.</p>"))
        at = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
        scheduled = await call(tenant, UpdateWordPressPost(post_id=soon.post_id, status="future",
                                                           date_gmt=at.isoformat()))
        far = await call(tenant, UpdateWordPressPost(post_id=later.post_id, status="future",
                                                     date_gmt=(at + timedelta(days=7)).isoformat()))
        assert (scheduled.status, scheduled.date_gmt) == ("future", at.isoformat())

        async def published() -> WordPressPost:
            post = await call(tenant, GetWordPressPost(post_id=soon.post_id))
            assert post.status == "publish", post
            return post

        post = await assert_eventually(published, timeout=30, interval=0.5)
        # The one a week ahead waits; moved back to draft it is withdrawn.
        still = await call(tenant, GetWordPressPost(post_id=later.post_id))
        withdrawn = await call(tenant, UpdateWordPressPost(post_id=later.post_id, status="draft"))
    assert post.link == f"{site.site_url}/tomorrows-special/" and post.date_gmt == at.isoformat()
    assert (far.status, still.status, withdrawn.status) == ("future", "future", "draft")
    assert site.posts[later.post_id]["status"] == "draft"


async def test_a_retried_create_makes_one_post(db: asyncpg.Pool, mcp_sandbox: str, site: WordPressState) -> None:
    tenant = await connected_tenant(db, site)
    title = f"Once only {unique('post')}"
    args = CreateWordPressPost(title=title, content="<p>One.</p>", tags=["news"])
    async with tools(db) as call:
        first = await call(tenant, args, key=f"{tenant}:pipeline:draft")
        second = await call(tenant, args, key=f"{tenant}:pipeline:draft")
        reused = await refused(call(tenant, CreateWordPressPost(title="Other", content="<p>x</p>"),
                                    key=f"{tenant}:pipeline:draft"))
    assert first == second
    assert [p["id"] for p in site.posts.values() if p["title"] == title] == [first.post_id]
    assert "already used for a different request" in reused
    assert await outbox_tools(db, tenant) == ["create_wordpress_post"]


async def test_a_create_whose_answer_was_lost_is_not_made_twice(
    db: asyncpg.Pool, mcp_sandbox: str, site: WordPressState
) -> None:
    tenant = await connected_tenant(db, site)
    title = f"Lost answer {unique('post')}"
    args = CreateWordPressPost(title=title, content="<p>Once.</p>", slug="lost-answer", tags=["news"])
    key = f"{tenant}:pipeline:draft"
    async with tools(db) as call:
        first = await call(tenant, args, key=key)
        # The process died after WordPress made the post and before the outbox row committed.
        await db.execute("DELETE FROM outbox WHERE idempotency_key = $1", key)
        retried = await call(tenant, args, key=key)
        # WordPress made the post, then a proxy answered 502: the create looks before trying again.
        site.lost_answers = 1
        other = f"Through a 502 {unique('post')}"
        through = await call(tenant, CreateWordPressPost(title=other, content="<p>x</p>"))
        # The same post under another key is another post (a second run of the same topic).
        second = await call(tenant, args, key=f"{tenant}:pipeline:draft-again")
    assert retried == first and ours(site, title) == [first.post_id, second.post_id]
    assert ours(site, other) == [through.post_id] and site.lost_answers == 0
    assert await outbox_tools(db, tenant) == ["create_wordpress_post"] * 3


async def test_a_wrong_application_password_is_a_clear_error(
    db: asyncpg.Pool, mcp_sandbox: str, site: WordPressState
) -> None:
    wrong = "Zzzz EFGH ijkl MNOP qrst UVWX"
    tenant = await connected_tenant(db, site, password=wrong)
    before = len(site.posts)
    async with tools(db) as call:
        message = await refused(call(tenant, CreateWordPressPost(title="Hello", content="<p>Hi</p>")))
    assert f"refused the credentials of user '{USER}'" in message and "incorrect_password" in message
    assert "Zzzz" not in message and wrong.replace(" ", "") not in message
    assert len(site.posts) == before and await outbox_tools(db, tenant) == []


async def test_errors_say_what_was_wrong(db: asyncpg.Pool, mcp_sandbox: str, site: WordPressState) -> None:
    tenant = await connected_tenant(db, site)
    async with tools(db) as call:
        missing = await refused(call(tenant, GetWordPressPost(post_id=987654)))
        gone = await refused(call(tenant, PublishWordPressPost(post_id=987654)))
        draft = await call(tenant, CreateWordPressPost(title="Dated", content="<p>x</p>"))
        no_date = await refused(call(tenant, UpdateWordPressPost(post_id=draft.post_id, status="future")))
        no_zone = await refused(call(tenant, UpdateWordPressPost(post_id=draft.post_id, status="future",
                                                                 date_gmt="2030-01-01T09:00:00")))
    assert f"post 987654 not found on {site.site_url}" in missing and "post 987654 not found" in gone
    assert "status future needs date_gmt" in no_date and "has no time zone" in no_zone
    assert await outbox_tools(db, tenant) == ["create_wordpress_post"]


async def test_a_passing_outage_is_tried_again_where_repeating_is_safe(
    db: asyncpg.Pool, mcp_sandbox: str, site: WordPressState
) -> None:
    tenant = await connected_tenant(db, site)
    async with tools(db) as call:
        post = await call(tenant, CreateWordPressPost(title="Through maintenance", content="<p>x</p>"))
        site.outages = 1  # a read and an update are repeated
        read = await call(tenant, GetWordPressPost(post_id=post.post_id))
        site.outages = 1
        edited = await call(tenant, UpdateWordPressPost(post_id=post.post_id, title="After maintenance"))
        site.outages = 2  # a create too: it looks for the post it may have made before trying again
        title = f"Once through maintenance {unique('post')}"
        created = await call(tenant, CreateWordPressPost(title=title, content="<p>x</p>"))
        site.outages = 20  # longer than the call waits: a tool error that says so, and no post
        before = len(site.posts)
        failed = await refused(call(tenant, CreateWordPressPost(title="Not now", content="<p>x</p>")))
        site.outages = 0
    assert (read.title, edited.title) == ("Through maintenance", "After maintenance")
    assert ours(site, title) == [created.post_id]
    assert f"WordPress at {site.site_url} failed: HTTP 503" in failed and len(site.posts) == before


async def test_another_tenants_connection_is_never_used(
    db: asyncpg.Pool, mcp_sandbox: str, site: WordPressState
) -> None:
    owner = await connected_tenant(db, site)
    stranger = await new_tenant(db)
    async with wordpress_site() as other_site, tools(db) as call:
        neighbour = await connected_tenant(db, other_site)
        post = await call(owner, CreateWordPressPost(title="Ours", content="<p>ours</p>"))
        # Told apart from other refusals: a workflow ends early on it.
        unconnected = await refused(call(stranger, CreateWordPressPost(title="Theirs", content="<p>x</p>")),
                                    "MCPNotConnected")
        named = await refused(call(stranger, GetWordPressPost(post_id=post.post_id, site_url=site.site_url)),
                              "MCPNotConnected")
        terms = await refused(call(stranger, ListWordPressTerms(taxonomy="categories")), "MCPNotConnected")
        elsewhere = await refused(call(neighbour, GetWordPressPost(post_id=post.post_id)))
        wrong_site = await refused(call(neighbour, GetWordPressPost(post_id=post.post_id, site_url=site.site_url)))
    assert f"no WordPress site connected for tenant {stranger!r}" in unconnected
    assert f"no WordPress site connected for tenant {stranger!r}" in named
    assert terms.startswith("sandbox/list_wordpress_terms:") and "WordPress not connected: no WordPress site" in terms
    assert f"post {post.post_id} not found on {other_site.site_url}" in elsewhere
    assert f"is not the WordPress site connected for tenant {neighbour!r}" in wrong_site
    assert other_site.posts == {}


async def test_a_site_on_loopback_is_refused_where_the_policy_keeps_to_public_sites(
    db: asyncpg.Pool, site: WordPressState
) -> None:
    tenant, name = await connected_tenant(db, site), unique("public-only")
    async with serve_sandbox(db, fetch_policy=FetchPolicy()) as url:
        await register_server(db, ServerConfig(name=name, transport="streamable-http", url=url))
        async with tools(db, server=name) as call:
            message = await refused(call(tenant, CreateWordPressPost(title="Hi", content="<p>x</p>")))
    assert "refused by the network policy (loopback)" in message


# --- the connections API -----------------------------------------------------------------

def connections_app(settings: Settings, db: asyncpg.Pool) -> Litestar:
    app = Litestar(
        route_handlers=[ConnectionsController],
        dependencies={"db": Provide(lambda: db, sync_to_thread=False)},
        middleware=[DefineMiddleware(BearerAuthMiddleware, exclude=PUBLIC_PATHS)],
        guards=[role_guard],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.token_verifier = TokenVerifier(settings)
    app.state.settings = settings
    return app


@pytest_asyncio.fixture
async def connections(settings: Settings, db: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    # As `bizosaas dev` runs it: sites on loopback may be connected.
    local = settings.model_copy(update={"fetch": FetchSettings(allow_private_networks=True)})
    async with serve(connections_app(local, db)) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        yield http


async def test_a_client_connects_its_site_and_the_tools_use_it(
    connections: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, mcp_sandbox: str, site: WordPressState
) -> None:
    tenant = await new_tenant(db)
    path = f"/v1/tenants/{tenant}/connections/wordpress"
    client = tokens.client(tenant)
    assert (await connections.get(path, headers=client)).json() == {
        "tenant_id": tenant, "connected": False, "site_url": None, "username": None,
        "has_application_password": False, "updated_by": None, "updated_at": None}
    r = await connections.put(path, headers=client, json={
        "site_url": f"{site.site_url}/", "username": USER, "application_password": PASSWORD})
    assert r.status_code == 200, r.text
    shown = (await connections.get(path, headers=tokens.partner([tenant]))).json()
    for answer in (r.json(), shown):
        assert (answer["connected"], answer["site_url"], answer["username"], answer["has_application_password"]) == (
            True, site.site_url, USER, True)
        assert "application_password" not in answer and "ijkl" not in str(answer)
    audit = await db.fetchrow("SELECT actor, action, details FROM audit_log WHERE tenant_id = $1", tenant)
    assert (audit["actor"], audit["action"]) == (f"owner@{tenant}", "connection.wordpress_connected")
    assert audit["details"]["site_url"] == site.site_url and "ijkl" not in str(audit["details"])
    async with tools(db) as call:
        post = await call(tenant, CreateWordPressPost(title="Connected", content="<p>It works.</p>"))
    assert site.posts[post.post_id]["title"] == "Connected"

    assert (await connections.delete(path, headers=client)).status_code == 204
    assert (await connections.get(path, headers=client)).json()["connected"] is False
    async with tools(db) as call:
        message = await refused(call(tenant, GetWordPressPost(post_id=post.post_id)), "MCPNotConnected")
    assert "no WordPress site connected" in message


async def test_bad_connections_are_refused_naming_the_field(
    connections: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, settings: Settings, site: WordPressState
) -> None:
    tenant, other = await new_tenant(db), await new_tenant(db)
    path = f"/v1/tenants/{tenant}/connections/wordpress"
    good = {"site_url": "https://blog.example.com", "username": USER, "application_password": PASSWORD}
    client = tokens.client(tenant)
    for change, field in (({"site_url": "ftp://blog.example.com"}, "site_url"),
                          ({"site_url": "https://me:pw@blog.example.com"}, "site_url"),
                          ({"site_url": "http://169.254.169.254"}, "site_url"),
                          ({"application_password": "hunter2hunter2hunter2hunter2x"}, "application_password"),
                          ({"application_password": "short"}, "application_password"),
                          ({"username": ""}, "username")):
        r = await connections.put(path, headers=client, json={**good, **change})
        assert r.status_code == 400 and field in r.text, (change, r.text)
    r = await connections.put(path, headers=client, json={**good, "password": PASSWORD})
    assert r.status_code == 400 and "password" in r.text
    # Another tenant's client: 404; finance reads but does not change.
    assert (await connections.put(path, headers=tokens.client(other), json=good)).status_code == 404
    assert (await connections.get(path, headers=tokens.client(other))).status_code == 404
    assert (await connections.put(path, headers=tokens.finance(), json=good)).status_code == 403
    assert (await connections.get(path, headers=tokens.finance())).status_code == 200
    assert (await connections.get(f"/v1/tenants/{unique('nosuch')}/connections/wordpress",
                                  headers=tokens.admin())).status_code == 404
    assert await db.fetchval("SELECT count(*) FROM tenant_wordpress WHERE tenant_id = $1", tenant) == 0
    # Where the policy keeps to public sites (production's default), a loopback site is refused.
    async with serve(connections_app(settings, db)) as url, httpx.AsyncClient(base_url=url, timeout=10) as strict:
        r = await strict.put(path, headers=client, json={**good, "site_url": site.site_url})
    assert r.status_code == 400 and "site_url" in r.text and "loopback" in r.text


# --- the WordPress sandbox answers as WordPress does ---------------------------------------

def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_the_sandbox_answers_with_wordpress_shapes_and_errors(tmp_path: Path) -> None:
    state_file = tmp_path / "site.json"
    async with wordpress_site(state_file=state_file) as state, httpx.AsyncClient(
            base_url=f"{state.site_url}/wp-json/wp/v2", timeout=10) as wp:
        state.schedule_min_seconds = 60  # WordPress's own rule
        spaced, plain = basic(USER, PASSWORD), basic(USER, PASSWORD.replace(" ", ""))
        r = await wp.post("/posts", headers=spaced, json={"title": "Hello World!", "content": "Hi there"})
        assert r.status_code == 201
        post = r.json()
        assert post["title"] == {"raw": "Hello World!", "rendered": "Hello World!"}
        assert post["content"] == {"raw": "Hi there", "rendered": "<p>Hi there</p>\n", "protected": False}
        assert (post["status"], post["slug"], post["generated_slug"]) == ("draft", "", "hello-world")
        same = (await wp.post("/posts", headers=plain, json={"title": "Hello World!", "status": "publish"})).json()
        first = (await wp.post(f"/posts/{post['id']}", headers=plain, json={"status": "publish"})).json()
        assert (same["slug"], first["slug"]) == ("hello-world", "hello-world-2")  # unique slugs
        # Less than a minute ahead publishes at once; a minute or more is a schedule.
        soon = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await wp.post("/posts", headers=plain, json={"title": "a", "status": "future", "date_gmt": soon})
                ).json()["status"] == "publish"
        assert (await wp.post("/posts", headers=plain, json={"title": "b", "status": "publish", "date_gmt": later})
                ).json()["status"] == "future"

        errors = {
            "missing": await wp.get("/posts/999999", headers=plain),
            "bad status": await wp.post("/posts", headers=plain, json={"title": "x", "status": "live"}),
            "bad date": await wp.post("/posts", headers=plain, json={"title": "x", "date_gmt": "tomorrow"}),
            "wrong password": await wp.post("/posts", headers=basic(USER, "nope"), json={"title": "x"}),
            "unknown user": await wp.post("/posts", headers=basic("ghost", PASSWORD), json={"title": "x"}),
            "anonymous create": await wp.post("/posts", json={"title": "x"}),
            "anonymous me": await wp.get("/users/me"),
            "anonymous drafts": await wp.get("/posts", params={"status": "draft"}),
            "empty": await wp.post("/posts", headers=plain, json={"content": ""}),
            "no route": await wp.get("/widgets"),
        }
        found = {k: (r.status_code, r.json()["code"], r.json()["data"]["status"]) for k, r in errors.items()}
        assert found == {
            "missing": (404, "rest_post_invalid_id", 404), "bad status": (400, "rest_invalid_param", 400),
            "bad date": (400, "rest_invalid_param", 400), "wrong password": (401, "incorrect_password", 401),
            "unknown user": (401, "invalid_username", 401), "anonymous create": (401, "rest_cannot_create", 401),
            "anonymous me": (401, "rest_not_logged_in", 401), "anonymous drafts": (400, "rest_invalid_param", 400),
            "empty": (400, "empty_content", 400), "no route": (404, "rest_no_route", 404),
        }
        assert errors["bad status"].json()["data"]["params"] == {
            "status": "status is not one of publish, future, draft, pending, and private."}
        assert errors["bad date"].json()["data"]["params"] == {"date_gmt": "Invalid date."}
        me = (await wp.get("/users/me", headers=plain, params={"context": "edit"})).json()
        assert (me["username"], me["roles"]) == (USER, ["administrator"])
        cat = await wp.post("/categories", headers=plain, json={"name": "News"})
        dup = await wp.post("/categories", headers=plain, json={"name": "news"})
        assert cat.status_code == 201 and (dup.status_code, dup.json()["code"]) == (400, "term_exists")
        assert dup.json()["data"]["term_id"] == cat.json()["id"]
        listed = await wp.get("/posts", params={"search": "hello"})
        assert listed.headers["x-wp-total"] == "2" and {p["slug"] for p in listed.json()} == {"hello-world",
                                                                                              "hello-world-2"}
        plain_permalinks = await wp.get(f"{state.site_url}/", params={"rest_route": f"/wp/v2/posts/{post['id']}"})
        assert plain_permalinks.json()["id"] == post["id"]
        trashed = (await wp.delete(f"/posts/{post['id']}", headers=plain)).json()
        assert trashed["status"] == "trash"
        assert (await wp.delete(f"/posts/{post['id']}", headers=plain)).status_code == 410
        forced = (await wp.delete(f"/posts/{post['id']}", headers=plain, params={"force": "true"})).json()
        assert forced["deleted"] is True and forced["previous"]["id"] == post["id"]
    # The site is kept in its file: a restarted sandbox has the same posts and terms.
    again = WordPressState.load(state_file, users=state.users)
    assert again.posts == state.posts and again.terms == state.terms and again.next_id == state.next_id


# --- a real WordPress, when one is given ---------------------------------------------------

REAL_WORDPRESS = os.environ.get("BIZ_TEST_WORDPRESS_URL")


@pytest.mark.skipif(not REAL_WORDPRESS, reason="BIZ_TEST_WORDPRESS_URL (+ _USER, _APP_PASSWORD) names no WordPress")
async def test_the_tools_against_a_real_wordpress(db: asyncpg.Pool, mcp_sandbox: str) -> None:
    """The same tools against a real WordPress (README: WordPress), e.g. Debian's package on
    ``php -S``: ``BIZ_TEST_WORDPRESS_URL``, ``BIZ_TEST_WORDPRESS_USER``, ``BIZ_TEST_WORDPRESS_APP_PASSWORD``."""
    real = WordPressState(site_url=str(REAL_WORDPRESS).rstrip("/"))
    user = os.environ.get("BIZ_TEST_WORDPRESS_USER", "admin")
    password = os.environ["BIZ_TEST_WORDPRESS_APP_PASSWORD"]
    tenant, wrong = await new_tenant(db), await new_tenant(db)
    for who, secret in ((tenant, password), (wrong, "Zzzz" + password.replace(" ", "")[4:])):
        await db.execute(
            """INSERT INTO tenant_wordpress (tenant_id, site_url, username, application_password, updated_by)
               VALUES ($1, $2, $3, $4, 'test')""", who, real.site_url, user, secret.replace(" ", ""))
    title = f"Real {unique('post')}"
    async with tools(db) as call:
        draft = await call(tenant, CreateWordPressPost(title=title, content="<p>Rye first.</p>",
                                                       categories=["Baking"], tags=["rye", "Spelt"]))
        again = await call(tenant, CreateWordPressPost(title=title, content="<p>Rye first.</p>",
                                                       categories=["Baking"], tags=["rye", "Spelt"]),
                           key=f"{tenant}:twice")
        twice = await call(tenant, CreateWordPressPost(title=title, content="<p>Rye first.</p>",
                                                       categories=["Baking"], tags=["rye", "Spelt"]),
                           key=f"{tenant}:twice")
        edited = await call(tenant, UpdateWordPressPost(post_id=draft.post_id, title=f"{title} (edited)",
                                                        content="<p>Spelt first.</p>"))
        at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
        scheduled = await call(tenant, UpdateWordPressPost(post_id=draft.post_id, status="future",
                                                           date_gmt=at.isoformat()))
        live = await call(tenant, PublishWordPressPost(post_id=draft.post_id))
        read = await call(tenant, GetWordPressPost(post_id=draft.post_id))
        terms = await call(tenant, ListWordPressTerms(taxonomy="categories"))
        missing = await refused(call(tenant, GetWordPressPost(post_id=987654321)))
        refused_credentials = await refused(call(wrong, CreateWordPressPost(title="x", content="<p>x</p>")))
    assert (draft.status, set(draft.categories), set(draft.tags)) == ("draft", {"Baking"}, {"rye", "Spelt"})
    assert again.post_id != draft.post_id and twice == again
    assert (edited.title, edited.content) == (f"{title} (edited)", "<p>Spelt first.</p>")
    assert (scheduled.status, scheduled.date_gmt) == ("future", at.isoformat())
    assert live.status == "publish" and read.status == "publish" and read.link.startswith(real.site_url)
    assert "Baking" in {t.name for t in terms.terms}
    assert "post 987654321 not found" in missing
    assert f"refused the credentials of user '{user}'" in refused_credentials
