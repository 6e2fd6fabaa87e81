"""Capabilities declare themselves in their modules; the catalogue, the trigger table, the
schedule catalogue, the worker's registrations and the API's routes are what they declare. Per-tenant
settings are typed by the capability, changed over HTTP through an audited workflow, and change
what the tenant's workflows do."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from temporalio.client import Client

from api.app import create_app
from api.triggers import TRIGGERS
from schedules.catalogue import SCHEDULES
from tests.conftest import Tokens, assert_eventually, unique
from tests.support import ROOT, dev_settings, record_history
from tests.test_orders import completed, order
from workers.main import ALL_WORKFLOWS
from workflows import orders
from workflows.capability import Capability, Command, departures
from workflows.catalogue import CATALOGUE, MODULES, WORKFLOWS
from workflows.tenant_settings import TenantSettingsWorkflow


def test_the_tables_are_what_the_modules_declare() -> None:
    declared = [m.CAPABILITY for m in MODULES]
    assert CATALOGUE == {c.name: c for c in declared}
    # Found, not listed: every module of the package that declares one.
    assert {"onboarding", "presence-audit", "seo-health", "campaign", "order", "dunning", "tenant-health"} <= set(
        CATALOGUE)
    assert WORKFLOWS == [c.workflow for c in declared]
    assert set(WORKFLOWS) | {TenantSettingsWorkflow} <= set(ALL_WORKFLOWS)
    assert TRIGGERS == {(t.source, t.event_type): t for c in declared for t in c.triggers}
    assert {k: t.capability for k, t in TRIGGERS.items()} == {
        ("shopify", "orders/create"): "order", ("platform", "tenant.created"): "onboarding",
        ("stripe", "invoice.payment_failed"): "dunning", ("stripe", "invoice.paid"): "dunning",
        ("generic", "lead.created"): "email-sequence", ("shopify", "checkouts/create"): "cart-recovery",
        ("shopify", "checkouts/update"): "cart-recovery"}
    # The input builder lives with the workflow it starts.
    assert TRIGGERS["shopify", "orders/create"].build is orders.shopify_order
    assert SCHEDULES == {s.name: s for c in declared for s in c.schedules}
    assert {n: s.capability for n, s in SCHEDULES.items()}.items() >= {
        "presence-audit-weekly": "presence-audit", "seo-health-weekly": "seo-health",
        "tenant-health-daily": "tenant-health"}.items()
    # Every capability has its start route and its settings routes.
    routes = {(r.path, m) for r in create_app(dev_settings()).routes for m in getattr(r, "methods", ())}
    for name in CATALOGUE:
        assert (f"/v1/workflows/{name}", "POST") in routes
        assert {(f"/v1/tenants/{{tenant_id:str}}/settings/{name}", m) for m in ("GET", "PUT")} <= routes


def test_the_readme_catalogue_lists_every_capability_its_schedules_and_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### The catalogue"):readme.index("### A campaign")]
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `")}
    assert set(rows) == set(CATALOGUE)
    for cap in CATALOGUE.values():
        for command in cap.commands:
            assert f"`{command.name}`" in rows[cap.name], (cap.name, command.name)
        assert bool(cap.schedules) == bool(rows[cap.name].split("|")[4].strip()), cap.name


def test_a_declaration_is_checked_when_the_module_loads() -> None:
    class Loose(msgspec.Struct, frozen=True, kw_only=True):
        cap: float = 1.0

    class NoDefault(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
        cap: float

    base: dict[str, Any] = dict(name="probe", workflow=orders.OrderProcessingWorkflow, input_type=orders.OrderInput,
                                business_key=lambda inp: inp.order_key, start_roles=frozenset({"admin"}),
                                decide_roles=orders.CAPABILITY.decide_roles)
    with pytest.raises(ValueError, match="forbid_unknown_fields"):
        Capability(**base, settings=Loose)
    with pytest.raises(ValueError, match="every setting needs a default"):
        Capability(**base, settings=NoDefault)
    with pytest.raises(ValueError, match="no fields"):
        Capability(**base, settings=orders.OrderSettings, admin_settings=frozenset({"threshold"}))
    # A command runs an update the workflow has, once per name.
    with pytest.raises(ValueError, match="has no update 'move'"):
        Capability(**base, commands=(Command(name="move", update="move", input_type=orders.OrderInput,
                                             roles=frozenset({"client"})),))
    decide = Command(name="decide", update="decide", input_type=orders.OrderInput, roles=frozenset({"client"}))
    with pytest.raises(ValueError, match="two commands share a name"):
        Capability(**base, commands=(decide, decide))
    with pytest.raises(ValueError, match="msgspec Struct"):
        Command(name="move", update="move", input_type=dict, roles=frozenset({"client"}))
    # A tenant stores only what it changed; the defaults stay in code.
    assert departures(orders.OrderSettings(review_threshold=500.0, out_of_stock_skus=["A"])) == {
        "out_of_stock_skus": ["A"]}


async def new_tenant(db: asyncpg.Pool) -> str:
    tenant = unique("store")
    await db.execute("INSERT INTO tenants (id, name, plan, owner_email, status) VALUES ($1, 'S', 'starter', "
                     "'o@s.io', 'active')", tenant)
    return tenant


async def put_and_wait(http: httpx.AsyncClient, client: Client, headers: dict[str, str], tenant: str, capability: str,
                       body: dict[str, Any]) -> dict[str, Any]:
    r = await http.put(f"/v1/tenants/{tenant}/settings/{capability}", json=body, headers=headers)
    assert r.status_code == 202, r.text
    assert r.json()["workflow_id"] == f"{tenant}:tenant-settings:{capability}"
    result = await client.get_workflow_handle(r.json()["workflow_id"]).result()
    return msgspec.to_builtins(result)


async def test_a_lowered_review_threshold_sends_the_same_order_to_the_client(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client
) -> None:
    tenant = await new_tenant(db)
    me = tokens.client(tenant)
    r = await http.get(f"/v1/tenants/{tenant}/settings/order", headers=me)
    assert r.status_code == 200 and r.json() == {"review_threshold": 500.0, "inventory": {}, "out_of_stock_skus": [],
                                                 "shopify_shop_domain": None}
    first = await http.post("/v1/workflows/order", json=order(tenant, 40.0), headers=tokens.admin())
    assert (await completed(http, tokens, tenant, first.json()["workflow_id"]))["reviewed"] is False

    # The merchant lowers its threshold under the order's total.
    result = await put_and_wait(http, client, me, tenant, "order", {"review_threshold": 30})
    assert result["changed"] == {"review_threshold": {"from": None, "to": 30.0}}
    await record_history(client.get_workflow_handle(f"{tenant}:tenant-settings:order"), "tenant-settings")
    r = await http.get(f"/v1/tenants/{tenant}/settings/order", headers=tokens.admin())
    assert r.json()["review_threshold"] == 30.0 and r.json()["out_of_stock_skus"] == []

    second = await http.post("/v1/workflows/order", json=order(tenant, 40.0), headers=tokens.admin())
    wf_id = second.json()["workflow_id"]

    async def in_inbox() -> dict[str, Any]:
        items = (await http.get("/v1/pending-actions", headers=me)).json()["items"]
        mine = [a for a in items if a["workflow_id"] == wf_id]
        assert mine, items
        return mine[0]

    action = await assert_eventually(in_inbox, timeout=60)
    assert "total above 30.00" in action["summary"]
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", json={"decision": "approve"},
                        headers=me)
    assert r.status_code == 200, r.text
    done = await completed(http, tokens, tenant, wf_id)
    assert done["status"] == "accepted" and done["reviewed"] is True

    # Who changed what, in the audit log.
    row = await db.fetchrow("SELECT actor, details FROM audit_log WHERE tenant_id = $1 AND "
                            "action = 'tenant.settings_changed'", tenant)
    assert row["actor"] == f"owner@{tenant}"
    assert row["details"] == {"capability": "order", "changed": {"review_threshold": {"from": None, "to": 30.0}}}


async def test_a_lowered_budget_cap_sends_a_campaign_to_an_admin(
    db: asyncpg.Pool, http: httpx.AsyncClient, tokens: Tokens, client: Client
) -> None:
    """The cap is read where the campaign reads it (``tenant.policy``), after an admin's PUT."""
    from activities.approvals import ApprovalActivities, TenantPolicyRequest

    tenant = await new_tenant(db)
    policy = ApprovalActivities(db, CATALOGUE["campaign"].settings_of).tenant_policy
    assert (await policy(TenantPolicyRequest(tenant_id=tenant))).campaign_budget_cap_usd == 1000.0
    # The tenant's own client may not raise (or lower) the platform's check on its spend.
    r = await http.put(f"/v1/tenants/{tenant}/settings/campaign", json={"budget_cap_usd": 50},
                       headers=tokens.client(tenant))
    assert r.status_code == 403 and "budget_cap_usd" in r.json()["detail"]
    await put_and_wait(http, client, tokens.admin(), tenant, "campaign", {"budget_cap_usd": 50})
    assert (await policy(TenantPolicyRequest(tenant_id=tenant))).campaign_budget_cap_usd == 50.0
    # Sending it back unchanged is no change of an admin's field.
    r = await http.get(f"/v1/tenants/{tenant}/settings/campaign", headers=tokens.client(tenant))
    assert r.json() == {"budget_cap_usd": 50.0}


