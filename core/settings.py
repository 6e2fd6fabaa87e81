"""Settings of every BizOSaaS process, from the environment (prefix ``BIZ_``) and ``.env``.

Each concern is one nested model; an environment variable names the concern and then the
field, e.g. ``BIZ_TEMPORAL_ADDRESS``, ``BIZ_DATABASE_URL``, ``BIZ_AUTH_DEV_SECRET``.
Entry points call :func:`load_settings` once and pass the result down; nothing reads the
environment at import time.

Nothing is open by default: ``BIZ_ENVIRONMENT`` has no default (an install that sets nothing
refuses to start and says what to set), dev auth needs ``BIZ_ENVIRONMENT=dev`` and a secret of
its own, and production needs OIDC and the payload codec's keys.
"""

from __future__ import annotations

import base64
import re
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(ValueError):
    """A setting missing or unsafe for this environment: the process refuses to start, and the
    message names the variable to set (never a secret's value)."""


# The dev secret earlier releases shipped as a default, published in their source: tokens signed
# with it are anyone's, so it (like any short secret) is refused on a non-loopback bind.
PUBLISHED_DEV_SECRETS = frozenset({"bizosaas-dev-secret-change-me-in-production"})
MIN_DEV_SECRET_LENGTH = 32


class TemporalSettings(BaseModel):
    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    # mTLS (self-hosted clusters, Temporal Cloud with certificates): PEM file paths.
    tls: bool = False
    tls_server_root_ca: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None
    tls_server_name: str | None = None
    # Temporal Cloud API key (implies TLS).
    api_key: SecretStr | None = None


class DatabaseSettings(BaseModel):
    # None means: `bizosaas dev` starts an embedded Postgres in the state dir.
    url: SecretStr | None = None
    pool_min: int = 1
    pool_max: int = 10
    # A statement running longer is cancelled (asyncio.TimeoutError); migrations are not bound.
    command_timeout_seconds: float = Field(default=30.0, gt=0)
    # Whether the API and workers apply missing migrations when they start. Off: they only check
    # the schema and refuse to start behind it; `bizosaas migrate` is the release step that
    # applies them (`bizosaas dev` runs it itself).
    migrate_on_start: bool = False


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None
    # Workflow starts per tenant (POST /v1/workflows/{capability}): a token bucket refilled at
    # this rate, holding at most `start_burst`; over it, 429 with Retry-After. Each API
    # process keeps its own buckets (api/ratelimit.py).
    start_rate_per_minute: float = Field(default=30.0, gt=0)
    start_burst: int = Field(default=20, ge=1)
    # Signs list cursors (the API takes back only cursors it issued); unset: derived from the database URL.
    cursor_secret: SecretStr | None = None
    # How long a decision waits for the workflow's worker before answering 503 (Retry-After).
    decision_timeout_seconds: float = Field(default=10.0, gt=0)


class AuthSettings(BaseModel):
    # `dev`: HS256 tokens signed with dev_secret (and `bizosaas token` mints them), only with
    # BIZ_ENVIRONMENT=dev. `oidc`: RS256 tokens verified against the issuer's JWKS (audience required).
    mode: Literal["dev", "oidc"] = "dev"
    # No default: `bizosaas dev` keeps a random one in its state dir.
    dev_secret: SecretStr | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    # The console's sign-in (authorization code + PKCE): the issuer's endpoints and this
    # application's client id (and secret, for a confidential client).
    oidc_authorization_url: str | None = None
    oidc_token_url: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    token_ttl_hours: int = 24


class ConsoleSettings(BaseModel):
    # Signs the console's session cookie. Unset: derived from the dev secret in dev mode; with
    # OIDC the console's sign-in is off until it is set (and the BIZ_AUTH_OIDC_* client settings).
    session_secret: SecretStr | None = None
    # A session lasts at most this long, and never past the token it holds.
    session_hours: float = Field(default=12.0, gt=0)


DECISION_KEY_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"


