"""MCP tools at the network edge: the sandbox MCP server and a fixture website on loopback, the
registry in Postgres, the real MCP activities on a real worker, and GET /v1/outbox over HTTP."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx
    import msgspec
    import pytest
    from litestar import Litestar
    from litestar.di import Provide
    from litestar.middleware import DefineMiddleware
    from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
    from temporalio.common import RetryPolicy
    from temporalio.exceptions import RetryState
    from temporalio.exceptions import ActivityError, ApplicationError
    from temporalio.testing import ActivityEnvironment
    from temporalio.worker import Worker

    from activities.mcp import (
        CallToolRequest,
        CallToolResult,
        ListToolsRequest,
        ListToolsResult,
        MCPActivities,
        ServerConfig,
        register_server,
        set_tenant_enabled,
    )
    from api.app import PUBLIC_PATHS
    from api.auth import BearerAuthMiddleware, TokenVerifier, role_guard
    from api.errors import EXCEPTION_HANDLERS
    from api.outbox import outbox_router
    from tests.conftest import Tokens, assert_eventually, free_port, serve, unique
    from tests.support import serve_sandbox
    from workers.main import WORKFLOW_FAILURE_TYPES
    from core.settings import Settings

SANDBOX_TOOLS = {
    "send_email", "send_whatsapp", "send_sms", "publish_social_post", "get_social_post_metrics", "delete_social_post",
    "upsert_ads_campaign",
    "create_wordpress_post", "update_wordpress_post", "publish_wordpress_post", "get_wordpress_post",
    "list_wordpress_terms", "upsert_crm_contact", "fetch_web_page", "check_inventory", "create_shipping_label",
}
EMAIL = {"to": ["maria@example.com"], "subject": "Your order is ready", "text": "Come pick it up today."}


# --- a tiny workflow calling the MCP activities ------------------------------------------

class Probe(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    server: str = "sandbox"
    tool: str | None = None  # None: list the tools
    arguments: dict[str, Any] = {}
    idempotency_key: str | None = None  # default: workflow id + step, as real workflows do
    step: str = "probe"
    repeat: int = 1


class ProbeResult(msgspec.Struct, frozen=True, kw_only=True):
    listing: ListToolsResult | None = None
    calls: list[CallToolResult] = []


# Short back-off so the retry test is fast; real workflows use activities.mcp.MCP_TOOL_RETRY.
FAST_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=50), backoff_coefficient=1.5, maximum_interval=timedelta(milliseconds=300)
)


@workflow.defn(name="TestMCPProbe")
class MCPProbeWorkflow:
    @workflow.run
    async def run(self, probe: Probe) -> ProbeResult:
        if probe.tool is None:
            listing = await workflow.execute_activity_method(
                MCPActivities.list_tools,
                ListToolsRequest(tenant_id=probe.tenant_id, server=probe.server),
                start_to_close_timeout=timedelta(seconds=20),
                retry_policy=FAST_RETRY,
            )
            return ProbeResult(listing=listing)
        key = probe.idempotency_key or f"{workflow.info().workflow_id}:{probe.step}"
        calls = []
        for _ in range(probe.repeat):
            calls.append(await workflow.execute_activity_method(
                MCPActivities.call_tool,
                CallToolRequest(tenant_id=probe.tenant_id, server=probe.server, tool=probe.tool,
                                arguments=probe.arguments, idempotency_key=key),
                start_to_close_timeout=timedelta(seconds=20),
                retry_policy=FAST_RETRY,
            ))
        return ProbeResult(calls=calls)


@asynccontextmanager
async def mcp_worker(client: Client, db: asyncpg.Pool, task_queue: str) -> AsyncIterator[MCPActivities]:
    mcp = MCPActivities(db)
    try:
        async with Worker(
            client, task_queue=task_queue, workflows=[MCPProbeWorkflow],
            activities=[mcp.list_tools, mcp.call_tool],
            workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES,
        ):
            yield mcp
    finally:
        await mcp.aclose()


async def start_probe(client: Client, task_queue: str, probe: Probe) -> WorkflowHandle:
    return await client.start_workflow(
        MCPProbeWorkflow.run, probe, id=f"{probe.tenant_id}:test-mcp:{uuid.uuid4().hex[:8]}", task_queue=task_queue
    )


async def activity_attempts(handle: WorkflowHandle) -> list[int]:
    return [
        e.activity_task_started_event_attributes.attempt
        async for e in handle.fetch_history_events()
        if e.HasField("activity_task_started_event_attributes")
    ]


async def failure_of(handle: WorkflowHandle) -> tuple[ActivityError, ApplicationError]:
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    activity_error = failed.value.cause
    assert isinstance(activity_error, ActivityError)
    assert isinstance(activity_error.cause, ApplicationError)
    return activity_error, activity_error.cause


async def outbox_rows(db: asyncpg.Pool, tenant: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM outbox WHERE tenant_id = $1 ORDER BY id", tenant)


# --- (a) list tools, (b) idempotent effects ---------------------------------------------

async def test_list_tools_shows_every_sandbox_tool(client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str) -> None:
    async with mcp_worker(client, db, task_queue):
        result = await (await start_probe(client, task_queue, Probe(tenant_id=unique("acme")))).result()
    assert result.listing is not None and result.listing.server == "sandbox"
    tools = {t.name: t for t in result.listing.tools}
    assert set(tools) == SANDBOX_TOOLS
    email = tools["send_email"]
    assert {"tenant_id", "idempotency_key", "to", "subject", "text"} <= set(email.input_schema["required"])
    assert "message_id" in email.output_schema["properties"]


async def test_same_idempotency_key_sends_once_and_answers_the_same(
    client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str
) -> None:
    tenant = unique("acme")
    async with mcp_worker(client, db, task_queue):
        handle = await start_probe(client, task_queue, Probe(tenant_id=tenant, tool="send_email", arguments=EMAIL, repeat=2))
        result = await handle.result()
    first, second = result.calls
    assert first == second  # same ids, same timestamps: the stored answer
    assert first.content["message_id"].startswith("msg_") and first.content["status"] == "queued"
    rows = await outbox_rows(db, tenant)
    assert len(rows) == 1
    row = rows[0]
    assert (row["tool"], row["idempotency_key"], row["workflow_id"]) == ("send_email", f"{handle.id}:probe", handle.id)
    assert row["arguments"]["to"] == EMAIL["to"] and row["arguments"]["subject"] == EMAIL["subject"]
    assert row["response"] == first.content

    # Another workflow's key is another email, with another id.
    env, mcp = ActivityEnvironment(), MCPActivities(db)
    try:
        other = await env.run(mcp.call_tool, CallToolRequest(
            tenant_id=tenant, server="sandbox", tool="send_email", arguments=EMAIL, idempotency_key=f"{tenant}:other"))
        assert other.content["message_id"] != first.content["message_id"]
        # The same key for a different request is refused, not silently answered.
        with pytest.raises(ApplicationError) as reused:
            await env.run(mcp.call_tool, CallToolRequest(
                tenant_id=tenant, server="sandbox", tool="send_email",
                arguments={**EMAIL, "subject": "Something else"}, idempotency_key=f"{tenant}:other"))
        assert reused.value.type == "MCPToolError" and reused.value.non_retryable
        assert "already used for a different request" in reused.value.message
    finally:
        await mcp.aclose()
    assert len(await outbox_rows(db, tenant)) == 2


async def test_effect_tools_answer_like_the_real_services(db: asyncpg.Pool, mcp_sandbox: str) -> None:
    tenant = unique("acme")
    env, mcp = ActivityEnvironment(), MCPActivities(db)

    async def call(tool: str, step: str, **arguments: Any) -> dict[str, Any]:
        req = CallToolRequest(tenant_id=tenant, server="sandbox", tool=tool, arguments=arguments,
                              idempotency_key=f"{tenant}:effects:{step}")
        return (await env.run(mcp.call_tool, req)).content

    try:
        sms = await call("send_sms", "sms", to="+14155550123", text="x" * 200)
        wa = await call("send_whatsapp", "wa", to="+4915112345678", template="order_ready", template_params=["42"])
        post = await call("publish_social_post", "post", platform="linkedin", text="We are hiring bakers", page="acme")
        created = await call("upsert_ads_campaign", "ads-1", platform="meta_ads", name="Spring sale",
                             objective="sales", daily_budget=25)
        updated = await call("upsert_ads_campaign", "ads-2", platform="meta_ads", name="Spring sale",
                             objective="sales", daily_budget=40, status="active", campaign_id=created["campaign_id"])
        with pytest.raises(ApplicationError) as too_long:
            await call("publish_social_post", "x", platform="x", text="y" * 281)
    finally:
        await mcp.aclose()
    assert (sms["status"], sms["segments"], sms["message_id"][:2]) == ("queued", 2, "SM")
    assert wa["message_id"].startswith("wamid.") and wa["to"] == ["+4915112345678"]
    assert post["status"] == "published" and post["url"].startswith("https://www.linkedin.com/")
    assert (created["action"], updated["action"]) == ("created", "updated")
    assert updated["campaign_id"] == created["campaign_id"] and updated["daily_budget"] == 40
    assert too_long.value.type == "MCPToolError" and "x allows 280" in too_long.value.message
    assert len(await outbox_rows(db, tenant)) == 5  # WordPress posts: tests/test_wordpress.py


# --- (c) fetch a web page ----------------------------------------------------------------

async def test_fetch_web_page_audits_the_fixture_site(db: asyncpg.Pool, mcp_sandbox: str, fixture_site: str) -> None:
    tenant = unique("seo")
    env, mcp = ActivityEnvironment(), MCPActivities(db)
    try:
        page = (await env.run(mcp.call_tool, CallToolRequest(
            tenant_id=tenant, server="sandbox", tool="fetch_web_page",
            arguments={"url": f"{fixture_site}/old-home"}, idempotency_key=f"{tenant}:audit:home"))).content
        missing = (await env.run(mcp.call_tool, CallToolRequest(
            tenant_id=tenant, server="sandbox", tool="fetch_web_page",
            arguments={"url": f"{fixture_site}/gone"}, idempotency_key=f"{tenant}:audit:gone"))).content
    finally:
        await mcp.aclose()
    assert (page["status_code"], page["ok"], page["final_url"]) == (200, True, f"{fixture_site}/")
    assert page["title"] == "Acme Bakery | Fresh bread in Springfield"
    assert page["meta_description"] == "Sourdough, croissants and cakes baked every morning in Springfield."
    assert page["headings"] == [
        {"level": 1, "text": "Acme Bakery"}, {"level": 2, "text": "Our breads"},
        {"level": 2, "text": "Visit us"}, {"level": 3, "text": "Opening hours"},
    ]
    assert page["links"] == [
        {"href": f"{fixture_site}/about", "text": "About us", "internal": True},
        {"href": f"{fixture_site}/contact", "text": "Contact", "internal": True},
        {"href": "https://maps.example.com/acme", "text": "Map", "internal": False},
    ]
    assert page["word_count"] == 32  # visible text only: no title, script or style
    assert page["load_time_ms"] > 0 and page["error"] is None
    assert (missing["status_code"], missing["ok"], missing["title"]) == (404, False, "Not found")
    assert await outbox_rows(db, tenant) == []  # a read records nothing


# --- (d) registry: disabled and unknown servers -----------------------------------------

async def test_server_disabled_for_one_tenant_fails_fast_for_it_only(
    client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str
) -> None:
    tenant_a, tenant_b = unique("acme"), unique("globex")
    await set_tenant_enabled(db, "sandbox", tenant_a, False)
    async with mcp_worker(client, db, task_queue):
        started = time.monotonic()
        blocked = await start_probe(client, task_queue, Probe(tenant_id=tenant_a, tool="send_email", arguments=EMAIL))
        activity_error, cause = await failure_of(blocked)
        assert time.monotonic() - started < 5
        works = await start_probe(client, task_queue, Probe(tenant_id=tenant_b, tool="send_email", arguments=EMAIL))
        assert (await works.result()).calls[0].content["status"] == "queued"
    assert cause.type == "MCPServerDisabled" and cause.non_retryable
    assert activity_error.retry_state == RetryState.NON_RETRYABLE_FAILURE
    assert await activity_attempts(blocked) == [1]
    assert await outbox_rows(db, tenant_a) == []
    assert len(await outbox_rows(db, tenant_b)) == 1


async def test_globally_disabled_and_unknown_servers_are_permanent_errors(db: asyncpg.Pool, mcp_sandbox: str) -> None:
    tenant, off = unique("acme"), unique("off")
    await register_server(db, ServerConfig(name=off, transport="streamable-http", url=mcp_sandbox, enabled=False))
    # A global switch wins over a tenant's own "enabled".
    await set_tenant_enabled(db, off, tenant, True)
    env, mcp = ActivityEnvironment(), MCPActivities(db)
    try:
        for server, error_type in ((off, "MCPServerDisabled"), (unique("nosuch"), "MCPServerNotFound")):
            with pytest.raises(ApplicationError) as info:
                await env.run(mcp.list_tools, ListToolsRequest(tenant_id=tenant, server=server))
            assert (info.value.type, info.value.non_retryable) == (error_type, True)
    finally:
        await mcp.aclose()


# --- (e) permanent tool errors, (f) transient outages ----------------------------------

async def test_bad_arguments_fail_at_the_first_attempt(client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str) -> None:
    tenant = unique("acme")
    async with mcp_worker(client, db, task_queue):
        bad = await start_probe(client, task_queue, Probe(
            tenant_id=tenant, tool="send_email", arguments={**EMAIL, "to": ["not-an-email"]}))
        activity_error, cause = await failure_of(bad)
        # The tool itself refuses (no WordPress site connected for the tenant): also permanent, and
        # typed apart so a workflow can end early on it.
        refused = await start_probe(client, task_queue, Probe(
            tenant_id=tenant, tool="publish_wordpress_post", arguments={"site_url": "https://blog.example", "post_id": 42}))
        _, refused_cause = await failure_of(refused)
        # Arguments naming another tenant never reach the server.
        other = await start_probe(client, task_queue, Probe(
            tenant_id=tenant, tool="send_email", arguments={**EMAIL, "tenant_id": unique("globex")}))
        _, other_cause = await failure_of(other)
    assert cause.type == "MCPToolError" and cause.non_retryable
    assert "not-an-email" in cause.message
    assert activity_error.retry_state == RetryState.NON_RETRYABLE_FAILURE
    assert await activity_attempts(bad) == [1]
    assert refused_cause.type == "MCPNotConnected" and refused_cause.non_retryable
    assert "no WordPress site connected" in refused_cause.message
    assert await activity_attempts(refused) == [1]
    assert other_cause.type == "MCPToolError" and "does not match" in other_cause.message
    assert await outbox_rows(db, tenant) == []


async def test_unreachable_server_is_retried_until_it_comes_up(
    client: Client, db: asyncpg.Pool, task_queue: str, mcp_sandbox: str
) -> None:
    tenant, name, port = unique("acme"), unique("flaky"), free_port()
    await register_server(db, ServerConfig(
        name=name, transport="streamable-http", url=f"http://127.0.0.1:{port}/mcp", timeout_seconds=5))
    async with mcp_worker(client, db, task_queue):
        handle = await start_probe(client, task_queue, Probe(tenant_id=tenant, server=name, tool="send_sms",
                                                             arguments={"to": "+14155550123", "text": "Your table is ready"}))

        async def failed_twice_as_unavailable() -> None:
            pending = (await handle.describe()).raw_description.pending_activities
            assert pending and pending[0].attempt >= 3
            assert pending[0].last_failure.application_failure_info.type == "MCPUnavailable"
            assert not pending[0].last_failure.application_failure_info.non_retryable

        await assert_eventually(failed_twice_as_unavailable)
        async with serve_sandbox(db, port=port):
            result = await handle.result()
            assert result.calls[0].content["message_id"].startswith("SM")
            assert (await activity_attempts(handle))[-1] >= 3
        # The server restarts: the worker's session is stale; the next call reconnects at once.
        async with serve_sandbox(db, port=port):
            again = await start_probe(client, task_queue, Probe(tenant_id=tenant, server=name, tool="send_sms",
                                                                arguments={"to": "+14155550123", "text": "Thanks!"}))
            assert (await again.result()).calls[0].content["status"] == "queued"
            assert await activity_attempts(again) == [1]
    assert len(await outbox_rows(db, tenant)) == 2


async def test_stdio_transport(db: asyncpg.Pool, database_url: str) -> None:
    """The same sandbox as a child process speaking MCP over stdio."""
    tenant, name = unique("acme"), unique("stdio")
    command = (sys.executable, "-m", "sandboxes.mcp", "--transport", "stdio",
               "--database-url", database_url, "--log-level", "WARNING")
    await register_server(db, ServerConfig(name=name, transport="stdio", command=command, timeout_seconds=20))
    env, mcp = ActivityEnvironment(), MCPActivities(db)
    try:
        listing = await env.run(mcp.list_tools, ListToolsRequest(tenant_id=tenant, server=name))
        assert {t.name for t in listing.tools} == SANDBOX_TOOLS
        contact = await env.run(mcp.call_tool, CallToolRequest(
            tenant_id=tenant, server=name, tool="upsert_crm_contact", idempotency_key=f"{tenant}:crm:1",
            arguments={"email": "Maria@Example.com", "first_name": "Maria"}))
        updated = await env.run(mcp.call_tool, CallToolRequest(
            tenant_id=tenant, server=name, tool="upsert_crm_contact", idempotency_key=f"{tenant}:crm:2",
            arguments={"email": "maria@example.com", "lifecycle_stage": "customer"}))
    finally:
        await mcp.aclose()
    assert (contact.content["action"], updated.content["action"]) == ("created", "updated")
    assert contact.content["contact_id"] == updated.content["contact_id"]
    assert [r["tool"] for r in await outbox_rows(db, tenant)] == ["upsert_crm_contact"] * 2


# --- (g) GET /v1/outbox over HTTP --------------------------------------------------------

def outbox_app(settings: Settings, db: asyncpg.Pool) -> Litestar:
    """The outbox controller with the auth middleware, guard and error map of api/app.py."""
    app = Litestar(
        route_handlers=[outbox_router()],
        dependencies={"db": Provide(lambda: db, sync_to_thread=False)},
        middleware=[DefineMiddleware(BearerAuthMiddleware, exclude=PUBLIC_PATHS)],
        guards=[role_guard],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.token_verifier = TokenVerifier(settings)
    return app


async def test_outbox_lists_a_tenants_effects_to_that_tenant_only(
    db: asyncpg.Pool, settings: Settings, tokens: Tokens, mcp_sandbox: str
) -> None:
    tenant_a, tenant_b = unique("acme"), unique("globex")
    env, mcp = ActivityEnvironment(), MCPActivities(db)

    async def call(tenant: str, tool: str, step: str, **arguments: Any) -> dict[str, Any]:
        req = CallToolRequest(tenant_id=tenant, server="sandbox", tool=tool, arguments=arguments,
                              idempotency_key=f"{tenant}:test:{step}")
        return (await env.run(mcp.call_tool, req)).content

    try:
        email = await call(tenant_a, "send_email", "email", **EMAIL)
        sms = await call(tenant_a, "send_sms", "sms", to="+14155550123", text="Ready!")
        post = await call(tenant_a, "publish_social_post", "post", platform="x", text="Fresh croissants today")
        await call(tenant_b, "send_whatsapp", "wa", to="+4915112345678", text="Hallo")
    finally:
        await mcp.aclose()

    async with serve(outbox_app(settings, db)) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        async def page(headers: dict[str, str], **params: Any) -> dict[str, Any]:
            r = await http.get("/v1/outbox", headers=headers, params=params)
            assert r.status_code == 200, r.text
            return r.json()

        mine = await page(tokens.client(tenant_a))
        assert [i["tool"] for i in mine["items"]] == ["publish_social_post", "send_sms", "send_email"]  # newest first
        assert [i["response"] for i in mine["items"]] == [post, sms, email]
        assert {i["tenant_id"] for i in mine["items"]} == {tenant_a} and mine["next_before_id"] is None
        assert mine["items"][2]["arguments"]["subject"] == EMAIL["subject"]

        assert [i["tool"] for i in (await page(tokens.client(tenant_a), tool="send_sms"))["items"]] == ["send_sms"]
        first = await page(tokens.client(tenant_a), limit=2)
        assert [i["tool"] for i in first["items"]] == ["publish_social_post", "send_sms"]
        rest = await page(tokens.client(tenant_a), limit=2, before_id=first["next_before_id"])
        assert [i["tool"] for i in rest["items"]] == ["send_email"] and rest["next_before_id"] is None

        # Another tenant's client sees only its own rows, and asking for A's reads as 404.
        theirs = await page(tokens.client(tenant_b))
        assert [(i["tenant_id"], i["tool"]) for i in theirs["items"]] == [(tenant_b, "send_whatsapp")]
        r = await http.get("/v1/outbox", headers=tokens.client(tenant_b), params={"tenant_id": tenant_a})
        assert r.status_code == 404

        # Platform staff pick any tenant; a partner sees the tenants it manages.
        assert len((await page(tokens.admin(), tenant_id=tenant_a))["items"]) == 3
        partner = await page(tokens.partner([tenant_b]))
        assert [i["tenant_id"] for i in partner["items"]] == [tenant_b]
        r = await http.get("/v1/outbox", headers=tokens.partner([tenant_b]), params={"tenant_id": tenant_a})
        assert r.status_code == 404

        assert (await http.get("/v1/outbox")).status_code == 401
        for bad in ({"limit": 500}, {"limit": 0}, {"tenant_id": "Not A Tenant!"}):
            r = await http.get("/v1/outbox", headers=tokens.admin(), params=bad)
            assert r.status_code == 400, bad
