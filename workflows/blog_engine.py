"""AI Blog Engine (seed §10A): on a per-tenant schedule (weekly), the next topic of the tenant's
topic plan becomes a blog post through the SEO Content Pipeline, run as a child workflow.

1. The plan is read (an activity): the tenant's ``blog-engine`` settings (``topics``: topic and
   keywords each, in the order to write them; ``autopilot``; ``audience`` and ``tone``) and the
   topics the tenant's posts already took (the pipeline's ``seo-content`` reports: one per
   post, whatever its outcome, so a rejected topic is not proposed again; a run that ended
   because no WordPress site is connected takes no topic).
2. The first topic not taken yet goes to the pipeline as a child, id
   ``{tenant}:seo-content:{this run's key}`` (the pipeline's own BizTenantId and BizCapability,
   so its review is in the client's Pending Actions and the API reads it as any post). In
   ``autopilot`` the child skips the review; otherwise it waits for the client.
3. No plan, or every topic taken: the run ends with that said, and no child. A child that ended
   at once because the tenant has no WordPress site connected ends the run
   ``wordpress_not_connected`` (its topic stays the next one).

A run waits for its post (review, publish time); the weekly schedule skips a week while one
still waits (overlap SKIP), so unreviewed posts never pile up.

Workflow id: ``{tenant}:blog-engine:{key}`` from the API; ``{tenant}:blog-engine:weekly-{time}``
from the weekly schedule.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Literal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import msgspec
    from temporalio.common import SearchAttributePair, TypedSearchAttributes
    from activities.content import ContentActivities, PlannedTopic, TenantRef, topic_key
    from core.activity import run_activity
    from core.names import CAPABILITY as CAPABILITY_ATTR
    from core.names import SLUG_PATTERN, TENANT_ID, workflow_id
    from workflows.capability import TENANT_PEOPLE, Capability, ScheduleDecl
    from workflows.content_pipeline import NAME as PIPELINE
    from workflows.content_pipeline import SeoContentWorkflow
    from workflows.content_post import ContentInput, ContentResult
    from workflows.presence_audit import URL_PATTERN
    from workflows.stages import Stages

NAME = "blog-engine"
MAX_TOPICS = 52  # a year of weekly posts

Stage = Literal["started", "reading_plan", "writing_post", "completed", "failed"]
Status = Literal["post_done", "no_plan", "plan_used_up", "wordpress_not_connected"]


class BlogEngineInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    website_url: Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)]  # the tenant's site
    key: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)] | None = None  # business key (default: the day)
    requested_by: str = "system"


class BlogEngineSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The tenant's topic plan (``GET/PUT /v1/tenants/{tenant}/settings/blog-engine``)."""

    topics: Annotated[list[PlannedTopic], msgspec.Meta(max_length=MAX_TOPICS)] = []  # written in this order
    autopilot: bool = False  # True: posts are published without the client's review
    audience: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    tone: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class BlogEngineResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    status: Status
    detail: str
    topic: str | None = None
    keywords: list[str] = []
    autopilot: bool = False
    post_workflow_id: str | None = None
    post: ContentResult | None = None  # the pipeline's result
    topics_left: int = 0  # after this one


class BlogEngineProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    topic: str | None = None
    post_workflow_id: str | None = None
    updated_at: datetime | None = None


def next_topic(topics: list[PlannedTopic], used: list[str]) -> tuple[PlannedTopic | None, int]:
    """The first topic of the plan no post took yet, and how many are left after it."""
    taken = set(used)
    fresh = [t for t in topics if topic_key(t.topic) not in taken]
    fresh = [t for i, t in enumerate(fresh) if topic_key(t.topic) not in {topic_key(u.topic) for u in fresh[:i]}]
    return (fresh[0], len(fresh) - 1) if fresh else (None, 0)


