"""Helpers the tests share (not fixtures): ports, ids, eventual assertions, serving an ASGI app,
and the sandboxes at the network edge (the sandbox MCP server, a fixture website, localstripe)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import asyncpg
import uvicorn
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from activities.netguard import FetchPolicy
from sandboxes.mcp.server import build_server, serve_http
from sandboxes.wordpress import WordPressState, WordPressUser, create_wordpress_app
from hitl.protocol import DecisionInput, sign_decision
from core.client import connect
from workers.dev import dev_env  # noqa: F401 - dev said and its secrets as BIZ_*, for processes tests start
from workers.devcluster import free_port  # noqa: F401 - below the outgoing connections' ports, for the tests
from workers.main import build_workers, registrations
from core.settings import LlmSettings, Settings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent

STRIPE_TEST_KEY = "sk_test_bizosaas"
# The suite's decision keys, as after one rotation: test-2 signs, test-1 (the previous key)
# still verifies. test-0 was retired: the workers no longer hold it.
DECISION_KEYS = {"test-2": "decision-key-test-2-0123456789abcdef", "test-1": "decision-key-test-1-0123456789abcdef"}
RETIRED_DECISION_KEY = ("test-0", "decision-key-test-0-0123456789abcdef")
LAGO_TEST_KEY = "lago-test-key"
LAGO_PREFIX = "/lago"  # served under a path prefix: proves the trailing-slash handling

# Tests choose dev explicitly, with a dev secret of their own (never the published one) and a
# payload codec key, so every test's Temporal payloads are encrypted. The codec key is fixed:
# histories the tests record stay readable in later runs.
DEV_TEST_SECRET = secrets.token_urlsafe(32)
CODEC_TEST_KEYS = "test-1:" + base64.b64encode(hashlib.sha256(b"bizosaas test codec key").digest()).decode()


def dev_settings(**fields: object) -> Settings:
    """Settings as the tests run the platform: dev said explicitly, test secret and codec key."""
    base: dict[str, object] = {
        "environment": "dev",
        "auth": {"mode": "dev", "dev_secret": DEV_TEST_SECRET},
        "codec": {"keys": CODEC_TEST_KEYS},
        "decision": {"keys": DECISION_KEYS},  # deciders are signed with the first, verified with any
    }
    return Settings(_env_file=None, **{**base, **fields})  # type: ignore[arg-type]


def signed(d: DecisionInput, workflow_id: str, now: datetime | None = None, *, key: tuple[str, str] | None = None,
           ttl_seconds: int = 600) -> DecisionInput:
    """``d`` signed for ``workflow_id`` as the API signs (the suite's signing key unless ``key``),
    issued at ``now`` (workflow time on the time-skipping server; default the wall clock)."""
    key_id, secret = key or next(iter(DECISION_KEYS.items()))
    issued = int((now or datetime.now(timezone.utc)).timestamp())
    return sign_decision(d, workflow_id=workflow_id, key_id=key_id, secret=secret.encode(), issued_at=issued,
                         ttl_seconds=ttl_seconds)


async def workflow_exists(client: Client, wf_id: str) -> bool:
    try:
        await client.get_workflow_handle(wf_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


def unique(prefix: str = "t") -> str:
    """A fresh slug (tenant ids, business keys)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def add_tenant(db: asyncpg.Pool, prefix: str, timezone: str = "Europe/Paris") -> str:
    """A new active tenant (plan growth, in ``timezone``) with a fresh id from ``prefix``; its id."""
    tenant = unique(prefix)
    await db.execute("""INSERT INTO tenants (id, name, plan, owner_email, timezone, status)
                        VALUES ($1, $1, 'growth', 'owner@example.com', $2, 'active')""", tenant, timezone)
    return tenant


async def assert_eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Retry an async assertion until it passes (visibility is eventually consistent)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(interval)


@asynccontextmanager
async def serve(app: object) -> AsyncIterator[str]:
    """Serve an ASGI app over real HTTP on a free loopback port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the API stopped while starting")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


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


NOT_FOUND_PAGE = "<html><head><title>Not found</title></head><body><h1>Not found</h1></body></html>"


class Site:
    """A small website as a raw ASGI app: ``pages`` maps a path to (status, HTML), or to
    (301, location) for a redirect; other paths are 404. A test may change ``pages`` between runs."""

    def __init__(self, pages: dict[str, tuple[int, str]] | None = None, not_found: str = NOT_FOUND_PAGE) -> None:
        self.pages: dict[str, tuple[int, str]] = dict(pages or {})
        self.not_found = not_found

    async def __call__(self, scope: dict, receive, send) -> None:  # noqa: ANN001 - raw ASGI
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        status, body = self.pages.get(scope["path"], (404, self.not_found))
        if status == 301:
            headers = [(b"location", body.encode())]
            body = ""
        else:
            headers = [(b"content-type", b"text/html; charset=utf-8")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})


# A few HTML pages, a redirect and a 404: what fetch_web_page audits.
fixture_site_app = Site(SITE_PAGES)


# The tests' websites live on loopback: the tests open private networks explicitly, as
# `bizosaas dev` does (BIZ_FETCH_ALLOW_PRIVATE_NETWORKS); production fetches public sites only.
LOOPBACK_SITES = FetchPolicy(allow_private_networks=True)


@asynccontextmanager
async def serve_sandbox(db: asyncpg.Pool, port: int | None = None,
                        fetch_policy: FetchPolicy = LOOPBACK_SITES) -> AsyncIterator[str]:
    """The sandbox MCP server, in-process, on a loopback port (free unless given); yields its
    MCP endpoint URL."""
    port = port or free_port()
    async with serve_http(build_server(db, port=port, fetch_policy=fetch_policy), port=port) as url:
        yield url


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"localstripe exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"localstripe did not listen on port {port} within {timeout} s")


@contextmanager
def run_localstripe() -> Iterator[str]:
    """A fresh localstripe (the Stripe sandbox); yields its address (``StripeClient`` base)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bizosaas-localstripe-") as workdir:
        log_path = Path(workdir) / "localstripe.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sandboxes.stripe", "--port", str(port)],
                cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                try:
                    _wait_for_port(port, proc)
                except RuntimeError as err:
                    raise RuntimeError(f"{err}:\n{log_path.read_text(errors='replace')[-2000:]}") from None
                yield f"http://127.0.0.1:{port}"
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# --- a Temporal namespace of a test's own, and the platform's workers in it ---------------

