"""Order Processing & Fraud: an order arrives (Shopify ``orders/create`` webhook, or started
through the API), is validated, checked against stock, scored for fraud, and above the
tenant's value threshold or risk limit waits for the client's approval (Pending Actions).

1. Validate: lines present, quantities positive, the total matches the lines (1 cent slack).
2. Inventory through the commerce tool ``check_inventory`` (routed by the MCP registry: a real
   store's MCP server in production): a line short of stock ends the order as ``out_of_stock``.
3. Fraud score 0-100: rules (no email, billing and shipping countries differ, a large
   quantity, a large total) plus a fraud-analyst agent (durable agent loop) reading the order
   without personal data. The agent can raise the score, never lower it; the offline provider's
   score is recorded but moves nothing (it is not a real judgement).
4. Total above the tenant's ``review_threshold`` (order settings, default 500) or score at or above
   ``REVIEW_SCORE``: the client approves or rejects (remind after 24 h, escalate to the
   partner or an admin after 72 h).
5. Accepted: the Stripe payment (``payment_intent_id``, authorized with manual capture) is
   captured and a shipping label bought (``create_shipping_label``). Rejected, out of stock or
   invalid: the payment is released (canceled, or refunded if it was captured).
6. Recorded (``orders.record``, idempotent on the workflow id); the agent's usage billed.

Workflow id: ``{tenant_id}:order:{order_key}`` (``order_key`` is ``shopify-{id}`` for Shopify
orders), so a redelivered webhook finds the same workflow.
"""

from __future__ import annotations

import asyncio

from datetime import timedelta
from typing import Annotated, Any, Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import msgspec
    from activities.mcp.tools import CheckInventory, CreateShippingLabel
    from activities.orders import OrderActivities, OrderPolicyRequest, OrderRecord
    from activities.stripe import PAYMENT_INTENT, PaymentChange, PaymentOutcome, StripeActivities
    from core.activity import run_activity
    from core.names import SLUG_PATTERN
    from workflows.stages import Stages
    from hitl.approvals import HumanDecisions
    from hitl.protocol import ApprovalRequest, DecisionRecord
    from workflows.agent_loop import AgentLoopInput, run_agent
    from workflows.capability import ADMINS, Capability, Event, InvalidEvent, Trigger
    from workflows.tools import call_tool
    from workflows.usage import account, report_usage

NAME = "order"

Status = Literal["accepted", "rejected", "out_of_stock", "invalid", "canceled", "failed"]
Stage = Literal["started", "validating", "checking_inventory", "scoring", "awaiting_client_approval",
                "capturing_payment", "shipping", "releasing_payment", "recording", "completed", "canceled", "failed"]

REMIND_AFTER = timedelta(hours=24)
ESCALATE_AFTER = timedelta(hours=72)
CLIENT_ROLES = ["client", "partner", "admin", "super_admin"]
ESCALATION_ROLES = ["partner", "admin", "super_admin"]
REVIEW_SCORE = 60  # a fraud score at or above this needs the client's approval
MAX_TOTAL = 10_000_000
FRAUD_SCHEMA = {
    "type": "object",
    "properties": {
        "risk_score": {"type": "integer", "minimum": 0, "maximum": 100},
        "signals": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 5},
    },
    "required": ["risk_score", "signals"],
}


class OrderLine(msgspec.Struct, frozen=True, kw_only=True):
    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    quantity: Annotated[int, msgspec.Meta(ge=0, le=100_000)]
    unit_price: Annotated[float, msgspec.Meta(ge=0, le=MAX_TOTAL)]
    title: Annotated[str, msgspec.Meta(max_length=300)] = ""


class OrderInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    order_key: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]  # the business key of the id
    lines: Annotated[list[OrderLine], msgspec.Meta(max_length=500)]
    total: Annotated[float, msgspec.Meta(ge=0, le=MAX_TOTAL)]
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] = "USD"
    source: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = "api"
    order_number: Annotated[str, msgspec.Meta(max_length=100)] = ""
    # Personal data: kept in the input (workflow history), never in search attributes.
    customer_email: Annotated[str, msgspec.Meta(max_length=254)] | None = None
    billing_country: Annotated[str, msgspec.Meta(max_length=2)] | None = None
    shipping_country: Annotated[str, msgspec.Meta(max_length=2)] | None = None
    # A Stripe PaymentIntent authorized for the order (manual capture), when Stripe takes the payment.
    payment_intent_id: Annotated[str, msgspec.Meta(pattern=PAYMENT_INTENT)] | None = None
    requested_by: str = "system"


