"""Lago: the activities of the integrations queue that keep a tenant's Lago customer and
subscription and report its LLM usage.

- ``lago.create_customer`` / ``lago.create_subscription``: Lago upserts on ``external_id``;
  both use the tenant id, so usage events name the tenant as their subscription.
- ``lago.paid_invoices``: the invoices of some tenants that were issued in a period and are
  paid (``payment_status=succeeded``), page by page (the Affiliate Payout Review's earnings).
- ``lago.report_usage``: one Lago event per ``llm_usage`` row, its idempotency key as the
  ``transaction_id`` (offline calls too, at zero cost and marked ``offline``). Lago keeps one
  event per transaction id (it answers a repeat with 422 ``value_already_exist``), so a retried
  activity never counts a call twice.

Errors: a request Lago refuses (credentials, validation, not found) fails at once
(non-retryable ``Lago...`` types, ``lago_failure``); an outage, a rate limit or a 5xx is
retried by the activity's retry policy. The SDK's own retries are off: Temporal owns retrying.
The SDK loads when ``LagoActivities`` is built, so workflows import the payload types from
here cheaply.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Callable, TypeVar

import asyncpg
import httpx
import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.activity import Activities, ActivityPolicy, with_policy
from core.names import INTEGRATIONS_QUEUE, SLUG_PATTERN
from core.policies import BILLING, BILLING_RETRY

if TYPE_CHECKING:
    from lago_python_client.client import Client as LagoClient

    from core.settings import Settings

T = TypeVar("T")

# The Lago billable metric of LLM usage (sum of tokens or cost, as the plan says).
USAGE_METRIC_CODE = "ai_tokens"
# Per Lago request (the client sends events with no timeout unless told).
LAGO_REQUEST_TIMEOUT = httpx.Timeout(10.0)

TenantId = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]


# --- Payloads ----------------------------------------------------------------------------

class CreateLagoCustomer(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: TenantId
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    email: str | None = None
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] = "USD"
    timezone: str | None = None


class LagoCustomer(msgspec.Struct, frozen=True, kw_only=True):
    lago_customer_id: str
    external_id: str


class CreateLagoSubscription(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: TenantId
    plan_code: Annotated[str, msgspec.Meta(min_length=1)]
    # Usage events name the subscription by the tenant id: keep the default.
    external_id: str | None = None


class LagoSubscription(msgspec.Struct, frozen=True, kw_only=True):
    lago_subscription_id: str
    external_id: str
    plan_code: str | None = None
    status: str | None = None


class ReportUsage(msgspec.Struct, frozen=True, kw_only=True):
    # None: every tenant. Empty usage_ids: every unreported row (of the tenant).
    tenant_id: str | None = None
    usage_ids: list[int] = msgspec.field(default_factory=list)
    limit: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 500
    # With usage_ids: also every unreported row of this workflow and of its children
    # (`{workflow_id}:…`), e.g. the calls of an agent attempt that died.
    workflow_id: str | None = None
    # Only rows recorded before this time (the platform's sweep leaves the newest rows to the
    # workflows that are still running).
    created_before: datetime | None = None


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    usage_ids: list[int]  # rows now marked reported
    sent: int  # events Lago accepted as new
    duplicates: int  # events Lago already had (a retry after a crash)
    more: bool  # the limit was reached: call again for the rest


class PaidInvoicesRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_ids: Annotated[list[TenantId], msgspec.Meta(max_length=10_000)]
    issued_from: date  # inclusive
    issued_to: date  # inclusive


class PaidInvoice(msgspec.Struct, frozen=True, kw_only=True):
    lago_id: str
    number: str
    tenant_id: str  # the Lago customer's external id
    currency: str
    amount_cents: int  # before taxes: what commissions are a share of
    issuing_date: date


class PaidInvoices(msgspec.Struct, frozen=True, kw_only=True):
    invoices: list[PaidInvoice]


# Invoices per page of a listing (Lago's maximum).
INVOICES_PAGE = 100
# A review lists every referred tenant's invoices, page by page: long, so it heartbeats.
LISTING = ActivityPolicy(start_to_close=timedelta(minutes=30), heartbeat=timedelta(minutes=1), retry=BILLING_RETRY)


# --- Activities --------------------------------------------------------------------------

def lago_failure(err: Exception) -> ApplicationError:
    """A Lago (or transport) error as the activity's failure."""
    from lago_python_client.exceptions import LagoApiError

    if isinstance(err, LagoApiError):
        status = err.status_code
        body = err.response if isinstance(err.response, dict) else {}
        kind = {401: "LagoUnauthorized", 403: "LagoForbidden", 404: "LagoNotFound", 422: "LagoValidationError"}
        retryable = status in (408, 409, 429) or status >= 500
        return ApplicationError(
            f"Lago: {body.get('error') or err.detail} (status {status}, code {body.get('code')})",
            {"http_status": status, "code": body.get("code"), "error_details": body.get("error_details")},
            type=kind.get(status, "LagoApiError"),
            non_retryable=not retryable,
        )
    return ApplicationError(f"Lago unreachable: {err!r}", type="LagoUnavailable")


