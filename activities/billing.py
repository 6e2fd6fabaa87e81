"""Stripe and Lago: the activities of the integrations queue, and the row of a tenant's ids.

- ``stripe.create_customer``: one Stripe customer per tenant. Idempotent twice over: it looks
  for a customer whose metadata names the tenant first, and creates with a Stripe idempotency
  key the workflow derives from its id and step (so a retry within Stripe's 24 h window
  returns the first customer even before search sees it).
- ``stripe.pay_invoice``: one collection attempt on an open invoice (dunning), with a Stripe
  idempotency key from the workflow id and the attempt. A decline is an answer, not a failure:
  it comes back as ``paid=False`` with the decline code; an invoice already paid, void or
  uncollectible comes back as it stands.
- ``lago.create_customer`` / ``lago.create_subscription``: Lago upserts on ``external_id``;
  both use the tenant id, so usage events name the tenant as their subscription.
- ``lago.report_usage``: one Lago event per ``llm_usage`` row, its idempotency key as the
  ``transaction_id`` (offline calls too, at zero cost and marked ``offline``). Lago keeps one event per transaction id (it answers a repeat with 422
  ``value_already_exist``), so a retried activity never counts a call twice.
- ``billing.record_customer`` (workflows queue, Postgres): the ids in ``billing_customers``.

Errors: a request Stripe or Lago refuses (credentials, validation, not found) fails at once
(non-retryable ``Stripe...``/``Lago...`` types); an outage, a rate limit or a 5xx is retried by
the activity's retry policy. The SDKs' own retries are off: Temporal owns retrying.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Callable, TypeVar

import asyncpg
import httpx
import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.activity import Activities
from core.names import INTEGRATIONS_QUEUE, SLUG_PATTERN, WORKFLOWS_QUEUE
from core.policies import BILLING, DB

if TYPE_CHECKING:
    import stripe
    from lago_python_client.client import Client as LagoClient

    from core.settings import Settings

# The SDKs (about 1 s of imports together) load when an activity class is built, so
# workflows and the API can import the payload types from here cheaply.

T = TypeVar("T")

# The Lago billable metric of LLM usage (sum of tokens or cost, as the plan says).
USAGE_METRIC_CODE = "ai_tokens"
# Per Lago request (the client sends events with no timeout unless told).
LAGO_REQUEST_TIMEOUT = httpx.Timeout(10.0)

TenantId = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]  # Stripe's limit


# --- Payloads ----------------------------------------------------------------------------

class CreateStripeCustomer(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: TenantId
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    email: Annotated[str, msgspec.Meta(max_length=512)]
    # "{workflow_id}:stripe.create_customer": from the workflow, never uuid4().
    idempotency_key: IdempotencyKey


class StripeCustomer(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    # False: the tenant's customer already existed (a retry or a second onboarding).
    created: bool


class PayInvoice(msgspec.Struct, frozen=True, kw_only=True):
    # Checked by the activity (a payload that fails to decode would be retried).
    invoice_id: str  # in_...
    # "{workflow_id}:stripe.pay_invoice:{attempt}": from the workflow, never uuid4().
    idempotency_key: str


class InvoicePayment(msgspec.Struct, frozen=True, kw_only=True):
    invoice_id: str
    status: str  # the invoice's status after the attempt: draft, open, paid, uncollectible, void
    paid: bool
    amount_due: int = 0  # in the currency's smallest unit
    currency: str | None = None
    customer_email: str | None = None
    failure_code: str | None = None  # the decline code of a refused payment
    failure_message: str | None = None


INVOICE_ID_PATTERN = r"^in_[A-Za-z0-9]{1,200}$"


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


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    usage_ids: list[int]  # rows now marked reported
    sent: int  # events Lago accepted as new
    duplicates: int  # events Lago already had (a retry after a crash)
    more: bool  # the limit was reached: call again for the rest


class RecordBillingCustomer(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: TenantId
    stripe_customer_id: str | None = None
    lago_customer_id: str | None = None


class BillingCustomerRecord(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    stripe_customer_id: str | None
    lago_customer_id: str | None


# --- Stripe ------------------------------------------------------------------------------

def stripe_failure(err: stripe.StripeError) -> ApplicationError:
    """A Stripe error as the activity's failure: refusals are final, outages are retried."""
    import stripe

    status = err.http_status
    outage = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)
    retryable = isinstance(err, outage) or status in (409, 429) or (status or 0) >= 500
    name = type(err).__name__
    return ApplicationError(
        f"Stripe: {err.user_message or str(err) or name} (status {status}, code {err.code})",
        {"http_status": status, "code": err.code, "request_id": err.request_id},
        type=name if name.startswith("Stripe") else f"Stripe{name}",
        non_retryable=not retryable,
    )