def in_namespace(settings: Settings, namespace: str, llm: LlmSettings | None = None) -> Settings:
    return settings.model_copy(update={
        "temporal": settings.temporal.model_copy(update={"namespace": namespace}),
        "llm": llm or settings.llm,
    })


async def connect_when_ready(settings: Settings) -> Client:
    client = await connect(settings)

    async def known() -> None:
        try:
            await client.count_workflows()
        except RPCError as err:  # the frontend's namespace cache has not seen it yet
            raise AssertionError(str(err)) from err

    await assert_eventually(known)
    return client


@asynccontextmanager
async def platform_workers(client: Client, settings: Settings, db: asyncpg.Pool, queues: Sequence[str]) -> AsyncIterator[None]:
    """The platform's own workers (``workers.main.registrations`` + ``build_workers``)."""
    regs = registrations(settings, db, queues)
    workers = build_workers(client, settings, regs)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield
    finally:
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
        for reg in regs.values():
            for close in reg.closers:
                await close()


@asynccontextmanager
async def worker_process(
    settings: Settings, queues: Sequence[str], state_dir: Path, log: Path, *, command: Sequence[str] = ("worker",),
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """``bizosaas worker --queue ...`` as a process of its own, configured only by BIZ_* variables
    (a fresh interpreter: nothing of the test process's imports or caches). Stopped with SIGTERM
    (it drains) when the block ends, unless the test stopped it already."""
    llm = settings.llm
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIZ_", "CREWAI_"))}
    env.update({
        "BIZ_TEMPORAL_ADDRESS": settings.temporal.address,
        "BIZ_TEMPORAL_NAMESPACE": settings.temporal.namespace,
        "BIZ_DATABASE_URL": settings.database_url(),
        "BIZ_LLM_PROVIDER": llm.provider,
        "BIZ_LLM_BASE_URL": llm.base_url or "",
        "BIZ_LLM_API_KEY": llm.api_key.get_secret_value() if llm.api_key else "",
        "BIZ_LLM_MODEL": llm.model,
        "BIZ_DEV_STATE_DIR": str(state_dir),
        "BIZ_LOG_LEVEL": "WARNING",
        "BIZ_WORKER_GRACEFUL_SHUTDOWN_SECONDS": "2",
        **dev_env(settings),
        "HOME": str(state_dir),  # CrewAI writes its user settings under $HOME
        "PYTHONUNBUFFERED": "1",
    })
    # The network edge's sandboxes, when the settings name them (Stripe, Lago).
    for name, value in (("BIZ_STRIPE_API_BASE", settings.stripe.api_base), ("BIZ_STRIPE_API_KEY", settings.stripe.api_key),
                        ("BIZ_LAGO_API_URL", settings.lago.api_url), ("BIZ_LAGO_API_KEY", settings.lago.api_key)):
        if value is not None:
            env[name] = value if isinstance(value, str) else value.get_secret_value()
    env.update(extra_env or {})
    args = [a for q in queues for a in ("--queue", q)]
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", *command, *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        await stop_process(proc)


async def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM (a worker drains), then SIGKILL after ``timeout``; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
    return proc.returncode


HISTORIES = ROOT / "tests" / "histories"


async def record_history(handle: WorkflowHandle, name: str) -> None:
    """With ``BIZ_RECORD_HISTORIES=1``: the workflow's history as ``tests/histories/{name}.json``
    (``tests/test_histories.py`` replays every stored history on the current code)."""
    if os.environ.get("BIZ_RECORD_HISTORIES") != "1":
        return
    HISTORIES.mkdir(exist_ok=True)
    history = await handle.fetch_history()
    record = {"workflow_id": history.workflow_id, "history": history.to_json_dict()}
    (HISTORIES / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


async def run_temporal_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``temporal`` CLI (a second client, written by others) against the settings' server
    and namespace."""
    from workers.devcluster import temporal_cli

    cmd = [temporal_cli(), *args, "--address", settings.temporal.address, "--namespace", settings.temporal.namespace]
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)


# --- a tenant's WordPress site ---------------------------------------------------------------

WORDPRESS_USER = "editor"
WORDPRESS_PASSWORD = "Abcd EFGH ijkl MNOP qrst UVWX"  # as WordPress shows an application password


@asynccontextmanager
async def wordpress_site(**kw: object) -> AsyncIterator[WordPressState]:
    """The WordPress sandbox on a free loopback port (its state: posts and terms by id, to assert
    on). A post can be scheduled seconds ahead (WordPress publishes anything under a minute ahead
    at once: ``schedule_min_seconds`` back to 60 restores that)."""
    state = WordPressState(
        users=[WordPressUser(id=1, username=WORDPRESS_USER, name="Editor", application_password=WORDPRESS_PASSWORD)],
        schedule_min_seconds=0, **kw)  # type: ignore[arg-type]
    async with serve(create_wordpress_app(state)) as url:
        state.site_url = url
        yield state


async def connect_wordpress(db: asyncpg.Pool, tenant_id: str, site: WordPressState,
                            password: str = WORDPRESS_PASSWORD) -> None:
    """Connect an existing tenant to ``site`` (the row PUT /v1/tenants/{t}/connections/wordpress writes)."""
    await db.execute(
        """INSERT INTO tenant_wordpress (tenant_id, site_url, username, application_password, updated_by)
           VALUES ($1, $2, $3, $4, 'test')
           ON CONFLICT (tenant_id) DO UPDATE SET site_url = $2, username = $3, application_password = $4""",
        tenant_id, site.site_url, WORDPRESS_USER, password.replace(" ", ""))
