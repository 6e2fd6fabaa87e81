"""SEO Content Pipeline.

Over HTTP on the real workers (dev server, sandbox MCP server, offline crew): started by the
client, the post in Pending Actions, an edit (title and publish time) → the post created in
WordPress with the edited title and published; request changes → a second draft; reject →
nothing in WordPress; usage rows and Lago events; the report; bad input, another tenant.

The tenants' WordPress is the WordPress sandbox (sandboxes/wordpress.py: the REST API's
endpoints the connector uses, as WordPress answers them) on loopback, connected per tenant.

On the time-skipping server (days pass in milliseconds), with fakes registered under the real
activity names: the post published at the chosen time, the time moved later and earlier, the
publish canceled, and the updates' refusals.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx
    import msgspec
    import pytest
    import pytest_asyncio
    from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.content import ContentPolicy, TenantRef
    from activities.lago import USAGE_METRIC_CODE, ReportUsage, UsageReport
    from activities.mcp.activities import CallToolRequest, CallToolResult
    from activities.reports import ReportStored, StoreReport
    from activities.usage import BudgetStatus, CheckBudget
    from agents.types import ContentDraft, ContentOutcome, ContentRequest, LlmCall, PostLink, PostSection
    from core.names import AGENTS_QUEUE, INTEGRATIONS_QUEUE
    from sandboxes.lago import LagoState
    from tests.conftest import Tokens, assert_eventually, unique
    from sandboxes.wordpress import WordPressState
    from tests.support import add_tenant, connect_wordpress, record_history, wordpress_site, workflow_exists
    from workers.main import WORKFLOW_FAILURE_TYPES
    from workflows.content_pipeline import ContentProgress, SeoContentWorkflow
    from workflows.content_post import CancelPublish, ContentInput, ReschedulePublish


@pytest_asyncio.fixture(scope="module")
async def wordpress() -> AsyncIterator[WordPressState]:
    """The tenants' WordPress site."""
    async with wordpress_site() as state:
        yield state


async def connected_tenant(db: asyncpg.Pool, site: WordPressState, prefix: str) -> str:
    """A tenant whose WordPress is ``site``."""
    tenant = await add_tenant(db, prefix)
    await connect_wordpress(db, tenant, site)
    return tenant


def body(tenant: str, site: str, **kw: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"tenant_id": tenant, "topic": f"Sourdough starter at home {uuid.uuid4().hex[:6]}",
                              "keywords": ["sourdough starter", "bread"], "website_url": f"{site}/",
                              "audience": "home bakers", "max_rounds": 2}
    fields.update(kw)
    return fields


async def start(http: httpx.AsyncClient, tokens: Tokens, tenant: str, site: str, **kw: Any) -> str:
    r = await http.post("/v1/workflows/seo-content", json=body(tenant, site, **kw), headers=tokens.client(tenant))
    assert r.status_code == 202, r.text
    return r.json()["workflow_id"]


async def pending(http: httpx.AsyncClient, tokens: Tokens, tenant: str, wf_id: str, request_id: str) -> dict[str, Any]:
    async def listed() -> dict[str, Any]:
        r = await http.get("/v1/pending-actions", headers=tokens.client(tenant))
        mine = [a for a in r.json()["items"] if a["workflow_id"] == wf_id and a["request_id"] == request_id]
        assert mine, r.json()
        return mine[0]

    action = await assert_eventually(listed, timeout=90)
    return (await http.get(f"/v1/pending-actions/{action['action_id']}", headers=tokens.client(tenant))).json()


async def decide(http: httpx.AsyncClient, tokens: Tokens, tenant: str, action: dict[str, Any], **decision: Any) -> None:
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", json=decision,
                        headers=tokens.client(tenant))
    assert r.status_code == 200, r.text


async def finished(http: httpx.AsyncClient, headers: dict[str, str], wf_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=headers)).json()
        assert view["status"] == "COMPLETED", view
        return view

    return await assert_eventually(done, timeout=90, interval=0.2)


