"""Stripe: every Stripe activity of the integrations queue, one client for all of them.

- ``stripe.create_customer``: one Stripe customer per tenant. Idempotent twice over: it looks
  for a customer whose metadata names the tenant first, and creates with a Stripe idempotency
  key the workflow derives from its id and step (so a retry within Stripe's 24 h window
  returns the first customer even before search sees it).
- ``stripe.pay_invoice``: one collection attempt on an open invoice (dunning), with a Stripe
  idempotency key from the workflow id and the attempt. A decline is an answer, not a failure:
  it comes back as ``paid=False`` with the decline code; an invoice already paid, void or
  uncollectible comes back as it stands.
- ``stripe.capture_payment`` / ``stripe.release_payment``: an order's PaymentIntent, authorized
  with manual capture, is captured once the order is accepted; released (canceled) or refunded
  when it is rejected. Each reads the PaymentIntent first and does nothing when it is already
  where it should be (a retried activity, or a workflow replayed after a crash), and sends the
  workflow's idempotency key with the change.
- ``stripe.transfer``: an affiliate's approved payout, sent to its Stripe connected account
  (Connect transfer) with an idempotency key from the payout's ledger row, so a retried
  activity never pays twice.

Errors: a request Stripe refuses (credentials, validation, not found) fails at once
(non-retryable ``Stripe...`` types, ``stripe_failure``); an outage, a rate limit or a 5xx is
retried by the activity's retry policy. The SDK's own retries are off: Temporal owns retrying.

The SDK (``import stripe`` below is the ``stripe`` package: imports are absolute) loads when
``StripeActivities`` is built, so workflows and the API import the payload types from here
cheaply.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.activity import Activities
from core.names import INTEGRATIONS_QUEUE, SLUG_PATTERN
from core.policies import BILLING

if TYPE_CHECKING:
    import stripe

    from core.settings import Settings

TenantId = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]  # Stripe's limit

INVOICE_ID_PATTERN = r"^in_[A-Za-z0-9]{1,200}$"
PAYMENT_INTENT = r"^pi_[A-Za-z0-9_]{3,250}$"
CONNECTED_ACCOUNT_PATTERN = r"^acct_[A-Za-z0-9]{1,64}$"


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


class PaymentChange(msgspec.Struct, frozen=True, kw_only=True):
    payment_intent_id: Annotated[str, msgspec.Meta(pattern=PAYMENT_INTENT)]
    idempotency_key: IdempotencyKey  # workflow id + step
    tenant_id: str


class PaymentOutcome(msgspec.Struct, frozen=True, kw_only=True):
    payment_intent_id: str
    # captured | already_captured | canceled | already_canceled | refunded; a release that finds
    # nothing to give back: not_found (no such PaymentIntent), not_of_tenant (another tenant's)
    action: str
    status: str  # the PaymentIntent's status afterwards
    amount: int  # in the currency's smallest unit
    currency: str
    refund_id: str | None = None


# --- Activities --------------------------------------------------------------------------

class SendTransfer(msgspec.Struct, frozen=True, kw_only=True):
    """Money to a connected account (an affiliate's payout)."""

    account: Annotated[str, msgspec.Meta(pattern=CONNECTED_ACCOUNT_PATTERN)]
    amount_cents: Annotated[int, msgspec.Meta(gt=0)]
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]
    transfer_group: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    metadata: dict[str, str] = {}
    idempotency_key: IdempotencyKey


