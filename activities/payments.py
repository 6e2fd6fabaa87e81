"""Order payments through Stripe (integrations queue): capture an authorized PaymentIntent once
the order is accepted; release it (cancel) or refund it when the order is rejected.

Idempotent by construction: each call reads the PaymentIntent first and does nothing when it
is already where it should be (a retried activity, or a workflow replayed after a crash), and
sends the workflow's idempotency key with the change. Stripe's refusals are final, outages
are retried (``activities.billing.stripe_failure``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.activity import Activities
from core.names import INTEGRATIONS_QUEUE
from core.policies import BILLING

from activities.billing import StripeActivities, stripe_failure

PAYMENT_INTENT = r"^pi_[A-Za-z0-9_]{3,250}$"


class PaymentChange(msgspec.Struct, frozen=True, kw_only=True):
    payment_intent_id: Annotated[str, msgspec.Meta(pattern=PAYMENT_INTENT)]
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]  # workflow id + step
    tenant_id: str


class PaymentOutcome(msgspec.Struct, frozen=True, kw_only=True):
    payment_intent_id: str
    action: str  # captured | already_captured | canceled | already_canceled | refunded
    status: str  # the PaymentIntent's status afterwards
    amount: int  # in the currency's smallest unit
    currency: str
    refund_id: str | None = None


class PaymentActivities(Activities):
    """Uses the worker's one Stripe client (``StripeActivities``)."""
    task_queue = INTEGRATIONS_QUEUE
    default_policy = BILLING


    def __init__(self, stripe_activities: StripeActivities) -> None:
        self._stripe = stripe_activities

    async def _intent(self, req: PaymentChange):  # noqa: ANN202 - a stripe.PaymentIntent
        intent = await self._stripe.client.v1.payment_intents.retrieve_async(req.payment_intent_id)
        if (intent.metadata.to_dict() if intent.metadata else {}).get("tenant_id") not in (None, req.tenant_id):
            raise ApplicationError(f"payment {req.payment_intent_id} belongs to another tenant",
                                   type="PaymentNotOfTenant", non_retryable=True)
        return intent

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
            intent = await self._stripe.client.v1.payment_intents.capture_async(
                intent.id, {}, {"idempotency_key": req.idempotency_key})
        except stripe.StripeError as err:
            raise stripe_failure(err) from err
        return _outcome(intent, "captured")

    @activity.defn(name="stripe.release_payment")
    async def release(self, req: PaymentChange) -> PaymentOutcome:
        """Cancel an uncaptured payment; refund a captured one in full."""
        import stripe

        try:
            intent = await self._intent(req)
            if intent.status == "canceled":
                return _outcome(intent, "already_canceled")
            if intent.status == "succeeded":
                earlier = await self._stripe.client.v1.refunds.list_async({"payment_intent": intent.id, "limit": 1})
                if earlier.data:
                    return _outcome(intent, "refunded", refund_id=earlier.data[0].id)
                refund = await self._stripe.client.v1.refunds.create_async(
                    {"payment_intent": intent.id}, {"idempotency_key": req.idempotency_key})
                return _outcome(intent, "refunded", refund_id=refund.id)
            intent = await self._stripe.client.v1.payment_intents.cancel_async(
                intent.id, {}, {"idempotency_key": req.idempotency_key})
        except stripe.StripeError as err:
            raise stripe_failure(err) from err
        return _outcome(intent, "canceled")


def _outcome(intent, action: str, refund_id: str | None = None) -> PaymentOutcome:  # noqa: ANN001
    return PaymentOutcome(payment_intent_id=intent.id, action=action, status=intent.status, amount=intent.amount,
                          currency=intent.currency, refund_id=refund_id)