async def test_the_client_edits_the_title_and_time_and_the_post_is_published_in_wordpress(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, lago_state: LagoState, client: Client,
    fixture_site: str, wordpress: WordPressState,
) -> None:
    tenant = await connected_tenant(db, wordpress, "bakery")
    owner = tokens.client(tenant)
    wf_id = await start(http, tokens, tenant, fixture_site)
    action = await pending(http, tokens, tenant, wf_id, "post-1")
    request = action["request"]
    assert request["title"].startswith("Review the blog post") and "last round" not in request["title"]
    assert set(request["allowed"]) == {"approve", "reject", "request_changes", "edit"}
    assert set(request["edit_schema"]["properties"]) == {"title", "body", "publish_at"}
    proposal = request["proposal"]
    # Internal links: pages of the tenant's site that were fetched and answered (its /contact is a 404).
    links = [link["url"] for link in proposal["internal_links"]]
    assert len(links) >= 2 and set(links) <= {f"{fixture_site}/", f"{fixture_site}/about"}
    assert all(f'href="{u}"' in proposal["body"] for u in links) and "<h2>" in proposal["body"]
    assert proposal["keywords"] == ["sourdough starter", "bread"]
    assert proposal["slug"] and proposal["slug"] == proposal["slug"].lower() and " " not in proposal["slug"]
    # The technical check (the SEO scan's): offline text is thin, and it says so.
    check = proposal["check"]
    assert 0 <= check["score"] < 100 and "thin-content" in {i["check"] for i in check["issues"]}

    # Until approved there is no publish time to move.
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await client.get_workflow_handle(wf_id).execute_update(
            SeoContentWorkflow.reschedule_publish, ReschedulePublish(publish_at=datetime.now(timezone.utc) + timedelta(days=1)))
    assert isinstance(refused.value.cause, ApplicationError) and refused.value.cause.type == "NotScheduled"

    publish_at = datetime.now(timezone.utc) + timedelta(seconds=2)
    await decide(http, tokens, tenant, action, decision="edit", comment="a warmer title",
                 edits={"title": "Sourdough starter: a beginner's guide", "publish_at": publish_at.isoformat()})
    view = await finished(http, owner, wf_id)
    await record_history(client.get_workflow_handle(wf_id), "seo-content")
    result = view["result"]
    assert result["status"] == "published" and result["offline"] is True and result["reviewed"] is True
    assert result["post"]["title"] == "Sourdough starter: a beginner's guide"
    assert result["wordpress"]["status"] == "publish"
    assert datetime.fromisoformat(result["published_at"]) >= publish_at
    # The edited title is checked again: the main keyword is in it now.
    assert "keyword-not-in-title" not in {i["check"] for i in result["check"]["issues"]}

    # In WordPress: the post with the edited title, published, its slug, tags and excerpt as proposed
    # (the body ends with the comment that marks it as this run's draft).
    post = wordpress.posts[result["wordpress"]["post_id"]]
    assert (post["title"], post["status"], post["slug"]) == (
        "Sourdough starter: a beginner's guide", "publish", proposal["slug"])
    assert post["content"].startswith(proposal["body"] + "\n<!-- bizosaas-post-")
    assert result["wordpress"]["content"] == proposal["body"] and post["excerpt"] == proposal["meta_description"]
    tags = {wordpress.terms[t]["name"] for t in post["tags"]}
    assert tags == {"sourdough starter", "bread"}
    # The effects recorded as every tool's: the draft, then its publish.
    rows = await db.fetch("SELECT tool, arguments, response FROM outbox WHERE workflow_id = $1 "
                          "AND tool LIKE '%wordpress%' ORDER BY id", wf_id)
    assert [r["tool"] for r in rows] == ["create_wordpress_post", "publish_wordpress_post"]
    draft, published = rows
    assert draft["arguments"]["title"] == "Sourdough starter: a beginner's guide"
    assert draft["arguments"]["status"] == "draft" and draft["arguments"]["tags"] == ["sourdough starter", "bread"]
    assert published["arguments"]["post_id"] == draft["response"]["post_id"] == result["wordpress"]["post_id"]

    # The report, through the API.
    r = await http.get("/v1/reports", params={"kind": "seo-content"}, headers=owner)
    assert [(i["workflow_id"], i["id"]) for i in r.json()["items"]] == [(wf_id, result["report_id"])]

    # Usage: one row per crew call (researcher, writer, editor), each a Lago event.
    usage = await db.fetch("SELECT agent, idempotency_key, reported_to_lago_at FROM llm_usage WHERE workflow_id = $1",
                           wf_id)
    assert len(usage) == result["llm_calls"] == 3 and {u["agent"] for u in usage} == {"seo-content-crew"}
    assert all(u["reported_to_lago_at"] for u in usage)
    events = {e["transaction_id"] for e in lago_state.events_of(tenant, USAGE_METRIC_CODE)}
    assert {u["idempotency_key"] for u in usage} <= events


