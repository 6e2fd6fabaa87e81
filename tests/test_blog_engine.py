"""AI Blog Engine.

Over HTTP on the real workers: the topic plan set through the settings API, a run whose post
waits in the client's Pending Actions (review mode), a run in autopilot that publishes without
it, the plan used up (no child), an empty plan; enabling the capability schedules it weekly
(the spec as the schedules API shows it) and an admin's trigger runs it.

On the time-skipping server, with fakes under the real activity names: weekly runs one after
the other take the plan's topics in order, skipping those already taken; in review mode an
unanswered post expires after its week and its topic is taken all the same.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx
    import msgspec
    import pytest
    from temporalio.client import Client
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.approvals import Notified, Notify
    from activities.content import PlannedTopic, TenantRef, TopicPlan, topic_key
    from activities.notify import Deliver, Delivered
    from activities.tenants import AuditEntry, AuditReceipt
    from core.names import AGENTS_QUEUE, CAPABILITY, INTEGRATIONS_QUEUE, TENANT_ID
    from schedules.catalogue import schedule_id
    from schedules.reconciler import describe_or_none
    from tests.conftest import Tokens, assert_eventually, unique
    from tests.support import add_tenant, record_history
    from sandboxes.wordpress import WordPressState
    from tests.support import connect_wordpress
    from tests.test_content_pipeline import SITE, Fakes, decide, finished, pending, wordpress  # noqa: F401 - fixture
    from workers.main import WORKFLOW_FAILURE_TYPES
    from workflows.blog_engine import BlogEngineInput, BlogEngineWorkflow, next_topic
    from workflows.content_pipeline import SeoContentWorkflow
    from workflows.tenant_schedules import TenantCapabilitiesWorkflow

PLAN = [{"topic": "Sourdough starter basics", "keywords": ["sourdough starter"]},
        {"topic": "Rye bread for beginners", "keywords": ["rye bread", "baking"]}]


def test_the_next_topic_is_the_first_of_the_plan_no_post_took() -> None:
    plan = [PlannedTopic(topic=t["topic"], keywords=t["keywords"]) for t in PLAN]
    assert next_topic(plan, []) == (plan[0], 1)
    # Taken whatever the letter case or punctuation it was written with.
    assert next_topic(plan, [topic_key("SOURDOUGH starter, basics!")]) == (plan[1], 0)
    assert next_topic(plan, [topic_key(t.topic) for t in plan]) == (None, 0)
    assert next_topic(plan + [plan[1]], [topic_key(plan[0].topic)]) == (plan[1], 0)  # listed twice: once


async def tenant_row(db: asyncpg.Pool, prefix: str, site: WordPressState | None = None) -> str:
    """A tenant (its time zone Europe/Paris), its WordPress ``site`` when given."""
    tenant = await add_tenant(db, prefix)
    if site is not None:
        await connect_wordpress(db, tenant, site)
    return tenant


async def put_settings(http: httpx.AsyncClient, client: Client, tokens: Tokens, tenant: str, capability: str,
                       settings: dict[str, Any]) -> None:
    r = await http.put(f"/v1/tenants/{tenant}/settings/{capability}", json=settings, headers=tokens.client(tenant))
    assert r.status_code == 202, r.text
    await client.get_workflow_handle(r.json()["workflow_id"]).result()


async def run_engine(http: httpx.AsyncClient, tokens: Tokens, tenant: str, site: str, key: str) -> str:
    r = await http.post("/v1/workflows/blog-engine", json={"tenant_id": tenant, "website_url": f"{site}/", "key": key},
                        headers=tokens.client(tenant))
    assert r.status_code == 202, r.text
    return r.json()["workflow_id"]


async def test_review_then_autopilot_then_the_plan_is_used_up(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, fixture_site: str,
    wordpress: WordPressState,
) -> None:
    tenant = await tenant_row(db, "bakery", wordpress)
    owner = tokens.client(tenant)
    r = await http.put(f"/v1/tenants/{tenant}/settings/blog-engine", json={"topics": [{"topic": "x"}]}, headers=owner)
    assert r.status_code == 400, r.text  # a topic needs its keywords
    await put_settings(http, client, tokens, tenant, "blog-engine", {"topics": PLAN, "audience": "home bakers"})
    await put_settings(http, client, tokens, tenant, "seo-content", {"publish_delay_minutes": 0})

    # Review mode: the post waits in the client's Pending Actions as any post does.
    first = await run_engine(http, tokens, tenant, fixture_site, "week-1")
    child = f"{tenant}:seo-content:week-1"
    action = await pending(http, tokens, tenant, child, "post-1")
    assert "sourdough starter" in action["request"]["proposal"]["keywords"]
    progress = (await http.get(f"/v1/workflows/{first}", headers=owner)).json()["progress"]
    assert (progress["stage"], progress["topic"], progress["post_workflow_id"]) == (
        "writing_post", "Sourdough starter basics", child)
    await decide(http, tokens, tenant, action, decision="approve")
    result = (await finished(http, owner, first))["result"]
    await record_history(client.get_workflow_handle(first), "blog-engine")
    assert (result["status"], result["topic"], result["autopilot"], result["topics_left"]) == (
        "post_done", "Sourdough starter basics", False, 1)
    assert result["post"]["status"] == "published" and result["post"]["reviewed"] is True
    desc = await client.get_workflow_handle(child).describe()
    assert (desc.typed_search_attributes.get(TENANT_ID), desc.typed_search_attributes.get(CAPABILITY)) == (
        tenant, "seo-content")

    # Autopilot: the next topic, published without a review.
    await put_settings(http, client, tokens, tenant, "blog-engine", {"topics": PLAN, "autopilot": True})
    second = await run_engine(http, tokens, tenant, fixture_site, "week-2")
    result = (await finished(http, owner, second))["result"]
    assert (result["status"], result["topic"], result["autopilot"]) == ("post_done", "Rye bread for beginners", True)
    assert result["post"]["status"] == "published" and result["post"]["reviewed"] is False
    assert result["post"]["decisions"] == []
    rows = await db.fetch("SELECT tool, arguments FROM outbox WHERE workflow_id = $1 ORDER BY id",
                          f"{tenant}:seo-content:week-2")
    assert [r["tool"] for r in rows] == ["create_wordpress_post", "publish_wordpress_post"]
    assert rows[0]["arguments"]["tags"] == ["rye bread", "baking"]
    assert wordpress.posts[result["post"]["wordpress"]["post_id"]]["status"] == "publish"
    # The child's crew calls are the tenant's usage, billed.
    usage = await db.fetch("SELECT reported_to_lago_at FROM llm_usage WHERE workflow_id = $1",
                           f"{tenant}:seo-content:week-2")
    assert len(usage) == 3 and all(u["reported_to_lago_at"] for u in usage)

    # Every topic taken: said, and no child.
    third = await run_engine(http, tokens, tenant, fixture_site, "week-3")
    result = (await finished(http, owner, third))["result"]
    assert result["status"] == "plan_used_up" and result["post_workflow_id"] is None and "2" in result["detail"]
    r = await http.get(f"/v1/workflows/{tenant}:seo-content:week-3", headers=owner)
    assert r.status_code == 404

    # A tenant with no plan: said, and no child.
    empty = await tenant_row(db, "cafe")
    run = await run_engine(http, tokens, empty, fixture_site, "week-1")
    result = (await finished(http, tokens.client(empty), run))["result"]
    assert result["status"] == "no_plan" and result["post_workflow_id"] is None


async def test_without_a_wordpress_site_the_topic_waits_for_one(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, fixture_site: str,
    wordpress: WordPressState,
) -> None:
    tenant = await tenant_row(db, "patisserie")  # no WordPress site yet
    owner = tokens.client(tenant)
    await put_settings(http, client, tokens, tenant, "blog-engine", {"topics": PLAN, "autopilot": True})
    await put_settings(http, client, tokens, tenant, "seo-content", {"publish_delay_minutes": 0})
    first = await run_engine(http, tokens, tenant, fixture_site, "week-1")
    result = (await finished(http, owner, first))["result"]
    assert (result["status"], result["topic"], result["topics_left"]) == (
        "wordpress_not_connected", "Sourdough starter basics", 2)
    assert result["post"]["status"] == "wordpress_not_connected" and result["post"]["llm_calls"] == 0
    assert f"/v1/tenants/{tenant}/connections/wordpress" in result["detail"]

    # Connected: the next run writes the same topic, which the first did not take.
    await connect_wordpress(db, tenant, wordpress)
    second = await run_engine(http, tokens, tenant, fixture_site, "week-2")
    result = (await finished(http, owner, second))["result"]
    assert (result["status"], result["topic"], result["topics_left"]) == ("post_done", "Sourdough starter basics", 1)
    assert result["post"]["status"] == "published"


async def test_bad_input_names_the_field_and_another_tenant_starts_nothing(
    http: httpx.AsyncClient, tokens: Tokens, fixture_site: str,
) -> None:
    tenant = unique("deli")
    r = await http.post("/v1/workflows/blog-engine", json={"tenant_id": tenant, "website_url": "ftp://x", "key": "a1"},
                        headers=tokens.client(tenant))
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "website_url", r.text
    r = await http.post("/v1/workflows/blog-engine", json={"tenant_id": tenant, "website_url": f"{fixture_site}/",
                                                           "key": "a1"}, headers=tokens.client(unique("rival")))
    assert r.status_code == 404, r.text
    assert (await http.get(f"/v1/workflows/{tenant}:blog-engine:a1", headers=tokens.client(tenant))).status_code == 404


async def test_enabling_the_blog_engine_schedules_it_weekly_and_a_trigger_runs_it(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client, fixture_site: str,
    wordpress: WordPressState,
) -> None:
    tenant = await tenant_row(db, "baker", wordpress)
    owner = tokens.client(tenant)
    sid = schedule_id(tenant, "blog-engine-weekly")
    await put_settings(http, client, tokens, tenant, "blog-engine", {"topics": PLAN[:1], "autopilot": True})
    await put_settings(http, client, tokens, tenant, "seo-content", {"publish_delay_minutes": 0})
    try:
        r = await http.post(f"/v1/tenants/{tenant}/capabilities/blog-engine", headers=owner,
                            json={"website_url": f"{fixture_site}/"})
        assert r.status_code == 202, r.text
        result = await client.get_workflow_handle_for(TenantCapabilitiesWorkflow.run, r.json()["workflow_id"]).result()
        assert [(c.schedule_id, c.change) for c in result.schedules] == [(sid, "create")]
        view = (await http.get(f"/v1/schedules/{sid}", headers=owner)).json()
        assert (view["capability"], view["workflow_type"]) == ("blog-engine", "BlogEngine")
        assert view["spec"] == {"cron": ["0 9 * * 2"], "every_seconds": None, "time_zone": "Europe/Paris",
                                "jitter_seconds": 1800, "source": "catalogue"}
        r = await http.post(f"/v1/schedules/{sid}/trigger", headers=tokens.admin())
        assert r.status_code == 202, r.text

        async def ran() -> str:
            query = f"BizTenantId = '{tenant}' AND BizCapability = 'blog-engine' AND ExecutionStatus = 'Completed'"
            runs = [w.id async for w in client.list_workflows(query)]
            assert len(runs) == 1, runs
            return runs[0]

        run_id = await assert_eventually(ran, timeout=90, interval=0.3)
        assert run_id.startswith(f"{tenant}:blog-engine:weekly-")
        result = await client.get_workflow_handle_for(BlogEngineWorkflow.run, run_id).result()
        assert result.status == "post_done" and result.post is not None and result.post.status == "published"
        assert result.post_workflow_id == f"{tenant}:seo-content:{run_id.split(':', 2)[2]}"
    finally:
        if await describe_or_none(client, sid) is not None:
            await client.get_schedule_handle(sid).delete()


# --- weekly runs on the time-skipping server --------------------------------------------------

class EngineFakes(Fakes):
    """The pipeline's fakes, the plan (its ``used``: the topics of the reports stored so far),
    and the approval's notifications and audit."""

    def __init__(self, autopilot: bool) -> None:
        super().__init__()
        self.autopilot = autopilot
        self.notified: list[Notify] = []

    @activity.defn(name="content.topic_plan")
    async def topic_plan(self, req: TenantRef) -> TopicPlan:
        topics = [PlannedTopic(topic=t["topic"], keywords=t["keywords"]) for t in PLAN]
        return TopicPlan(tenant_id=req.tenant_id, topics=topics, autopilot=self.autopilot,
                         used=sorted({r.subject for r in self.reports}))

    @activity.defn(name="approvals.notify")
    async def notify(self, n: Notify) -> Notified:
        self.notified.append(n)
        return Notified(notification_id=len(self.notified), created=True)

    @activity.defn(name="notifications.deliver")
    async def deliver(self, d: Deliver) -> Delivered:
        return Delivered(sent=1)

    @activity.defn(name="audit.write")
    async def audit(self, e: AuditEntry) -> AuditReceipt:
        return AuditReceipt(audit_id=1, written=True)


