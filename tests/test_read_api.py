"""The read APIs over real HTTP, real Postgres and the real Temporal dev server: reports (list,
read, compare), the audit log (list, CSV and JSON export, append-only in the database), usage
and cost, and workflow analytics. Rows are written by the activities that write them in
production (reports.store, audit.write, the usage ledger's insert)."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import httpx
import msgspec
import pytest
from temporalio.client import Client

import api.analytics
from activities.reports import ReportActivities, StoreReport
from activities.tenants import AuditActivities, AuditEntry
from activities.usage import RecordUsage, insert_usage
from agents.types import AreaAudit, CrewReport, Finding
from core.names import CAPABILITY, TENANT_ID, WORKFLOWS_QUEUE
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from tests.conftest import Tokens, assert_eventually, serve, unique
from tests.support import Site
from workflows.onboarding import OnboardingWorkflow
from workflows.seo_health import SeoAnalysis, SeoHealthReport, Shift
from workflows.seo_scan import Issue, PageScan, TechnicalScan


def _seo_body(score: int, technical: int, issues: list[Issue], pages: list[PageScan]) -> dict:
    report = SeoHealthReport(
        website_url="https://shop.example", offline=True, score=score, technical_score=technical,
        scan=TechnicalScan(score=technical, pages=pages, issues=issues),
        analysis=SeoAnalysis(overall_score=score, summary="s", issues=[], recommendations=[], ranking_outlook="ok"),
        shift=Shift(first_run=True))
    return msgspec.to_builtins(report)


def _issue(check: str, page: str, severity: str = "medium") -> Issue:
    return Issue(id=f"{check}:{page}", check=check, severity=severity, page=page, detail=f"{check} on {page}")


def _audit_body(overall: int, seo: int, findings: list[str]) -> dict:
    def area(score: int, details: list[str]) -> AreaAudit:
        return AreaAudit(score=score, findings=[Finding(area="seo", severity="high", detail=d) for d in details],
                         recommendations=[])
    return msgspec.to_builtins(CrewReport(summary="x", overall_score=overall, technical=area(70, []),
                                          seo=area(seo, findings), social=area(50, []), top_recommendations=[]))


async def _store(db: asyncpg.Pool, tenant: str, kind: str, key: str, body: dict, score: int,
                 subject: str = "https://shop.example") -> int:
    stored = await ReportActivities(db).store(StoreReport(
        tenant_id=tenant, kind=kind, workflow_id=f"{tenant}:{kind}:{key}", subject=subject, offline=True,
        body=body, score=score))
    return stored.report_id


# --- reports ------------------------------------------------------------------------------

async def test_reports_list_filter_page_read_and_compare(http: httpx.AsyncClient, tokens: Tokens, db) -> None:  # noqa: ANN001
    tenant, other = unique("rep"), unique("rep")
    home = PageScan(path="/", url="https://shop.example/", status=200, title="Shop", word_count=300)
    first = await _store(db, tenant, "seo-health", "w1", _seo_body(60, 70, [
        _issue("missing-meta-description", "/"), _issue("slow-page", "/about")], [home]), 60)
    second = await _store(db, tenant, "seo-health", "w2", _seo_body(75, 85, [
        _issue("slow-page", "/about"), _issue("broken-link", "/blog", "high")],
        [PageScan(path="/", url="https://shop.example/", status=200, title="Shop | Home", word_count=300),
         PageScan(path="/blog", url="https://shop.example/blog", status=200)]), 75)
    audit = await _store(db, tenant, "presence-audit", "a1", _audit_body(55, 40, ["no sitemap"]), 55)
    theirs = await _store(db, other, "seo-health", "w1", _seo_body(10, 10, [], [home]), 10)
    me = tokens.client(tenant)

    # The tenant's client sees its three reports, newest first, and none of the other tenant's.
    r = await http.get("/v1/reports", headers=me)
    assert r.status_code == 200, r.text
    assert [i["id"] for i in r.json()["items"]] == [audit, second, first]
    # Filters: kind, capability (of the writing workflow), subject.
    r = await http.get("/v1/reports", params={"kind": "seo-health"}, headers=me)
    assert [i["id"] for i in r.json()["items"]] == [second, first]
    assert r.json()["items"][0]["capability"] == "seo-health" and r.json()["items"][0]["score"] == 75
    r = await http.get("/v1/reports", params={"capability": "presence-audit"}, headers=me)
    assert [i["id"] for i in r.json()["items"]] == [audit]
    r = await http.get("/v1/reports", params={"subject": "https://elsewhere.example"}, headers=me)
    assert r.json()["items"] == []
    # The period: everything is from today; a period ending an hour ago has nothing.
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    r = await http.get("/v1/reports", params={"until": past, "since": "2020-01-01T00:00:00Z"}, headers=me)
    assert r.status_code == 200 and r.json()["items"] == []

    # Cursor pages: two, then one, then none; the cursor is bound to its filters.
    r = await http.get("/v1/reports", params={"limit": 2}, headers=me)
    page1 = r.json()
    assert [i["id"] for i in page1["items"]] == [audit, second] and page1["next_cursor"]
    r = await http.get("/v1/reports", params={"limit": 2, "cursor": page1["next_cursor"]}, headers=me)
    assert [i["id"] for i in r.json()["items"]] == [first] and r.json()["next_cursor"] is None
    r = await http.get("/v1/reports", params={"limit": 2, "kind": "seo-health", "cursor": page1["next_cursor"]},
                       headers=me)
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "cursor"
    tampered = page1["next_cursor"][:-2] + ("AA" if not page1["next_cursor"].endswith("AA") else "BB")
    r = await http.get("/v1/reports", params={"limit": 2, "cursor": tampered}, headers=me)
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "cursor"
    # Another caller cannot reuse my cursor.
    r = await http.get("/v1/reports", params={"limit": 2, "cursor": page1["next_cursor"]},
                       headers=tokens.client(tenant, sub="someone-else"))
    assert r.status_code == 400

    # One report, with its body.
    r = await http.get(f"/v1/reports/{second}", headers=me)
    assert r.status_code == 200 and r.json()["body"]["technical_score"] == 85

    # Another tenant's report, by id, by filter or in a comparison: 404, never 403.
    assert (await http.get(f"/v1/reports/{theirs}", headers=me)).status_code == 404
    assert (await http.get("/v1/reports", params={"tenant_id": other}, headers=me)).status_code == 404
    assert (await http.get(f"/v1/reports/{first}/compare/{theirs}", headers=me)).status_code == 404
    assert (await http.get(f"/v1/reports/{first}", headers=tokens.client(other))).status_code == 404
    # Platform staff see every tenant's; finance too.
    r = await http.get("/v1/reports", params={"tenant_id": other}, headers=tokens.finance())
    assert [i["id"] for i in r.json()["items"]] == [theirs]
    assert (await http.get(f"/v1/reports/{theirs}", headers=tokens.admin())).status_code == 200

    # Compare: score deltas, findings new and resolved by id, page changes.
    r = await http.get(f"/v1/reports/{first}/compare/{second}", headers=me)
    assert r.status_code == 200, r.text
    cmp = r.json()
    assert cmp["kind"] == "seo-health" and cmp["same_subject"] and cmp["findings_compared"]
    assert cmp["score_delta"] == 15
    assert {s["name"]: s["delta"] for s in cmp["scores"]} == {"score": 15, "technical_score": 15}
    assert [f["id"] for f in cmp["new_findings"]] == ["broken-link:/blog"]
    assert [f["id"] for f in cmp["resolved_findings"]] == ["missing-meta-description:/"]
    changes = {c["path"]: c for c in cmp["page_changes"]}
    assert changes["/blog"]["change"] == "added"
    assert changes["/"]["fields"] == [{"field": "title", "before": "Shop", "after": "Shop | Home"}]

    # Presence audits compare by area scores and findings.
    later = await _store(db, tenant, "presence-audit", "a2", _audit_body(70, 65, ["thin content"]), 70)
    cmp = (await http.get(f"/v1/reports/{audit}/compare/{later}", headers=me)).json()
    assert {s["name"]: s["delta"] for s in cmp["scores"]} == {"score": 15, "seo": 25}
    assert [f["detail"] for f in cmp["new_findings"]] == ["thin content"]
    assert [f["detail"] for f in cmp["resolved_findings"]] == ["no sitemap"]

    # Two kinds do not compare: 400 naming the parameter.
    r = await http.get(f"/v1/reports/{first}/compare/{audit}", headers=me)
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "other_id"



def _page(title: str, description: str | None, links: list[str]) -> str:
    meta = f'<meta name="description" content="{description}">' if description else ""
    words = " ".join(["Fresh bread baked by hand every morning for the whole neighbourhood."] * 12)
    anchors = " ".join(f'<a href="{href}">{href}</a>' for href in links)
    return f"<html><head><title>{title}</title>{meta}</head><body><h1>{title}</h1><p>{words}</p>{anchors}</body></html>"


async def test_comparing_two_real_seo_scans_gives_the_monitors_own_shift(
    http: httpx.AsyncClient, tokens: Tokens,
) -> None:
    """Two SEO Health Monitor runs on the real platform; the API's comparison of their reports
    names the same changes as the second run's own shift."""
    tenant = unique("bakery")
    owner = tokens.client(tenant)
    began = datetime.now(timezone.utc).isoformat()
    site = Site()
    about = "Sourdough and rye baked daily in Springfield since 1998."
    async with serve(site) as url:
        results = []
        for week, pages in (("w1", {"/": (200, _page("Bakery", about, ["/bread"])),
                                    "/bread": (200, _page("Bread", None, ["/"]))}),
                            ("w2", {"/": (200, _page("Bakery", about, ["/bread", "/cakes"])),
                                    "/bread": (200, _page("Bread", about, ["/"])),
                                    "/cakes": (200, _page("Cakes", about, ["/gone"]))})):
            site.pages = pages
            r = await http.post("/v1/workflows/seo-health", headers=owner,
                                json={"tenant_id": tenant, "website_url": url, "key": week})
            assert r.status_code == 202, r.text

            async def done(wf_id: str = r.json()["workflow_id"]) -> dict:
                view = (await http.get(f"/v1/workflows/{wf_id}", headers=owner)).json()
                assert view["status"] == "COMPLETED", view
                return view["result"]

            results.append(await assert_eventually(done, timeout=60, interval=0.2))
    first, second = results
    listed = (await http.get("/v1/reports", params={"kind": "seo-health"}, headers=owner)).json()["items"]
    assert [i["id"] for i in listed] == [second["report_id"], first["report_id"]]

    r = await http.get(f"/v1/reports/{first['report_id']}/compare/{second['report_id']}", headers=owner)
    assert r.status_code == 200, r.text
    cmp, shift = r.json(), second["shift"]
    assert cmp["findings_compared"] and cmp["same_subject"]
    assert [f["id"] for f in cmp["new_findings"]] == [i["id"] for i in shift["new_issues"]]
    assert [f["id"] for f in cmp["resolved_findings"]] == [i["id"] for i in shift["resolved_issues"]] \
        == ["missing-meta-description:/bread"]
    assert cmp["page_changes"] == shift["page_changes"]
    assert {c["path"]: c["change"] for c in cmp["page_changes"]}["/cakes"] == "added"
    scores = {s["name"]: s for s in cmp["scores"]}
    assert cmp["score_delta"] == shift["score_delta"]
    assert scores["score"]["after"] == second["score"] and scores["score"]["before"] == first["score"]
    assert scores.get("technical_score", {"delta": 0})["delta"] == shift["technical_score_delta"]

    # Analytics count the two runs of the capability, not the agent loops they ran as children.
    async def counted() -> None:
        for who in (owner, tokens.admin()):
            r = await http.get("/v1/analytics/workflows", params={"tenant_id": tenant}, headers=who)
            assert [(d["capability"], d["started"], d["completed"]) for d in r.json()["days"]] == \
                [("seo-health", 2, 2)], r.json()
        # Staff across every tenant: the same two runs since this test began (children left out).
        r = await http.get("/v1/analytics/workflows", params={"since": began, "capability": "seo-health"},
                           headers=tokens.admin())
        assert sum(d["started"] for d in r.json()["days"]) == 2, r.json()
        r = await http.get("/v1/analytics/workflows", params={"since": began}, headers=tokens.admin())
        assert sum(d["started"] for d in r.json()["days"]) == 2, r.json()

    await assert_eventually(counted, timeout=20)


