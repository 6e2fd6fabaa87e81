"""The SEO Health Monitor's technical scan: pure and deterministic, it only reads what the fetch
tool answered (status codes, titles and meta descriptions and their lengths, headings, word
counts, load times, broken links among the fetched pages). Each finding is an issue with a
stable id (``{check}:{path}``) and a severity; the technical score is 100 less the issues'
penalties. Workflow code uses it (:mod:`workflows.seo_health`) and it is tested on its own, with
no Temporal; no I/O, no clock, nothing done at import.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

import msgspec

Severity = Literal["critical", "high", "medium", "low"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")
# What each issue costs the technical score (100 = nothing found).
PENALTY: dict[str, int] = {"critical": 25, "high": 10, "medium": 5, "low": 2}

# The checks' thresholds (common SEO guidance).
TITLE_LENGTH = (10, 60)
DESCRIPTION_LENGTH = (50, 160)
THIN_CONTENT_WORDS = 100
SLOW_PAGE_MS = 2000.0


class PageScan(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # the page's path on the site: its identity from one run to the next
    url: str
    final_url: str | None = None
    status: int | None = None  # None: unreachable
    error: str | None = None
    title: str | None = None
    meta_description: str | None = None
    h1_count: int = 0
    headings: int = 0
    word_count: int = 0
    load_ms: float = 0.0
    internal_links: int = 0
    broken_links: list[str] = []  # paths of fetched pages it links to that answered an error


class Issue(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # "{check}:{path}" (broken links: "broken-link:{from}->{to}"): stable across runs
    check: str
    severity: Severity
    page: str
    detail: str


class TechnicalScan(msgspec.Struct, frozen=True, kw_only=True):
    score: Annotated[int, msgspec.Meta(ge=0, le=100)]
    pages: list[PageScan]
    issues: list[Issue]


_NO_URL = SplitResult("", "", "", "", "")


def url_parts(url: str) -> SplitResult:
    """``urlsplit``, except that a URL it refuses (a malformed bracketed host, e.g.
    ``http://[1..2]/``, in a crawled page or an AI-written post) reads as an empty one: a bad link
    is left out, it never stops the workflow reading it."""
    try:
        return urlsplit(url)
    except ValueError:
        return _NO_URL


def netloc_of(url: str) -> str:
    """A URL's host (and port) in lower case; empty for a relative or unreadable URL."""
    return url_parts(url).netloc.lower()


def normal_url(url: str) -> str:
    """A URL without its fragment, with ``/`` for an empty path."""
    parts = url_parts(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", parts.query, ""))


def url_path(url: str) -> str:
    """A page's path (and query) on its site: its identity in a scan, from one run to the next."""
    parts = url_parts(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def page_scan(url: str, page: object) -> tuple[PageScan, list[str]]:
    """The fetch tool's answer (a WebPage object) as a page scan, and its internal links."""
    p = page if isinstance(page, dict) else {}
    headings = [h for h in p.get("headings") or [] if isinstance(h, dict)]
    internal = [normal_url(str(link.get("href", ""))) for link in p.get("links") or []
                if isinstance(link, dict) and link.get("internal") and link.get("href")
                and netloc_of(str(link.get("href", "")))]
    scan = PageScan(
        path=url_path(url), url=url, final_url=p.get("final_url"), status=p.get("status_code"),
        error=p.get("error"), title=(p.get("title") or "").strip() or None,
        meta_description=(p.get("meta_description") or "").strip() or None,
        h1_count=sum(1 for h in headings if h.get("level") == 1), headings=len(headings),
        word_count=int(p.get("word_count") or 0), load_ms=float(p.get("load_time_ms") or 0.0),
        internal_links=len(dict.fromkeys(internal)),
    )
    return scan, list(dict.fromkeys(internal))


def technical_scan(pages: list[PageScan], links: dict[str, list[str]]) -> TechnicalScan:
    """Issues of the fetched pages (``links``: each page's internal links, by path) and the score."""
    failed = {}  # normalised URL -> path of a fetched page that answered an error
    for p in pages:
        if p.status is None or p.status >= 400:
            failed[normal_url(p.url)] = p.path
            if p.final_url:
                failed[normal_url(p.final_url)] = p.path
    issues: list[Issue] = []

    def add(check: str, severity: Severity, page: str, detail: str, suffix: str = "") -> None:
        issues.append(Issue(id=f"{check}:{page}{suffix}", check=check, severity=severity, page=page, detail=detail))

    scanned: list[PageScan] = []
    titles: dict[str, str] = {}
    for fetched in pages:
        broken = sorted({failed[u] for u in links.get(fetched.path, []) if u in failed and failed[u] != fetched.path})
        p = msgspec.structs.replace(fetched, broken_links=broken)
        scanned.append(p)
        for target in broken:
            add("broken-link", "high", p.path, f"links to {target}, which answered an error", f"->{target}")
        if p.status is None:
            add("unreachable", "critical", p.path, f"could not be fetched: {p.error or 'no answer'}")
            continue
        if p.status >= 500:
            add("server-error", "critical", p.path, f"answered HTTP {p.status}")
            continue
        if p.status >= 400:
            add("http-error", "high", p.path, f"answered HTTP {p.status}")
            continue
        if p.final_url and normal_url(p.final_url) != normal_url(p.url):
            add("redirect", "low", p.path, f"redirects to {url_path(p.final_url)}")
        if p.title is None:
            add("missing-title", "high", p.path, "no <title>")
        elif not TITLE_LENGTH[0] <= len(p.title) <= TITLE_LENGTH[1]:
            add("title-length", "low", p.path,
                f"title is {len(p.title)} characters (aim for {TITLE_LENGTH[0]}-{TITLE_LENGTH[1]})")
        if p.title is not None:
            if p.title in titles and titles[p.title] != p.path:
                add("duplicate-title", "low", p.path, f"same title as {titles[p.title]}")
            titles.setdefault(p.title, p.path)
        if p.meta_description is None:
            add("missing-meta-description", "medium", p.path, "no meta description")
        elif not DESCRIPTION_LENGTH[0] <= len(p.meta_description) <= DESCRIPTION_LENGTH[1]:
            add("meta-description-length", "low", p.path,
                f"meta description is {len(p.meta_description)} characters "
                f"(aim for {DESCRIPTION_LENGTH[0]}-{DESCRIPTION_LENGTH[1]})")
        if p.h1_count == 0:
            add("missing-h1", "medium", p.path, "no <h1> heading")
        elif p.h1_count > 1:
            add("multiple-h1", "low", p.path, f"{p.h1_count} <h1> headings")
        if p.word_count < THIN_CONTENT_WORDS:
            add("thin-content", "low", p.path, f"{p.word_count} words (under {THIN_CONTENT_WORDS})")
        if p.load_ms > SLOW_PAGE_MS:
            add("slow-page", "medium", p.path, f"took {p.load_ms:.0f} ms (over {SLOW_PAGE_MS:.0f})")
    issues.sort(key=lambda i: (SEVERITIES.index(i.severity), i.id))
    score = max(0, 100 - sum(PENALTY[i.severity] for i in issues))
    return TechnicalScan(score=score, pages=scanned, issues=issues)
