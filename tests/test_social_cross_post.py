"""Social Cross-Poster on the running platform (dev server, real workers, sandbox social tools,
offline provider), and the social sandbox tools answering as the real APIs do.

- one post to four platforms: each version checked (X's length with the link at 23, hashtags,
  Instagram's link dropped), all published, one outbox row per platform, usage rows and their
  Lago events; a rate-limited platform (LinkedIn refusing twice) is retried alone;
- a platform that refuses for good (a suspended X account): the others publish, the result says
  which failed and why;
- bad input answers 400 naming the field, another tenant 404, and nothing starts;
- the tools: ids in each platform's shape, duplicate content, invalid media, rate limits as a
  retryable error with the server's delay, metrics growing with time, delete.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx
    import pytest
    from temporalio.client import Client
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.lago import USAGE_METRIC_CODE, ReportUsage, UsageReport
    from activities.mcp import RATE_LIMITED, TOOL_ERROR, UNAVAILABLE, CallToolRequest, CallToolResult, MCPActivities
    from activities.usage import BudgetStatus, CheckBudget
    from agents.types import LlmCall, LlmStepRequest, LlmStepResult
    from core.names import AGENTS_QUEUE, INTEGRATIONS_QUEUE, WORKFLOWS_QUEUE
    from sandboxes.lago import LagoState
    from sandboxes.mcp.social import engagement
    from tests.conftest import Tokens, assert_eventually, unique
    from tests.support import record_history
    from workers.main import WORKFLOW_FAILURE_TYPES
    from workflows.agent_loop import AgentLoopWorkflow
    from workflows.social_cross_post import CrossPostInput, SocialCrossPostWorkflow
    from workflows.social_posts import PUBLISH_RETRY, REPUBLISH_AFTER, fit_post, platform_length

LONG = ("Our spring menu is here: wild garlic soup, rhubarb tart and a new sourdough with toasted seeds, "
        "baked every morning from flour milled ten miles away. Come early on Saturday for the first loaves, "
        "stay for coffee, and tell us which one you want us to keep on the menu all year round.")
LINK = "https://bakery.example/spring-menu"
MEDIA = ["https://cdn.bakery.example/spring.jpg"]


async def finished(http: httpx.AsyncClient, headers: dict[str, str], wf_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=headers)).json()
        assert view["status"] == "COMPLETED", view
        return view

    return await assert_eventually(done, timeout=90, interval=0.2)


async def attempts_by_platform(client: Client, wf_id: str) -> dict[str, int]:
    """How many attempts each platform's publish activity took (from the workflow's history)."""
    scheduled: dict[int, str] = {}
    attempts: dict[str, int] = {}
    async for e in client.get_workflow_handle(wf_id).fetch_history_events():
        if e.HasField("activity_task_scheduled_event_attributes"):
            attrs = e.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "mcp.call_tool":
                args = (await client.data_converter.decode(attrs.input.payloads))[0]
                if args.get("tool") == "publish_social_post":
                    scheduled[e.event_id] = args["arguments"]["platform"]
        elif e.HasField("activity_task_started_event_attributes"):
            attrs = e.activity_task_started_event_attributes
            if attrs.scheduled_event_id in scheduled:
                attempts[scheduled[attrs.scheduled_event_id]] = attrs.attempt
    return attempts


async def test_one_post_goes_to_four_platforms_checked_and_a_rate_limited_one_is_retried_alone(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, lago_state: LagoState, client: Client,
) -> None:
    tenant = unique("bakery")
    owner = tokens.client(tenant)
    r = await http.post("/v1/workflows/social-cross-post", headers=owner, json={
        "tenant_id": tenant, "text": LONG, "link": LINK, "media_urls": MEDIA,
        "hashtags": ["#SpringMenu", "sourdough", "#Bakery", "local_food"],
        "platforms": ["facebook", "instagram", "linkedin", "x"],
        "pages": {"linkedin": "sandbox-rate-limit-2", "x": "rosebakery"}, "key": "spring-menu"})
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    assert wf_id == f"{tenant}:social-cross-post:spring-menu"
    view = await finished(http, owner, wf_id)
    await record_history(client.get_workflow_handle(wf_id), "social-cross-post")
    result = view["result"]
    assert (result["status"], result["offline"], result["failed"]) == ("published", True, [])
    posts = {p["platform"]: p for p in result["posts"]}
    assert set(posts) == {"facebook", "instagram", "linkedin", "x"}

    # Each version as its platform takes it: X within 280 with the link in the text and 2 hashtags;
    # Facebook and LinkedIn with the link as the post's link; Instagram without it, and saying so.
    x = posts["x"]
    assert platform_length("x", x["text"]) <= 280 and LINK in x["text"] and x["link"] is None
    assert x["hashtags"] == ["#SpringMenu", "#sourdough"] and any("at most 2" in f for f in x["fixes"])
    assert posts["facebook"]["link"] == LINK == posts["linkedin"]["link"]
    assert LINK not in posts["instagram"]["text"] and posts["instagram"]["link"] is None
    assert any("instagram captions have no clickable links" in f for f in posts["instagram"]["fixes"])
    # The client's hashtags first, then the writer's suggestions, at most LinkedIn's 5.
    tags = posts["linkedin"]["hashtags"]
    assert tags[:4] == ["#SpringMenu", "#sourdough", "#Bakery", "#local_food"] and len(tags) <= 5

    # Ids and URLs in each platform's shape, one outbox row per platform.
    assert posts["linkedin"]["post_id"].startswith("urn:li:share:")
    assert posts["x"]["url"] == f"https://x.com/rosebakery/status/{posts['x']['post_id']}"
    assert "_" in posts["facebook"]["post_id"] and posts["instagram"]["post_id"].isdigit()
    r = await http.get("/v1/outbox", params={"tool": "publish_social_post"}, headers=owner)
    rows = {i["arguments"]["platform"]: i for i in r.json()["items"] if i["workflow_id"] == wf_id}
    assert set(rows) == set(posts)
    assert rows["x"]["arguments"]["text"] == x["text"] and rows["x"]["response"]["post_id"] == x["post_id"]

    # LinkedIn refused twice (rate limited) and went through on its third attempt; the others once.
    assert await attempts_by_platform(client, wf_id) == {"facebook": 1, "instagram": 1, "linkedin": 3, "x": 1}

    # The writer's calls: usage rows, billed to Lago one event each.
    usage = await db.fetch("SELECT agent, idempotency_key, reported_to_lago_at, workflow_id FROM llm_usage "
                           "WHERE workflow_id = $1 OR starts_with(workflow_id, $1 || ':')", wf_id)
    assert usage and {u["agent"] for u in usage} == {"social-writer"}
    assert all(u["reported_to_lago_at"] is not None for u in usage)
    events = [e for e in lago_state.events_of(tenant, USAGE_METRIC_CODE)
              if e["properties"]["workflow_id"] in {u["workflow_id"] for u in usage}]
    assert sorted(e["transaction_id"] for e in events) == sorted(u["idempotency_key"] for u in usage)


async def test_a_platform_that_refuses_for_good_fails_alone_and_the_result_says_why(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client,
) -> None:
    tenant = unique("florist")
    owner = tokens.client(tenant)
    r = await http.post("/v1/workflows/social-cross-post", headers=owner, json={
        "tenant_id": tenant, "text": "Peonies are back this week.", "platforms": ["x", "linkedin", "facebook"],
        "pages": {"x": "sandbox-suspended"}})
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    result = (await finished(http, owner, wf_id))["result"]
    assert (result["status"], result["failed"], sorted(result["published"])) == ("partial", ["x"],
                                                                                  ["facebook", "linkedin"])
    failed = next(p for p in result["posts"] if p["platform"] == "x")
    assert "suspended" in failed["error"] and failed["error_type"] == TOOL_ERROR and failed["post_id"] is None
    # Refused for good: tried once, no second round.
    assert failed["rounds"] == 1 and (await attempts_by_platform(client, wf_id))["x"] == 1
    platforms = await db.fetch("SELECT arguments ->> 'platform' AS p FROM outbox WHERE workflow_id = $1", wf_id)
    assert sorted(r["p"] for r in platforms) == ["facebook", "linkedin"]


@pytest.mark.parametrize(("change", "field"), [
    ({"platforms": ["myspace"]}, "platforms"),
    ({"platforms": []}, "platforms"),
    ({"text": ""}, "text"),
    ({"link": "not a url"}, "link"),
    ({"hashtags": ["two words"]}, "hashtags"),
    ({"platforms": ["instagram"]}, "media_urls"),
    ({"pages": {"x": "has spaces"}}, "pages"),
])
async def test_bad_input_answers_400_naming_the_field_and_starts_nothing(
    http: httpx.AsyncClient, tokens: Tokens, change: dict[str, Any], field: str,
) -> None:
    tenant = unique("cafe")
    body = {"tenant_id": tenant, "text": "Open late on Fridays", "platforms": ["x"], **change}
    r = await http.post("/v1/workflows/social-cross-post", headers=tokens.client(tenant), json=body)
    assert r.status_code == 400 and field in r.text, r.text
    r = await http.get("/v1/workflows", params={"capability": "social-cross-post"}, headers=tokens.client(tenant))
    assert r.json()["items"] == []


async def test_another_tenant_gets_404_and_nothing_starts(http: httpx.AsyncClient, tokens: Tokens) -> None:
    mine, theirs = unique("cafe"), unique("rival")
    r = await http.post("/v1/workflows/social-cross-post", headers=tokens.client(theirs),
                        json={"tenant_id": mine, "text": "Open late on Fridays", "platforms": ["x"]})
    assert r.status_code == 404, r.text
    r = await http.get("/v1/workflows", params={"capability": "social-cross-post"}, headers=tokens.client(mine))
    assert r.json()["items"] == []


# --- the sandbox social tools -------------------------------------------------------------------

async def test_social_tools_answer_like_the_platforms(db: asyncpg.Pool, mcp_sandbox: str) -> None:
    tenant = unique("deli")
    env, mcp = ActivityEnvironment(), MCPActivities(db)

    async def call(tool: str, step: str, **arguments: Any) -> dict[str, Any]:
        req = CallToolRequest(tenant_id=tenant, server="sandbox", tool=tool, arguments=arguments,
                              idempotency_key=f"{tenant}:social:{step}")
        return (await env.run(mcp.call_tool, req)).content

    async def refused(tool: str, step: str, **arguments: Any) -> ApplicationError:
        with pytest.raises(ApplicationError) as caught:
            await call(tool, step, **arguments)
        return caught.value

    try:
        fb = await call("publish_social_post", "fb", platform="facebook", text="Truffle week", page="deli")
        li = await call("publish_social_post", "li", platform="linkedin", text="We are hiring a chef")
        tweet = await call("publish_social_post", "x1", platform="x", text=f"Truffle week {'x' * 240} https://deli.example/{'t' * 100}")
        again = await call("publish_social_post", "x1", platform="x", text=f"Truffle week {'x' * 240} https://deli.example/{'t' * 100}")
        duplicate = await refused("publish_social_post", "x2", platform="x", text=f"Truffle week {'x' * 240} https://deli.example/{'t' * 100}")
        media = await refused("publish_social_post", "ig", platform="instagram", text="Truffles",
                              media_urls=["https://cdn.deli.example/truffles.bmp"])
        limited = await refused("publish_social_post", "rl", platform="x", text="Soon", page="sandbox-rate-limit-1")
        after_wait = await call("publish_social_post", "rl", platform="x", text="Soon", page="sandbox-rate-limit-1")
        early = await call("get_social_post_metrics", "m1", platform="linkedin", post_id=li["post_id"])
        deleted = await call("delete_social_post", "del", platform="linkedin", post_id=li["post_id"])
        gone = await refused("get_social_post_metrics", "m2", platform="linkedin", post_id=li["post_id"])
        unknown = await refused("get_social_post_metrics", "m3", platform="x", post_id="123")
    finally:
        await mcp.aclose()
    page_id, post_id = fb["post_id"].split("_")
    assert fb["url"] == f"https://www.facebook.com/{page_id}/posts/{post_id}" and len(post_id) == 16
    assert li["post_id"].startswith("urn:li:share:") and li["url"].endswith(f"{li['post_id']}/")
    # 13 + 240 + 1 + a 123-character URL counted as 23: within X's 280.
    assert tweet["status"] == "published" and len(tweet["post_id"]) == 19 and again == tweet
    assert duplicate.type == TOOL_ERROR and duplicate.non_retryable and "duplicate content" in duplicate.message
    assert media.non_retryable and "invalid media" in media.message
    assert limited.type == RATE_LIMITED and not limited.non_retryable and "rate limited" in limited.message
    assert limited.next_retry_delay is not None and limited.next_retry_delay.total_seconds() == 1
    assert after_wait["status"] == "published"
    assert early["post_id"] == li["post_id"] and early["impressions"] <= engagement(li["post_id"], 1)["impressions"]
    assert deleted["deleted"] is True and "deleted" in gone.message and "404" in unknown.message


def test_engagement_grows_with_time_and_levels_off() -> None:
    series = [engagement("urn:li:share:7000000000000000001", h) for h in (0, 1, 6, 24, 72, 240, 2400)]
    assert series[0]["impressions"] == 0
    for key in ("impressions", "likes", "comments", "shares", "clicks"):
        values = [s[key] for s in series]
        assert values == sorted(values), key
    assert series[-1]["impressions"] - series[-2]["impressions"] <= 1
    assert engagement("a", 24) == engagement("a", 24) != engagement("b", 24)


# --- the deterministic check ----------------------------------------------------------------

def test_the_check_fits_each_platform_and_names_its_fixes() -> None:
    words = " ".join(f"word{i}" for i in range(120))  # 838 characters
    x = fit_post("x", words, link="https://a.example/" + "p" * 200, hashtags=["#one", "two", "#three", "#"])
    assert x.length <= 280 and x.text.endswith("https://a.example/" + "p" * 200 + " #one #two")
    body = x.text.split(" https://")[0]
    assert body.endswith("…") and body[:-1].split()[-1] in words.split()  # cut between words
    assert any("'#' dropped" in f for f in x.fixes) and any("at most 2" in f for f in x.fixes)
    li = fit_post("linkedin", f"Read it: https://a.example/post {words}", link="https://a.example/post")
    assert li.link == "https://a.example/post" and "https://" not in li.text and li.length <= 3000
    ig = fit_post("instagram", "See https://a.example/x now #cake", link="https://a.example/x",
                  hashtags=[f"t{i}" for i in range(40)])
    assert "https://" not in ig.text and ig.link is None and len(ig.hashtags) == 29  # 30 with #cake
    assert fit_post("facebook", "Short and fine", hashtags=["#ok"]).fixes == []


# --- rounds of retries on the time-skipping server -----------------------------------------------

class Platforms:
    """The publish tool, failing for one platform (an outage: retryable) a number of times."""

    def __init__(self, failing: str, times: int) -> None:
        self.failing, self.times = failing, times
        self.attempts: list[tuple[datetime, str]] = []

    @activity.defn(name="usage.check_budget")
    async def check_budget(self, req: CheckBudget) -> BudgetStatus:
        return BudgetStatus(tenant_id=req.tenant_id, spent_usd=0)  # type: ignore[arg-type]

    @activity.defn(name="agents.llm_step")
    async def llm_step(self, req: LlmStepRequest) -> LlmStepResult:
        final = {p: {"text": f"Fresh bread on {p}", "hashtags": []} for p in (req.output_schema or {})["properties"]}
        return LlmStepResult(final=final, calls=[LlmCall(model="fake", tokens_in=5, tokens_out=5)], provider="fake",
                             offline=True, usage_per_call=True, usage_ids=[7])

    @activity.defn(name="lago.report_usage")
    async def report_usage(self, req: ReportUsage) -> UsageReport:
        return UsageReport(usage_ids=req.usage_ids, sent=len(req.usage_ids), duplicates=0, more=False)

    @activity.defn(name="mcp.call_tool")
    async def call_tool(self, req: CallToolRequest) -> CallToolResult:
        platform = req.arguments["platform"]
        self.attempts.append((activity.info().current_attempt_scheduled_time, platform))
        if platform == self.failing and sum(1 for _, p in self.attempts if p == platform) <= self.times:
            raise ApplicationError(f"MCP server 'sandbox' unavailable: {platform} is down", type=UNAVAILABLE)
        return CallToolResult(server="sandbox", tool=req.tool, content={
            "post_id": f"{platform}-1", "platform": platform, "status": "published",
            "url": f"https://social.example/{platform}/1"})


async def cross_post(env: WorkflowEnvironment, fake: Platforms) -> tuple[Any, datetime]:
    client = env.client
    t0 = await env.get_current_time()
    async with Worker(client, task_queue=WORKFLOWS_QUEUE, workflows=[SocialCrossPostWorkflow, AgentLoopWorkflow],
                      activities=[fake.check_budget], workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES), \
            Worker(client, task_queue=AGENTS_QUEUE, activities=[fake.llm_step]), \
            Worker(client, task_queue=INTEGRATIONS_QUEUE, activities=[fake.call_tool, fake.report_usage]):
        result = await client.execute_workflow(
            SocialCrossPostWorkflow.run,
            CrossPostInput(tenant_id="acme", text="Fresh bread", platforms=["x", "linkedin", "facebook"]),
            id=f"acme:social-cross-post:{uuid.uuid4().hex[:10]}", task_queue=WORKFLOWS_QUEUE)
    return result, t0


async def test_a_platform_down_past_its_retries_is_tried_again_alone_after_a_timer(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    attempts = PUBLISH_RETRY.maximum_attempts
    fake = Platforms("linkedin", attempts + 2)  # the first round's attempts and two of the second's
    result, t0 = await cross_post(time_skipping_env, fake)
    assert result.status == "published" and result.failed == []
    linkedin = next(p for p in result.posts if p.platform == "linkedin")
    assert linkedin.rounds == 2 and linkedin.post_id == "linkedin-1"
    times = [at for at, p in fake.attempts if p == "linkedin"]
    assert len(times) == attempts + 3
    # The second round began after the workflow's timer, not before.
    assert times[attempts] - times[attempts - 1] >= REPUBLISH_AFTER[0]
    # The others went out once, at the start.
    assert sorted(p for _, p in fake.attempts if p != "linkedin") == ["facebook", "x"]


async def test_a_platform_down_for_good_fails_after_its_rounds_and_the_others_are_published(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    fake = Platforms("x", 1000)
    result, t0 = await cross_post(time_skipping_env, fake)
    assert (result.status, result.failed, sorted(result.published)) == ("partial", ["x"], ["facebook", "linkedin"])
    x = next(p for p in result.posts if p.platform == "x")
    assert x.rounds == 3 and x.error_type == UNAVAILABLE and "x is down" in (x.error or "")
    times = [at for at, p in fake.attempts if p == "x"]
    assert len(times) == 3 * PUBLISH_RETRY.maximum_attempts
    assert times[-1] - t0 >= REPUBLISH_AFTER[0] + REPUBLISH_AFTER[1]