async def test_request_changes_gives_a_second_draft_then_reject_posts_nothing(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, fixture_site: str, wordpress: WordPressState,
) -> None:
    tenant = await connected_tenant(db, wordpress, "florist")
    posts_before = len(wordpress.posts)
    wf_id = await start(http, tokens, tenant, fixture_site)
    first = await pending(http, tokens, tenant, wf_id, "post-1")
    await decide(http, tokens, tenant, first, decision="request_changes", comment="mention rye flour")
    second = await pending(http, tokens, tenant, wf_id, "post-2")
    # max_rounds 2: the second draft is the last, and says so.
    assert "last round" in second["request"]["title"]
    assert set(second["request"]["allowed"]) == {"approve", "reject", "edit"}
    await decide(http, tokens, tenant, second, decision="reject", comment="not this month")
    result = (await finished(http, tokens.client(tenant), wf_id))["result"]
    assert result["status"] == "rejected" and result["rounds"] == 2 and result["wordpress"] is None
    assert [d["decision"] for d in result["decisions"]] == ["request_changes", "reject"]
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE workflow_id = $1 AND tool LIKE '%wordpress%'",
                             wf_id) == 0
    assert len(wordpress.posts) == posts_before
    # The owner was told by email of each draft to review.
    mails = await db.fetch("SELECT arguments FROM outbox WHERE workflow_id = $1 AND tool = 'send_email'", wf_id)
    assert len(mails) >= 2 and all(m["arguments"]["to"] == ["owner@example.com"] for m in mails)
    # Both drafts were written by the crew and billed.
    keys = await db.fetch("SELECT idempotency_key, reported_to_lago_at FROM llm_usage WHERE workflow_id = $1", wf_id)
    assert len(keys) == 6 and all(k["reported_to_lago_at"] for k in keys)
    assert len({k["idempotency_key"].split(":")[-3] for k in keys}) == 2  # one crew activity per draft


