"""Competitor Insight Engine: prices read from pages (each source, currencies, none), the shift
between two runs, and the capability on the running platform (dev server, real workers, the
sandbox MCP fetch tool on a loopback site, offline provider): a tenant's watch list in its
settings, two runs whose second report names the price rise and the new product, the weekly
schedule enabled by the client and run twice by a backfill, bad input, another tenant."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest_asyncio
from temporalio.client import Client

from activities.lago import USAGE_METRIC_CODE
from activities.mcp.tools import WebPage
from activities.reports import StoredReport
from sandboxes.lago import LagoState
from sandboxes.mcp.page_content import page_content
from sandboxes.mcp.web import page_fields
from schedules.catalogue import schedule_id
from schedules.reconciler import describe_or_none
from tests.conftest import Tokens, assert_eventually, serve, unique
from tests.support import Site, add_tenant, record_history
from workflows.competitor_insight import (AgentPrice, Competitor, CompetitorAnalysis, CompetitorInsightReport,
                                          agent_price, compute_shift, snapshot)
from workflows.price_extract import extract_prices, parse_amount, promotions
from workflows.tenant_schedules import TenantCapabilitiesWorkflow


def page_of(html: str, title: str | None = "Shop", url: str = "https://rival.example/shop") -> WebPage:
    """What fetch_web_page answers with include_content for this HTML (the sandbox's own parsers);
    ``title`` when the HTML has none."""
    fields = page_fields(html, url)
    return msgspec.convert({"url": url, "ok": True, "status_code": 200, **fields, "title": fields["title"] or title,
                            **page_content(html)}, WebPage)


def prices(html: str, title: str | None = "Shop") -> list[tuple[str, str, str | None, str | None, str]]:
    return [(p.product, str(p.amount), p.currency, p.period, p.source) for p in extract_prices(page_of(html, title))]


def json_ld(obj: Any) -> str:
    return f'<script type="application/ld+json">{json.dumps(obj)}</script>'


# --- extraction ------------------------------------------------------------------------------

def test_json_ld_products_and_offers() -> None:
    graph = {"@context": "https://schema.org", "@graph": [
        {"@type": "WebPage", "name": "Blenders"},
        {"@type": "Product", "name": "Pro Blender", "offers": {
            "@type": "Offer", "price": "1299.00", "priceCurrency": "USD",
            "availability": "https://schema.org/InStock"}},
        {"@type": "Product", "name": "Mini Blender", "offers": [{"@type": "Offer", "price": 49.5,
                                                                "priceCurrency": "EUR"}]},
        {"@type": "Product", "name": "Blender Range",
         "offers": {"@type": "AggregateOffer", "lowPrice": "19", "highPrice": "99", "priceCurrency": "GBP"}},
        {"@type": "Product", "name": "Pro Plan", "offers": {"@type": "Offer", "priceSpecification": {
            "@type": "UnitPriceSpecification", "price": 29, "priceCurrency": "USD", "unitCode": "MON"}}},
    ]}
    found = extract_prices(page_of(f"<html><head>{json_ld(graph)}</head><body><p>$5 coupon</p></body></html>"))
    assert [(p.product, p.amount, p.currency, p.period, p.source, p.availability) for p in found] == [
        ("Pro Blender", Decimal("1299.00"), "USD", None, "json-ld", "InStock"),
        ("Mini Blender", Decimal("49.50"), "EUR", None, "json-ld", None),
        ("Blender Range", Decimal("19.00"), "GBP", None, "json-ld", None),
        ("Pro Plan", Decimal("29.00"), "USD", "month", "json-ld", None)]


def test_microdata_and_opengraph() -> None:
    microdata = """<div itemscope itemtype="https://schema.org/Product"><h2 itemprop="name">Toaster X</h2>
      <div itemprop="offers" itemscope itemtype="https://schema.org/Offer">
        <span itemprop="price" content="1299.90">1.299,90 €</span><meta itemprop="priceCurrency" content="EUR">
        <link itemprop="availability" href="https://schema.org/OutOfStock"></div></div>"""
    [p] = extract_prices(page_of(microdata))
    assert (p.product, p.amount, p.currency, p.source, p.availability) == (
        "Toaster X", Decimal("1299.90"), "EUR", "microdata", "OutOfStock")
    # A bare itemprop="price" with its text (no content attribute, no item around it).
    assert prices('<p>Kettle <span itemprop="price">24.99</span></p>', title="Kettle | Rival") == [
        ("Kettle | Rival", "24.99", None, None, "microdata")]
    og = ('<meta property="og:title" content="Walnut Desk"><meta property="product:price:amount" content="1.299,00">'
          '<meta property="product:price:currency" content="EUR">')
    assert prices(f"<html><head>{og}</head><body><p>Only $10!</p></body></html>") == [
        ("Walnut Desk", "1299.00", "EUR", None, "opengraph")]


def test_price_patterns_in_text_named_after_the_nearest_text() -> None:
    html = """<h1>Pricing</h1>
      <ul><li>Basic <s>$29</s> $19/mo</li><li>Pro plan: USD 49 per month</li></ul>
      <h3>Oak Table</h3><p>1.299,00 €</p>
      <h3>Pine Shelf</h3><p>Now only £1,049.50</p>
      <p>Yearly: 490 EUR/yr</p>
      <p>Free shipping on orders over $50! Was $80, get $10 off.</p>"""
    assert prices(html) == [
        ("Basic", "19.00", "USD", "month", "pattern"),
        ("Pro plan", "49.00", "USD", "month", "pattern"),
        ("Oak Table", "1299.00", "EUR", None, "pattern"),
        ("Pine Shelf", "1049.50", "GBP", None, "pattern"),
        ("Yearly", "490.00", "EUR", "year", "pattern"),
    ]
    # Structured data wins over the text: a page with both gives its structured prices only.
    both = json_ld({"@type": "Product", "name": "Basic", "offers": {"price": "19", "priceCurrency": "USD"}}) + html
    assert prices(both) == [("Basic", "19.00", "USD", None, "json-ld")]


def test_no_price_and_amounts_as_written() -> None:
    assert prices("<h1>About us</h1><p>Family bakery since 1982, 3 shops, call 555 0100.</p>") == []
    assert prices("<p>Free shipping over $50, save $10, was $80</p>") == []
    assert prices("<p>Try 3 months free, then cancel any time</p>") == []  # "TRY" is a currency in capitals only
    assert extract_prices(page_of("")) == []
    for written, amount in (("1,299.00", "1299.00"), ("1.299,00", "1299.00"), ("1 299", "1299.00"),
                            ("49,9", "49.90"), ("12", "12.00"), (7.5, "7.50")):
        assert str(parse_amount(written)) == amount, written
    assert parse_amount("12,3456") is None and parse_amount("abc") is None and parse_amount(-1) is None


def test_promotions_are_labelled_once() -> None:
    page = page_of("<p>Black Friday SALE: 30% off everything</p><p>Free delivery this week</p><p>Big sale</p>",
                   title="Rival — limited-time offer")
    assert [p.label for p in promotions(page)] == ["limited-time offer", "30% off", "black friday", "sale",
                                                   "free shipping"]


def test_an_agents_price_is_kept_only_when_the_page_shows_it() -> None:
    page = page_of("<h1>Espresso One</h1><p>Yours for 349 dollars, delivered.</p>")
    assert extract_prices(page) == []
    kept = agent_price(AgentPrice(product="Espresso One", price="349", currency="USD"), page, "x")
    assert kept is not None and (kept.amount, kept.currency, kept.source) == (Decimal("349.00"), "USD", "agent")
    assert agent_price(AgentPrice(product="Espresso One", price="299", currency="USD"), page, "x") is None
    assert agent_price(AgentPrice(product="", price="none", currency="XXX"), page, "x") is None
    unknown = agent_price(AgentPrice(product="", price="349", currency="XXX"), page, "Espresso One")
    assert unknown is not None and (unknown.product, unknown.currency) == ("Espresso One", None)


def test_the_shift_names_price_moves_products_promotions_and_pages() -> None:
    rival = Competitor(name="Rival", url="https://rival.example/shop")
    gone = Competitor(name="Gone", url="https://gone.example")

    def products(*items: tuple[str, str]) -> str:
        return json_ld([{"@type": "Product", "name": n, "offers": {"price": p, "priceCurrency": "USD"}}
                        for n, p in items])

    before_html = products(("Pro Blender", "50"), ("Old Mixer", "20")) + '<h1>Blenders</h1><a href="/about">About</a>'
    after_html = (products(("pro  blender", "59.99"), ("Gamma Grinder", "80"))
                  + '<h1>Blenders on sale</h1><p>20% off</p><a href="/about">About</a><a href="/outlet">Outlet</a>')
    first = [snapshot(rival, page_of(before_html, url=rival.url)), snapshot(gone, page_of("<p>hi</p>", url=gone.url))]
    body = CompetitorInsightReport(offline=True, competitors=first, shift=compute_shift(first, None),
                                   analysis=CompetitorAnalysis(summary="s", highlights=[], recommendations=["r"]))
    previous = StoredReport(report_id=7, workflow_id="t:competitor-insight:w1", offline=True,
                            body=msgspec.to_builtins(body), created_at=datetime(2026, 1, 5, tzinfo=timezone.utc))
    newcomer = Competitor(name="New", url="https://new.example")
    down = Competitor(name="Rival", url="https://RIVAL.example/shop/")  # the same page
    shift = compute_shift([snapshot(down, page_of(after_html, url=down.url)),
                           snapshot(newcomer, None, "URL refused (private): 10.0.0.1")], previous)
    assert (shift.first_run, shift.previous_report_id, shift.competitors_dropped) == (
        False, 7, ["https://gone.example"])
    r, n = shift.competitors
    assert (r.first_seen, r.compared, n.first_seen) == (False, True, True)
    [change] = r.price_changes
    assert (change.before, change.after, change.change, change.percent, change.direction) == (
        Decimal("50.00"), Decimal("59.99"), Decimal("9.99"), 20.0, "up")
    assert [p.product for p in r.products_added] == ["Gamma Grinder"]
    assert [p.product for p in r.products_removed] == ["Old Mixer"]
    assert [p.label for p in r.promotions_new] == ["sale", "20% off"] and r.promotions_ended == []
    assert [(c.field, c.before, c.after) for c in r.changes] == [("headline", "Blenders", "Blenders on sale")]
    assert (r.pages_new, r.pages_removed) == (["/outlet"], [])
    # A page not read this time is not compared: nothing is called removed.
    again = compute_shift([snapshot(rival, WebPage(url=rival.url, ok=False, error="Timeout"))], previous)
    assert (again.competitors[0].compared, again.competitors[0].products_removed) == (False, [])


# --- on the running platform -----------------------------------------------------------------

def product_page(title: str, products: list[tuple[str, str]], extra: str = "", links: tuple[str, ...] = ()) -> str:
    data = [{"@context": "https://schema.org", "@type": "Product", "name": name,
             "offers": {"@type": "Offer", "price": price, "priceCurrency": "USD"}} for name, price in products]
    anchors = "".join(f'<a href="{href}">{href}</a>' for href in links)
    cards = "".join(f"<h2>{name}</h2><p>${price}</p>" for name, price in products)
    return (f"<html><head><title>{title}</title>{json_ld(data)}</head>"
            f"<body><h1>{title}</h1>{cards}{extra}{anchors}</body></html>")


# No price format the extraction knows: the agent reads it (offline: the first amount on the page).
BETA = ("<html><head><title>Beta Coffee Co</title></head><body><h1>The Beta machine</h1>"
        "<p>Our espresso machine costs 349 dollars, delivered to your door.</p></body></html>")


@pytest_asyncio.fixture
async def site() -> AsyncIterator[tuple[Site, str]]:
    app = Site()
    async with serve(app) as url:
        yield app, url


async def new_tenant(db: asyncpg.Pool, timezone_name: str = "UTC") -> str:
    return await add_tenant(db, "roaster", timezone_name)


async def watch(http: httpx.AsyncClient, client: Client, headers: dict[str, str], tenant: str,
                competitors: list[dict[str, str]]) -> None:
    r = await http.put(f"/v1/tenants/{tenant}/settings/competitor-insight", json={"competitors": competitors},
                       headers=headers)
    assert r.status_code == 202, r.text
    await client.get_workflow_handle(r.json()["workflow_id"]).result()


def next_mondays(times: list[datetime]) -> bool:
    """The next runs fall on Mondays at 08:00-08:30 in Paris (the jitter spreads tenants)."""
    from zoneinfo import ZoneInfo

    local = [t.astimezone(ZoneInfo("Europe/Paris")) for t in times]
    return bool(local) and all(t.weekday() == 0 and t.hour == 8 and t.minute < 31 for t in local)


async def completed(http: httpx.AsyncClient, headers: dict[str, str], wf_id: str) -> dict:
    async def done() -> dict:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=headers)).json()
        assert view["status"] == "COMPLETED", view
        return view

    return await assert_eventually(done, timeout=90, interval=0.2)


async def test_two_runs_report_prices_and_the_second_names_the_rise_and_the_new_product(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, lago_state: LagoState, site: tuple[Site, str],
    client: Client,
) -> None:
    app, url = site
    tenant = await new_tenant(db)
    owner = tokens.client(tenant)
    app.pages = {"/alpha": (200, product_page("Alpha Kitchen", [("Alpha Blender", "49.00"), ("Alpha Mixer", "120.00")],
                                              links=("/about",))),
                 "/beta": (200, BETA)}
    await watch(http, client, owner, tenant, [{"name": "Alpha", "url": f"{url}/alpha"},
                                              {"name": "Beta", "url": f"{url}/beta"}])
    assert (await http.get(f"/v1/tenants/{tenant}/settings/competitor-insight", headers=owner)).json() == {
        "competitors": [{"name": "Alpha", "url": f"{url}/alpha"}, {"name": "Beta", "url": f"{url}/beta"}]}

    # First run: the competitors come from the settings.
    r = await http.post("/v1/workflows/competitor-insight", headers=owner, json={"tenant_id": tenant, "key": "week-1"})
    assert r.status_code == 202, r.text
    first_id = r.json()["workflow_id"]
    assert first_id == f"{tenant}:competitor-insight:week-1"
    view = await completed(http, owner, first_id)
    await record_history(client.get_workflow_handle(first_id), "competitor-insight")
    first = view["result"]
    assert (first["offline"], first["competitors"], first["prices"], first["shift"]["first_run"]) == (True, 2, 3, True)
    assert view["progress"]["stage"] == "completed" and view["progress"]["pages_fetched"] == 2

    listed = (await http.get("/v1/reports?kind=competitor-insight", headers=owner)).json()["items"]
    assert [(i["id"], i["workflow_id"], i["capability"], i["offline"]) for i in listed] == [
        (first["report_id"], first_id, "competitor-insight", True)]
    body = (await http.get(f"/v1/reports/{first['report_id']}", headers=owner)).json()["body"]
    report = msgspec.convert(body, CompetitorInsightReport, strict=False)
    alpha, beta = report.competitors
    assert [(p.product, p.amount, p.currency, p.source) for p in alpha.prices] == [
        ("Alpha Blender", Decimal("49.00"), "USD", "json-ld"), ("Alpha Mixer", Decimal("120.00"), "USD", "json-ld")]
    assert (alpha.extracted_by, alpha.headline, alpha.pages) == ("deterministic", "Alpha Kitchen", ["/about"])
    # Beta's page has no price format the extraction knows: the agent read "349" off it.
    assert beta.extracted_by == "agent"
    assert [(p.amount, p.source) for p in beta.prices] == [(Decimal("349.00"), "agent")]
    assert report.analysis.summary.startswith("offline") and report.analysis.recommendations

    # Usage: one row per LLM call of both agents (the extractor for Beta, the analyst), each in Lago.
    usage = await db.fetch("SELECT idempotency_key, workflow_id, agent, offline, reported_to_lago_at FROM llm_usage "
                           "WHERE starts_with(workflow_id, $1 || ':agent:') ORDER BY id", first_id)
    assert len(usage) == first["llm_calls"] >= 2
    assert {u["agent"] for u in usage} == {"price-extractor", "competitor-analyst"}
    assert all(u["offline"] and u["reported_to_lago_at"] for u in usage)
    events = [e for e in lago_state.events_of(tenant, USAGE_METRIC_CODE)
              if e["properties"]["workflow_id"] in {u["workflow_id"] for u in usage}]
    assert sorted(e["transaction_id"] for e in events) == sorted(u["idempotency_key"] for u in usage)

    # Alpha raises the blender's price, adds a grinder, announces free shipping and links an outlet.
    app.pages["/alpha"] = (200, product_page(
        "Alpha Kitchen", [("Alpha Blender", "59.00"), ("Alpha Mixer", "120.00"), ("Alpha Grinder", "80.00")],
        extra="<p>Free shipping this month</p>", links=("/about", "/outlet")))
    r = await http.post("/v1/workflows/competitor-insight", headers=owner, json={"tenant_id": tenant, "key": "week-2"})
    assert r.status_code == 202, r.text
    second_id = r.json()["workflow_id"]
    second = (await completed(http, owner, second_id))["result"]
    shift = second["shift"]
    assert (shift["first_run"], shift["previous_workflow_id"], shift["previous_report_id"]) == (
        False, first_id, first["report_id"])
    a, b = shift["competitors"]
    assert [(c["product"], c["before"], c["after"], c["change"], c["percent"], c["direction"])
            for c in a["price_changes"]] == [("Alpha Blender", "49.00", "59.00", "10.00", 20.4, "up")]
    assert [(p["product"], p["amount"]) for p in a["products_added"]] == [("Alpha Grinder", "80.00")]
    assert a["products_removed"] == [] and [p["label"] for p in a["promotions_new"]] == ["free shipping"]
    assert a["pages_new"] == ["/outlet"]
    # Beta did not change.
    assert (b["first_seen"], b["compared"], b["price_changes"], b["products_added"], b["products_removed"]) == (
        False, True, [], [], [])
    stored = json.loads(await db.fetchval("SELECT body::text FROM reports WHERE workflow_id = $1", second_id))
    assert stored["shift"] == shift
    # The two reports compared through the API: the same changes, computed the same way.
    cmp = (await http.get(f"/v1/reports/{first['report_id']}/compare/{second['report_id']}", headers=owner)).json()
    assert (cmp["kind"], cmp["findings_compared"], cmp["competitor_changes"]) == (
        "competitor-insight", True, shift["competitors"])

    # Another tenant: the run and the report read as not found.
    stranger = tokens.client(unique("other"))
    assert (await http.get(f"/v1/workflows/{second_id}", headers=stranger)).status_code == 404
    assert (await http.get(f"/v1/reports/{second['report_id']}", headers=stranger)).status_code == 404
    assert (await http.get("/v1/reports?kind=competitor-insight", headers=stranger)).json()["items"] == []


async def test_bad_input_is_refused_naming_the_field_and_starts_nothing(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client,
) -> None:
    tenant = await new_tenant(db)
    owner = tokens.client(tenant)
    ok = {"name": "Rival", "url": "https://rival.example/"}
    for body, field in (
        ({"tenant_id": tenant, "competitors": [{"name": "Rival", "url": "not a url"}]}, "url"),
        ({"tenant_id": tenant, "competitors": []}, "competitors"),
        ({"tenant_id": tenant, "competitors": [ok] * 2}, "competitors"),
        ({"tenant_id": tenant, "competitors": [{**ok, "url": f"https://r{i}.example/", "name": f"R{i}"}
                                               for i in range(11)]}, "competitors"),
        ({"tenant_id": tenant, "competitors": [{"url": "https://rival.example/"}]}, "name"),
        ({"tenant_id": tenant, "key": "Not A Slug"}, "key"),
    ):
        r = await http.post("/v1/workflows/competitor-insight", headers=owner, json=body)
        assert r.status_code == 400, (body, r.text)
        assert field in r.text, r.text
    for body, field in (({"competitors": [{"name": "Rival", "url": "ftp://rival.example"}]}, "url"),
                        ({"competitors": [ok, {**ok, "name": "Other"}]}, "competitors"),
                        ({"competitor": [ok]}, "competitor")):
        r = await http.put(f"/v1/tenants/{tenant}/settings/competitor-insight", json=body, headers=owner)
        assert r.status_code == 400, (body, r.text)
        assert field in r.text, r.text
    # Another tenant's run is not the caller's to start.
    r = await http.post("/v1/workflows/competitor-insight", headers=tokens.client(unique("other")),
                        json={"tenant_id": tenant, "competitors": [ok]})
    assert r.status_code == 404, r.text
    assert [w.id async for w in client.list_workflows(f"BizTenantId = '{tenant}'")] == []
    assert await db.fetchval("SELECT count(*) FROM tenant_settings WHERE tenant_id = $1", tenant) == 0


async def test_the_client_enables_the_weekly_schedule_and_weekly_runs_compare_with_the_week_before(
    http: httpx.AsyncClient, client: Client, db: asyncpg.Pool, tokens: Tokens, site: tuple[Site, str],
) -> None:
    app, url = site
    app.pages = {"/alpha": (200, product_page("Alpha Kitchen", [("Alpha Blender", "49.00")]))}
    tenant = await new_tenant(db, "Europe/Paris")
    owner = tokens.client(tenant)
    await watch(http, client, owner, tenant, [{"name": "Alpha", "url": f"{url}/alpha"}])
    sid = schedule_id(tenant, "competitor-insight-weekly")
    try:
        r = await http.post(f"/v1/tenants/{tenant}/capabilities/competitor-insight", headers=owner, json={})
        assert r.status_code == 202, r.text
        result = await client.get_workflow_handle_for(TenantCapabilitiesWorkflow.run, r.json()["workflow_id"]).result()
        assert [(c.schedule_id, c.change) for c in result.schedules] == [(sid, "create")]
        view = (await http.get(f"/v1/schedules/{sid}", headers=owner)).json()
        assert (view["capability"], view["workflow_type"], view["paused"]) == (
            "competitor-insight", "CompetitorInsight", False)
        assert (view["spec"]["cron"], view["spec"]["time_zone"], view["spec"]["jitter_seconds"]) == (
            ["0 8 * * 1"], "Europe/Paris", 1800)
        desc = await client.get_schedule_handle(sid).describe()
        # In Temporal: the workflow, in the tenant's time zone, with no competitors in its input (the settings').
        assert (desc.schedule.action.workflow, desc.schedule.spec.time_zone_name) == (  # type: ignore[attr-defined]
            "CompetitorInsight", "Europe/Paris")
        assert next_mondays(desc.info.next_action_times)

        # Two weeks as the schedule would have run them (an admin's backfill, one run after the other).
        start = datetime(2026, 1, 1, tzinfo=timezone.utc)  # a Thursday: Mondays 5 and 12 follow
        r = await http.post(f"/v1/schedules/{sid}/backfill", headers=tokens.admin(), json={
            "start": start.isoformat(), "end": (start + timedelta(weeks=2)).isoformat(), "overlap": "buffer_all"})
        assert r.status_code == 202, r.text

        async def two_done() -> list[str]:
            query = (f"BizTenantId = '{tenant}' AND BizCapability = 'competitor-insight' "
                     "AND ExecutionStatus = 'Completed'")
            runs = sorted([w.id async for w in client.list_workflows(query)])
            assert len(runs) == 2, runs
            return runs

        runs = await assert_eventually(two_done, timeout=120, interval=0.3)
        assert [r.split("weekly-")[1][:10] for r in runs] == ["2026-01-05", "2026-01-12"]
        rows = await db.fetch("SELECT id, workflow_id, subject, body FROM reports WHERE tenant_id = $1 ORDER BY id",
                              tenant)
        assert [r["workflow_id"] for r in rows] == runs
        week1, week2 = (json.loads(r["body"]) if isinstance(r["body"], str) else r["body"] for r in rows)
        assert [p["amount"] for p in week1["competitors"][0]["prices"]] == ["49.00"]
        assert week1["shift"]["first_run"] is True
        assert (week2["shift"]["first_run"], week2["shift"]["previous_workflow_id"]) == (False, runs[0])
        assert week2["shift"]["competitors"][0]["price_changes"] == []
    finally:
        if await describe_or_none(client, sid) is not None:
            await client.get_schedule_handle(sid).delete()


async def test_a_run_without_competitors_fails_saying_so(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool,
) -> None:
    tenant = await new_tenant(db)
    owner = tokens.client(tenant)
    r = await http.post("/v1/workflows/competitor-insight", headers=owner, json={"tenant_id": tenant})
    assert r.status_code == 202, r.text

    async def failed() -> dict:
        view = (await http.get(f"/v1/workflows/{r.json()['workflow_id']}", headers=owner)).json()
        assert view["status"] == "FAILED", view
        return view

    view = await assert_eventually(failed, timeout=60, interval=0.2)
    assert "watches no competitors" in json.dumps(view)
    assert await db.fetchval("SELECT count(*) FROM reports WHERE tenant_id = $1", tenant) == 0


async def test_an_unreachable_competitor_is_reported_and_the_others_go_on(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, site: tuple[Site, str],
) -> None:
    app, url = site
    app.pages = {"/alpha": (200, product_page("Alpha Kitchen", [("Alpha Blender", "49.00")]))}
    tenant = await new_tenant(db)
    owner = tokens.client(tenant)
    r = await http.post("/v1/workflows/competitor-insight", headers=owner, json={
        "tenant_id": tenant, "competitors": [{"name": "Down", "url": "http://127.0.0.1:1/shop"},
                                             {"name": "Alpha", "url": f"{url}/alpha"}]})
    assert r.status_code == 202, r.text
    result = (await completed(http, owner, r.json()["workflow_id"]))["result"]
    assert (result["unreachable"], result["prices"]) == (["Down"], 1)
    body = await db.fetchval("SELECT body FROM reports WHERE id = $1", result["report_id"])
    body = json.loads(body) if isinstance(body, str) else body
    down, alpha = body["competitors"]
    assert (down["ok"], down["prices"], down["extracted_by"]) == (False, [], "none") and "Connect" in down["error"]
    assert [p["amount"] for p in alpha["prices"]] == ["49.00"]
