"""The SEO Content Pipeline's post: its input, the post and its check, the publish-time
messages, the result, and the pure steps that make and check a post (links kept only when they
are pages of the tenant's site, the HTML assembled, the SEO scan's checks). Deterministic, no
I/O: workflow code imports it (:mod:`workflows.content_pipeline`, :mod:`workflows.blog_engine`)
passed through the sandbox, so its payload types are the real ones (a ``datetime`` field of a
type defined in a workflow module would meet the sandbox's proxied ``datetime`` when decoded).
"""

from __future__ import annotations

import html
import re
from datetime import datetime
from html.parser import HTMLParser
from typing import Annotated, Any, Literal

import msgspec

from activities.content import Keyword
from activities.mcp.tools import WordPressPost
from agents.types import ContentDraft, PostLink, SourcePage
from core.names import SLUG_PATTERN
from hitl.protocol import DecisionRecord
from workflows.presence_audit import URL_PATTERN
from workflows.seo_scan import (PENALTY, SEVERITIES, Issue, PageScan, Severity, netloc_of, normal_url,
                                technical_scan)

# wordpress_not_connected: the tenant has no WordPress site; the run ended before writing.
Status = Literal["published", "publish_canceled", "rejected", "review_expired", "wordpress_not_connected"]

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
    """The ``reschedule-publish`` command's body: a new publish time, with its offset."""

    publish_at: Annotated[datetime, msgspec.Meta(tz=True)]
    requested_by: str = ""  # filled by the API with the caller


class CancelPublish(msgspec.Struct, frozen=True, kw_only=True):
    """The ``cancel-publish`` command's body: the post stays a draft in WordPress."""

    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""
    requested_by: str = ""  # filled by the API with the caller


class PublishSchedule(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["scheduled", "canceled"]
    publish_at: datetime | None = None
    post_id: int | None = None
    requested_by: str = ""


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
    schedule_changes: list[str] = []  # who moved or canceled the publish time, and when
    detail: str | None = None  # why the run ended early (no WordPress site connected)


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
    host = netloc_of(site_url)
    found: dict[str, PageScan] = {}
    for p in pages:
        if p.status is None or p.status >= 400:
            continue
        for url in (p.url, p.final_url):
            if url and netloc_of(url) == host:
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


def choose_categories(chosen: list[str], site: list[str], most: int = 2) -> list[str]:
    """The crew's categories that are categories of the site (by name, whatever the letter case
    or spacing; as the site spells them), at most ``most``: a name the crew made up is dropped."""
    known = {" ".join(name.split()).lower(): name for name in site}
    found: list[str] = []
    for name in chosen:
        match = known.get(" ".join(name.split()).lower())
        if match is not None and match not in found and len(found) < most:
            found.append(match)
    return found


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
    host = netloc_of(site_url)
    internal = [h for h in stats.links if netloc_of(h) == host or h.startswith("/")]
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


def page_source(page: PageScan, fetched: Any) -> SourcePage:
    headings = [str(h.get("text", "")) for h in fetched.get("headings") or [] if isinstance(h, dict)][:20]
    return SourcePage(url=page.url, title=page.title, description=page.meta_description, headings=headings)