Sku = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class OrderSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's order policy (``GET/PUT /v1/tenants/{tenant}/settings/order``)."""

    # Orders above this total (in the order's currency; the sandbox has no FX) wait for the client.
    review_threshold: Annotated[float, msgspec.Meta(ge=0, le=MAX_TOTAL)] = 500.0
    # The sandbox store's stock ({sku: quantity}); other SKUs have plenty (sandboxes/mcp/commerce.py).
    inventory: Annotated[dict[Sku, Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]],
                         msgspec.Meta(max_length=10_000)] = {}
    out_of_stock_skus: Annotated[list[Sku], msgspec.Meta(max_length=10_000)] = []
    # The Shopify shop whose orders/create webhooks start this tenant's orders (one tenant per shop).
    shopify_shop_domain: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$", max_length=255)] | None = None


def _money(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidEvent(f"{what} is not a number") from None


def shopify_order(event: Event) -> tuple[str, str, OrderInput]:
    """Shopify ``orders/create``: the order id is the business key (``shopify-{id}``)."""
    if event.tenant_id is None:
        raise InvalidEvent("the shop is not connected to a tenant")
    o = event.payload
    if not isinstance(o.get("id"), int | str) or not str(o["id"]).isdigit():
        raise InvalidEvent("the order has no numeric id")
    lines = o.get("line_items")
    if not isinstance(lines, list):
        raise InvalidEvent("the order has no line_items")

    def country(address: Any) -> str | None:
        return address.get("country_code") if isinstance(address, dict) else None

    key = f"shopify-{o['id']}"
    try:
        inp = msgspec.convert({
            "tenant_id": event.tenant_id, "order_key": key, "source": "shopify",
            "order_number": str(o.get("name") or ""), "currency": o.get("currency") or "USD",
            "total": _money(o.get("total_price"), "total_price"),
            "customer_email": o.get("email") or None,
            "billing_country": country(o.get("billing_address")),
            "shipping_country": country(o.get("shipping_address")),
            "lines": [msgspec.convert({"sku": str(li.get("sku") or li.get("variant_id") or li.get("id") or "unknown"),
                                       "quantity": li.get("quantity"), "unit_price": _money(li.get("price"), "price"),
                                       "title": str(li.get("title") or "")[:300]}, OrderLine)
                      for li in lines if isinstance(li, dict)],
            "requested_by": event.sender,
        }, OrderInput)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"order: {exc}") from None
    return event.tenant_id, key, inp


class OrderResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    order_key: str
    status: Status
    total: float
    currency: str
    fraud_score: int
    reasons: list[str] = []  # why it was invalid, out of stock, or scored as it did
    reviewed: bool = False
    decisions: list[DecisionRecord] = []
    order_row_id: int | None = None
    agent_score: int | None = None  # the fraud analyst's own score
    agent_offline: bool = False
    payment: PaymentOutcome | None = None
    shipping_label: dict[str, Any] | None = None  # the commerce tool's answer


class OrderProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    fraud_score: int | None = None
    pending_request: str | None = None


def validate(inp: OrderInput) -> list[str]:
    """Why the order cannot be processed (empty: it can)."""
    problems = []
    if not inp.lines:
        problems.append("no lines")
    if any(line.quantity <= 0 for line in inp.lines):
        problems.append("a line has no quantity")
    lines_total = sum(line.quantity * line.unit_price for line in inp.lines)
    if inp.lines and abs(lines_total - inp.total) > 0.01 + 0.001 * inp.total:
        problems.append(f"total {inp.total:.2f} does not match the lines ({lines_total:.2f})")
    return problems


def fraud_score(inp: OrderInput, threshold: float) -> tuple[int, list[str]]:
    """A deterministic risk score from simple rules, and the rules that fired."""
    rules = [
        (not inp.customer_email, 30, "no customer email"),
        (bool(inp.billing_country and inp.shipping_country and inp.billing_country != inp.shipping_country), 30,
         "billing and shipping countries differ"),
        (any(line.quantity > 20 for line in inp.lines), 20, "a large quantity of one item"),
        (inp.total > 5 * threshold, 20, "total far above the review threshold"),
    ]
    fired = [(points, why) for hit, points, why in rules if hit]
    return min(100, sum(p for p, _ in fired)), [why for _, why in fired]