def _is_duplicate_event(err: Exception) -> bool:
    body = err.response if isinstance(err.response, dict) else {}
    details = body.get("error_details") or {}
    return getattr(err, "status_code", None) == 422 and "value_already_exist" in (details.get("transaction_id") or [])


def lago_api_url(url: str | None) -> str:
    """Lago joins ``api/v1/`` to the address: a path prefix needs its trailing slash."""
    if not url:
        return ""  # the client's default: Lago Cloud
    return url if url.endswith("/") else url + "/"


class LagoActivities(Activities):
    """One Lago client (sync httpx, run in threads) and the pool; integrations queue."""
    task_queue = INTEGRATIONS_QUEUE
    default_policy = BILLING

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        from lago_python_client.client import Client as LagoClient
        from lago_python_client.exceptions import LagoApiError

        self._errors: tuple[type[Exception], ...] = (LagoApiError, httpx.TransportError)
        conf = settings.lago
        self._pool = pool
        self._client: LagoClient | None = None
        if conf.api_key is not None:
            self._client = LagoClient(
                api_key=conf.api_key.get_secret_value(),
                api_url=lago_api_url(conf.api_url),
                max_retries=0,
                retry_on_rate_limit=False,
            )

    @property
    def client(self) -> LagoClient:
        if self._client is None:
            raise ApplicationError(
                "Lago is not configured (BIZ_LAGO_API_KEY)", type="LagoNotConfigured", non_retryable=True
            )
        return self._client

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except self._errors as err:
            raise lago_failure(err) from err

    @activity.defn(name="lago.create_customer")
    async def create_customer(self, req: CreateLagoCustomer) -> LagoCustomer:
        from lago_python_client.models.customer import Customer as LagoCustomerInput

        customer = await self._call(
            self.client.customers.create,
            LagoCustomerInput(
                external_id=req.tenant_id, name=req.name, email=req.email,
                currency=req.currency, timezone=req.timezone,
            ),
        )
        if customer is None:
            raise ApplicationError("Lago answered no customer", type="LagoApiError")
        return LagoCustomer(lago_customer_id=customer.lago_id, external_id=customer.external_id)

    @activity.defn(name="lago.create_subscription")
    async def create_subscription(self, req: CreateLagoSubscription) -> LagoSubscription:
        from lago_python_client.models.subscription import Subscription as LagoSubscriptionInput

        sub = await self._call(
            self.client.subscriptions.create,
            LagoSubscriptionInput(
                external_customer_id=req.tenant_id,
                plan_code=req.plan_code,
                external_id=req.external_id or req.tenant_id,
            ),
        )
        if sub is None:
            raise ApplicationError("Lago answered no subscription", type="LagoApiError")
        return LagoSubscription(
            lago_subscription_id=sub.lago_id, external_id=sub.external_id or req.tenant_id,
            plan_code=sub.plan_code, status=sub.status,
        )

    @with_policy(LISTING)
    @activity.defn(name="lago.paid_invoices")
    async def paid_invoices(self, req: PaidInvoicesRequest) -> PaidInvoices:
        """The paid invoices of these tenants issued from ``issued_from`` to ``issued_to``,
        oldest first (voided and draft invoices are not ``finalized``: left out)."""
        client = self.client
        found: list[PaidInvoice] = []
        for tenant_id in sorted(set(req.tenant_ids)):
            page = 1
            while page:
                listing = await self._call(client.invoices.find_all, {
                    "external_customer_id": tenant_id, "status": "finalized", "payment_status": "succeeded",
                    "issuing_date_from": req.issued_from.isoformat(), "issuing_date_to": req.issued_to.isoformat(),
                    "page": page, "per_page": INVOICES_PAGE})
                for inv in listing["invoices"]:
                    issued = date.fromisoformat(inv.issuing_date) if inv.issuing_date else None
                    if issued is None or not req.issued_from <= issued <= req.issued_to:
                        continue
                    found.append(PaidInvoice(lago_id=inv.lago_id, number=inv.number, tenant_id=tenant_id,
                                             currency=inv.currency.upper(), issuing_date=issued,
                                             amount_cents=inv.sub_total_excluding_taxes_amount_cents))
                page = (listing.get("meta") or {}).get("next_page") or 0
            if activity.in_activity():
                activity.heartbeat(tenant_id)
        found.sort(key=lambda i: (i.issuing_date, i.lago_id))
        return PaidInvoices(invoices=found)

    @activity.defn(name="lago.report_usage")
    async def report_usage(self, req: ReportUsage) -> UsageReport:
        """Send unreported, billable usage rows as Lago events, then mark them reported."""
        from lago_python_client.models.event import Event as LagoEvent

        client = self.client
        rows = await self._pool.fetch(
            """SELECT id, idempotency_key, tenant_id, workflow_id, agent, model,
                      provider, offline, tokens_in, tokens_out, cost_usd, created_at
               FROM llm_usage
               WHERE reported_to_lago_at IS NULL
                 AND ($1::text IS NULL OR tenant_id = $1)
                 AND (cardinality($2::bigint[]) = 0 OR id = ANY($2::bigint[])
                      OR workflow_id = $4 OR starts_with(workflow_id, $4 || ':'))
                 AND ($5::timestamptz IS NULL OR created_at < $5)
               ORDER BY id
               LIMIT $3""",
            req.tenant_id, req.usage_ids, req.limit, req.workflow_id, req.created_before,
        )
        sent = duplicates = 0
        marked: list[int] = []
        for row in rows:
            event = LagoEvent(
                transaction_id=row["idempotency_key"],
                external_subscription_id=row["tenant_id"],
                code=USAGE_METRIC_CODE,
                timestamp=_unix(row["created_at"]),
                properties={
                    "tokens_in": row["tokens_in"],
                    "tokens_out": row["tokens_out"],
                    "cost_usd": str(row["cost_usd"]),
                    "model": row["model"],
                    "provider": row["provider"],
                    "offline": row["offline"],
                    "agent": row["agent"],
                    "workflow_id": row["workflow_id"],
                },
            )
            try:
                await asyncio.to_thread(client.events.create, event, LAGO_REQUEST_TIMEOUT)
                sent += 1
            except self._errors as err:
                if not _is_duplicate_event(err):
                    raise lago_failure(err) from err
                duplicates += 1  # sent before, by an attempt that died before marking it
            await self._pool.execute(
                "UPDATE llm_usage SET reported_to_lago_at = now() WHERE id = $1 AND reported_to_lago_at IS NULL",
                row["id"],
            )
            marked.append(row["id"])
            if activity.in_activity():
                activity.heartbeat(row["id"])
        return UsageReport(usage_ids=marked, sent=sent, duplicates=duplicates, more=len(rows) == req.limit)


def _unix(ts: datetime) -> int:
    return int(ts.timestamp())