QUEUE = "blog-engine-timeskip"


async def weekly_runs(env: WorkflowEnvironment, fakes: EngineFakes, weeks: int) -> list[Any]:
    """``weeks`` runs as the schedule starts them, a week apart."""
    f = fakes
    results = []
    async with (Worker(env.client, task_queue=QUEUE, workflows=[BlogEngineWorkflow, SeoContentWorkflow],
                       activities=[f.check_budget, f.report_usage, f.store, f.policy, f.topic_plan, f.notify,
                                   f.deliver, f.audit], workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES),
                Worker(env.client, task_queue=AGENTS_QUEUE, activities=[f.content_crew]),
                Worker(env.client, task_queue=INTEGRATIONS_QUEUE, activities=[f.call_tool, f.report_usage])):
        for week in range(weeks):
            start = await env.get_current_time()
            run_id = f"acme:blog-engine:weekly-{uuid.uuid4().hex[:8]}"
            handle = await env.client.start_workflow(
                BlogEngineWorkflow.run, BlogEngineInput(tenant_id="acme", website_url=f"{SITE}/",
                                                        requested_by="schedule"),
                id=run_id, task_queue=QUEUE)
            results.append(await handle.result())
            gap = start + timedelta(weeks=1) - await env.get_current_time()
            if gap > timedelta(0):
                await env.sleep(gap)
    return results