@workflow.defn(name="BlogEngine")
class BlogEngineWorkflow(Stages):
    def __init__(self) -> None:
        Stages.__init__(self)
        self._topic: str | None = None
        self._child_id: str | None = None

    @workflow.run
    async def run(self, inp: BlogEngineInput) -> BlogEngineResult:
        return await self.failed_on_error(self._run(inp))

    async def _run(self, inp: BlogEngineInput) -> BlogEngineResult:
        await self.stage("reading_plan")
        plan = await run_activity(ContentActivities.topic_plan, TenantRef(tenant_id=inp.tenant_id))
        if not plan.topics:
            self._enter("completed", "plan_read")
            return BlogEngineResult(tenant_id=inp.tenant_id, status="no_plan", autopilot=plan.autopilot,
                                    detail="The tenant's topic plan is empty: set topics in the blog-engine settings.")
        topic, left = next_topic(plan.topics, plan.used)
        if topic is None:
            self._enter("completed", "plan_read")
            return BlogEngineResult(tenant_id=inp.tenant_id, status="plan_used_up", autopilot=plan.autopilot,
                                    detail=f"Every topic of the plan ({len(plan.topics)}) has a post already: "
                                           "add topics to the blog-engine settings.")
        self._topic = topic.topic

        await self.stage("writing_post", "plan_read")
        wf_id = workflow.info().workflow_id
        self._child_id = workflow_id(inp.tenant_id, PIPELINE, wf_id.split(":", 2)[-1])
        post: ContentResult = await workflow.execute_child_workflow(
            SeoContentWorkflow.run,
            ContentInput(tenant_id=inp.tenant_id, topic=topic.topic, keywords=list(topic.keywords),
                         website_url=inp.website_url, audience=plan.audience, tone=plan.tone,
                         skip_review=plan.autopilot, requested_by=f"{NAME}:{inp.requested_by}"[:200]),
            id=self._child_id,
            task_queue=workflow.info().task_queue,
            # The post is the tenant's like any other: its review is in Pending Actions, the API reads it.
            search_attributes=TypedSearchAttributes([SearchAttributePair(TENANT_ID, inp.tenant_id),
                                                     SearchAttributePair(CAPABILITY_ATTR, PIPELINE)]),
        )
        if post.status == "wordpress_not_connected":
            self._enter("completed", "wordpress_not_connected")
            return BlogEngineResult(
                tenant_id=inp.tenant_id, status="wordpress_not_connected", topic=topic.topic,
                keywords=list(topic.keywords), autopilot=plan.autopilot, post_workflow_id=self._child_id, post=post,
                topics_left=left + 1,
                detail=f"No post on '{topic.topic}': the tenant has no WordPress site connected (connect one with "
                       f"PUT /v1/tenants/{inp.tenant_id}/connections/wordpress); the topic stays the next one.")
        self._enter("completed", "post_done")
        return BlogEngineResult(tenant_id=inp.tenant_id, status="post_done", topic=topic.topic,
                                keywords=list(topic.keywords), autopilot=plan.autopilot,
                                post_workflow_id=self._child_id, post=post, topics_left=left,
                                detail=f"The post on '{topic.topic}' ended {post.status}.")

    @workflow.query(name="progress")
    def progress(self) -> BlogEngineProgress:
        return BlogEngineProgress(stage=self._stage, steps_done=list(self._steps), topic=self._topic,  # type: ignore[arg-type]
                                  post_workflow_id=self._child_id, updated_at=self._updated_at)


CAPABILITY = Capability(
    name=NAME,
    workflow=BlogEngineWorkflow,
    input_type=BlogEngineInput,
    business_key=lambda inp: inp.key or f"run-{date.today():%Y%m%d}",
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=TENANT_PEOPLE,
    cancel_roles=TENANT_PEOPLE,
    summary="AI Blog Engine: each week the next topic of the tenant's plan becomes a blog post through the SEO "
            "Content Pipeline (a child run); in autopilot it is published without review.",
    settings=BlogEngineSettings,
    schedules=(
        ScheduleDecl(
            name="blog-engine-weekly",
            key="weekly",
            input=lambda t: BlogEngineInput(tenant_id=t.tenant_id, website_url=t.website_url or "",
                                            requested_by="schedule"),
            # Tuesday 09:00 in the tenant's time zone; jitter spreads tenants.
            cron=("0 9 * * 2",),
            jitter=timedelta(minutes=30),
            min_interval=timedelta(days=1),
            requires=("website_url",),
            summary="Weekly AI Blog Engine: the next topic of the tenant's plan becomes a post.",
        ),
    ),
)