class DecisionSettings(BaseModel):
    # Keys that sign deciders (key id -> secret; JSON in BIZ_DECISION_KEYS). The first signs
    # (the API, `bizosaas approvals decide`), every one verifies (workers): to rotate, put a new
    # key first, keep the old one until its signed decisions have expired (at most a day).
    keys: dict[str, SecretStr] = {}

    @field_validator("keys")
    @classmethod
    def _strong_keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key_id, secret in keys.items():
            if not re.fullmatch(DECISION_KEY_ID_PATTERN, key_id):
                raise ValueError(f"decision key id {key_id!r} must match {DECISION_KEY_ID_PATTERN}")
            if len(secret.get_secret_value()) < 32:
                raise ValueError(f"decision key {key_id!r} is shorter than 32 characters")
        return keys

    def signing_key(self) -> tuple[str, bytes]:
        """``(key id, secret)`` of the key that signs; LookupError when none is configured."""
        for key_id, secret in self.keys.items():
            return key_id, secret.get_secret_value().encode()
        raise LookupError("no decision signing key: set BIZ_DECISION_KEYS (JSON: key id -> secret); in dev, "
                          "`bizosaas dev` makes one in its state dir")


class AiSettings(BaseModel):
    # The monthly AI budget (USD) of a tenant without a tenant_budgets row; None: unlimited.
    default_monthly_budget_usd: Decimal | None = Field(default=Decimal("50"), ge=0)


class CodecSettings(BaseModel):
    # AES-256-GCM keys of the Temporal payload codec: "kid:base64key" (32 bytes), comma-separated,
    # or a JSON list of such strings. The first encrypts, every one decrypts (rotation: add the new
    # key first, drop the old one once no history needs it). Required in production; `bizosaas dev`
    # keeps one in its state dir.
    keys: SecretStr | None = None
    # Browser origins that may call /codec (the Temporal UI), JSON list in BIZ_CODEC_CORS_ORIGINS.
    cors_origins: list[str] = ["http://127.0.0.1:8233", "http://localhost:8233"]


LLM_PROVIDERS = ("offline", "openai")


class LlmSettings(BaseModel):
    # `offline`: deterministic answers, no network. `openai`: the OpenAI Chat Completions API at
    # `base_url` (OpenAI itself when unset), which every model server the platform targets speaks:
    # Ollama, vLLM, a LiteLLM proxy (in front of Anthropic, Gemini, Bedrock, Azure...), and the
    # OpenAI-compatible endpoints of the hosted providers. Both the tool agent's step (LangChain)
    # and the crews (CrewAI) use it, so one setting reaches one model server.
    provider: Literal["offline", "openai"] = "offline"
    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str = "gpt-4o-mini"

    @field_validator("provider", mode="before")
    @classmethod
    def _known_provider(cls, value: object) -> object:
        if value not in LLM_PROVIDERS:
            raise ValueError(
                "BIZ_LLM_PROVIDER must be `offline` or `openai`. `openai` talks to any OpenAI-compatible "
                "server at BIZ_LLM_BASE_URL (OpenAI, Ollama, vLLM, a LiteLLM proxy); reach other providers "
                "(Anthropic, Gemini, Bedrock...) through their OpenAI-compatible endpoint or a LiteLLM proxy, "
                "and name the model in BIZ_LLM_MODEL")
        return value


class StripeSettings(BaseModel):
    api_base: str | None = None
    api_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None


