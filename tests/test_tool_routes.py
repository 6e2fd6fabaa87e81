"""Tools by name: the registry routes each tool a workflow calls to a server, per tool and per
tenant, and the admin API changes the routes.

The end-to-end test runs two dunnings through the API on the real workers: the admin routes
``send_email`` of tenant A (only) to a second MCP server on loopback, a small FastMCP server
implementing that one tool; A's customer email arrives there, B's in the sandbox's outbox.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx
    import pytest
    import stripe
    from mcp.server.fastmcp import FastMCP
    from pydantic import Field
    from temporalio.client import Client
    from temporalio.exceptions import ApplicationError

    from activities.mcp import (
        SERVER_DISABLED,
        SERVER_NOT_FOUND,
        RegistryEntry,
        ServerConfig,
        ToolRoute,
        apply_server,
        load_registry,
        resolve_server,
        set_tenant_enabled,
    )
    from activities.mcp.tools import MessageSent, SendEmail, arguments, decode_result
    from sandboxes.mcp.server import serve_http
    from tests.conftest import Tokens
    from tests.support import assert_eventually, free_port, unique
    from tests.test_dunning import active_tenant, failing_invoice, sc  # noqa: F401 - sc is a fixture
    from workflows.dunning import DunningResult, invoice_key


# --- a second MCP server: one tool, the sandbox's schema -----------------------------------

class Sent(TypedDict):
    message_id: str
    status: str
    channel: str
    to: list[str]
    accepted_at: str
    segments: int | None
    sandbox: bool


@asynccontextmanager
async def mailer(received: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A FastMCP server with ``send_email`` only, recording each call; yields its URL."""
    port = free_port()
    server = FastMCP("test-mailer", host="127.0.0.1", port=port, log_level="WARNING")

    @server.tool(name="send_email", description="Send an email (the test mailer).", structured_output=True)
    async def send_email(
        tenant_id: str,
        idempotency_key: Annotated[str, Field(min_length=1, max_length=400)],
        to: Annotated[list[str], Field(min_length=1)],
        subject: str,
        text: str,
        html: str | None = None,
        cc: list[str] = [],  # noqa: B006 - copied by pydantic
        reply_to: str | None = None,
        from_name: str | None = None,
        workflow_id: str | None = None,
    ) -> Sent:
        received.append({"tenant_id": tenant_id, "idempotency_key": idempotency_key, "to": to, "subject": subject,
                         "workflow_id": workflow_id})
        return Sent(message_id=f"mailer-{len(received)}", status="sent", channel="email", to=to,
                    accepted_at="2026-01-01T00:00:00Z", segments=None, sandbox=False)

    async with serve_http(server, port=port) as url:
        yield url


# --- route resolution --------------------------------------------------------------------------

async def _server(db: asyncpg.Pool, routes: list[ToolRoute] | None = None, *, enabled: bool = True) -> str:
    name = unique("srv")
    async with db.acquire() as conn, conn.transaction():
        await apply_server(conn, RegistryEntry(
            server=ServerConfig(name=name, transport="streamable-http", url="http://127.0.0.1:9/mcp", enabled=enabled),
            routes=routes))
    return name


async def test_a_tenant_route_wins_over_a_route_for_every_tenant_and_both_over_the_default(
    db: asyncpg.Pool, mcp_sandbox: str
) -> None:
    tool, tenant, other = unique("tool"), unique("acme"), unique("globex")
    everyone = await _server(db, [ToolRoute(tool=tool)])
    own = await _server(db, [ToolRoute(tool=tool, tenants=[tenant])])
    assert (await resolve_server(db, tool, tenant)).name == own
    assert (await resolve_server(db, tool, other)).name == everyone
    # A tool no route names goes to the default server (mcp-servers.yaml: the sandbox).
    assert (await resolve_server(db, unique("unknown-tool"), tenant)).name == "sandbox"
    # Routes are replaced as a whole: the tenant's route gone, it falls back to everyone's.
    async with db.acquire() as conn, conn.transaction():
        await apply_server(conn, RegistryEntry(
            server=ServerConfig(name=own, transport="streamable-http", url="http://127.0.0.1:9/mcp"), routes=[]))
    assert (await resolve_server(db, tool, tenant)).name == everyone


async def test_a_route_to_a_disabled_server_is_refused_never_sent_elsewhere(db: asyncpg.Pool, mcp_sandbox: str) -> None:
    tool, tenant, other = unique("tool"), unique("acme"), unique("globex")
    off = await _server(db, [ToolRoute(tool=tool, tenants=[tenant])], enabled=False)
    with pytest.raises(ApplicationError) as refused:
        await resolve_server(db, tool, tenant)
    assert refused.value.type == SERVER_DISABLED and refused.value.non_retryable and off in refused.value.message
    assert (await resolve_server(db, tool, other)).name == "sandbox"  # other tenants: the default

    # Disabled for one tenant only: that tenant is refused, the others are not.
    on = await _server(db, [ToolRoute(tool=tool)])
    await set_tenant_enabled(db, on, other, False)
    with pytest.raises(ApplicationError) as refused:
        await resolve_server(db, tool, other)
    assert refused.value.type == SERVER_DISABLED
    assert (await resolve_server(db, tool, unique("initech"))).name == on


