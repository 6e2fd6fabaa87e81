"""Fixtures for the MCP tests: the sandbox MCP server and a small website, both on loopback.

Import the fixtures into a test module (``from tests.mcp_fixtures import mcp_sandbox, ...``):
``pytest_plugins`` is only allowed in the rootdir conftest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest_asyncio

from activities.mcp import seed_registry
from activities.sandbox_mcp import build_server, serve_http
from tests.conftest import free_port, serve

SITE_PAGES: dict[str, tuple[int, str]] = {
    "/": (200, """<!doctype html>
<html lang="en"><head>
  <title>Acme Bakery | Fresh bread in Springfield</title>
  <meta name="description" content="Sourdough, croissants and cakes baked every morning in Springfield.">
  <style>body { font-family: serif; }</style>
  <script>var tracking = "not words on the page";</script>
</head><body>
  <h1>Acme Bakery</h1>
  <p>Fresh bread baked every morning since 1987.</p>
  <h2>Our breads</h2>
  <p>Sourdough, rye and spelt loaves.</p>
  <h2>Visit us</h2>
  <h3>Opening hours</h3>
  <p>Monday to Saturday, 7 to 19.</p>
  <a href="/about">About us</a> <a href="/contact">Contact</a> <a href="#top">Top</a>
  <a href="https://maps.example.com/acme">Map</a> <a href="mailto:hello@acme.example">Email</a>
</body></html>"""),
    "/about": (200, """<html><head><title>About Acme Bakery</title></head>
<body><h1>About us</h1><p>A family bakery.</p><a href="/">Home</a></body></html>"""),
    "/old-home": (301, "/"),
}


async def fixture_site_app(scope: dict, receive, send) -> None:  # noqa: ANN001 - raw ASGI
    """A few HTML pages, a redirect and a 404: what fetch_web_page audits."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    status, body = SITE_PAGES.get(scope["path"], (404, "<html><head><title>Not found</title></head><body><h1>Not found</h1></body></html>"))
    if status == 301:
        headers = [(b"location", body.encode())]
        body = ""
    else:
        headers = [(b"content-type", b"text/html; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})


@pytest_asyncio.fixture(scope="module")
async def fixture_site() -> AsyncIterator[str]:
    async with serve(fixture_site_app) as url:
        yield url


@asynccontextmanager
async def serve_sandbox(db: asyncpg.Pool, port: int | None = None) -> AsyncIterator[str]:
    """The sandbox MCP server, in-process, on a loopback port (free unless given); yields its
    MCP endpoint URL."""
    port = port or free_port()
    async with serve_http(build_server(db, port=port), port=port) as url:
        yield url


@pytest_asyncio.fixture(scope="module")
async def mcp_sandbox(db: asyncpg.Pool) -> AsyncIterator[str]:
    """The sandbox on a free port, and the registry's ``sandbox`` entry pointing at it."""
    async with serve_sandbox(db) as url:
        await seed_registry(db, urls={"sandbox": url})
        yield url