@workflow.defn(name="OrderProcessing")
class OrderProcessingWorkflow(HumanDecisions, Stages):
    def __init__(self) -> None:
        HumanDecisions.__init__(self)
        Stages.__init__(self)
        self._score: int | None = None
        self._usage_ids: list[int] = []

    @workflow.run
    async def run(self, inp: OrderInput) -> OrderResult:
        try:
            result = await self._process(inp)
            if result.status == "accepted":
                result = await self._fulfil(inp, result)
            elif inp.payment_intent_id:
                await self.stage("releasing_payment", result.status)
                result = msgspec.structs.replace(result, payment=await self._payment(inp, StripeActivities.release))
        except (asyncio.CancelledError, ActivityError, ChildWorkflowError) as exc:
            # Canceled (an admin, or the merchant), or a step failed for good (a tool down past
            # its deadline, Stripe refusing): the money held for the order goes back, the outcome
            # is recorded, then the run ends canceled or failed. These commands only follow the
            # cancel request or the failure in history: histories of other runs are unchanged.
            canceled = is_cancelled_exception(exc)  # a cancel may arrive as the running activity's error
            await self._compensate(inp, "canceled" if canceled else "failed",
                                   "canceled" if canceled else f"failed: {exc.cause or exc}")
            raise
        recorded = await self._record_order(inp, result)
        await report_usage(inp.tenant_id, self._usage_ids)
        self._enter("completed", "recorded")
        await workflow.wait_condition(workflow.all_handlers_finished)
        return msgspec.structs.replace(result, order_row_id=recorded.order_row_id)

    async def _record_order(self, inp: OrderInput, result: OrderResult, *, compensating: bool = False) -> Any:
        if compensating:  # after a cancel or a failure: no waiting for a resume
            self._enter("recording", result.status)
        else:
            await self.stage("recording", result.status)
        return await run_activity(
            OrderActivities.record,
            OrderRecord(workflow_id=workflow.info().workflow_id, tenant_id=inp.tenant_id, order_key=inp.order_key,
                        source=inp.source, status=result.status, total=inp.total, currency=inp.currency,
                        fraud_score=result.fraud_score, reviewed=result.reviewed,
                        details={"reasons": result.reasons, "order_number": inp.order_number,
                                 "payment": msgspec.to_builtins(result.payment),
                                 "tracking_number": (result.shipping_label or {}).get("tracking_number")}),
        )

    async def _compensate(self, inp: OrderInput, status: Status, reason: str) -> None:
        """Release the payment (cancel it, or refund it if captured) and record the order as
        ``status``. Each step is idempotent on the workflow id, like the steps it undoes."""
        payment = None
        if inp.payment_intent_id:
            self._enter("releasing_payment", f"{status}_order")
            payment = await self._payment(inp, StripeActivities.release)
        undone = OrderResult(tenant_id=inp.tenant_id, order_key=inp.order_key, status=status, total=inp.total,
                             currency=inp.currency, fraud_score=self._score or 0, reasons=[reason[:500]],
                             reviewed=False, payment=payment)
        await self._record_order(inp, undone, compensating=True)
        await report_usage(inp.tenant_id, self._usage_ids)
        self._enter(status, "recorded")

    async def _fulfil(self, inp: OrderInput, result: OrderResult) -> OrderResult:
        payment = None
        if inp.payment_intent_id:
            await self.stage("capturing_payment")
            payment = await self._payment(inp, StripeActivities.capture)
        await self.stage("shipping", "payment_captured" if payment else None)
        label = await call_tool(inp.tenant_id, CreateShippingLabel(
            order_key=inp.order_key, ship_to_country=(inp.shipping_country or inp.billing_country or "US").upper(),
            parcels=max(1, min(50, sum(line.quantity for line in inp.lines) // 10 + 1))), step="label")
        self._steps.append("label_bought")
        return msgspec.structs.replace(result, payment=payment, shipping_label=msgspec.to_builtins(label))

    async def _payment(self, inp: OrderInput, method: Any) -> PaymentOutcome:
        step = "capture" if method is StripeActivities.capture else "release"
        return await run_activity(
            method, PaymentChange(payment_intent_id=inp.payment_intent_id or "", tenant_id=inp.tenant_id,
                                  idempotency_key=f"{workflow.info().workflow_id}:payment:{step}"),
        )

    async def _agent_score(self, inp: OrderInput, rules_score: int) -> tuple[int, bool]:
        """The fraud analyst's score (0-100) and whether it came from the offline provider."""
        lines = "; ".join(f"{line.quantity} x {line.sku} at {line.unit_price:.2f}" for line in inp.lines[:50])
        result = await run_agent(AgentLoopInput(
            tenant_id=inp.tenant_id, agent="fraud-analyst", output_schema=FRAUD_SCHEMA, max_turns=2,
            system_prompt="You are a fraud analyst for a small online store. Judge the order's risk from 0 to 100.",
            task=f"Order {inp.order_key} via {inp.source}: {len(inp.lines)} line(s) ({lines}), total {inp.total:.2f} "
                 f"{inp.currency}; customer email given: {bool(inp.customer_email)}; billing country "
                 f"{inp.billing_country or '?'}, shipping country {inp.shipping_country or '?'}; "
                 f"the rules scored it {rules_score}.",
        ))
        self._usage_ids += await account(inp.tenant_id, "fraud-analyst", result, "fraud")
        return int(result.final.get("risk_score", 0)), result.offline

    async def _process(self, inp: OrderInput) -> OrderResult:
        def result(status: Status, score: int = 0, reasons: list[str] | None = None, **kw: object) -> OrderResult:
            return OrderResult(tenant_id=inp.tenant_id, order_key=inp.order_key, status=status, total=inp.total,
                               currency=inp.currency, fraud_score=score, reasons=reasons or [], **kw)  # type: ignore[arg-type]

        await self.stage("validating")
        problems = validate(inp)
        if problems:
            return result("invalid", reasons=problems)

        await self.stage("checking_inventory", "validated")
        policy = await run_activity(OrderActivities.policy, OrderPolicyRequest(tenant_id=inp.tenant_id))
        stock = await call_tool(inp.tenant_id, CheckInventory(skus=list(dict.fromkeys(line.sku for line in inp.lines))),
                                step="inventory")
        available = {item.sku: item.available for item in stock.items}
        wanted: dict[str, int] = {}
        for line in inp.lines:
            wanted[line.sku] = wanted.get(line.sku, 0) + line.quantity
        missing = sorted(sku for sku, qty in wanted.items() if available.get(sku, 0) < qty)
        if missing:
            return result("out_of_stock", reasons=[f"out of stock: {sku}" for sku in missing])

        await self.stage("scoring", "inventory_checked")
        score, reasons = fraud_score(inp, policy.review_threshold)
        agent_score, agent_offline = await self._agent_score(inp, score)
        if not agent_offline and agent_score > score:
            score, reasons = agent_score, [*reasons, f"the fraud analyst scored it {agent_score}"]
        self._score = score
        scored = {"agent_score": agent_score, "agent_offline": agent_offline}
        if inp.total <= policy.review_threshold and score < REVIEW_SCORE:
            self._steps.append("scored")
            return result("accepted", score, reasons, **scored)

        await self.stage("awaiting_client_approval", "scored")
        why = [f"total above {policy.review_threshold:,.2f}"] if inp.total > policy.review_threshold else []
        outcome = await self.ask(ApprovalRequest(
            request_id="review", kind="order.review",
            title=f"Review order {inp.order_number or inp.order_key}: {inp.total:,.2f} {inp.currency}",
            summary=f"Fraud score {score}/100. " + "; ".join([*why, *reasons]),
            proposal={"order_key": inp.order_key, "total": inp.total, "currency": inp.currency,
                      "fraud_score": score, "reasons": [*why, *reasons]},
            allowed=["approve", "reject"], audience="client", roles=CLIENT_ROLES,
            due_in_seconds=int(ESCALATE_AFTER.total_seconds()), remind_after_seconds=[int(REMIND_AFTER.total_seconds())],
            timeout_action="escalate", escalate_to_audience="admin", escalate_to_roles=ESCALATION_ROLES,
        ))
        return result("accepted" if outcome.approved else "rejected", score, reasons, reviewed=True,
                      decisions=outcome.decisions, **scored)

    @workflow.query(name="progress")
    def progress(self) -> OrderProgress:
        return OrderProgress(stage=self._stage, steps_done=list(self._steps), fraud_score=self._score,
                             pending_request=self._approval.request.request_id if self._approval else None)


CAPABILITY = Capability(
    name=NAME,
    workflow=OrderProcessingWorkflow,
    input_type=OrderInput,
    business_key=lambda inp: inp.order_key,
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=ADMINS,
    # The merchant may cancel its order; the payment is released (canceled or refunded).
    cancel_roles=frozenset({"super_admin", "admin", "client"}),
    decide_roles=frozenset(CLIENT_ROLES + ESCALATION_ROLES),
    summary="Process an order: validate, check stock, score fraud by rules; above the tenant's threshold "
            "the client approves (Pending Actions). Usually started by the Shopify orders/create webhook.",
    triggers=(Trigger(source="shopify", event_type="orders/create", build=shopify_order),),
    settings=OrderSettings,
    # The shop domain routes a shop's orders to a tenant: a tenant claiming another's shop would get them.
    admin_settings=frozenset({"shopify_shop_domain"}),
    unique_settings=frozenset({"shopify_shop_domain"}),  # migration 0030's unique index
)