@pytest.mark.parametrize("autopilot", [True, False])
async def test_weekly_runs_take_the_topics_in_order(time_skipping_env: WorkflowEnvironment, autopilot: bool) -> None:
    fakes = EngineFakes(autopilot)
    first, second, third = await weekly_runs(time_skipping_env, fakes, 3)
    assert [r.topic for r in (first, second)] == [t["topic"] for t in PLAN]
    assert third.status == "plan_used_up" and third.post is None
    if autopilot:
        # Published the tenant's delay after the (skipped) review; nobody was asked.
        assert [r.post.status for r in (first, second)] == ["published", "published"]
        assert len(fakes.published()) == 2 and fakes.notified == []
    else:
        # Nobody reviewed: each post expired after its week, nothing was published, and its
        # topic is taken all the same (the next week writes the next one).
        assert [r.post.status for r in (first, second)] == ["review_expired", "review_expired"]
        assert fakes.published() == [] and [t for t, _, _ in fakes.tools] == []
        assert [n.event for n in fakes.notified] == ["requested", "reminder", "timed_out"] * 2
    assert [r.subject for r in fakes.reports] == [topic_key(t["topic"]) for t in PLAN]
    assert msgspec.to_builtins(first)["post"]["topic"] == PLAN[0]["topic"]
