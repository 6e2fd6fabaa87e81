"""SEO Content Pipeline: researcher, writer and editor agents write an optimised blog post, the
client reviews it, and the approved post goes to the tenant's WordPress as a draft, then is
published at the chosen time.

1. The tenant's AI budget is checked.
2. The tenant's WordPress is asked for its categories (``list_wordpress_terms``, routed like
   every tool: the sandbox server's connection, or the tenant's own server). A tenant with no
   site connected (the tool's ``MCPNotConnected``) ends here, ``wordpress_not_connected``,
   before anything is written or reviewed: the client's review would be wasted on a post with
   nowhere to go. Another refusal of the listing goes on without categories (the draft step
   meets whatever is wrong). The categories are the crew's to choose from.
3. Pages are read through the ``fetch_web_page`` tool: the tenant's site (the home page, then
   internal links found on it, up to ``max_pages``: the candidates for internal links) and the
   ``sources`` given.
4. A crew (researcher, writer, editor: one CrewAI activity on the agents queue; the offline
   provider by default) writes the post in parts: title, slug, meta description, outline,
   intro, sections, conclusion, the internal links and the site's categories it chose.
5. Here, deterministically: the slug is made a slug, the internal links are kept only when they
   are pages of the tenant's site that were fetched and answered (others are dropped; too few
   are completed from the fetched pages that share most words with the keywords), the body is
   assembled as HTML, and the post gets the SEO scan's technical check (workflows/seo_scan.py:
   title and meta description lengths, headings, word count) plus the keyword checks.
6. The client reviews it in Pending Actions: approve, edit (title, body, publish time), request
   changes (the crew writes it again with every comment so far; at most ``max_rounds`` drafts,
   the last request says so and offers no more changes) or reject (nothing reaches WordPress).
   ``skip_review`` (the blog engine's autopilot) goes straight on.
7. The approved post (checked again, edits included) is created as a draft on the tenant's
   WordPress site (the one it connected: ``PUT /v1/tenants/{t}/connections/wordpress``) through
   ``create_wordpress_post`` (categories: the tenant's ``categories`` setting, else those the
   crew chose among the site's), then a durable timer waits for the publish time (the chosen
   one, else the tenant's ``publish_delay_minutes`` after approval) and
   ``publish_wordpress_post`` publishes it. Until then the client moves the time
   (``reschedule_publish``) or cancels the publish (``cancel_publish``: the draft stays a draft);
   both are updates whose validators refuse a time in the past and anything after publishing.
8. A ``seo-content`` report is stored (subject: the topic's key, what the blog engine reads to
   skip topics already taken, a ``wordpress_not_connected`` one aside), the crew's LLM calls are
   usage rows and Lago events.

Workflow id: ``{tenant}:seo-content:{key}`` (default key: the topic as a slug); the blog engine
starts it as a child ``{tenant}:seo-content:{the engine run's key}``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Annotated, Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec
    from activities.agents import AgentActivities
    from activities.content import CONTENT_REPORT, ContentActivities, TenantRef, topic_key
    from activities.mcp import NOT_CONNECTED, TOOL_ERROR
    from activities.mcp.tools import (CreateWordPressPost, FetchWebPage, ListWordPressTerms, PublishWordPressPost,
                                      WebPage, WordPressPost)
    from activities.reports import ReportActivities, StoreReport
    from agents.types import ContentOutcome, ContentRequest, SourcePage
    from core.activity import raise_if_cancelled, run_activity
    from hitl.approvals import HumanDecisions
    from hitl.protocol import ApprovalRequest, DecisionRecord
    from workflows.capability import TENANT_PEOPLE, Capability, Command
    from workflows.content_post import (CancelPublish, ContentInput, ContentResult, Post, PostCheck, PublishSchedule,
                                        ReschedulePublish, Status, assemble, check_post, choose_categories,
                                        choose_links, edit_schema, link_targets, page_source, parse_time)
    from workflows.seo_scan import PageScan, netloc_of, normal_url, page_scan
    from workflows.stages import Stages
    from workflows.tools import call_tool
    from workflows.usage import account, check_ai_budget, report_usage

NAME = "seo-content"
CREW = "seo-content-crew"
# New runs ask the tenant's WordPress first (its categories; none connected: the run ends).
WORDPRESS_FIRST = "seo-content-wordpress-first"

Stage = Literal["started", "checking_budget", "checking_wordpress", "reading_pages", "writing", "checking",
                "awaiting_review", "drafting_in_wordpress", "scheduled", "publishing", "storing_report",
                "reporting_usage", "completed", "failed", "canceled"]

MAX_SITE_CATEGORIES = 100  # the site's categories the crew is shown
REMIND_AFTER = timedelta(hours=24)
REVIEW_DUE = timedelta(days=7)  # unanswered: the post is not published (auto-reject)
CLIENT_ROLES = ["client", "partner", "admin", "super_admin"]


class ContentProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    round: int = 0
    pending_request: str | None = None
    publish_at: datetime | None = None
    post_id: int | None = None
    schedule_changes: list[str] = []
    updated_at: datetime | None = None
    detail: str | None = None  # why the run ended early (no WordPress site connected)


@workflow.defn(name="SeoContent")
class SeoContentWorkflow(HumanDecisions, Stages):
    def __init__(self) -> None:
        HumanDecisions.__init__(self)
        Stages.__init__(self)
        self._round = 0
        self._usage_ids: list[int] = []
        self._publish_at: datetime | None = None  # set once approved
        self._schedule_version = 0  # bumped by every reschedule: wakes the timer
        self._cancel_reason: str | None = None  # set by cancel_publish
        self._publishing = False  # the publish call has started: no more changes
        self._post_id: int | None = None
        self._schedule_changes: list[str] = []  # who moved or canceled the publish, when
        self._detail: str | None = None

    @workflow.run
    async def run(self, inp: ContentInput) -> ContentResult:
        try:
            result = await self._run(inp)
        except asyncio.CancelledError:
            # Canceled (the client, an admin): the LLM calls made so far are billed all the same.
            self._enter("reporting_usage", "cancel_requested")
            await report_usage(inp.tenant_id, self._usage_ids)
            self._enter("canceled", "usage_reported")
            raise
        except Exception:
            self._enter("failed")
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    async def _run(self, inp: ContentInput) -> ContentResult:
        wf_id = workflow.info().workflow_id
        calls = 0
        await self.stage("checking_budget")
        await check_ai_budget(inp.tenant_id)

        site_categories: list[str] | None = None  # None: not asked (runs started before) or not known
        if workflow.patched(WORDPRESS_FIRST):
            await self.stage("checking_wordpress", "budget_checked")
            try:
                listed = await call_tool(inp.tenant_id, ListWordPressTerms(taxonomy="categories"),
                                         step="wordpress:categories")
                site_categories = [t.name for t in listed.terms]
            except ActivityError as err:
                raise_if_cancelled(err)
                cause = err.cause
                if isinstance(cause, ApplicationError) and cause.type == NOT_CONNECTED:
                    self._detail = (f"No WordPress site is connected for tenant {inp.tenant_id}: connect one "
                                    f"(PUT /v1/tenants/{inp.tenant_id}/connections/wordpress), then start the post "
                                    "again. Nothing was written or sent for review.")
                    self._steps.append("wordpress_not_connected")
                    return await self._finish(inp, "wordpress_not_connected", False, calls, [], reviewed=False)
                if not (isinstance(cause, ApplicationError) and cause.type == TOOL_ERROR):
                    raise
                workflow.logger.warning("the site's categories not read: %s", cause)
            await self.stage("reading_pages", "wordpress_checked")
        else:
            await self.stage("reading_pages", "budget_checked")
        site, sources = await self._read(inp)
        targets = link_targets(inp.website_url, site)
        site_pages = [s for p, s in sources if p in site]
        other_pages = [s for p, s in sources if p not in site]

        feedback: list[str] = []
        decisions: list[DecisionRecord] = []
        offline = False
        while True:
            self._round += 1
            await self.stage("writing", "pages_read" if self._round == 1 else "changes_requested")
            if self._round > 1:
                await check_ai_budget(inp.tenant_id)
            written: ContentOutcome = await run_activity(
                AgentActivities.content_crew,
                ContentRequest(tenant_id=inp.tenant_id, workflow_id=wf_id, topic=inp.topic, keywords=list(inp.keywords),
                               audience=inp.audience, tone=inp.tone, site_pages=site_pages, sources=other_pages,
                               feedback=list(feedback), round=self._round,
                               site_categories=list(site_categories or [])[:MAX_SITE_CATEGORIES]),
            )
            self._usage_ids += await account(inp.tenant_id, CREW, written, f"draft:{self._round}")
            calls += len(written.calls)
            offline = offline or written.offline

            await self.stage("checking", "draft_written")
            post = assemble(written.draft, choose_links(written.draft.internal_links, targets, list(inp.keywords)),
                            list(inp.keywords))
            check = check_post(post, inp.website_url, targets)
            if inp.skip_review:
                approved_at = workflow.now()
                break

            await self.stage("awaiting_review", "checked")
            last = self._round >= inp.max_rounds
            outcome = await self.ask(ApprovalRequest(
                request_id=f"post-{self._round}", kind="seo-content.post",
                title=(f"Review the blog post '{post.title}'" + (" (last round of changes)" if last else ""))[:200],
                summary=(f"Draft {self._round} of {inp.max_rounds} on '{inp.topic}': {check.word_count} words, "
                         f"{len(post.internal_links)} internal link(s), technical check {check.score}/100"
                         + (". This is the last round: approve, edit or reject." if last else "."))[:2000],
                proposal={"title": post.title, "slug": post.slug, "meta_description": post.meta_description,
                          "outline": post.outline, "body": post.body, "keywords": post.keywords,
                          "internal_links": msgspec.to_builtins(post.internal_links),
                          "check": msgspec.to_builtins(check), "research_notes": written.draft.research_notes,
                          "publish_at": inp.publish_at.isoformat() if inp.publish_at else None},
                allowed=["approve", "reject", "edit"] if last else ["approve", "reject", "request_changes", "edit"],
                audience="client", roles=CLIENT_ROLES, due_in_seconds=int(REVIEW_DUE.total_seconds()),
                remind_after_seconds=[int(REMIND_AFTER.total_seconds())], timeout_action="auto_reject",
                edit_schema=edit_schema(),
            ))
            decisions += outcome.decisions
            if outcome.outcome == "changes_requested":
                feedback.append(outcome.comment)
                continue
            if not outcome.approved:
                status: Status = "review_expired" if outcome.outcome == "timed_out_rejected" else "rejected"
                return await self._finish(inp, status, offline, calls, decisions, post=post, check=check)
            approved_at = workflow.now()
            edited = outcome.proposal
            post = msgspec.structs.replace(post, title=str(edited.get("title") or post.title),
                                           body=str(edited.get("body") or post.body))
            check = check_post(post, inp.website_url, targets)
            chosen = parse_time(edited.get("publish_at"))
            if chosen is not None:
                inp = msgspec.structs.replace(inp, publish_at=chosen)
            self._steps.append("approved")
            break

        policy = await run_activity(ContentActivities.policy, TenantRef(tenant_id=inp.tenant_id))
        self._publish_at = inp.publish_at or approved_at + timedelta(minutes=policy.publish_delay_minutes)
        categories = list(policy.categories)
        if not categories and site_categories:
            categories = choose_categories(written.draft.categories, site_categories)

        await self.stage("drafting_in_wordpress")
        wp = await call_tool(inp.tenant_id, CreateWordPressPost(
            title=post.title, content=post.body, excerpt=post.meta_description or None, slug=post.slug,
            categories=categories, tags=list(post.keywords), status="draft",
        ), step="wordpress:draft")
        self._post_id = wp.post_id

        await self.stage("scheduled", "drafted")
        while self._cancel_reason is None:
            delay = self._publish_at - workflow.now()
            if delay <= timedelta(0):
                break
            seen = self._schedule_version
            try:
                # A durable timer that a reschedule or a cancel wakes early.
                await workflow.wait_condition(
                    lambda: self._schedule_version != seen or self._cancel_reason is not None, timeout=delay)
            except asyncio.TimeoutError:
                pass
        if self._cancel_reason is not None:
            self._steps.append("publish_canceled")
            return await self._finish(inp, "publish_canceled", offline, calls, decisions, post=post, check=check,
                                      wordpress=wp, reviewed=not inp.skip_review)

        self._publishing = True
        await self.stage("publishing", "publish_time_reached")
        wp = await call_tool(inp.tenant_id, PublishWordPressPost(post_id=wp.post_id),
                             step="wordpress:publish")
        self._steps.append("published")
        return await self._finish(inp, "published", offline, calls, decisions, post=post, check=check, wordpress=wp,
                                  published_at=workflow.now(), reviewed=not inp.skip_review)

    async def _read(self, inp: ContentInput) -> tuple[list[PageScan], list[tuple[PageScan, SourcePage]]]:
        """The tenant's site (the home page, then the internal links found, level by level, each
        level's pages fetched together, up to max_pages), then the sources (together); answers
        the site's pages and every page read as the crew sees it."""
        host = netloc_of(inp.website_url)
        level, seen = [inp.website_url], {normal_url(inp.website_url)}
        site: list[PageScan] = []
        read: list[tuple[PageScan, SourcePage]] = []
        while level and len(site) < inp.max_pages:
            level = level[:inp.max_pages - len(site)]
            answers = await asyncio.gather(*(call_tool(inp.tenant_id, FetchWebPage(url=url),
                                                       step=f"fetch:site:{len(site) + k}")
                                             for k, url in enumerate(level)))
            found: list[str] = []
            for url, answer in zip(level, answers):
                fetched = msgspec.to_builtins(answer)
                page, links = page_scan(url, fetched)
                site.append(page)
                read.append((page, page_source(page, fetched)))
                for link in links:
                    if link not in seen and netloc_of(link) == host:
                        seen.add(link)
                        found.append(link)
            level = found
        sources = list(dict.fromkeys(inp.sources))
        answers = await asyncio.gather(*(self._source(inp.tenant_id, url, f"fetch:source:{i}")
                                         for i, url in enumerate(sources)))
        for url, answer in zip(sources, answers):
            if answer is None:
                continue
            fetched = msgspec.to_builtins(answer)
            page, _ = page_scan(url, fetched)
            if page.status is not None and page.status < 400:
                read.append((page, page_source(page, fetched)))
        return site, read

    async def _source(self, tenant_id: str, url: str, step: str) -> WebPage | None:
        """A source page; None when the fetch tool refused it (an address it may not read): the
        post is written without it, where the tenant's own site must be readable."""
        try:
            return await call_tool(tenant_id, FetchWebPage(url=url), step=step)
        except ActivityError as err:
            raise_if_cancelled(err)
            workflow.logger.warning("source %s not read: %s", url, err.cause or err)
            return None

    async def _finish(self, inp: ContentInput, status: Status, offline: bool, calls: int,
                      decisions: list[DecisionRecord], *, post: Post | None = None, check: PostCheck | None = None,
                      wordpress: WordPressPost | None = None, published_at: datetime | None = None,
                      reviewed: bool = True) -> ContentResult:
        """Store the report, bill the LLM calls, answer the result."""
        wf_id = workflow.info().workflow_id
        result = ContentResult(tenant_id=inp.tenant_id, topic=inp.topic, status=status, offline=offline,
                               rounds=self._round, post=post, check=check, wordpress=wordpress,
                               publish_at=self._publish_at, published_at=published_at,
                               reviewed=reviewed and not inp.skip_review, decisions=decisions, llm_calls=calls,
                               schedule_changes=list(self._schedule_changes), detail=self._detail)
        await self.stage("storing_report", status)
        stored = await run_activity(ReportActivities.store, StoreReport(
            tenant_id=inp.tenant_id, kind=CONTENT_REPORT, workflow_id=wf_id, subject=topic_key(inp.topic),
            offline=offline, score=check.score if check else None, body=msgspec.to_builtins(result)))
        await self.stage("reporting_usage", "report_stored")
        await report_usage(inp.tenant_id, self._usage_ids)
        self._enter("completed", "usage_reported")
        return msgspec.structs.replace(result, report_id=stored.report_id)

    # --- the publish time, until it is reached ------------------------------------------------

    def _check_open(self) -> None:
        if self._publishing:
            raise ApplicationError("the post is already published", type="AlreadyPublished")
        if self._cancel_reason is not None:
            raise ApplicationError("the publish was canceled", type="PublishCanceled")
        if self._publish_at is None:
            raise ApplicationError("the post has no publish time until it is approved", type="NotScheduled")

    @workflow.update(name="reschedule_publish")
    async def reschedule_publish(self, req: ReschedulePublish) -> PublishSchedule:
        self._publish_at = req.publish_at
        self._schedule_version += 1
        self._schedule_changes.append(f"{workflow.now().isoformat()} {req.requested_by or 'unknown'}: "
                                      f"publish at {req.publish_at.isoformat()}")
        return PublishSchedule(status="scheduled", publish_at=self._publish_at, post_id=self._post_id,
                               requested_by=req.requested_by)

    @reschedule_publish.validator
    def _validate_reschedule(self, req: ReschedulePublish) -> None:
        self._check_open()
        if req.publish_at <= workflow.now():
            raise ApplicationError(f"the publish time {req.publish_at.isoformat()} is in the past",
                                   type="PublishTimeInPast")

    @workflow.update(name="cancel_publish")
    async def cancel_publish(self, req: CancelPublish) -> PublishSchedule:
        self._cancel_reason = req.reason or "canceled"
        self._schedule_changes.append(f"{workflow.now().isoformat()} {req.requested_by or 'unknown'}: "
                                      f"publish canceled ({self._cancel_reason})")
        return PublishSchedule(status="canceled", publish_at=self._publish_at, post_id=self._post_id,
                               requested_by=req.requested_by)

    @cancel_publish.validator
    def _validate_cancel(self, req: CancelPublish) -> None:
        self._check_open()

    @workflow.query(name="progress")
    def progress(self) -> ContentProgress:
        return ContentProgress(stage=self._stage, steps_done=list(self._steps), round=self._round,  # type: ignore[arg-type]
                               pending_request=self._approval.request.request_id if self._approval else None,
                               publish_at=self._publish_at, post_id=self._post_id,
                               schedule_changes=list(self._schedule_changes), updated_at=self._updated_at,
                               detail=self._detail)


class SeoContentSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's SEO content policy (``GET/PUT /v1/tenants/{tenant}/settings/seo-content``)."""

    # An approved post without a chosen publish time publishes this long after the approval.
    publish_delay_minutes: Annotated[int, msgspec.Meta(ge=0, le=90 * 24 * 60)] = 24 * 60
    # The WordPress categories of the tenant's posts (by name).
    categories: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=100)]],
                          msgspec.Meta(max_length=10)] = []


CAPABILITY = Capability(
    name=NAME,
    workflow=SeoContentWorkflow,
    input_type=ContentInput,
    business_key=lambda inp: inp.key or topic_key(inp.topic),
    # A post that ended for want of a WordPress site leaves its topic free: once a site is
    # connected, starting the same topic again runs it.
    starts_again=lambda result: result.status == "wordpress_not_connected",
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=TENANT_PEOPLE,
    cancel_roles=TENANT_PEOPLE,
    decide_roles=frozenset(CLIENT_ROLES),
    summary="SEO Content Pipeline: a researcher, writer and editor crew writes an optimised blog post (internal "
            "links and a technical check); the client reviews it (Pending Actions), then it goes to WordPress as "
            "a draft and is published at the chosen time, which the client may move or cancel until then.",
    settings=SeoContentSettings,
    commands=(
        Command(name="reschedule-publish", update="reschedule_publish", input_type=ReschedulePublish,
                roles=TENANT_PEOPLE, summary="Move an approved post's publish time (it must be in the future); "
                "refused once published (AlreadyPublished), canceled (PublishCanceled) or before approval "
                "(NotScheduled)."),
        Command(name="cancel-publish", update="cancel_publish", input_type=CancelPublish, roles=TENANT_PEOPLE,
                summary="Cancel an approved post's publish: it stays a draft in WordPress and the run ends "
                "publish_canceled; refused once published."),
    ),
)
