"""SEO Content Pipeline: researcher, writer and editor agents write an optimised blog post, the
client reviews it, and the approved post goes to the tenant's WordPress as a draft, then is
published at the chosen time.

1. The tenant's AI budget is checked.
2. Pages are read through the ``fetch_web_page`` tool: the tenant's site (the home page, then
   internal links found on it, up to ``max_pages``: the candidates for internal links) and the
   ``sources`` given.
3. A crew (researcher, writer, editor: one CrewAI activity on the agents queue; the offline
   provider by default) writes the post in parts: title, slug, meta description, outline,
   intro, sections, conclusion, the internal links it chose.
4. Here, deterministically: the slug is made a slug, the internal links are kept only when they
   are pages of the tenant's site that were fetched and answered (others are dropped; too few
   are completed from the fetched pages that share most words with the keywords), the body is
   assembled as HTML, and the post gets the SEO scan's technical check (workflows/seo_scan.py:
   title and meta description lengths, headings, word count) plus the keyword checks.
5. The client reviews it in Pending Actions: approve, edit (title, body, publish time), request
   changes (the crew writes it again with every comment so far; at most ``max_rounds`` drafts,
   the last request says so and offers no more changes) or reject (nothing reaches WordPress).
   ``skip_review`` (the blog engine's autopilot) goes straight on.
6. The approved post (checked again, edits included) is created in WordPress as a draft
   (``create_wordpress_post``), then a durable timer waits for the publish time (the chosen
   one, else the tenant's ``publish_delay_minutes`` after approval) and
   ``publish_wordpress_post`` publishes it. Until then the client moves the time
   (``reschedule_publish``) or cancels the publish (``cancel_publish``: the draft stays a draft);
   both are updates whose validators refuse a time in the past and anything after publishing.
7. A ``seo-content`` report is stored (subject: the topic's key, what the blog engine reads to
   skip topics already taken), the crew's LLM calls are usage rows and Lago events.

Workflow id: ``{tenant}:seo-content:{key}`` (default key: the topic as a slug); the blog engine
starts it as a child ``{tenant}:seo-content:{the engine run's key}``.
"""

from __future__ import annotations

import asyncio
import html
import re
from datetime import datetime, timedelta
from html.parser import HTMLParser
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec
    from activities.agents import AgentActivities
    from activities.content import CONTENT_REPORT, ContentActivities, Keyword, TenantRef, topic_key
    from activities.mcp.tools import CreateWordPressPost, FetchWebPage, PublishWordPressPost, WordPressPost
    from activities.reports import ReportActivities, StoreReport
    from agents.types import ContentDraft, ContentOutcome, ContentRequest, PostLink, SourcePage
    from core.activity import run_activity
    from core.names import SLUG_PATTERN
    from hitl.approvals import HumanDecisions
    from hitl.protocol import ApprovalRequest, DecisionRecord
    from workflows.capability import TENANT_PEOPLE, Capability
    from workflows.presence_audit import URL_PATTERN
    from workflows.seo_scan import PENALTY, SEVERITIES, Issue, PageScan, Severity, normal_url, page_scan, technical_scan
    from workflows.stages import Stages
    from workflows.tools import call_tool
    from workflows.usage import account, check_ai_budget, report_usage

NAME = "seo-content"
CREW = "seo-content-crew"

Stage = Literal["started", "checking_budget", "reading_pages", "writing", "checking", "awaiting_review",
                "drafting_in_wordpress", "scheduled", "publishing", "storing_report", "reporting_usage",
                "completed", "failed", "canceled"]
Status = Literal["published", "publish_canceled", "rejected", "review_expired"]

REMIND_AFTER = timedelta(hours=24)
REVIEW_DUE = timedelta(days=7)  # unanswered: the post is not published (auto-reject)
CLIENT_ROLES = ["client", "partner", "admin", "super_admin"]
MIN_LINKS, MAX_LINKS = 2, 3
MAX_BODY = 200_000
# An ISO 8601 time with its offset (what the edit form and the commands send).
ISO_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$"


class ContentInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    topic: Annotated[str, msgspec.Meta(min_length=3, max_length=200)]
    keywords: Annotated[list[Keyword], msgspec.Meta(min_length=1, max_length=10)]  # the first is the main one
    website_url: Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)]  # the tenant's site
    audience: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    tone: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    # Other pages the researcher reads (the site's own are fetched anyway).
    sources: Annotated[list[Annotated[str, msgspec.Meta(pattern=URL_PATTERN, max_length=2000)]],
                       msgspec.Meta(max_length=5)] = []
    max_pages: Annotated[int, msgspec.Meta(ge=1, le=10)] = 5  # pages of the tenant's site read
    # When to publish once approved; None: the tenant's publish_delay_minutes after approval.
    publish_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    max_rounds: Annotated[int, msgspec.Meta(ge=1, le=5)] = 3  # drafts the client may ask for
    skip_review: bool = False  # the blog engine's autopilot: no review, the post goes on
    key: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)] | None = None  # business key (default: the topic)
    requested_by: str = "system"


class Post(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    slug: str
    meta_description: str
    outline: list[str]
    body: str  # HTML
    keywords: list[str]
    internal_links: list[PostLink]  # pages of the tenant's site, checked to exist


class PostCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The technical check of a post, as the SEO scan checks a page, plus the keyword checks."""

    score: Annotated[int, msgspec.Meta(ge=0, le=100)]
    issues: list[Issue]
    title_length: int
    meta_description_length: int
    headings: int
    word_count: int
    internal_links: list[str]


class ReschedulePublish(msgspec.Struct, frozen=True, kw_only=True):
    publish_at: Annotated[datetime, msgspec.Meta(tz=True)]


class CancelPublish(msgspec.Struct, frozen=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class PublishSchedule(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["scheduled", "canceled"]
    publish_at: datetime | None = None
    post_id: int | None = None


class ContentResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    topic: str
    status: Status
    offline: bool
    rounds: int
    post: Post | None = None  # as approved (edits included)
    check: PostCheck | None = None
    wordpress: WordPressPost | None = None  # the post as WordPress answered last
    publish_at: datetime | None = None
    published_at: datetime | None = None
    reviewed: bool = True  # False: autopilot
    decisions: list[DecisionRecord] = []
    report_id: int | None = None
    llm_calls: int = 0


class ContentProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    round: int = 0
    pending_request: str | None = None
    publish_at: datetime | None = None
    post_id: int | None = None
    updated_at: datetime | None = None


# --- pure helpers (deterministic: they only read what the activities answered) -------------------

def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80].strip("-")


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


class _HtmlStats(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.h1 = 0
        self.headings = 0
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.headings += 1
            self.h1 += tag == "h1"
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def html_stats(body: str) -> _HtmlStats:
    stats = _HtmlStats()
    stats.feed(body)
    stats.close()
    return stats


def link_targets(site_url: str, pages: list[PageScan]) -> dict[str, PageScan]:
    """The tenant's pages a post may link to: fetched, on the site's host, answering below 400."""
    host = urlsplit(site_url).netloc.lower()
    found: dict[str, PageScan] = {}
    for p in pages:
        if p.status is None or p.status >= 400:
            continue
        for url in (p.url, p.final_url):
            if url and urlsplit(url).netloc.lower() == host:
                found.setdefault(normal_url(url), p)
    return found


def choose_links(proposed: list[PostLink], targets: dict[str, PageScan], keywords: list[str]) -> list[PostLink]:
    """The crew's links that are pages of the site (others dropped), completed up to MIN_LINKS
    with the fetched pages sharing most words with the keywords."""
    chosen: dict[str, PostLink] = {}
    for link in proposed:
        url = normal_url(link.url) if link.url.startswith(("http://", "https://")) else ""
        if url in targets and url not in chosen and len(chosen) < MAX_LINKS:
            chosen[url] = PostLink(url=targets[url].url, anchor=link.anchor.strip() or targets[url].title or url)
    if len(chosen) < MIN_LINKS:
        wanted = _words(" ".join(keywords))
        pages: list[PageScan] = []
        for p in targets.values():
            if all(p is not q for q in pages):
                pages.append(p)
        ranked = sorted(range(len(pages)), key=lambda i: (
            -len(wanted & _words(f"{pages[i].title or ''} {pages[i].path}")), pages[i].path == "/", i))
        for i in ranked:
            url = normal_url(pages[i].url)
            if len(chosen) >= MIN_LINKS:
                break
            if url not in chosen:
                chosen[url] = PostLink(url=pages[i].url, anchor=pages[i].title or pages[i].path)
    return list(chosen.values())


def assemble(draft: ContentDraft, links: list[PostLink], keywords: list[str]) -> Post:
    """The post as HTML: the intro, each section (an H2 and its paragraphs) followed by one of
    the internal links, the links left over, the conclusion. Text is escaped: the crew writes
    words, never markup."""
    e = html.escape
    parts = [f"<p>{e(draft.intro)}</p>"]
    remaining = list(links)
    for section in draft.sections:
        parts.append(f"<h2>{e(section.heading)}</h2>")
        parts += [f"<p>{e(p)}</p>" for p in section.paragraphs]
        if remaining:
            link = remaining.pop(0)
            parts.append(f'<p>Read more: <a href="{e(link.url)}">{e(link.anchor)}</a></p>')
    if remaining:
        parts.append("<p>See also: " + ", ".join(f'<a href="{e(k.url)}">{e(k.anchor)}</a>' for k in remaining)
                     + "</p>")
    parts.append(f"<p>{e(draft.conclusion)}</p>")
    title = draft.title.strip()[:200] or keywords[0]
    return Post(title=title, slug=slugify(draft.slug) or slugify(title) or "post",
                meta_description=draft.meta_description.strip()[:300], outline=list(draft.outline),
                body="\n".join(parts), keywords=list(keywords), internal_links=links)


def check_post(post: Post, site_url: str, targets: dict[str, PageScan]) -> PostCheck:
    """The SEO scan's checks of the post as its page will be (WordPress shows the title as the
    page's H1), and the post's own: the main keyword in the title, meta description and body,
    internal links present and each one a page of the site that was fetched."""
    stats = html_stats(post.body)
    text = " ".join(stats.text)
    host = urlsplit(site_url).netloc.lower()
    internal = [h for h in stats.links if urlsplit(h).netloc.lower() == host or h.startswith("/")]
    url = f"{site_url.rstrip('/')}/{post.slug}/"
    page = PageScan(path=f"/{post.slug}/", url=url, status=200, title=post.title,
                    meta_description=post.meta_description or None, h1_count=1 + stats.h1,
                    headings=1 + stats.headings, word_count=len(text.split()),
                    internal_links=len(dict.fromkeys(internal)))
    scan = technical_scan([page], {page.path: []})
    issues = list(scan.issues)

    def add(check: str, severity: Severity, detail: str, suffix: str = "") -> None:
        issues.append(Issue(id=f"{check}:{page.path}{suffix}", check=check, severity=severity, page=page.path,
                            detail=detail))

    keyword = post.keywords[0].lower()
    if keyword not in post.title.lower():
        add("keyword-not-in-title", "medium", f"the main keyword '{post.keywords[0]}' is not in the title")
    if keyword not in post.meta_description.lower():
        add("keyword-not-in-meta-description", "low", f"the main keyword '{post.keywords[0]}' is not in the meta description")
    if keyword not in text.lower():
        add("keyword-not-in-body", "medium", f"the main keyword '{post.keywords[0]}' is not in the body")
    if not internal:
        add("no-internal-links", "low", "the post links to no page of the site")
    for href in dict.fromkeys(internal):
        absolute = href if href.startswith(("http://", "https://")) else f"{site_url.rstrip('/')}{href}"
        if normal_url(absolute) not in targets:
            add("unknown-internal-link", "high", f"links to {href}, not a page of the site that answered", f"->{href}")
    issues.sort(key=lambda i: (SEVERITIES.index(i.severity), i.id))
    score = max(0, 100 - sum(PENALTY[i.severity] for i in issues))
    return PostCheck(score=score, issues=issues, title_length=len(post.title),
                     meta_description_length=len(post.meta_description), headings=page.headings,
                     word_count=page.word_count, internal_links=list(dict.fromkeys(internal)))


def parse_time(value: Any) -> datetime | None:
    """An edited publish time (ISO 8601 with its offset, as the edit schema demands); None when
    it is absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def edit_schema() -> dict[str, Any]:
    """What a client may edit: the title, the body (HTML) and the publish time."""
    return {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 200},
        "body": {"type": "string", "minLength": 1, "maxLength": MAX_BODY},
        "publish_at": {"type": "string", "pattern": ISO_TIME},
    }}