class TransferSent(msgspec.Struct, frozen=True, kw_only=True):
    transfer_id: str
    amount_cents: int
    currency: str


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

    async def close(self) -> None:
        """Close the HTTP connections (worker shutdown)."""
        await self._http.close_async()

    # --- customers and invoices ---

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

    # --- an order's payment ---

    @activity.defn(name="stripe.capture_payment")
    async def capture(self, req: PaymentChange) -> PaymentOutcome:
        import stripe

        try:
            intent = await self._intent(req)
            if intent.status == "succeeded":
                return _outcome(intent, "already_captured")
            if intent.status != "requires_capture":
                raise ApplicationError(f"payment {intent.id} cannot be captured: it is {intent.status}",
                                       type="PaymentNotCapturable", non_retryable=True)
            intent = await self.client.v1.payment_intents.capture_async(
                intent.id, {}, {"idempotency_key": req.idempotency_key})
        except stripe.StripeError as err:
            raise stripe_failure(err) from err
        return _outcome(intent, "captured")

    @activity.defn(name="stripe.release_payment")
    async def release(self, req: PaymentChange) -> PaymentOutcome:
        """Cancel an uncaptured payment; refund a captured one in full."""
        import stripe

        client = self.client
        try:
            intent = await self._intent(req)
        except stripe.InvalidRequestError as err:
            if err.http_status != 404:
                raise stripe_failure(err) from err
            # No such PaymentIntent (a wrong id in the order): nothing is held, nothing to give back.
            return PaymentOutcome(payment_intent_id=req.payment_intent_id, action="not_found", status="missing",
                                  amount=0, currency="")
        except stripe.StripeError as err:
            raise stripe_failure(err) from err
        except ApplicationError as err:
            if err.type != "PaymentNotOfTenant":
                raise
            # Another tenant's payment: never touched from this order.
            return PaymentOutcome(payment_intent_id=req.payment_intent_id, action="not_of_tenant", status="untouched",
                                  amount=0, currency="")
        try:
            if intent.status == "canceled":
                return _outcome(intent, "already_canceled")
            if intent.status == "succeeded":
                earlier = await client.v1.refunds.list_async({"payment_intent": intent.id, "limit": 1})
                if earlier.data:
                    return _outcome(intent, "refunded", refund_id=earlier.data[0].id)
                refund = await client.v1.refunds.create_async(
                    {"payment_intent": intent.id}, {"idempotency_key": req.idempotency_key})
                return _outcome(intent, "refunded", refund_id=refund.id)
            intent = await client.v1.payment_intents.cancel_async(
                intent.id, {}, {"idempotency_key": req.idempotency_key})
        except stripe.StripeError as err:
            raise stripe_failure(err) from err
        return _outcome(intent, "canceled")

    # --- payouts ---

    @activity.defn(name="stripe.transfer")
    async def transfer(self, req: SendTransfer) -> TransferSent:
        """Transfer to a connected account; the same idempotency key gives the first transfer
        again (Stripe keeps keys 24 hours; the payout ledger row keeps the transfer id after)."""
        import stripe

        params: dict[str, Any] = {"amount": req.amount_cents, "currency": req.currency.lower(),
                                  "destination": req.account, "transfer_group": req.transfer_group,
                                  "metadata": req.metadata}
        if req.description:
            params["description"] = req.description
        try:
            sent = await self.client.v1.transfers.create_async(params, {"idempotency_key": req.idempotency_key})
        except stripe.StripeError as err:
            raise stripe_failure(err) from err
        return TransferSent(transfer_id=sent.id, amount_cents=sent.amount, currency=sent.currency.upper())

    async def _intent(self, req: PaymentChange) -> stripe.PaymentIntent:
        """The order's PaymentIntent, refused when its metadata names another tenant."""
        intent = await self.client.v1.payment_intents.retrieve_async(req.payment_intent_id)
        if _metadata(intent).get("tenant_id") not in (None, req.tenant_id):
            raise ApplicationError(f"payment {req.payment_intent_id} belongs to another tenant",
                                   type="PaymentNotOfTenant", non_retryable=True)
        return intent


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


def _outcome(intent: stripe.PaymentIntent, action: str, refund_id: str | None = None) -> PaymentOutcome:
    return PaymentOutcome(payment_intent_id=intent.id, action=action, status=intent.status, amount=intent.amount,
                          currency=intent.currency, refund_id=refund_id)


def _metadata(obj: stripe.StripeObject) -> dict[str, Any]:
    meta = getattr(obj, "metadata", None)
    return meta.to_dict() if meta is not None else {}
