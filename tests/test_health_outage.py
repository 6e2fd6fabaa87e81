"""/health while the Temporal server is down, and after it comes back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from api.app import create_app
from tests.conftest import assert_eventually, dev_settings, free_port, serve
from workers.devcluster import DevCluster, temporal_cli


async def test_health_names_temporal_while_it_is_down_then_recovers(
    tmp_path: Path, dev_cluster: DevCluster, database_url: str
) -> None:
    port = free_port()
    args = [temporal_cli(), *dev_cluster.server_args(tmp_path, frontend_port=port, headless=True)]

    def start_server() -> subprocess.Popen:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    server = start_server()
    settings = dev_settings(temporal={"address": f"127.0.0.1:{port}"}, database={"url": database_url})
    try:
        async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:

            async def status_is(code: int) -> dict:
                r = await http.get("/health")
                assert r.status_code == code, r.text
                return r.json()

            await assert_eventually(lambda: status_is(200), timeout=20)

            server.terminate()
            server.wait(10)
            down = await assert_eventually(lambda: status_is(503), timeout=20)
            assert down["temporal"]["ok"] is False and down["postgres"]["ok"] is True
            assert down["detail"] == "temporal unavailable"

            server = start_server()
            up = await assert_eventually(lambda: status_is(200), timeout=30)
            assert up["temporal"]["ok"] and up["status"] == "ok"
    finally:
        server.terminate()
        server.wait(10)