def _source(page: PageScan, fetched: Any) -> SourcePage:
    headings = [str(h.get("text", "")) for h in fetched.get("headings") or [] if isinstance(h, dict)][:20]
    return SourcePage(url=page.url, title=page.title, description=page.meta_description, headings=headings)


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
                               feedback=list(feedback), round=self._round),
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

        await self.stage("drafting_in_wordpress")
        wp = await call_tool(inp.tenant_id, CreateWordPressPost(
            title=post.title, content=post.body, excerpt=post.meta_description or None, slug=post.slug,
            categories=list(policy.categories), tags=list(post.keywords), status="draft", site_url=inp.website_url,
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
        wp = await call_tool(inp.tenant_id, PublishWordPressPost(post_id=wp.post_id, site_url=inp.website_url),
                             step="wordpress:publish")
        self._steps.append("published")
        return await self._finish(inp, "published", offline, calls, decisions, post=post, check=check, wordpress=wp,
                                  published_at=workflow.now(), reviewed=not inp.skip_review)

    async def _read(self, inp: ContentInput) -> tuple[list[PageScan], list[tuple[PageScan, SourcePage]]]:
        """The tenant's site (home page, then internal links found, up to max_pages), then the
        sources; answers the site's pages and every page read as the crew sees it."""
        host = urlsplit(inp.website_url).netloc.lower()
        queue, seen = [inp.website_url], {normal_url(inp.website_url)}
        site: list[PageScan] = []
        read: list[tuple[PageScan, SourcePage]] = []
        while queue and len(site) < inp.max_pages:
            url = queue.pop(0)
            fetched = msgspec.to_builtins(await call_tool(inp.tenant_id, FetchWebPage(url=url), step=f"fetch:site:{len(site)}"))
            page, links = page_scan(url, fetched)
            site.append(page)
            read.append((page, _source(page, fetched)))
            for link in links:
                if link not in seen and urlsplit(link).netloc.lower() == host:
                    seen.add(link)
                    queue.append(link)
        for i, url in enumerate(dict.fromkeys(inp.sources)):
            fetched = msgspec.to_builtins(await call_tool(inp.tenant_id, FetchWebPage(url=url), step=f"fetch:source:{i}"))
            page, _ = page_scan(url, fetched)
            if page.status is not None and page.status < 400:
                read.append((page, _source(page, fetched)))
        return site, read

    async def _finish(self, inp: ContentInput, status: Status, offline: bool, calls: int,
                      decisions: list[DecisionRecord], *, post: Post | None = None, check: PostCheck | None = None,
                      wordpress: WordPressPost | None = None, published_at: datetime | None = None,
                      reviewed: bool = True) -> ContentResult:
        """Store the report, bill the LLM calls, answer the result."""
        wf_id = workflow.info().workflow_id
        result = ContentResult(tenant_id=inp.tenant_id, topic=inp.topic, status=status, offline=offline,
                               rounds=self._round, post=post, check=check, wordpress=wordpress,
                               publish_at=self._publish_at, published_at=published_at,
                               reviewed=reviewed and not inp.skip_review, decisions=decisions, llm_calls=calls)
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
        return PublishSchedule(status="scheduled", publish_at=self._publish_at, post_id=self._post_id)

    @reschedule_publish.validator
    def _validate_reschedule(self, req: ReschedulePublish) -> None:
        self._check_open()
        if req.publish_at <= workflow.now():
            raise ApplicationError(f"the publish time {req.publish_at.isoformat()} is in the past",
                                   type="PublishTimeInPast")

    @workflow.update(name="cancel_publish")
    async def cancel_publish(self, req: CancelPublish) -> PublishSchedule:
        self._cancel_reason = req.reason or "canceled"
        return PublishSchedule(status="canceled", publish_at=self._publish_at, post_id=self._post_id)

    @cancel_publish.validator
    def _validate_cancel(self, req: CancelPublish) -> None:
        self._check_open()

    @workflow.query(name="progress")
    def progress(self) -> ContentProgress:
        return ContentProgress(stage=self._stage, steps_done=list(self._steps), round=self._round,  # type: ignore[arg-type]
                               pending_request=self._approval.request.request_id if self._approval else None,
                               publish_at=self._publish_at, post_id=self._post_id, updated_at=self._updated_at)


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
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=TENANT_PEOPLE,
    cancel_roles=TENANT_PEOPLE,
    decide_roles=frozenset(CLIENT_ROLES),
    summary="SEO Content Pipeline: a researcher, writer and editor crew writes an optimised blog post (internal "
            "links and a technical check); the client reviews it (Pending Actions), then it goes to WordPress as "
            "a draft and is published at the chosen time, which the client may move or cancel until then.",
    settings=SeoContentSettings,
)