async def test_without_a_default_server_an_unrouted_tool_is_not_found(db: asyncpg.Pool, mcp_sandbox: str) -> None:
    # Inside a transaction rolled back: the session's default stays the sandbox for the others.
    async with db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("UPDATE mcp_servers SET is_default = false WHERE name = 'sandbox'")
            with pytest.raises(ApplicationError) as missing:
                await resolve_server(conn, unique("tool"), unique("acme"))
        finally:
            await tx.rollback()
    assert missing.value.type == SERVER_NOT_FOUND and missing.value.non_retryable


def test_the_registry_file_names_the_default_and_declares_routes(tmp_path: Any) -> None:
    entries, default = load_registry()
    assert default == "sandbox" and [e.server.name for e in entries] == ["sandbox"]
    assert entries[0].routes is None  # no `tools:` key: routes set through the API are kept
    path = tmp_path / "mcp.yaml"
    path.write_text("default_server: a\nservers:\n"
                    "  - {name: a, transport: stdio, command: [x]}\n"
                    "  - {name: b, transport: stdio, command: [y], tools: [send_email, {tool: send_sms, tenants: [acme]}]}\n")
    entries, default = load_registry(path)
    assert default == "a" and entries[1].routes == [ToolRoute(tool="send_email"), ToolRoute(tool="send_sms", tenants=["acme"])]
    path.write_text("default_server: nope\nservers:\n  - {name: a, transport: stdio, command: [x]}\n")
    with pytest.raises(ValueError, match="default_server"):
        load_registry(path)


def test_typed_tools_send_what_workflows_sent_and_decode_the_sandbox_answer() -> None:
    args = SendEmail(to=["a@example.com"], subject="Hello", text="Body")
    assert args.TOOL == "send_email" and arguments(args) == {"to": ["a@example.com"], "subject": "Hello", "text": "Body"}
    answer = {"message_id": "msg_1", "status": "queued", "channel": "email", "to": ["a@example.com"],
              "accepted_at": "2026-01-01T00:00:00+00:00", "segments": None, "sandbox": True}
    assert decode_result(args, answer) == MessageSent(**answer)


async def test_listing_by_tool_name_says_which_server_answers(db: asyncpg.Pool, mcp_sandbox: str) -> None:
    from temporalio.testing import ActivityEnvironment

    from activities.mcp import ListToolsRequest, MCPActivities

    tenant = unique("acme")
    mcp = MCPActivities(db)
    try:
        listing = await ActivityEnvironment().run(mcp.list_tools, ListToolsRequest(
            tenant_id=tenant, tools=["send_email", "fetch_web_page", "no_such_tool"]))
    finally:
        await mcp.aclose()
    assert [(t.name, t.server) for t in listing.tools] == [("send_email", "sandbox"), ("fetch_web_page", "sandbox")]
    assert "subject" in listing.tools[0].input_schema["properties"]


# --- the admin API -----------------------------------------------------------------------------