async def test_report_filters_bad_values_are_400_naming_the_parameter(http: httpx.AsyncClient, tokens: Tokens) -> None:
    admin = tokens.admin()
    for params, name in (({"kind": "Not A Kind"}, "kind"), ({"limit": 0}, "limit"), ({"since": "yesterday"}, "since"),
                         ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
                         ({"cursor": "!!"}, "cursor"), ({"cursor": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, "cursor")):
        r = await http.get("/v1/reports", params=params, headers=admin)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["invalid_params"][0]["name"] == name, r.json()
    assert (await http.get("/v1/reports/0", headers=admin)).status_code == 400
    assert (await http.get("/v1/reports/999999999", headers=admin)).status_code == 404


# --- audit log ----------------------------------------------------------------------------

async def _audit(db: asyncpg.Pool, tenant: str, n: int, actor: str, action: str, wf: str | None = None) -> None:
    writer = AuditActivities(db)
    for i in range(n):
        await writer.write(AuditEntry(idempotency_key=f"{tenant}:{action}:{actor}:{i}", tenant_id=tenant, actor=actor,
                                      action=action, workflow_id=wf, details={"n": i, "note": "comma, \"quote\""}))


async def test_audit_log_lists_filters_pages_and_exports(http: httpx.AsyncClient, tokens: Tokens, db) -> None:  # noqa: ANN001
    tenant, other = unique("aud"), unique("aud")
    wf = f"{tenant}:campaign:spring"
    await _audit(db, tenant, 3, "owner@shop", "approval.decided", wf)
    await _audit(db, tenant, 2, "system", "tenant.onboarded")
    await _audit(db, other, 1, "owner@other", "approval.decided")
    me = tokens.client(tenant)

    r = await http.get("/v1/audit-log", headers=me)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 5 and {i["tenant_id"] for i in items} == {tenant}
    assert [i["id"] for i in items] == sorted((i["id"] for i in items), reverse=True)
    r = await http.get("/v1/audit-log", params={"action_prefix": "approval."}, headers=me)
    assert [i["details"]["n"] for i in r.json()["items"]] == [2, 1, 0]
    r = await http.get("/v1/audit-log", params={"actor": "system"}, headers=me)
    assert {i["action"] for i in r.json()["items"]} == {"tenant.onboarded"}
    r = await http.get("/v1/audit-log", params={"workflow_id": wf, "action": "approval.decided"}, headers=me)
    assert len(r.json()["items"]) == 3
    # Pages of two: 2 + 2 + 1.
    seen, cursor = [], None
    for _ in range(3):
        r = await http.get("/v1/audit-log", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=me)
        seen += [i["id"] for i in r.json()["items"]]
        cursor = r.json()["next_cursor"]
    assert cursor is None and len(seen) == len(set(seen)) == 5
    # Another tenant: 404; admins see it.
    assert (await http.get("/v1/audit-log", params={"tenant_id": other}, headers=me)).status_code == 404
    assert (await http.get("/v1/audit-log/export.csv", params={"tenant_id": other}, headers=me)).status_code == 404
    r = await http.get("/v1/audit-log", params={"tenant_id": other}, headers=tokens.admin())
    assert [i["actor"] for i in r.json()["items"]] == ["owner@other"]
    r = await http.get("/v1/audit-log", params={"action_prefix": "a b"}, headers=me)
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "action_prefix"

    # CSV: a header and one row per entry, oldest first; details as JSON text, quoting intact.
    r = await http.get("/v1/audit-log/export.csv", headers=me)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 5 and [int(x["id"]) for x in rows] == sorted(seen)
    assert json.loads(rows[0]["details"]) == {"n": 0, "note": "comma, \"quote\""}
    # JSON: the same entries as an array.
    r = await http.get("/v1/audit-log/export.json", params={"action_prefix": "approval."}, headers=me)
    assert r.status_code == 200
    assert [e["details"]["n"] for e in r.json()] == [0, 1, 2]
    assert (await http.get("/v1/audit-log/export.json", headers=tokens.client(unique("none")))).json() == []


async def test_a_big_export_streams_every_row(http: httpx.AsyncClient, tokens: Tokens, db) -> None:  # noqa: ANN001
    tenant = unique("big")
    n = 2500  # more than two export batches
    await db.executemany(
        "INSERT INTO audit_log (idempotency_key, tenant_id, actor, action, details) VALUES ($1, $2, 'system', "
        "'bulk.test', $3)", [(f"{tenant}:{i}", tenant, {"i": i}) for i in range(n)])
    async with http.stream("GET", "/v1/audit-log/export.json", params={"tenant_id": tenant},
                           headers=tokens.admin()) as r:
        assert r.status_code == 200
        assert "content-length" not in r.headers  # streamed, not built in memory first
        body = b"".join([chunk async for chunk in r.aiter_bytes()])
    entries = json.loads(body)
    assert [e["details"]["i"] for e in entries] == list(range(n))
    r = await http.get("/v1/audit-log/export.csv", params={"tenant_id": tenant}, headers=tokens.admin())
    assert len(r.text.splitlines()) == n + 1


async def test_the_database_refuses_to_change_or_delete_audit_rows(db) -> None:  # noqa: ANN001
    tenant = unique("ro")
    await _audit(db, tenant, 1, "owner@shop", "approval.decided")
    with pytest.raises(asyncpg.PostgresError, match="append-only: UPDATE refused"):
        await db.execute("UPDATE audit_log SET actor = 'someone else' WHERE tenant_id = $1", tenant)
    with pytest.raises(asyncpg.PostgresError, match="append-only: DELETE refused"):
        await db.execute("DELETE FROM audit_log WHERE tenant_id = $1", tenant)
    with pytest.raises(asyncpg.PostgresError, match="append-only: TRUNCATE refused"):
        await db.execute("TRUNCATE audit_log")
    row = await db.fetchrow("SELECT actor, action FROM audit_log WHERE tenant_id = $1", tenant)
    assert dict(row) == {"actor": "owner@shop", "action": "approval.decided"}
    # A retried write (same idempotency key) is still answered with the first row.
    receipt = await AuditActivities(db).write(AuditEntry(
        idempotency_key=f"{tenant}:approval.decided:owner@shop:0", tenant_id=tenant, actor="x", action="y"))
    assert not receipt.written


# --- usage and cost -----------------------------------------------------------------------

async def test_usage_and_cost_grouped_over_a_period(http: httpx.AsyncClient, tokens: Tokens, db) -> None:  # noqa: ANN001
    tenant, other = unique("use"), unique("use")
    calls = [
        (tenant, "campaign", "copywriter", "gpt-4o-mini", 1000, 500, "openai"),
        (tenant, "campaign", "copywriter", "gpt-4o-mini", 2000, 1000, "openai"),
        (tenant, "seo-health", "seo-analyst", "gpt-4o", 1000, 100, "openai"),
        (tenant, "seo-health", "seo-analyst", "offline", 10, 10, "offline"),
        (other, "campaign", "copywriter", "gpt-4o", 1_000_000, 0, "openai"),
    ]
    for i, (t, cap, agent, model, tin, tout, provider) in enumerate(calls):
        await insert_usage(db, RecordUsage(idempotency_key=f"{t}:{cap}:k:llm:{i}", tenant_id=t, agent=agent,
                                           model=model, provider=provider, tokens_in=tin, tokens_out=tout,
                                           workflow_id=f"{t}:{cap}:k"))
    # A call of last year is outside the default period (the last 30 days).
    await insert_usage(db, RecordUsage(idempotency_key=f"{tenant}:old", tenant_id=tenant, agent="copywriter",
                                       model="gpt-4o-mini", provider="openai", tokens_in=5, tokens_out=5,
                                       workflow_id=f"{tenant}:campaign:old"))
    await db.execute("UPDATE llm_usage SET created_at = now() - interval '400 days' WHERE idempotency_key = $1",
                     f"{tenant}:old")
    me = tokens.client(tenant)

    r = await http.get("/v1/usage", params={"group_by": ["capability", "model"]}, headers=me)
    assert r.status_code == 200, r.text
    body = r.json()
    groups = {(g["capability"], g["model"]): g for g in body["groups"]}
    assert list(groups) == [("campaign", "gpt-4o-mini"), ("seo-health", "gpt-4o"), ("seo-health", "offline")]
    mini = groups[("campaign", "gpt-4o-mini")]
    # gpt-4o-mini: $0.15 / $0.60 per 1M tokens in / out.
    assert (mini["calls"], mini["tokens_in"], mini["tokens_out"]) == (2, 3000, 1500)
    assert Decimal(mini["cost_usd"]) == Decimal("0.001350")
    assert groups[("seo-health", "offline")]["offline_calls"] == 1
    assert groups[("seo-health", "offline")]["cost_usd"] == "0.000000"
    assert mini["tenant_id"] is None and mini["agent"] is None  # not grouped by those
    assert body["totals"]["calls"] == 4 and Decimal(body["totals"]["cost_usd"]) == Decimal("0.001350") + Decimal("0.003500")

    # By agent, filtered to one capability.
    r = await http.get("/v1/usage", params={"group_by": "agent", "capability": "seo-health"}, headers=me)
    assert [(g["agent"], g["calls"]) for g in r.json()["groups"]] == [("seo-analyst", 2)]
    # The period: all of the last 500 days takes in the old call.
    since = (datetime.now(timezone.utc) - timedelta(days=365)).isoformat()
    r = await http.get("/v1/usage", params={"since": since, "group_by": "tenant"}, headers=me)
    assert [(g["tenant_id"], g["calls"]) for g in r.json()["groups"]] == [(tenant, 4)]

    # Paged by group: one at a time, same three groups.
    keys, cursor = [], None
    while True:
        params = {"group_by": ["capability", "model"], "limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await http.get("/v1/usage", params=params, headers=me)).json()
        keys += [(g["capability"], g["model"]) for g in page["groups"]]
        assert page["totals"]["calls"] == 4
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert keys == list(groups)

    # Admins aggregate across tenants; a client naming another tenant gets 404.
    r = await http.get("/v1/usage", params={"group_by": "tenant", "model": "gpt-4o"}, headers=tokens.admin())
    by_tenant = {g["tenant_id"]: g for g in r.json()["groups"]}
    assert by_tenant[other]["cost_usd"] == "2.500000" and by_tenant[tenant]["calls"] == 1
    assert (await http.get("/v1/usage", params={"tenant_id": other}, headers=me)).status_code == 404
    for params, name in (({"group_by": "colour"}, "group_by"), ({"since": "2020-01-01T00:00:00Z"}, "since"),
                         ({"model": "gpt 4"}, "model")):
        r = await http.get("/v1/usage", params=params, headers=me)
        assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == name, r.text


# --- workflow analytics -------------------------------------------------------------------

async def test_workflow_analytics_per_capability_per_day(
    http: httpx.AsyncClient, tokens: Tokens, client: Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = unique("ana")
    onboarding = {"tenant_id": tenant, "name": f"{tenant} Ltd", "owner_email": f"owner@{tenant}.example"}
    r = await http.post("/v1/workflows/onboarding", json=onboarding, headers=tokens.admin())
    assert r.status_code == 202, r.text
    attrs = TypedSearchAttributes([SearchAttributePair(TENANT_ID, tenant), SearchAttributePair(CAPABILITY, "onboarding")])
    # A run whose input does not decode fails at once.
    failing = await client.start_workflow(OnboardingWorkflow.run, {"tenant_id": "NOT A SLUG"}, id=f"{tenant}:onboarding:bad",
                                          task_queue=WORKFLOWS_QUEUE, search_attributes=attrs)
    # Two runs on a queue nobody polls: one stays open, one is terminated.
    await client.start_workflow(OnboardingWorkflow.run, onboarding, id=f"{tenant}:onboarding:open",
                                task_queue=f"nobody-{tenant}", search_attributes=attrs)
    stopped = await client.start_workflow(OnboardingWorkflow.run, onboarding, id=f"{tenant}:onboarding:stop",
                                          task_queue=f"nobody-{tenant}", search_attributes=attrs)
    await stopped.terminate("test")
    with pytest.raises(Exception):
        await failing.result()

    async def day() -> dict:
        r = await http.get("/v1/analytics/workflows", params={"tenant_id": tenant}, headers=tokens.client(tenant))
        assert r.status_code == 200, r.text
        body = r.json()
        assert not body["truncated"] and body["scanned"] == 4
        [stats] = body["days"]
        assert (stats["started"], stats["completed"], stats["failed"], stats["terminated"], stats["running"]) \
            == (4, 1, 1, 1, 1), stats
        return stats

    stats = await assert_eventually(day, timeout=20)
    assert stats["capability"] == "onboarding" and stats["day"] == datetime.now(timezone.utc).date().isoformat()
    assert stats["p50_duration_seconds"] is not None and stats["p50_duration_seconds"] > 0
    assert stats["p95_duration_seconds"] >= stats["p50_duration_seconds"]

    # Another tenant's client: 404 naming the tenant, and nothing of this tenant in its own view.
    stranger = tokens.client(unique("other"))
    assert (await http.get("/v1/analytics/workflows", params={"tenant_id": tenant}, headers=stranger)).status_code == 404
    r = await http.get("/v1/analytics/workflows", headers=stranger)
    assert r.status_code == 200 and r.json()["days"] == []
    # A capability filter that matches nothing, a period in the past: nothing.
    r = await http.get("/v1/analytics/workflows", params={"tenant_id": tenant, "capability": "campaign"},
                       headers=tokens.admin())
    assert r.json()["days"] == [] and r.json()["scanned"] == 0
    # The walk is bounded: past the bound the answer says it is truncated.
    monkeypatch.setattr(api.analytics, "MAX_SCANNED", 2)
    r = await http.get("/v1/analytics/workflows", params={"tenant_id": tenant}, headers=tokens.admin())
    assert r.json()["truncated"] and r.json()["scanned"] == 2
    r = await http.get("/v1/analytics/workflows", params={"since": "2020-01-01T00:00:00Z"}, headers=tokens.admin())
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "since"
    await client.get_workflow_handle(f"{tenant}:onboarding:open").terminate("test over")


async def test_periods_at_the_edge_of_the_calendar_are_400_not_500(http: httpx.AsyncClient, tokens: Tokens) -> None:
    admin = tokens.admin()
    for path in ("/v1/usage", "/v1/analytics/workflows", "/v1/reports", "/v1/audit-log"):
        r = await http.get(path, params={"until": "0001-01-01T00:00:00Z"}, headers=admin)
        assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "until", (path, r.text)
        r = await http.get(path, params={"since": "2026-01-01T00:00:00-01:00", "until": "2026-01-01T00:00:00Z"},
                           headers=admin)
        assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "since", (path, r.text)


async def test_time_filters_take_dates_and_times_only_as_the_document_says(http: httpx.AsyncClient,
                                                                           tokens: Tokens) -> None:
    """A bare number is no date-time in the OpenAPI document, so it is no time here either (not
    Unix time); a text shaped like one that is no real date is a 400 too, in words."""
    admin = tokens.admin()
    spec = (await http.get("/schema/openapi.json")).json()
    since = next(p for p in spec["paths"]["/v1/audit-log"]["get"]["parameters"] if p["name"] == "since")
    assert since["schema"]["format"] == "date-time"
    for path in ("/v1/usage", "/v1/analytics/workflows", "/v1/reports", "/v1/audit-log", "/v1/audit-log/export.csv",
                 "/v1/tenants/demo/webhook-deliveries"):
        for value in ("0", "1700000000", "2026-02-31T00:00:00Z", "2026-11-26"):
            r = await http.get(path, params={"since": value}, headers=admin)
            assert r.status_code == 400, (path, value, r.text)
            problem = r.json()
            assert problem["invalid_params"][0]["name"] == "since", (path, value, problem)
            assert "RFC 3339" in problem["detail"] and "regex" not in problem["detail"], problem
        recent = (datetime.now(timezone.utc) - timedelta(days=2)).replace(microsecond=0)
        for value in (recent.isoformat(), recent.strftime("%Y-%m-%dT%H:%M:%SZ"), recent.strftime("%Y-%m-%d %H:%M:%S")):
            r = await http.get(path, params={"since": value}, headers=admin)
            assert r.status_code == 200, (path, value, r.text)


async def test_listings_filtered_by_another_tenant_answer_404_like_every_tenant_route(
    http: httpx.AsyncClient, tokens: Tokens
) -> None:
    mine, theirs = unique("mine"), unique("theirs")
    client, partner = tokens.client(mine), tokens.partner([mine])
    for path, who in (("/v1/workflows", client), ("/v1/pending-actions", client),
                      ("/v1/pending-actions/stream", client), ("/v1/workflows", partner),
                      ("/v1/pending-actions", partner), ("/v1/admin/approvals", partner)):
        r = await http.get(path, params={"tenant_id": theirs}, headers=who)
        assert r.status_code == 404 and r.json()["detail"] == f"tenant {theirs!r} not found", (path, r.text)
        r = await http.get(path, params={"tenant_id": mine}, headers=who) if path != "/v1/pending-actions/stream" \
            else None
        assert r is None or (r.status_code == 200 and r.json()["items"] == []), (path, r and r.text)
