"""Fixtures at the billing network edge: localstripe and the Lago-compatible server.

Import them explicitly in a test module (``from tests.billing_fixtures import ...``);
``pytest_plugins`` is only allowed in the rootdir conftest.

localstripe keeps its state in a fixed ``/tmp/localstripe.pickle`` (no option moves it) and
binds every interface. The launcher below runs the real localstripe app with that store kept
in memory (nothing read or written under /tmp, so parallel sessions never share or clobber
state) and bound to loopback only, from a fresh temporary working directory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conftest import free_port, serve
from tests.lago_server import LagoState, create_lago_app
from workers.settings import Settings

STRIPE_TEST_KEY = "sk_test_bizosaas"
LAGO_TEST_KEY = "lago-test-key"
LAGO_PREFIX = "/lago"  # served under a path prefix: proves the trailing-slash handling

# localstripe's own app and handlers, its pickle store kept in memory, bound to loopback.
_LOCALSTRIPE = """
import sys
import localstripe.resources as resources
resources.Store.dump_to_disk = lambda self: None
resources.Store.try_load_from_disk = lambda self: None
from aiohttp import web
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


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


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    """A fresh localstripe for the session; its address (``StripeClient`` base address)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bizosaas-localstripe-") as workdir:
        log_path = Path(workdir) / "localstripe.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-c", _LOCALSTRIPE, str(port)],
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


@pytest.fixture(scope="session")
def lago_state() -> LagoState:
    return LagoState(api_key=LAGO_TEST_KEY)


@pytest_asyncio.fixture(scope="session")
async def lago_url(lago_state: LagoState) -> AsyncIterator[str]:
    """The Lago-compatible server on a free loopback port, API under ``/lago/api/v1``.

    The address has no trailing slash on purpose: the activities must add it.
    """
    async with serve(create_lago_app(lago_state, prefix=LAGO_PREFIX)) as url:
        yield f"{url}{LAGO_PREFIX}"


@pytest.fixture(scope="session")
def billing_settings(localstripe_url: str, lago_url: str) -> Settings:
    """Settings naming the two fakes (no Temporal, no database: tests pass their pool)."""
    return Settings(
        _env_file=None,
        stripe={"api_base": localstripe_url, "api_key": STRIPE_TEST_KEY},
        lago={"api_url": lago_url, "api_key": LAGO_TEST_KEY},
    )