async def test_only_admins_change_the_registry_and_bad_bodies_name_the_field(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    name = unique("srv")
    body = {"transport": "streamable-http", "url": "http://127.0.0.1:9/mcp"}
    for headers in (tokens.client(unique("acme")), tokens.finance(), tokens.partner([unique("acme")])):
        assert (await http.put(f"/v1/admin/mcp/servers/{name}", headers=headers, json=body)).status_code == 403
        assert (await http.get("/v1/admin/mcp/servers", headers=headers)).status_code == 403
    bad = [
        ({"transport": "streamable-http"}, "url"),
        ({"transport": "streamable-http", "url": "ftp://127.0.0.1/mcp"}, "url"),
        ({"transport": "streamable-http", "url": "http://user:pw@127.0.0.1/mcp"}, "url"),
        ({"transport": "streamable-http", "url": "http://127.0.0.1/mcp?api_key=x"}, "url"),
        ({"transport": "streamable-http", "url": "http://169.254.169.254/mcp"}, "url"),
        ({"transport": "stdio"}, "command"),
        ({**body, "timeout_seconds": 0}, "timeout_seconds"),
        ({**body, "tools": [{"tool": "send email"}]}, "tool"),
        ({**body, "tools": [{"tool": "send_email"}, {"tool": "send_email"}]}, "tools"),
        ({**body, "tenants": {"Not A Slug": True}}, "tenants"),
    ]
    for payload, field in bad:
        r = await http.put(f"/v1/admin/mcp/servers/{name}", headers=tokens.admin(), json=payload)
        assert r.status_code == 400, (payload, r.text)
        assert field in r.text, (payload, r.text)
    r = await http.put("/v1/admin/mcp/servers/Bad Name", headers=tokens.admin(), json=body)
    assert r.status_code in (400, 404)
    listed = (await http.get("/v1/admin/mcp/servers", headers=tokens.admin())).json()
    assert name not in {s["name"] for s in listed["servers"]}  # nothing bad was written


async def test_another_tenants_caller_cannot_see_its_tools(http: httpx.AsyncClient, tokens: Tokens) -> None:
    tenant = unique("acme")
    assert (await http.get(f"/v1/tenants/{tenant}/tools", headers=tokens.client(unique("globex")))).status_code == 404
    r = await http.get(f"/v1/tenants/{tenant}/tools", headers=tokens.client(tenant))
    assert r.status_code == 200 and r.json()["default_server"] == "sandbox"


# --- the must-show: one tenant's send_email goes to a second server ------------------------

async def test_one_tenants_email_goes_to_a_second_mcp_server_the_others_to_the_sandbox(
    http: httpx.AsyncClient, client: Client, sc: stripe.StripeClient, db: asyncpg.Pool, tokens: Tokens
) -> None:
    tenant_a, tenant_b = await active_tenant(db), await active_tenant(db)
    received: list[dict[str, Any]] = []
    name = unique("mailer")
    async with mailer(received) as url:
        r = await http.put(f"/v1/admin/mcp/servers/{name}", headers=tokens.admin(), json={
            "transport": "streamable-http", "url": url, "category": "email", "timeout_seconds": 10,
            "tools": [{"tool": "send_email", "tenants": [tenant_a]}]})
        assert r.status_code == 200, r.text
        assert r.json()["routes"] == [{"tool": "send_email", "tenant_id": tenant_a, "server": name}]
        audited = await db.fetchval("SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = "
                                    "'mcp.server_registered' AND actor = 'admin@bizosaas'", tenant_a)
        assert audited == 1

        wf_ids = {}
        for tenant in (tenant_a, tenant_b):
            inv = await failing_invoice(sc, tenant)
            r = await http.post("/v1/workflows/dunning", headers=tokens.admin(), json={
                "tenant_id": tenant, "invoice_id": inv, "invoice_key": invoice_key(inv), "amount_due": 4900,
                "currency": "eur", "retry_schedule_seconds": [1], "max_admin_retries": 0})
            assert r.status_code == 202, r.text
            wf_ids[tenant] = r.json()["workflow_id"]

        async def both_asking_the_admin() -> dict[str, str]:
            page = (await http.get("/v1/admin/approvals", headers=tokens.admin(),
                                   params={"limit": 200})).json()
            asking = {a["workflow_id"]: a["action_id"] for a in page["items"] if a["workflow_id"] in wf_ids.values()}
            assert len(asking) == 2, page
            return asking

        actions = await assert_eventually(both_asking_the_admin, timeout=90, interval=0.3)

        # Tenant A's email reached the second server, with the workflow's key; none in the sandbox.
        assert [(m["tenant_id"], m["to"], m["idempotency_key"]) for m in received] == [
            (tenant_a, [f"billing@{tenant_a}.example"], f"{wf_ids[tenant_a]}:email:attempt-1")]
        assert received[0]["workflow_id"] == wf_ids[tenant_a]
        outbox = {r["workflow_id"]: r["tenant_id"] for r in await db.fetch(
            "SELECT workflow_id, tenant_id FROM outbox WHERE tool = 'send_email' AND workflow_id = ANY($1)",
            list(wf_ids.values()))}
        # Tenant B's went to the sandbox, as before.
        assert outbox == {wf_ids[tenant_b]: tenant_b}

        # The tenants' tool listings say where send_email goes for each.
        tools_a = (await http.get(f"/v1/tenants/{tenant_a}/tools", headers=tokens.client(tenant_a))).json()
        tools_b = (await http.get(f"/v1/tenants/{tenant_b}/tools", headers=tokens.client(tenant_b))).json()
        email_a = next(t for t in tools_a["tools"] if t["name"] == "send_email")
        email_b = next(t for t in tools_b["tools"] if t["name"] == "send_email")
        assert (email_a["server"], email_a["route"]) == (name, "tenant")
        assert (email_b["server"], email_b["route"]) == ("sandbox", "default")
        assert "to" in email_a["input_schema"]["properties"] and email_a["description"].startswith("Send an email")
        # The admin listing shows the route and no credentials.
        servers = {s["name"]: s for s in (await http.get("/v1/admin/mcp/servers", headers=tokens.admin())).json()["servers"]}
        assert servers[name]["routes"] == [{"tool": "send_email", "tenant_id": tenant_a, "server": name}]
        assert servers["sandbox"]["default"] is True

        for tenant, wf_id in wf_ids.items():
            r = await http.post(f"/v1/pending-actions/{actions[wf_id]}/decision", headers=tokens.admin(),
                                json={"decision": "approve", "choice": "write_off"})
            assert r.status_code == 200, r.text
            result = await client.get_workflow_handle(wf_id, result_type=DunningResult).result()
            assert result.status == "written_off" and result.emails_sent == 1, tenant


def test_no_workflow_names_an_mcp_server() -> None:
    """Workflows call tools by name; the registry picks the server."""
    from tests.support import ROOT

    named = [f"{p.name}:{n}" for p in sorted((ROOT / "workflows").glob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if '"sandbox"' in line or "'sandbox'" in line]
    assert named == []
