"""The SEO Health Monitor's technical scan on its own: no Temporal, no server, no database."""

from __future__ import annotations

import subprocess
import sys

from workflows.seo_scan import PageScan, netloc_of, normal_url, page_scan, technical_scan


def test_the_technical_scan_checks_each_page() -> None:
    """The deterministic checks, without a server: what each kind of page is reported for."""
    ok = {"title": "A good page title", "meta_description": "d" * 80, "h1_count": 1, "headings": 2, "word_count": 300}
    pages = [
        PageScan(path="/", url="https://a.example/", status=200, **ok),
        PageScan(path="/old", url="https://a.example/old", final_url="https://a.example/", status=200, **ok),
        PageScan(path="/bare", url="https://a.example/bare", status=200, title="Hi", h1_count=2, word_count=20,
                 load_ms=3500.0),
        PageScan(path="/down", url="https://a.example/down", status=None, error="ConnectError"),
        PageScan(path="/boom", url="https://a.example/boom", status=503),
    ]
    scan = technical_scan(pages, {"/": ["https://a.example/down", "https://a.example/", "https://a.example/x"]})
    assert [(i.id, i.severity) for i in scan.issues] == [
        ("server-error:/boom", "critical"), ("unreachable:/down", "critical"),
        ("broken-link:/->/down", "high"),
        ("missing-meta-description:/bare", "medium"), ("slow-page:/bare", "medium"),
        ("duplicate-title:/old", "low"), ("multiple-h1:/bare", "low"), ("redirect:/old", "low"),
        ("thin-content:/bare", "low"), ("title-length:/bare", "low"),
    ]
    assert scan.score == 100 - 2 * 25 - 10 - 2 * 5 - 5 * 2
    assert scan.pages[0].broken_links == ["/down"]


def test_a_fetched_page_becomes_a_page_scan_and_its_internal_links() -> None:
    """The fetch tool's answer as the scan reads it: headings counted, blank texts as missing,
    internal links normalised and deduplicated (fragments dropped), external ones left out."""
    fetched = {
        "url": "https://a.example/shop", "final_url": "https://a.example/shop", "ok": True, "status_code": 200,
        "title": "  Rosa's Flowers  ", "meta_description": "   ", "word_count": 240, "load_time_ms": 812.5,
        "headings": [{"level": 1, "text": "Shop"}, {"level": 2, "text": "Roses"}, {"level": 1, "text": "More"}],
        "links": [
            {"href": "https://A.example/about#team", "text": "About", "internal": True},
            {"href": "https://a.example/about", "text": "About us", "internal": True},
            {"href": "https://a.example", "text": "Home", "internal": True},
            {"href": "https://elsewhere.example/", "text": "Partner", "internal": False},
        ],
    }
    scan, links = page_scan("https://a.example/shop?page=2", fetched)
    assert scan == PageScan(
        path="/shop?page=2", url="https://a.example/shop?page=2", final_url="https://a.example/shop", status=200,
        title="Rosa's Flowers", meta_description=None, h1_count=2, headings=3, word_count=240, load_ms=812.5,
        internal_links=2,
    )
    assert links == ["https://a.example/about", "https://a.example/"]
    # An answer that is not a page (a tool error's text) is an unreachable page, not a crash.
    broken, none = page_scan("https://a.example/x", "tool failed")
    assert (broken.status, broken.path, none) == (None, "/x", [])


def test_the_scan_loads_without_temporal() -> None:
    """Importing the scan pulls in neither the Temporal SDK nor any activity or workflow module."""
    code = ("import sys, workflows.seo_scan; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('temporalio', 'activities', 'agents') "
            "or (m.startswith('workflows.') and m != 'workflows.seo_scan')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_link_no_url_parser_reads_is_left_out_not_a_stopped_scan() -> None:
    """A crawled page (or an AI-written post) may hold http://[1..2]/: Python's urlsplit raises on
    it, which in workflow code would fail every task of the run."""
    assert netloc_of("http://[1..2]/x") == "" and normal_url("http://[1..2]/x") == "/"
    assert netloc_of("HTTPS://Example.COM:8443/a") == "example.com:8443"
    _, links = page_scan("https://a.example/", {"links": [{"href": "http://[zz::]/", "internal": True},
                                                          {"href": "https://a.example/b#top", "internal": True}]})
    assert links == ["https://a.example/b"]