async def test_without_a_wordpress_site_the_post_ends_before_the_crew_and_the_review(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, fixture_site: str,
    wordpress: WordPressState,
) -> None:
    tenant = await add_tenant(db, "bistro")
    owner = tokens.client(tenant)
    topic = f"Rye bread for beginners {uuid.uuid4().hex[:6]}"
    wf_id = await start(http, tokens, tenant, fixture_site, topic=topic)
    view = await finished(http, owner, wf_id)
    await record_history(client.get_workflow_handle(wf_id), "seo-content-wordpress-not-connected")
    result = view["result"]
    assert (result["status"], result["post"], result["wordpress"], result["llm_calls"]) == (
        "wordpress_not_connected", None, None, 0)
    assert f"/v1/tenants/{tenant}/connections/wordpress" in result["detail"]
    assert view["progress"]["stage"] == "completed" and "wordpress_not_connected" in view["progress"]["steps_done"]
    # Nothing written, nothing to review, nothing billed; the report says why.
    assert (await http.get("/v1/pending-actions", headers=owner)).json()["items"] == []
    assert await db.fetchval("SELECT count(*) FROM llm_usage WHERE workflow_id = $1", wf_id) == 0
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE workflow_id = $1", wf_id) == 0
    r = await http.get("/v1/reports", params={"kind": "seo-content"}, headers=owner)
    assert [i["workflow_id"] for i in r.json()["items"]] == [wf_id]

    # The topic stays free. Started again with still no site, it runs again under the same id.
    handle = client.get_workflow_handle(wf_id)
    first_run = (await handle.describe()).run_id
    assert await start(http, tokens, tenant, fixture_site, topic=topic) == wf_id
    assert (await finished(http, owner, wf_id))["result"]["status"] == "wordpress_not_connected"
    assert (await handle.describe()).run_id != first_run
    # Once a site is connected, it writes the post and asks for its review; another start of the
    # topic while that run is open is refused.
    await connect_wordpress(db, tenant, wordpress)
    assert await start(http, tokens, tenant, fixture_site, topic=topic) == wf_id
    r = await http.post("/v1/workflows/seo-content", json=body(tenant, fixture_site, topic=topic), headers=owner)
    assert r.status_code == 409 and r.json()["code"] == "already_started", r.text
    action = await pending(http, tokens, tenant, wf_id, "post-1")
    assert action["workflow_id"] == wf_id
    await decide(http, tokens, tenant, action, decision="reject", comment="not this month")
    assert (await finished(http, owner, wf_id))["result"]["status"] == "rejected"


async def test_bad_input_names_the_field_and_another_tenant_sees_nothing(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, fixture_site: str,
    wordpress: WordPressState,
) -> None:
    tenant = await connected_tenant(db, wordpress, "cafe")
    owner = tokens.client(tenant)
    for field, value in (("keywords", []), ("website_url", "not a url"), ("max_rounds", 9),
                         ("publish_at", "2030-01-01T09:00:00")):  # a time without its offset
        b = body(tenant, fixture_site, key=f"bad-{field.replace('_', '-')}", **{field: value})
        r = await http.post("/v1/workflows/seo-content", json=b, headers=owner)
        assert r.status_code == 400, r.text
        assert field in {p["name"] for p in r.json()["invalid_params"]}, r.text
        assert not await workflow_exists(client, f"{tenant}:seo-content:{b['key']}")
    other = unique("rival")
    r = await http.post("/v1/workflows/seo-content", json=body(tenant, fixture_site, key="theirs"),
                        headers=tokens.client(other))
    assert r.status_code == 404, r.text
    assert not await workflow_exists(client, f"{tenant}:seo-content:theirs")

    wf_id = await start(http, tokens, tenant, fixture_site)
    action = await pending(http, tokens, tenant, wf_id, "post-1")
    for method, path in (("GET", f"/v1/workflows/{wf_id}"), ("GET", f"/v1/pending-actions/{action['action_id']}"),
                         ("POST", f"/v1/pending-actions/{action['action_id']}/decision")):
        r = await http.request(method, path, json={"decision": "approve"} if method == "POST" else None,
                               headers=tokens.client(other))
        assert r.status_code == 404, (method, path, r.text)
    r = await http.post(f"/v1/workflows/{wf_id}/cancel", headers=owner)
    assert r.status_code == 202, r.text


async def scheduled_over_http(http: httpx.AsyncClient, tokens: Tokens, tenant: str, site: str) -> str:
    """A post approved for a month from now, drafted in WordPress and waiting for its time."""
    later = (datetime.now(timezone.utc) + timedelta(days=30)).isoformat()
    wf_id = await start(http, tokens, tenant, site, publish_at=later)
    action = await pending(http, tokens, tenant, wf_id, "post-1")
    assert action["request"]["proposal"]["publish_at"] == later
    await decide(http, tokens, tenant, action, decision="approve")

    async def waiting() -> None:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.client(tenant))).json()
        assert view["progress"]["stage"] == "scheduled", view

    await assert_eventually(waiting, timeout=60)
    return wf_id