class StripeActivities(Activities):
    """One StripeClient (async over httpx), built from settings; integrations queue."""
    task_queue = INTEGRATIONS_QUEUE
    default_policy = BILLING


    def __init__(self, settings: Settings) -> None:
        import stripe

        conf = settings.stripe
        self._http = stripe.HTTPXClient()  # sync and async: the activities use the async side
        self._client: stripe.StripeClient | None = None
        if conf.api_key is not None:
            self._client = stripe.StripeClient(
                conf.api_key.get_secret_value(),
                base_addresses={"api": conf.api_base} if conf.api_base else None,
                max_network_retries=0,
                http_client=self._http,
            )

    @property
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            raise ApplicationError(
                "Stripe is not configured (BIZ_STRIPE_API_KEY)", type="StripeNotConfigured", non_retryable=True
            )
        return self._client

    @activity.defn(name="stripe.create_customer")
    async def create_customer(self, req: CreateStripeCustomer) -> StripeCustomer:
        import stripe

        client = self.client
        try:
            existing = await self._find_customer(client, req.tenant_id)
            if existing is not None:
                return StripeCustomer(customer_id=existing, created=False)
            customer = await client.v1.customers.create_async(
                {"name": req.name, "email": req.email, "metadata": {"tenant_id": req.tenant_id}},
                {"idempotency_key": req.idempotency_key},
            )
        except stripe.StripeError as err:
            raise stripe_failure(err) from err
        return StripeCustomer(customer_id=customer.id, created=True)

    @activity.defn(name="stripe.pay_invoice")
    async def pay_invoice(self, req: PayInvoice) -> InvoicePayment:
        """Try to collect an open invoice once (the dunning workflow's retries)."""
        import stripe

        if not re.match(INVOICE_ID_PATTERN, req.invoice_id) or not 0 < len(req.idempotency_key) <= 255:
            raise ApplicationError("invalid invoice id or idempotency key", type="StripeInvalidRequest",
                                   non_retryable=True)
        client = self.client
        try:
            try:
                invoice = await client.v1.invoices.pay_async(
                    req.invoice_id, options={"idempotency_key": req.idempotency_key})
            except stripe.CardError as err:  # declined: the answer of this attempt
                invoice = await client.v1.invoices.retrieve_async(req.invoice_id)
                return _invoice_payment(invoice, err.code, err.user_message)
            except stripe.InvalidRequestError as err:
                # Paid, voided or written off meanwhile (Stripe answers 400): the invoice says which.
                invoice = await client.v1.invoices.retrieve_async(req.invoice_id)
                if invoice.status not in ("paid", "void", "uncollectible"):
                    raise stripe_failure(err) from err
        except stripe.StripeError as err:
            raise stripe_failure(err) from err
        return _invoice_payment(invoice)

    async def close(self) -> None:
        """Close the HTTP connections (worker shutdown)."""
        await self._http.close_async()

    @staticmethod
    async def _find_customer(client: stripe.StripeClient, tenant_id: str) -> str | None:
        """The oldest customer whose metadata names the tenant."""
        import stripe

        try:
            page = await client.v1.customers.search_async(
                {"query": f"metadata['tenant_id']:'{tenant_id}'", "limit": 100}
            )
            found = list(page.data)
        except stripe.InvalidRequestError as err:
            if err.http_status != 404:
                raise
            # A server without the Search API (localstripe): list and filter.
            listing = await client.v1.customers.list_async({"limit": 100})
            found = [c async for c in listing.auto_paging_iter() if _metadata(c).get("tenant_id") == tenant_id]
        found = [c for c in found if _metadata(c).get("tenant_id") == tenant_id]
        if not found:
            return None
        return min(found, key=lambda c: (c.created, c.id)).id


def _invoice_payment(invoice: stripe.Invoice, code: str | None = None, message: str | None = None) -> InvoicePayment:
    """An invoice as the result of a payment attempt (localstripe declines without an error:
    the invoice just stays open)."""
    paid = invoice.status == "paid"
    if not paid and code is None and invoice.status == "open":
        code = "payment_failed"
    return InvoicePayment(
        invoice_id=invoice.id, status=invoice.status or "open", paid=paid,
        amount_due=int(getattr(invoice, "amount_due", 0) or 0), currency=getattr(invoice, "currency", None),
        customer_email=getattr(invoice, "customer_email", None), failure_code=None if paid else code,
        failure_message=None if paid else message)


def _metadata(obj: stripe.StripeObject) -> dict[str, Any]:
    meta = getattr(obj, "metadata", None)
    return meta.to_dict() if meta is not None else {}


# --- Lago --------------------------------------------------------------------------------

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
               ORDER BY id
               LIMIT $3""",
            req.tenant_id, req.usage_ids, req.limit, req.workflow_id,
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


# --- The ids row (workflows queue) -------------------------------------------------------

class BillingCustomerActivities(Activities):
    task_queue = WORKFLOWS_QUEUE
    default_policy = DB

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn(name="billing.record_customer")
    async def record_customer(self, req: RecordBillingCustomer) -> BillingCustomerRecord:
        """Keep the tenant's Stripe/Lago ids; an id already recorded is never replaced."""
        row = await self._pool.fetchrow(
            """INSERT INTO billing_customers (tenant_id, stripe_customer_id, lago_customer_id)
               VALUES ($1, $2, $3)
               ON CONFLICT (tenant_id) DO UPDATE SET
                   stripe_customer_id = coalesce(billing_customers.stripe_customer_id, EXCLUDED.stripe_customer_id),
                   lago_customer_id = coalesce(billing_customers.lago_customer_id, EXCLUDED.lago_customer_id),
                   updated_at = now()
               RETURNING tenant_id, stripe_customer_id, lago_customer_id""",
            req.tenant_id, req.stripe_customer_id, req.lago_customer_id,
        )
        return BillingCustomerRecord(
            tenant_id=row["tenant_id"], stripe_customer_id=row["stripe_customer_id"],
            lago_customer_id=row["lago_customer_id"],
        )