async def test_bad_settings_are_refused_naming_the_field(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client
) -> None:
    tenant = await new_tenant(db)
    url = f"/v1/tenants/{tenant}/settings/order"
    for body, field in (({"review_threshold": -1}, "review_threshold"),
                        ({"review_treshold": 10}, "review_treshold"),
                        ({"inventory": {"SKU": "many"}}, "inventory"),
                        ({"shopify_shop_domain": "not a domain"}, "shopify_shop_domain")):
        r = await http.put(url, json=body, headers=tokens.admin())
        assert r.status_code == 400, (body, r.text)
        assert field in r.text, r.text
    # A shop domain routes the shop's orders: the tenant's client may not set it, and two tenants cannot hold it.
    r = await http.put(url, json={"shopify_shop_domain": f"{tenant}.myshopify.com"}, headers=tokens.client(tenant))
    assert r.status_code == 403 and "shopify_shop_domain" in r.json()["detail"]
    await put_and_wait(http, client, tokens.admin(), tenant, "order", {"shopify_shop_domain": f"{tenant}.myshopify.com"})
    other = await new_tenant(db)
    r = await http.put(f"/v1/tenants/{other}/settings/order",
                       json={"shopify_shop_domain": f"{tenant.upper()}.myshopify.com"}, headers=tokens.admin())
    assert r.status_code == 409 and "shopify_shop_domain" in r.json()["detail"]
    # The client may send the admin's value back unchanged with its own change.
    body = {**(await http.get(url, headers=tokens.client(tenant))).json(), "out_of_stock_skus": ["RYE"]}
    await put_and_wait(http, client, tokens.client(tenant), tenant, "order", body)
    assert await db.fetchval("SELECT settings FROM tenant_settings WHERE tenant_id = $1 AND capability = 'order'",
                             tenant) == {"shopify_shop_domain": f"{tenant}.myshopify.com", "out_of_stock_skus": ["RYE"]}