async def test_the_client_moves_the_publish_time_with_a_command(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, fixture_site: str, wordpress: WordPressState,
) -> None:
    tenant = await connected_tenant(db, wordpress, "deli")
    owner = tokens.client(tenant)
    wf_id = await scheduled_over_http(http, tokens, tenant, fixture_site)
    url = f"/v1/workflows/{wf_id}/commands/reschedule-publish"
    r = await http.post(url, json={"publish_at": "2020-01-01T09:00:00+00:00"}, headers=owner)
    assert r.status_code == 409 and r.json()["code"] == "PublishTimeInPast", r.text
    r = await http.post(url, json={"publish_at": "2030-01-01T09:00:00"}, headers=owner)  # no offset
    assert r.status_code == 400 and "publish_at" in {p["name"] for p in r.json()["invalid_params"]}, r.text
    r = await http.post(url, json={"publish_at": "2030-01-01T09:00:00+00:00"}, headers=tokens.client(unique("rival")))
    assert r.status_code == 404, r.text
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE workflow_id = $1 AND tool = 'publish_wordpress_post'",
                             wf_id) == 0

    soon = datetime.now(timezone.utc) + timedelta(seconds=2)
    r = await http.post(url, json={"publish_at": soon.isoformat()}, headers=owner)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "scheduled" and r.json()["requested_by"] == f"owner@{tenant}"
    result = (await finished(http, owner, wf_id))["result"]
    assert result["status"] == "published" and datetime.fromisoformat(result["published_at"]) >= soon
    assert len(result["schedule_changes"]) == 1 and f"owner@{tenant}" in result["schedule_changes"][0]
    tools = [r["tool"] for r in await db.fetch("SELECT tool FROM outbox WHERE workflow_id = $1 "
                                               "AND tool LIKE '%wordpress%' ORDER BY id", wf_id)]
    assert tools == ["create_wordpress_post", "publish_wordpress_post"]
    assert wordpress.posts[result["wordpress"]["post_id"]]["status"] == "publish"
    # Published: nothing more to move.
    r = await http.post(url, json={"publish_at": "2030-01-01T09:00:00+00:00"}, headers=owner)
    assert r.status_code == 409 and r.json()["code"] == "not_running", r.text


async def test_the_client_cancels_the_publish_and_the_post_stays_a_draft(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, fixture_site: str, wordpress: WordPressState,
) -> None:
    tenant = await connected_tenant(db, wordpress, "grocer")
    owner = tokens.client(tenant)
    wf_id = await scheduled_over_http(http, tokens, tenant, fixture_site)
    r = await http.post(f"/v1/workflows/{wf_id}/commands/cancel-publish", json={"reason": "wrong season"},
                        headers=owner)
    assert r.status_code == 200 and r.json()["status"] == "canceled", r.text
    result = (await finished(http, owner, wf_id))["result"]
    assert result["status"] == "publish_canceled" and result["wordpress"]["status"] == "draft"
    tools = [r["tool"] for r in await db.fetch("SELECT tool FROM outbox WHERE workflow_id = $1 "
                                               "AND tool LIKE '%wordpress%' ORDER BY id", wf_id)]
    assert tools == ["create_wordpress_post"]
    assert wordpress.posts[result["wordpress"]["post_id"]]["status"] == "draft"


# --- the publish time, on the time-skipping server ------------------------------------------

SITE = "https://bakery.example"


def _page(url: str) -> dict[str, Any]:
    path = url.removeprefix(SITE) or "/"
    links = [{"href": f"{SITE}/about", "internal": True}] if path == "/" else []
    return {"url": url, "ok": True, "status_code": 200, "title": "About us" if path == "/about" else "Home",
            "headings": [{"level": 1, "text": "Bakery"}], "links": links, "word_count": 300}