class LagoSettings(BaseModel):
    api_url: str | None = None
    api_key: SecretStr | None = None
    # The organization's HMAC key: webhooks signed `hmac` (X-Lago-Signature-Algorithm).
    webhook_secret: SecretStr | None = None
    # Lago's RSA public key: webhooks signed `jwt` (Lago's default). PEM, or the base64 of the PEM
    # that Lago's `GET /api/v1/webhooks/public_key` answers. Public: not a secret.
    webhook_public_key: str | None = None

    @field_validator("webhook_public_key")
    @classmethod
    def _an_rsa_public_key(cls, value: str | None) -> str | None:
        """The key as PEM text; a value that is no RSA public key fails at start, not per delivery."""
        if value is None or not value.strip():
            return None
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        text = value.strip()
        if not text.startswith("-----BEGIN"):
            try:
                text = base64.b64decode(text, validate=True).decode().strip()
            except (ValueError, UnicodeDecodeError):
                raise ValueError("BIZ_LAGO_WEBHOOK_PUBLIC_KEY is neither a PEM key nor the base64 of one") from None
        try:
            key = load_pem_public_key(text.encode())
        except ValueError:
            raise ValueError("BIZ_LAGO_WEBHOOK_PUBLIC_KEY is not a PEM public key") from None
        if not isinstance(key, RSAPublicKey):
            raise ValueError("BIZ_LAGO_WEBHOOK_PUBLIC_KEY is not an RSA key (Lago signs with RS256)")
        return text + "\n"


class ShopifySettings(BaseModel):
    # The app's client secret: X-Shopify-Hmac-Sha256 of every webhook is an HMAC with it.
    webhook_secret: SecretStr | None = None


class WebhooksSettings(BaseModel):
    # A delivery the sender dates (Stripe `created`, X-Shopify-Triggered-At) older than this is
    # refused; within it, a replay answers 200 "duplicate". Above the senders' retry spans
    # (Stripe 3 days, Shopify 4 hours).
    replay_window_hours: int = Field(default=72, ge=1)
    # How long the inbox keeps accepted events (and so remembers them as already seen).
    inbox_retention_days: int = Field(default=30, ge=1)

    @model_validator(mode="after")
    def _retention_covers_the_window(self) -> WebhooksSettings:
        if self.inbox_retention_days * 24 < self.replay_window_hours:
            raise ValueError("BIZ_WEBHOOKS_INBOX_RETENTION_DAYS must cover BIZ_WEBHOOKS_REPLAY_WINDOW_HOURS")
        return self


class FetchSettings(BaseModel):
    """Where the sandbox's fetch_web_page and WordPress tools may connect (activities/netguard.py),
    and which WordPress site addresses the connections API takes. By default only
    public addresses on web ports: loopback and private networks are for `bizosaas dev` and tests."""

    # Loopback, RFC 1918, CGNAT and IPv6 unique-local addresses, on any port.
    allow_private_networks: bool = False
    # Networks opened explicitly, as JSON: ["10.1.0.0/16", "127.0.0.1/32:8081"] (CIDR[:port]).
    allowed_networks: list[str] = []
    # Ports a public address may be fetched on (JSON list).
    public_ports: list[int] = [80, 443, 8080, 8443]


class OutboundWebhookSettings(BaseModel):
    """Where a tenant's outbound webhook endpoints may point (activities/netguard.py), checked when
    an endpoint is registered and again at every delivery: by default only public addresses on
    web ports; `bizosaas dev` and the tests open loopback and private networks."""

    allow_private_networks: bool = False
    # Networks opened explicitly, as JSON: ["10.1.0.0/16", "127.0.0.1/32:8081"] (CIDR[:port]).
    allowed_networks: list[str] = []
    public_ports: list[int] = [80, 443, 8080, 8443]
    # One attempt of one delivery (connect, send, answer).
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # After a secret is rotated, the previous one keeps signing (a second signature) this long.
    rotation_overlap_hours: int = Field(default=24, ge=0, le=24 * 30)


