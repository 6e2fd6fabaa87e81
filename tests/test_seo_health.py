"""SEO Health Monitor on the running platform (dev server, real workers, sandbox MCP fetch tool,
offline provider): a scan stores a typed report marked offline; a second scan after the site
changed reports the shift since the first; enabling the capability schedules it weekly and
trigger-now runs it for the tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import msgspec
import pytest_asyncio
from temporalio.client import Client

from activities.lago import USAGE_METRIC_CODE
from sandboxes.lago import LagoState
from schedules.catalogue import schedule_id
from schedules.reconciler import describe_or_none
from tests.conftest import Tokens, assert_eventually, serve, unique
from tests.support import Site, add_tenant, record_history
from core.names import TENANT_ID
from workflows.seo_health import SeoHealthReport
from workflows.tenant_schedules import TenantCapabilitiesWorkflow

FILLER = " ".join(["Fresh flowers arranged by hand every morning for every occasion."] * 12)  # 120 words


def html(title: str, description: str | None, links: list[str], h1: str = "Rosa's Flowers") -> str:
    meta = f'<meta name="description" content="{description}">' if description else ""
    anchors = " ".join(f'<a href="{href}">{href}</a>' for href in links)
    return (f"<html><head><title>{title}</title>{meta}</head>"
            f"<body><h1>{h1}</h1><h2>Bouquets</h2><p>{FILLER}</p>{anchors}</body></html>")


DESCRIPTION = "Hand-tied bouquets, wedding flowers and same-day delivery in Springfield."


@pytest_asyncio.fixture
async def site() -> AsyncIterator[tuple[Site, str]]:
    app = Site(not_found=html("Page not found", None, []))
    async with serve(app) as url:
        yield app, url


async def completed(http: httpx.AsyncClient, headers: dict[str, str], wf_id: str) -> dict:
    async def done() -> dict:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=headers)).json()
        assert view["status"] == "COMPLETED", view
        return view

    return await assert_eventually(done, timeout=60, interval=0.2)


async def test_two_scans_store_reports_and_the_second_names_the_shift(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, lago_state: LagoState, site: tuple[Site, str],
    client: Client,
) -> None:
    app, url = site
    tenant = unique("florist")
    owner = tokens.client(tenant)
    app.pages = {
        "/": (200, html("Rosa's Flowers | Florist in Springfield", DESCRIPTION, ["/bouquets", "/contact", "#top"])),
        "/bouquets": (200, html("Bouquets | Rosa's Flowers", None, ["/contact", "/"])),  # no meta description
        "/contact": (200, html("Contact | Rosa's Flowers", DESCRIPTION, ["/"])),
    }

    # First scan: the home page, then the internal links found on it.
    r = await http.post("/v1/workflows/seo-health", headers=owner,
                        json={"tenant_id": tenant, "website_url": f"{url}/", "key": "week-1"})
    assert r.status_code == 202, r.text
    first_id = r.json()["workflow_id"]
    assert first_id == f"{tenant}:seo-health:week-1"
    view = await completed(http, owner, first_id)
    await record_history(client.get_workflow_handle(first_id), "seo-health")
    first = view["result"]
    assert first["offline"] is True and first["shift"]["first_run"] is True
    assert first["pages"] == [f"{url}/", f"{url}/bouquets", f"{url}/contact"]
    assert view["progress"]["stage"] == "completed" and view["progress"]["pages_fetched"] == 3

    [row] = await db.fetch("SELECT * FROM reports WHERE workflow_id = $1", first_id)
    assert (row["id"], row["tenant_id"], row["kind"], row["subject"], row["offline"]) == (
        first["report_id"], tenant, "seo-health", url, True)
    report = msgspec.convert(row["body"], SeoHealthReport)  # typed: scan, analysis, shift
    assert row["score"] == report.score == first["score"] and 0 <= report.score <= 100
    assert report.analysis.summary.startswith("offline") and report.analysis.recommendations
    assert [(p.path, p.status, p.h1_count, p.word_count >= 100) for p in report.scan.pages] == [
        ("/", 200, 1, True), ("/bouquets", 200, 1, True), ("/contact", 200, 1, True)]
    assert [i.id for i in report.scan.issues] == ["missing-meta-description:/bouquets"]
    assert report.technical_score == first["technical_score"] == 95

    # Usage: one row per LLM call of the analyst, each reported to Lago.
    # The analyst is an agent child (`{id}:agent:…`); each step recorded its call as it returned.
    usage = await db.fetch("SELECT idempotency_key, workflow_id, offline, reported_to_lago_at FROM llm_usage "
                           "WHERE starts_with(workflow_id, $1 || ':agent:') ORDER BY id", first_id)
    assert len(usage) == first["llm_calls"] >= 1
    assert all(u["offline"] and u["reported_to_lago_at"] for u in usage)
    events = [e for e in lago_state.events_of(tenant, USAGE_METRIC_CODE)
              if e["properties"]["workflow_id"] in {u["workflow_id"] for u in usage}]
    assert sorted(e["transaction_id"] for e in events) == sorted(u["idempotency_key"] for u in usage)

    # The site changes: the description is added, /contact is gone, a new page is linked.
    app.pages = {
        "/": (200, html("Rosa's Flowers | Florist in Springfield", DESCRIPTION,
                        ["/bouquets", "/contact", "/weddings"])),
        "/bouquets": (200, html("Bouquets | Rosa's Flowers", DESCRIPTION, ["/contact", "/"])),
        "/weddings": (200, html("Wedding flowers | Rosa's Flowers", DESCRIPTION, ["/"], h1="Weddings")),
    }
    r = await http.post("/v1/workflows/seo-health", headers=owner,
                        json={"tenant_id": tenant, "website_url": url, "key": "week-2"})  # same site, no slash
    assert r.status_code == 202, r.text
    second = (await completed(http, owner, r.json()["workflow_id"]))["result"]
    shift = second["shift"]
    assert shift["first_run"] is False
    assert (shift["previous_workflow_id"], shift["previous_report_id"]) == (first_id, first["report_id"])
    assert (shift["score_before"], shift["score_delta"]) == (first["score"], second["score"] - first["score"])
    assert (shift["technical_score_before"], shift["technical_score_delta"]) == (95, second["technical_score"] - 95)
    assert second["technical_score"] == 100 - 10 - 10 - 10  # /contact 404, and two pages link to it
    assert [i["id"] for i in shift["new_issues"]] == [
        "broken-link:/->/contact", "broken-link:/bouquets->/contact", "http-error:/contact"]
    assert [(i["id"], i["severity"]) for i in shift["resolved_issues"]] == [
        ("missing-meta-description:/bouquets", "medium")]
    changes = {c["path"]: (c["change"], {f["field"]: (f["before"], f["after"]) for f in c["fields"]})
               for c in shift["page_changes"]}
    assert changes["/weddings"] == ("added", {})
    assert changes["/bouquets"] == ("changed", {"meta_description": (None, DESCRIPTION),
                                                "broken_links": ([], ["/contact"])})
    assert changes["/contact"][0] == "changed" and changes["/contact"][1]["status"] == (200, 404)
    stored = await db.fetchval("SELECT body FROM reports WHERE workflow_id = $1", r.json()["workflow_id"])
    assert stored["shift"] == shift


async def test_enabling_seo_health_schedules_it_weekly_and_trigger_now_runs_it(
    http: httpx.AsyncClient, client: Client, db: asyncpg.Pool, tokens: Tokens, fixture_site: str,
) -> None:
    tenant = await add_tenant(db, "bakery")
    sid = schedule_id(tenant, "seo-health-weekly")
    owner = tokens.client(tenant)
    try:
        r = await http.post(f"/v1/tenants/{tenant}/capabilities/seo-health", headers=owner,
                            json={"website_url": f"{fixture_site}/"})
        assert r.status_code == 202, r.text
        caps = client.get_workflow_handle_for(TenantCapabilitiesWorkflow.run, r.json()["workflow_id"])
        result = await caps.result()
        await record_history(caps, "tenant-capabilities")
        assert [(c.schedule_id, c.change) for c in result.schedules] == [(sid, "create")]
        view = (await http.get(f"/v1/schedules/{sid}", headers=owner)).json()
        assert (view["capability"], view["workflow_type"]) == ("seo-health", "SeoHealth")
        assert (view["spec"]["cron"], view["spec"]["time_zone"]) == (["0 7 * * 1"], "Europe/Paris")

        # Clients pause and resume their schedules only; an extra run is an admin's call.
        assert (await http.post(f"/v1/schedules/{sid}/trigger", headers=owner)).status_code == 403
        r = await http.post(f"/v1/schedules/{sid}/trigger", headers=tokens.admin())
        assert r.status_code == 202, r.text

        async def ran() -> list[str]:
            query = f"BizTenantId = '{tenant}' AND BizCapability = 'seo-health' AND ExecutionStatus = 'Completed'"
            runs = [w.id async for w in client.list_workflows(query)]
            assert len(runs) == 1, runs
            return runs

        (run_id,) = await assert_eventually(ran, timeout=60, interval=0.2)
        assert run_id.startswith(f"{tenant}:seo-health:weekly-")
        assert (await client.get_workflow_handle(run_id).describe()).typed_search_attributes.get(TENANT_ID) == tenant
        row = await db.fetchrow("SELECT tenant_id, kind, subject, offline, body FROM reports WHERE workflow_id = $1",
                                run_id)
        assert (row["tenant_id"], row["kind"], row["subject"], row["offline"]) == (tenant, "seo-health",
                                                                                  fixture_site, True)
        # The fixture site's /old-home redirect is not linked; its home page links /about (and /contact, a 404).
        assert [p["path"] for p in row["body"]["scan"]["pages"]] == ["/", "/about", "/contact"]
        assert "broken-link:/->/contact" in [i["id"] for i in row["body"]["scan"]["issues"]]
        recent = (await http.get(f"/v1/schedules/{sid}", headers=owner)).json()["recent_runs"]
        assert [run["workflow_id"] for run in recent] == [run_id]

        r = await http.delete(f"/v1/tenants/{tenant}/capabilities/seo-health", headers=owner)
        assert r.status_code == 202, r.text
        result = await client.get_workflow_handle_for(TenantCapabilitiesWorkflow.run, r.json()["workflow_id"]).result()
        assert [(c.schedule_id, c.change) for c in result.schedules] == [(sid, "delete")]
    finally:
        if await describe_or_none(client, sid) is not None:
            await client.get_schedule_handle(sid).delete()

