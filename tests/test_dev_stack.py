"""The run command as a user runs it: `bizosaas dev` on embedded defaults, stopped and restarted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from tests.conftest import ROOT, assert_eventually, free_port, unique
from workers.dev import CODEC_KEYS_FILE, DECISION_KEYS_FILE, DEV_SECRET_FILE
from workers.devcluster import temporal_cli

pytestmark = pytest.mark.long(seconds=60)

READY = re.compile(r"BizOSaaS Workflows is up \(([\d.]+) s to healthy\)")


class Stack:
    def __init__(self, state_dir: Path, tenant: str) -> None:
        self.temporal_port, self.ui_port, self.api_port = free_port(), free_port(), free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BIZ_")},
            "BIZ_DEV_STATE_DIR": str(state_dir),
            "BIZ_DEV_TEMPORAL_PORT": str(self.temporal_port),
            "BIZ_DEV_UI_PORT": str(self.ui_port),
            "BIZ_API_PORT": str(self.api_port),
            "BIZ_DEV_DEMO_TENANT": tenant,
            "BIZ_DEV_MCP_PORT": str(free_port()),
            "BIZ_DEV_STRIPE_PORT": str(free_port()),
            "BIZ_DEV_LAGO_PORT": str(free_port()),
            "BIZ_DEV_TEMPORAL_HTTP_PORT": str(free_port()),
            "BIZ_DEV_TEMPORAL_METRICS_PORT": str(free_port()),
            "BIZ_DEV_SMTP_PORT": str(free_port()),
            "BIZ_DEV_WORDPRESS_PORT": str(free_port()),
        }
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.proc: subprocess.Popen | None = None
        self.output: list[str] = []

    def start(self) -> tuple[float, dict[str, str]]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "dev"], cwd=ROOT, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 90
        banner: dict[str, str] = {}
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if m := READY.search(line):
                elapsed = float(m[1])
                # The banner follows: collect it up to its last line.
                while "Ctrl-C stops everything" not in line:
                    line = self.proc.stdout.readline()
                    self.output.append(line)
                    if line.strip().startswith(("Postgres", "Temporal UI", "OpenAPI docs", "psql", "Metrics",
                                                "Console", "WordPress")):
                        key, _, value = line.strip().partition("  ")
                        banner[key] = value.strip()
                    if line.strip().startswith("export BIZ_"):
                        key, _, value = line.strip().removeprefix("export ").partition("=")
                        banner[key] = value
                return elapsed, banner
        raise AssertionError("dev stack did not come up:\n" + "".join(self.output[-60:]))

    def token(self, role: str, tenant: str | None = None) -> str:
        """`bizosaas token` as a user runs it beside the stack: dev said, the stack's state dir."""
        out = subprocess.run(
            [sys.executable, "-m", "workers.cli", "token", "--role", role, *(["--tenant", tenant] if tenant else [])],
            cwd=ROOT, env={**self.env, "BIZ_ENVIRONMENT": "dev"}, capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def show(self, workflow_id: str, *codec: str) -> dict:
        """`temporal workflow show` of a workflow, as JSON."""
        out = subprocess.run(
            [temporal_cli(), "workflow", "show", "-w", workflow_id, "--address", f"127.0.0.1:{self.temporal_port}",
             "-o", "json", *codec], capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def stop(self) -> list[psutil.Process]:
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGTERM)
        rest, _ = self.proc.communicate(timeout=60)
        self.output.append(rest or "")
        return children


def _processes_using(path: Path) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(path) in cmd:
            found.append(cmd)
    return found


async def _nothing_left_using(state: Path) -> None:
    """No process uses the state dir any more (a stopped server's process may take a moment to
    go: on a loaded machine the embedded Postgres's last processes took more than 10 s)."""
    async def gone() -> None:
        assert _processes_using(state) == []

    await assert_eventually(gone, timeout=30, interval=0.2)


async def test_dev_stack_runs_stops_cleanly_and_keeps_its_data(tmp_path: Path) -> None:
    state = tmp_path / "state"
    tenant = unique("demo")
    stack = Stack(state, tenant)
    elapsed, banner = await asyncio.to_thread(stack.start)
    try:
        assert elapsed < 60
        assert banner["Postgres"].startswith("embedded")
        async with httpx.AsyncClient(base_url=stack.api, timeout=10) as http:
            health = (await http.get("/health")).json()
            assert health["temporal"]["ok"] and health["postgres"]["ok"]
            assert (await http.get("/schema")).status_code == 200
            # The console the banner names asks for a dev token.
            assert banner["Console"].startswith(f"{stack.api}/console")
            login = await http.get("/console/login")
            assert login.status_code == 200 and "Dev token" in login.text
        assert httpx.get(f"http://127.0.0.1:{stack.ui_port}", timeout=10).status_code == 200
        # The psql command the banner prints opens the stack's database.
        psql = subprocess.run([*shlex.split(banner["psql"]), "-tAc", "SELECT 1"], capture_output=True, text=True,
                              timeout=30)
        assert psql.stdout.strip() == "1", psql.stderr
        # The dev webhook secrets it prints sign deliveries the API takes (unset, the source answers 404).
        body = json.dumps({"id": 1, "total_price": "1.00", "currency": "USD", "line_items": []})
        sig = base64.b64encode(hmac.new(banner["BIZ_SHOPIFY_WEBHOOK_SECRET"].encode(), body.encode(),
                                        hashlib.sha256).digest()).decode()
        shop = httpx.post(f"{stack.api}/v1/webhooks/shopify", content=body, timeout=10, headers={
            "X-Shopify-Hmac-Sha256": sig, "X-Shopify-Topic": "shop/update", "X-Shopify-Shop-Domain": "x.myshopify.com"})
        assert shop.status_code == 202, shop.text
        # Dev was chosen by running it: its dev secret, codec key and decision key are made once,
        # owner-only.
        for name in (DEV_SECRET_FILE, CODEC_KEYS_FILE, DECISION_KEYS_FILE):
            assert (state / name).stat().st_mode & 0o777 == 0o600
        admin = await asyncio.to_thread(stack.token, "admin")
        assert httpx.get(f"{stack.api}/v1/outbox", headers={"authorization": f"Bearer {admin}"}, timeout=10).status_code == 200
        decision_keys = json.loads((state / DECISION_KEYS_FILE).read_text())
        assert len(decision_keys) == 1
        # A campaign waits in the client's Pending Actions when the stack stops.
        client_token = await asyncio.to_thread(stack.token, "client", tenant)
        client = {"authorization": f"Bearer {client_token}"}
        async with httpx.AsyncClient(base_url=stack.api, timeout=30) as http:
            r = await http.post("/v1/workflows/campaign", headers=client, json={
                "tenant_id": tenant, "campaign_key": "spring-sale", "goal": "Sell more sourdough this spring",
                "channels": ["google_ads"], "budget_usd": 600, "objective": "sales"})
            assert r.status_code == 202, r.text
            campaign = r.json()["workflow_id"]

            async def waiting() -> None:
                items = (await http.get("/v1/pending-actions", headers=client)).json()["items"]
                assert [a for a in items if a["workflow_id"] == campaign], items

            await assert_eventually(waiting, timeout=90, interval=0.5)
            # The worker's metrics show its workflow tasks and activities per task queue.
            worker_metrics = banner["Metrics"].split("worker ")[1]
            scraped = httpx.get(worker_metrics, timeout=10).text
            assert re.search(r'^temporal_workflow_task_execution_latency\w*\{[^}]*task_queue="biz-workflows"', scraped, re.M)
            assert re.search(r'^temporal_activity_execution_latency\w*\{[^}]*task_queue="biz-agents"', scraped, re.M)
            # Its approval email reached the dev SMTP sink, listed by the dev API, with a link.
            admin_headers = {"authorization": f"Bearer {admin}"}

            async def mailed() -> dict:
                r = await http.get("/v1/dev/mail", headers=admin_headers, params={"to": f"owner@{tenant}.example"})
                assert r.status_code == 200, r.text
                found = [m for m in r.json()["items"] if m["subject"].startswith("Approval needed")]
                assert found, r.json()
                return found[0]

            mail = await assert_eventually(mailed, timeout=60, interval=0.5)
            approve_link = re.search(r"(http://\S+/v1/links/\S+)", mail["text"])[1]
            assert approve_link.startswith(stack.api) and f"{campaign}~creative-1" in mail["text"]
            # The demo tenant's WordPress site is the sandbox the banner names, connected without
            # showing its password; a post written there is kept across the restart below.
            wordpress = (await http.get(f"/v1/tenants/{tenant}/connections/wordpress", headers=client)).json()
            assert wordpress["connected"] and banner["WordPress"].startswith(wordpress["site_url"]), wordpress
            wp_password = (state / "wordpress-sandbox-app-password").read_text().strip()
            assert wp_password not in json.dumps(wordpress)
            wp_post = httpx.post(f"{wordpress['site_url']}/wp-json/wp/v2/posts", auth=("admin", wp_password),
                                 json={"title": "Kept across restarts"}, timeout=10)
            assert wp_post.status_code == 201, wp_post.text
            # The tools the tenant can call, listed by the worker at start-up, each with its server.
            tools = (await http.get(f"/v1/tenants/{tenant}/tools", headers=client)).json()
            assert {"send_email", "upsert_ads_campaign", "fetch_web_page"} <= {
                t["name"] for t in tools["tools"] if t["server"] == "sandbox"}, tools
    finally:
        children = await asyncio.to_thread(stack.stop)

    # SIGTERM leaves nothing behind: no child, no server using the state dir.
    assert stack.proc.returncode == 0, "".join(stack.output[-40:])
    # The console stayed quiet: no library warnings, no tracebacks, per crew call or otherwise.
    console = "".join(stack.output)
    for noise in ("RuntimeDirWarning", "approximate input token count", "Traceback"):
        assert noise not in console, console[-4000:]
    assert children, "the dev stack should have started child processes"
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    await _nothing_left_using(state)

    # Started again: the demo tenant's onboarding workflow and its rows are still there, and the
    # decision key is the same (decisions signed before the restart still verify).
    elapsed, banner = await asyncio.to_thread(stack.start)
    try:
        assert json.loads((state / DECISION_KEYS_FILE).read_text()) == decision_keys
        wf_id = f"{tenant}:onboarding:{tenant}"
        listed = subprocess.run(
            [temporal_cli(), "workflow", "list", "--address", f"127.0.0.1:{stack.temporal_port}", "-o", "json"],
            capture_output=True, text=True, timeout=30,
        )
        runs = [w for w in json.loads(listed.stdout) if w["execution"]["workflowId"] == wf_id]
        assert len(runs) == 1, listed.stdout + listed.stderr  # there, and not onboarded twice
        # The onboarding may have been cut off by the stop: it goes on after the restart.
        conn = await asyncpg.connect(banner["Postgres"].split()[-1])
        try:
            async def tenant_active() -> None:
                assert await conn.fetchval("SELECT status FROM tenants WHERE id = $1", tenant) == "active"

            await assert_eventually(tenant_active, timeout=20)
        finally:
            await conn.close()
        kept = httpx.get(f"{wordpress['site_url']}/wp-json/wp/v2/posts/{wp_post.json()['id']}",
                         params={"context": "edit"}, auth=("admin", wp_password), timeout=10)
        assert kept.json()["title"]["raw"] == "Kept across restarts", kept.text
        # The campaign that waited across the restart is approved from the email's link, and launches.
        async with httpx.AsyncClient(base_url=stack.api, timeout=30) as http:
            r = await http.post(approve_link)
            assert r.status_code == 200 and "Approved" in r.text, r.text

            async def launched() -> None:
                view = (await http.get(f"/v1/workflows/{campaign}", headers=client)).json()
                assert view["status"] == "COMPLETED" and view["result"]["status"] == "launched", view

            await assert_eventually(launched, timeout=60, interval=0.5)
        # The secret survived the restart: a token minted before it still works.
        assert httpx.get(f"{stack.api}/v1/outbox", headers={"authorization": f"Bearer {admin}"}, timeout=10).status_code == 200
        # The onboarding's history: ciphertext to the `temporal` CLI, its input through the codec endpoint.
        email = f"owner@{tenant}.example"
        sealed = stack.show(wf_id)
        assert email not in json.dumps(sealed)
        [sealed_input] = sealed["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"]
        assert base64.b64decode(sealed_input["metadata"]["encoding"]) == b"binary/encrypted"
        clear = stack.show(wf_id, "--codec-endpoint", f"{stack.api}/codec", "--codec-auth", f"Bearer {admin}")
        [clear_input] = clear["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"]
        assert json.loads(base64.b64decode(clear_input["data"]))["owner_email"] == email
    finally:
        await asyncio.to_thread(stack.stop)
    assert stack.proc.returncode == 0
    console = "".join(stack.output)
    for noise in ("RuntimeDirWarning", "approximate input token count", "Traceback"):
        assert noise not in console, console[-4000:]
    await _nothing_left_using(state)