async def test_another_tenant_and_an_unknown_capability_read_as_not_found(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool
) -> None:
    tenant = await new_tenant(db)
    stranger = tokens.client(unique("other"))
    assert (await http.get(f"/v1/tenants/{tenant}/settings/order", headers=stranger)).status_code == 404
    r = await http.put(f"/v1/tenants/{tenant}/settings/order", json={"review_threshold": 1}, headers=stranger)
    assert r.status_code == 404
    assert (await http.get(f"/v1/tenants/{tenant}/settings/payroll", headers=tokens.admin())).status_code == 404
    assert (await http.get(f"/v1/tenants/{unique('nobody')}/settings/order", headers=tokens.admin())).status_code == 404
    # Finance reads, never writes; a partner manages the tenants it holds.
    assert (await http.get(f"/v1/tenants/{tenant}/settings/order", headers=tokens.finance())).status_code == 200
    r = await http.put(f"/v1/tenants/{tenant}/settings/order", json={}, headers=tokens.finance())
    assert r.status_code == 403
    assert (await http.get(f"/v1/tenants/{tenant}/settings/order",
                           headers=tokens.partner([tenant]))).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM tenant_settings WHERE tenant_id = $1", tenant) == 0


async def test_the_keys_tenants_held_move_under_their_capability(postgres_server_url: str) -> None:
    """Migration 0030 on a database of before it: each tenant keeps the behaviour it had."""
    from activities.tenants import tenant_settings
    from core.database import _init_connection, apply_migrations, load_migrations
    from tests.conftest import _with_database
    from workflows.campaign import CampaignSettings

    name = unique("mig").replace("-", "_")
    admin = await asyncpg.connect(postgres_server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(_with_database(postgres_server_url, name))
        try:
            await _init_connection(conn)
            await apply_migrations(conn, [m for m in load_migrations() if m.version < 30])
            await conn.execute(
                """INSERT INTO tenants (id, name, plan, owner_email, settings) VALUES
                   ('shop', 'S', 'starter', 's@s.io', $1), ('deli', 'D', 'starter', 'd@d.io', $2),
                   ('plain', 'P', 'starter', 'p@p.io', '{}')""",
                {"campaign_budget_cap_usd": 250, "order_review_threshold": "300",
                 "shopify_shop_domain": "Shop.myshopify.com", "shopify_shop_domain_refused": "x.myshopify.com"},
                {"inventory": {"RYE": 2}, "out_of_stock_skus": ["BRIE"], "order_review_threshold": None})
            await apply_migrations(conn)
            shop, deli, plain = [await tenant_settings(conn, t, "order", orders.OrderSettings)
                                 for t in ("shop", "deli", "plain")]
            assert (shop.review_threshold, shop.shopify_shop_domain) == (300.0, "Shop.myshopify.com")
            assert (deli.review_threshold, deli.inventory, deli.out_of_stock_skus) == (500.0, {"RYE": 2}, ["BRIE"])
            assert plain == orders.OrderSettings()
            assert (await tenant_settings(conn, "shop", "campaign", CampaignSettings)).budget_cap_usd == 250.0
            assert (await tenant_settings(conn, "deli", "campaign", CampaignSettings)).budget_cap_usd == 1000.0
            # What no capability declares stays with the tenant; the shop's webhooks still find it.
            assert await conn.fetchval("SELECT settings FROM tenants WHERE id = 'shop'") == {
                "shopify_shop_domain_refused": "x.myshopify.com"}
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute("INSERT INTO tenant_settings (tenant_id, capability, settings) "
                                   "VALUES ('plain', 'order', '{\"shopify_shop_domain\": \"shop.MYSHOPIFY.com\"}')")
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