class Fakes:
    """The pipeline's activities, under their real names; the WordPress calls recorded with the
    server's time at which each was scheduled."""

    def __init__(self) -> None:
        self.tools: list[tuple[str, dict[str, Any], datetime]] = []
        self.reports: list[StoreReport] = []
        self.crew: list[ContentRequest] = []
        self.site_categories = ["Baking", "Bread"]  # the categories list_wordpress_terms answers
        self.terms_error: str | None = None  # the error type list_wordpress_terms fails with
        self.policy_categories = ["Baking"]  # the tenant's seo-content setting

    @activity.defn(name="usage.check_budget")
    async def check_budget(self, req: CheckBudget) -> BudgetStatus:
        return BudgetStatus(tenant_id=req.tenant_id, spent_usd=Decimal(0))

    @activity.defn(name="agents.content_crew")
    async def content_crew(self, req: ContentRequest) -> ContentOutcome:
        self.crew.append(req)
        draft = ContentDraft(title="Sourdough starter made simple", slug="sourdough-starter",
                             meta_description="How to keep a sourdough starter alive: feeding, flour, temperature.",
                             outline=["Feeding"], intro="A sourdough starter is flour and water.",
                             sections=[PostSection(heading="Feeding", paragraphs=["Feed it daily."])],
                             conclusion="Visit us.", internal_links=[PostLink(url=f"{SITE}/about", anchor="About")],
                             categories=["bread", "Pastry"])
        return ContentOutcome(draft=draft, offline=True, provider="offline",
                              calls=[LlmCall(model="m", tokens_in=1, tokens_out=1)], usage_per_call=True, usage_ids=[7])

    @activity.defn(name="mcp.call_tool")
    async def call_tool(self, req: CallToolRequest) -> CallToolResult:
        when = activity.info().current_attempt_scheduled_time
        if req.tool == "fetch_web_page" and req.arguments["url"].endswith("/refused"):
            raise ApplicationError(f"URL refused (private address): {req.arguments['url']}", type="MCPToolError",
                                   non_retryable=True)
        if req.tool == "fetch_web_page":
            return CallToolResult(server="fake", tool=req.tool, content=_page(req.arguments["url"]))
        if req.tool == "list_wordpress_terms" and self.terms_error:
            raise ApplicationError(f"fake/list_wordpress_terms: {self.terms_error}", type=self.terms_error,
                                   non_retryable=True)
        if req.tool == "list_wordpress_terms":
            return CallToolResult(server="fake", tool=req.tool, content={"terms": [
                {"id": i, "name": n, "slug": n.lower()} for i, n in enumerate(self.site_categories, 1)]})
        self.tools.append((req.tool, req.arguments, when))
        status = "draft" if req.tool == "create_wordpress_post" else "publish"
        return CallToolResult(server="fake", tool=req.tool, content={
            "post_id": 42, "site_url": SITE, "status": status, "link": f"{SITE}/?p=42"})

    @activity.defn(name="lago.report_usage")
    async def report_usage(self, req: ReportUsage) -> UsageReport:
        return UsageReport(usage_ids=list(req.usage_ids), sent=len(req.usage_ids), duplicates=0, more=False)

    @activity.defn(name="reports.store")
    async def store(self, req: StoreReport) -> ReportStored:
        self.reports.append(req)
        return ReportStored(report_id=len(self.reports), created=True)

    @activity.defn(name="content.policy")
    async def policy(self, req: TenantRef) -> ContentPolicy:
        return ContentPolicy(tenant_id=req.tenant_id, publish_delay_minutes=90, categories=list(self.policy_categories))

    def published(self) -> list[datetime]:
        return [when for tool, _, when in self.tools if tool == "publish_wordpress_post"]