class SmtpSettings(BaseModel):
    """The platform's SMTP server for the ``send_email`` tool (sandboxes/mcp/messaging.py). Unset
    host: mail is only recorded in the outbox. A tenant's own server (table ``tenant_smtp``)
    overrides it for that tenant."""

    host: str | None = None
    port: int = Field(default=25, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    security: Literal["none", "starttls", "tls"] = "none"
    from_address: str = "BizOSaaS <no-reply@bizosaas.localhost>"
    timeout_seconds: float = Field(default=15.0, gt=0)


class NotifySettings(BaseModel):
    """Notifications of approval events (activities/notify.py) and their one-click links."""

    # Signs the links in emails (HMAC-SHA256); unset: derived from the first of BIZ_DECISION_KEYS.
    link_secret: SecretStr | None = None
    link_ttl_hours: int = Field(default=72, ge=1, le=24 * 30)
    # Where links point (the API's public address); unset: BIZ_API_PUBLIC_URL, else http://host:port.
    base_url: str | None = None
    # Platform staff who hear about admin approvals, per role (JSON: {"admin": ["ops@example.com"]}).
    platform_recipients: dict[str, list[str]] = {}
    # Channels used for every event: email and in_app are built in; webhook when wired in.
    channels: list[str] = ["email", "in_app"]


class OtelSettings(BaseModel):
    # The OTLP/HTTP traces URL. Unset: the standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT /
    # OTEL_EXPORTER_OTLP_ENDPOINT (and OTEL_EXPORTER_OTLP_HEADERS...) apply; neither set: no export.
    otlp_endpoint: str | None = None
    # Unset: OTEL_SERVICE_NAME, else "bizosaas". Sampling follows OTEL_TRACES_SAMPLER(_ARG).
    service_name: str | None = None
    # A client span per Postgres statement (asyncpg) and per outbound HTTP request (httpx: Lago,
    # Stripe, MCP servers, outbound webhooks, fetched pages), under the activity or request that
    # made it. Unset: on when spans are exported (an OTLP endpoint is named), off otherwise: they
    # cost some 60-100 us of CPU per statement and 0.3 ms per request, which a process that exports nothing should not pay.
    instrument_clients: bool | None = None


class WorkerSettings(BaseModel):
    graceful_shutdown_seconds: float = 30.0
    # The worker process's Prometheus endpoint (http://HOST:PORT/metrics): the Temporal SDK's
    # metrics per task queue. Unset or 0: none. One port per worker process.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value in ("", 0, "0") else value

    def metrics_bind(self) -> str | None:
        """``host:port`` of the Prometheus endpoint, or None when off."""
        return f"{self.metrics_host}:{self.metrics_port}" if self.metrics_port else None
    # Workflows a worker keeps in memory between their tasks (Temporal's sticky cache), per task
    # queue. Each costs about 0.1-0.2 MB (its sandbox and state); a workflow evicted from the
    # cache is replayed from its history at its next task, which for a workflow waiting hours
    # for a person is cheap. bench/bench_memory.py measures it (bench/README.md).
    max_cached_workflows: int = Field(default=500, ge=0)
    max_concurrent_activities: int = 100
    agents_max_concurrent: int = 2
    integrations_max_per_second: float = 20.0
    # Override the URL of servers in mcp-servers.yaml by name, e.g. {"sandbox": "http://..."}
    # (JSON in BIZ_WORKER_MCP_URLS).
    mcp_urls: dict[str, str] = {}
    # Worker Versioning (README: Restarts, deploys and versioning): both set, or neither.
    deployment_name: str | None = None
    build_id: str | None = None
    versioning_behavior: Literal["auto_upgrade", "pinned"] = "auto_upgrade"


class DevSettings(BaseModel):
    state_dir: Path = Path(".bizosaas")
    config_file: Path = Path("temporal-dev.yaml")
    # Override the ports of temporal-dev.yaml (e.g. two stacks on one machine). The HTTP and
    # metrics ports of a moved dev server are free ports unless set.
    temporal_port: int | None = None
    ui_port: int | None = None
    temporal_http_port: int | None = None
    temporal_metrics_port: int | None = None
    demo_tenant: str = "demo"
    # The sandboxes `bizosaas dev` runs at the network edge (loopback only): the sandbox MCP
    # server, and the Stripe and Lago sandboxes unless BIZ_STRIPE_API_KEY / BIZ_LAGO_API_KEY
    # name real services.
    mcp_port: int = 8765
    lago_port: int = 8766
    stripe_port: int = 8767
    # The SMTP sink `bizosaas dev` runs (aiosmtpd): every mail sent lands there, listed by
    # GET /v1/dev/mail. `mail_dir` (a Maildir) is where the sink keeps them; the API reads it.
    smtp_port: int = 8025
    mail_dir: Path | None = None
    # The WordPress sandbox (sandboxes/wordpress.py) `bizosaas dev` runs and connects the demo
    # tenant to; its posts are kept in the state dir.
    wordpress_port: int = 8768


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BIZ_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
        hide_input_in_errors=True,  # a refused setting is named, its value (maybe a secret) never shown
    )

    # No default: `bizosaas dev` and the tests choose dev; a deployment says production.
    environment: Literal["dev", "production"] | None = None
    log_level: str = "INFO"
    # `text` (one line per record) or `json` (one object per line, with trace_id and span_id).
    log_format: Literal["text", "json"] = "text"
    temporal: TemporalSettings = Field(default_factory=TemporalSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    codec: CodecSettings = Field(default_factory=CodecSettings)
    decision: DecisionSettings = Field(default_factory=DecisionSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    ai: AiSettings = Field(default_factory=AiSettings)
    stripe: StripeSettings = Field(default_factory=StripeSettings)
    lago: LagoSettings = Field(default_factory=LagoSettings)
    shopify: ShopifySettings = Field(default_factory=ShopifySettings)
    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    outbound: OutboundWebhookSettings = Field(default_factory=OutboundWebhookSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    otel: OtelSettings = Field(default_factory=OtelSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    dev: DevSettings = Field(default_factory=DevSettings)

    def database_url(self) -> str:
        if self.database.url is None:
            raise RuntimeError(
                "BIZ_DATABASE_URL is not set (only `bizosaas dev` starts an embedded Postgres)"
            )
        return self.database.url.get_secret_value()

    def link_base_url(self) -> str:
        """Where the links in notifications point."""
        url = self.notify.base_url or self.api.public_url or f"http://{self.api.host}:{self.api.port}"
        return url.rstrip("/")

    def link_secret(self) -> bytes | None:
        """The key that signs one-click links: BIZ_NOTIFY_LINK_SECRET, else one derived from the
        decision signing key; None when neither is set (emails then carry the console link only)."""
        if self.notify.link_secret is not None:
            return self.notify.link_secret.get_secret_value().encode()
        try:
            _, secret = self.decision.signing_key()
        except LookupError:
            return None
        import hashlib
        import hmac

        return hmac.new(secret, b"bizosaas one-click links v1", hashlib.sha256).digest()

    def require_environment(self) -> Literal["dev", "production"]:
        """The environment, which every process needs said explicitly."""
        if self.environment is None:
            raise ConfigError(
                "BIZ_ENVIRONMENT is not set: set BIZ_ENVIRONMENT=production (with BIZ_AUTH_MODE=oidc, the "
                "BIZ_AUTH_OIDC_* settings, BIZ_CODEC_KEYS and BIZ_DECISION_KEYS), or run `bizosaas dev` for a platform on this machine"
            )
        return self.environment

    def require_decision_keys(self) -> None:
        """Production signs deciders (API) and verifies them (workers): it refuses to run without
        BIZ_DECISION_KEYS. Dev without keys runs, and refuses every decision."""
        if not self.decision.keys and self.environment == "production":
            raise ConfigError(
                "BIZ_DECISION_KEYS is not set: production signs and verifies every decider; set it to a JSON "
                "object of key id -> secret (32+ characters), the same on the API and the workers, e.g. "
                "BIZ_DECISION_KEYS='{\"d1\": \"<output of openssl rand -base64 32>\"}'"
            )


def load_settings(**overrides: object) -> Settings:
    """Read settings once, in an entry point."""
    return Settings(**overrides)  # type: ignore[arg-type]