@pytest.fixture
async def fakes(time_skipping_env: WorkflowEnvironment):  # noqa: ANN201
    f = Fakes()
    env = time_skipping_env
    common = dict(workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES)
    async with (Worker(env.client, task_queue=TIMESKIP_QUEUE, workflows=[SeoContentWorkflow],
                       activities=[f.check_budget, f.report_usage, f.store, f.policy], **common),
                Worker(env.client, task_queue=AGENTS_QUEUE, activities=[f.content_crew]),
                Worker(env.client, task_queue=INTEGRATIONS_QUEUE, activities=[f.call_tool, f.report_usage])):
        yield f


TIMESKIP_QUEUE = "content-timeskip"


async def autopilot(env: WorkflowEnvironment, publish_at: datetime | None) -> WorkflowHandle:
    """A post that skips the review (the blog engine's autopilot), to publish at ``publish_at``."""
    inp = ContentInput(tenant_id="acme", topic="Sourdough starter", keywords=["sourdough starter"],
                       website_url=f"{SITE}/", publish_at=publish_at, skip_review=True,
                       sources=[f"{SITE}/guide", f"{SITE}/refused"])
    handle = await env.client.start_workflow(SeoContentWorkflow.run, inp, id=f"acme:seo-content:{uuid.uuid4().hex[:12]}",
                                             task_queue=TIMESKIP_QUEUE)

    async def scheduled() -> None:
        progress = await handle.query(SeoContentWorkflow.progress, result_type=ContentProgress)
        assert progress.stage == "scheduled", progress

    await assert_eventually(scheduled)
    return handle


async def test_the_post_is_published_at_the_chosen_time(time_skipping_env: WorkflowEnvironment, fakes: Fakes) -> None:
    env = time_skipping_env
    publish_at = await env.get_current_time() + timedelta(days=3)
    handle = await autopilot(env, publish_at)
    assert [t for t, _, _ in fakes.tools] == ["create_wordpress_post"]
    draft = fakes.tools[0][1]
    assert draft.get("status", "draft") == "draft" and draft["categories"] == ["Baking"] and draft["slug"] == "sourdough-starter"
    await env.sleep(timedelta(days=2))
    assert fakes.published() == []  # two days on: still a draft
    result = await handle.result()
    assert result.status == "published" and result.reviewed is False and result.publish_at == publish_at
    (when,) = fakes.published()
    assert publish_at <= when < publish_at + timedelta(minutes=1)
    assert [r.kind for r in fakes.reports] == ["seo-content"] and fakes.reports[0].subject == "sourdough-starter"
    # The crew read the site's pages and the source the fetch tool read; the refused one is left out.
    (crew,) = fakes.crew
    assert [p.url for p in crew.site_pages] == [f"{SITE}/", f"{SITE}/about"]
    assert [p.url for p in crew.sources] == [f"{SITE}/guide"]
    assert crew.site_categories == ["Baking", "Bread"]


async def test_without_categories_set_the_post_takes_the_site_s_the_crew_chose(
    time_skipping_env: WorkflowEnvironment, fakes: Fakes
) -> None:
    fakes.policy_categories = []
    result = await (await autopilot(time_skipping_env, None)).result()
    # The crew chose "bread" (the site's "Bread") and "Pastry", which the site does not have.
    assert result.status == "published" and fakes.tools[0][1]["categories"] == ["Bread"]


async def test_a_listing_refused_otherwise_goes_on_without_the_site_s_categories(
    time_skipping_env: WorkflowEnvironment, fakes: Fakes
) -> None:
    fakes.policy_categories, fakes.terms_error = [], "MCPToolError"  # e.g. the credentials refused
    result = await (await autopilot(time_skipping_env, None)).result()
    assert result.status == "published" and fakes.crew[0].site_categories == []
    assert fakes.tools[0][1].get("categories", []) == []  # WordPress's default category


async def test_a_tenant_without_wordpress_ends_before_anything_is_written(
    time_skipping_env: WorkflowEnvironment, fakes: Fakes
) -> None:
    fakes.terms_error = "MCPNotConnected"
    inp = ContentInput(tenant_id="acme", topic="Sourdough starter", keywords=["sourdough starter"],
                       website_url=f"{SITE}/")
    handle = await time_skipping_env.client.start_workflow(
        SeoContentWorkflow.run, inp, id=f"acme:seo-content:{uuid.uuid4().hex[:12]}", task_queue=TIMESKIP_QUEUE)
    result = await handle.result()
    assert result.status == "wordpress_not_connected" and result.reviewed is False and result.post is None
    assert result.detail and "/v1/tenants/acme/connections/wordpress" in result.detail
    assert fakes.crew == [] and fakes.tools == []  # nothing written, nothing read, nothing drafted
    assert msgspec.to_builtins(fakes.reports[0].body)["status"] == "wordpress_not_connected"
    progress = await handle.query(SeoContentWorkflow.progress, result_type=ContentProgress)
    assert progress.stage == "completed" and "wordpress_not_connected" in progress.steps_done
    assert progress.detail == result.detail


async def test_without_a_chosen_time_it_publishes_the_tenant_s_delay_after_approval(
    time_skipping_env: WorkflowEnvironment, fakes: Fakes
) -> None:
    env = time_skipping_env
    before = await env.get_current_time()
    result = await (await autopilot(env, None)).result()
    (when,) = fakes.published()
    assert result.status == "published" and before + timedelta(minutes=90) <= when < before + timedelta(minutes=91)


async def test_the_client_moves_the_publish_time_later_then_earlier(
    time_skipping_env: WorkflowEnvironment, fakes: Fakes
) -> None:
    env = time_skipping_env
    t0 = await env.get_current_time()
    handle = await autopilot(env, t0 + timedelta(days=1))
    later = await handle.execute_update(SeoContentWorkflow.reschedule_publish,
                                        ReschedulePublish(publish_at=t0 + timedelta(days=5)))
    assert later.status == "scheduled" and later.publish_at == t0 + timedelta(days=5) and later.post_id == 42
    await env.sleep(timedelta(days=2))
    assert fakes.published() == []  # the first time passed: moved, not published
    earlier = t0 + timedelta(days=3)
    await handle.execute_update(SeoContentWorkflow.reschedule_publish, ReschedulePublish(publish_at=earlier))
    result = await handle.result()
    (when,) = fakes.published()
    assert result.status == "published" and earlier <= when < earlier + timedelta(minutes=1)


async def test_a_time_in_the_past_is_refused_and_a_canceled_publish_leaves_a_draft(
    time_skipping_env: WorkflowEnvironment, fakes: Fakes
) -> None:
    env = time_skipping_env
    t0 = await env.get_current_time()
    handle = await autopilot(env, t0 + timedelta(days=2))
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(SeoContentWorkflow.reschedule_publish,
                                    ReschedulePublish(publish_at=t0 - timedelta(hours=1)))
    assert isinstance(refused.value.cause, ApplicationError) and refused.value.cause.type == "PublishTimeInPast"
    progress = await handle.query(SeoContentWorkflow.progress, result_type=ContentProgress)
    assert progress.publish_at == t0 + timedelta(days=2)  # unchanged

    canceled = await handle.execute_update(SeoContentWorkflow.cancel_publish, CancelPublish(reason="wrong season"))
    assert canceled.status == "canceled"
    with pytest.raises(WorkflowUpdateFailedError):  # closed, or refused as canceled: never published
        await handle.execute_update(SeoContentWorkflow.cancel_publish, CancelPublish())
    result = await handle.result()
    assert result.status == "publish_canceled" and result.wordpress is not None and result.wordpress.status == "draft"
    assert [t for t, _, _ in fakes.tools] == ["create_wordpress_post"]
    assert msgspec.to_builtins(fakes.reports[0].body)["status"] == "publish_canceled"
