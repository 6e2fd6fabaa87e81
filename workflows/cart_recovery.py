"""Abandoned Cart Recovery: a shopper who left a checkout gets the tenant's reminders, by email
or SMS, until the checkout is completed or the reminders run out (client portal, e-commerce).

Seed §10A: "personalized recovery via AI SMS/Email". Shopify starts it: ``checkouts/create``
(signed webhook, the shop connected to the tenant by the ``order`` setting
``shopify_shop_domain``) starts the checkout's recovery; ``checkouts/update`` reaches it as the
``checkout_updated`` signal (signal-with-start), and an update with ``completed_at`` ends it. One
recovery per checkout: the workflow id's key is the checkout token.

1. The tenant's reminders are read once, at the start (``GET/PUT
   /v1/tenants/{t}/settings/cart-recovery``): each step waits ``after_seconds`` from the start,
   then goes out by ``email`` (``send_email`` tool) or ``sms`` (``send_sms`` tool), its text with
   ``{name}``, ``{items}``, ``{total}``, ``{link}`` (Shopify's recovery address) and
   ``{discount}`` (the setting ``discount_code``) filled in. A step whose channel the shopper
   gave no address for is skipped.
2. With ``require_marketing_consent``, a shopper who did not accept marketing gets nothing.
3. With ``personalize``, an agent (the durable agent loop, offline provider by default) rewrites
   each reminder for the cart after the tenant's AI budget is checked; its LLM calls are billed.
4. The checkout completed before the first reminder: ``completed_before_reminder``; after one,
   or up to ``attribution_hours`` after the last: ``recovered``, with the cart's total as the
   revenue recovered; otherwise ``not_recovered``.

Workflow id: ``{tenant}:cart-recovery:checkout-{token}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import msgspec
    from activities.mcp.tools import PHONE_PATTERN, SendEmail, SendSms
    from activities.tenants import CapabilitySettingsRequest, TenantActivities, decode_settings
    from core.activity import run_activity
    from core.names import EMAIL_PATTERN, SLUG_PATTERN, WEB_URL_PATTERN
    from workflows.agent_loop import AgentLoopInput, run_agent
    from workflows.capability import TENANT_PEOPLE, Capability, Event, InvalidEvent, Trigger
    from workflows.email_sequence import EMAIL_SCHEMA, written
    from workflows.stages import Stages
    from workflows.tools import call_tool
    from workflows.usage import account, check_ai_budget, report_usage

NAME = "cart-recovery"
AGENT = "cart-writer"
CHECKOUT_SIGNAL = "checkout_updated"
MAX_STEPS = 5
LONGEST_WAIT = 30 * 86400  # a reminder at most 30 days after the checkout
SMS_MAX = 1600

Channel = Literal["email", "sms"]
Status = Literal["recovered", "completed_before_reminder", "not_recovered", "no_contact", "no_consent"]
Stage = Literal["started", "reading_settings", "checking_budget", "waiting", "writing", "sending",
                "awaiting_checkout", "reporting_usage", "completed", "canceled", "failed"]

Line = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=5000, pattern=r"^[^\x00]*$")]
Money = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,12}(\.[0-9]{1,4})?$")]


class RecoveryStep(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    after_seconds: Annotated[int, msgspec.Meta(ge=0, le=LONGEST_WAIT)]
    channel: Channel = "email"
    subject: Line = "You left something in your cart, {name}"  # email only
    text: Text


DEFAULT_STEPS = [
    RecoveryStep(after_seconds=3600, text="Hi {name},\n\nyour cart is still waiting for you: {items} ({total}).\n"
                                          "Pick up where you left off: {link}\n"),
    RecoveryStep(after_seconds=86400, subject="Still thinking it over, {name}?",
                 text="Hi {name},\n\nwe kept your cart: {items} ({total}). {discount}\nComplete your order: {link}\n"),
]


class CartRecoverySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's reminders (``GET/PUT /v1/tenants/{tenant}/settings/cart-recovery``)."""

    steps: Annotated[list[RecoveryStep], msgspec.Meta(min_length=1, max_length=MAX_STEPS)] = \
        msgspec.field(default_factory=lambda: list(DEFAULT_STEPS))
    # {discount} becomes "Use the code {code} at checkout." (nothing without a code).
    discount_code: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,50}$")] | None = None
    # Only shoppers who accepted marketing get reminders.
    require_marketing_consent: bool = False
    # A checkout completed this long after the last reminder still counts as recovered.
    attribution_hours: Annotated[int, msgspec.Meta(ge=0, le=720)] = 72
    # An agent rewrites each reminder for the cart; its LLM calls are billed as usage.
    personalize: bool = False
    from_name: Line | None = None

    def __post_init__(self) -> None:
        times = [s.after_seconds for s in self.steps]
        if times != sorted(times):
            raise ValueError("steps: each step's after_seconds must not be before the previous step's")


class CartLine(msgspec.Struct, frozen=True, kw_only=True):
    title: Line
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1
    price: Money = "0"


class CartRecoveryInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    checkout_token: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,100}$")]
    email: Annotated[str, msgspec.Meta(max_length=254, pattern=EMAIL_PATTERN)] | None = None
    phone: Annotated[str, msgspec.Meta(pattern=PHONE_PATTERN)] | None = None
    name: Line | None = None
    items: Annotated[list[CartLine], msgspec.Meta(max_length=100)] = []
    total: Money = "0"
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] = "USD"
    recovery_url: Annotated[str, msgspec.Meta(max_length=2000, pattern=WEB_URL_PATTERN)] | None = None
    accepts_marketing: bool = False
    # When the checkout was completed, if it already was when the event was sent.
    completed_at: str | None = None
    requested_by: str = "system"


class SentReminder(msgspec.Struct, frozen=True, kw_only=True):
    step: int
    channel: Channel
    message_id: str
    sent_at: datetime


class CartRecoveryResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    checkout_token: str
    status: Status
    sent: list[SentReminder]
    skipped_steps: list[int] = []  # no address for the step's channel
    completed_at: str | None = None
    recovered_total: str | None = None  # the cart's total, when recovered
    currency: str = "USD"
    personalized: bool = False
    llm_calls: int = 0


class CartRecoveryProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    sent: int = 0
    next_step: int | None = None
    next_at: datetime | None = None
    completed_at: str | None = None
    updated_at: datetime | None = None


def checkout_key(token: str) -> str:
    """The business key of a checkout: its token when a slug can hold it, else a digest."""
    key = f"checkout-{token}"
    return key if re.search(SLUG_PATTERN, key) else "checkout-" + hashlib.sha256(token.encode()).hexdigest()[:32]


def items_line(inp: CartRecoveryInput) -> str:
    shown = ", ".join(f"{i.quantity} × {i.title}" for i in inp.items[:5])
    more = len(inp.items) - 5
    return (shown + (f" and {more} more" if more > 0 else "")) or "your items"


def filled(template: str, inp: CartRecoveryInput, settings: CartRecoverySettings) -> str:
    """A reminder's text with the cart's facts (plain replacement: a template is text, never code)."""
    discount = f"Use the code {settings.discount_code} at checkout." if settings.discount_code else ""
    return (template.replace("{name}", inp.name or "there").replace("{items}", items_line(inp))
            .replace("{total}", f"{inp.total} {inp.currency}").replace("{link}", inp.recovery_url or "")
            .replace("{discount}", discount))


def shopify_checkout(event: Event) -> tuple[str, str, CartRecoveryInput]:
    """Shopify ``checkouts/create`` and ``checkouts/update``: the checkout (token, contact, cart,
    ``abandoned_checkout_url``); the tenant is the shop's."""
    if event.tenant_id is None:
        raise InvalidEvent("the shop is not connected to a tenant")
    c = event.payload
    token = c.get("token")
    if not isinstance(token, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", token):
        raise InvalidEvent("the checkout has no token")
    customer = c.get("customer") if isinstance(c.get("customer"), dict) else {}
    address = c.get("billing_address") if isinstance(c.get("billing_address"), dict) else {}
    name = customer.get("first_name") or address.get("first_name")
    phone = c.get("phone") or customer.get("phone") or None
    lines = c.get("line_items") if isinstance(c.get("line_items"), list) else []
    try:
        inp = msgspec.convert({
            "tenant_id": event.tenant_id, "checkout_token": token,
            "email": (c.get("email") or "").strip() or None,
            "phone": phone if isinstance(phone, str) and re.fullmatch(PHONE_PATTERN[1:-1], phone) else None,
            "name": str(name).strip()[:200] or None if name else None,
            "items": [{"title": str(li.get("title") or "item")[:200], "quantity": li.get("quantity") or 1,
                       "price": str(li.get("price") or "0")} for li in lines[:100] if isinstance(li, dict)],
            "total": str(c.get("total_price") or "0"), "currency": (c.get("currency") or "USD").upper(),
            "recovery_url": c.get("abandoned_checkout_url") or None,
            "accepts_marketing": bool(c.get("buyer_accepts_marketing") or customer.get("accepts_marketing")),
            "completed_at": c.get("completed_at") if isinstance(c.get("completed_at"), str) else None,
            "requested_by": event.sender,
        }, CartRecoveryInput)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"checkout: {exc}") from None
    return event.tenant_id, checkout_key(token), inp


@workflow.defn(name="AbandonedCartRecovery")
class CartRecoveryWorkflow(Stages):
    def __init__(self) -> None:
        Stages.__init__(self)
        self._token: str | None = None
        self._completed_at: str | None = None
        self._sent: list[SentReminder] = []
        self._next: tuple[int, datetime] | None = None
        self._usage_ids: list[int] = []
        self._llm_calls = 0

    @workflow.signal(name=CHECKOUT_SIGNAL)
    def checkout_updated(self, checkout: dict[str, Any]) -> None:
        """Shopify's ``checkouts/update``: completed (``completed_at``) ends the recovery."""
        if self._token is not None and checkout.get("token") not in (None, self._token):
            return  # another checkout's update: not ours
        completed = checkout.get("completed_at")
        if isinstance(completed, str) and completed and self._completed_at is None:
            self._completed_at = completed[:40]

    @workflow.run
    async def run(self, inp: CartRecoveryInput) -> CartRecoveryResult:
        self._token = inp.checkout_token
        if inp.completed_at and self._completed_at is None:
            self._completed_at = inp.completed_at[:40]
        try:
            return await self.failed_on_error(self._run(inp))
        except asyncio.CancelledError:
            if self._usage_ids:  # canceled: the reminders written so far are billed all the same
                self._enter("reporting_usage", "cancel_requested")
                await report_usage(inp.tenant_id, self._usage_ids)
            self._enter("canceled")
            raise

    async def _wait_for_checkout(self, seconds: float, summary: str) -> None:
        if seconds > 0 and self._completed_at is None:
            try:
                await workflow.wait_condition(lambda: self._completed_at is not None, timeout=seconds,
                                              timeout_summary=summary)
            except asyncio.TimeoutError:
                pass

    async def _run(self, inp: CartRecoveryInput) -> CartRecoveryResult:
        await self.stage("reading_settings")
        stored = await run_activity(TenantActivities.capability_settings,
                                    CapabilitySettingsRequest(tenant_id=inp.tenant_id, capability=NAME))
        settings = decode_settings(stored.settings, CartRecoverySettings)
        skipped: list[int] = []
        if settings.require_marketing_consent and not inp.accepts_marketing:
            return await self._finish(inp, settings, "no_consent", skipped)
        if not inp.email and not inp.phone:
            return await self._finish(inp, settings, "no_contact", skipped)
        if settings.personalize and self._completed_at is None:
            await self.stage("checking_budget", "settings_read")
            await check_ai_budget(inp.tenant_id)
        started = workflow.now()
        for number, step in enumerate(settings.steps, 1):
            if (step.channel == "email" and not inp.email) or (step.channel == "sms" and not inp.phone):
                skipped.append(number)
                continue
            due = started + timedelta(seconds=step.after_seconds)
            self._next = (number, due)
            await self.stage("waiting", f"reminder:{len(self._sent)}")
            await self._wait_for_checkout((due - workflow.now()).total_seconds(), f"reminder {number}")
            if self._completed_at is not None:
                break
            await self._send(inp, settings, number, step)
        self._next = None
        if self._sent and self._completed_at is None:
            await self.stage("awaiting_checkout", f"reminder:{len(self._sent)}")
            await self._wait_for_checkout(settings.attribution_hours * 3600, "attribution window")
        status: Status = ("completed_before_reminder" if self._completed_at and not self._sent
                          else "recovered" if self._completed_at else "not_recovered" if self._sent
                          else "no_contact")
        return await self._finish(inp, settings, status, skipped)

    async def _send(self, inp: CartRecoveryInput, settings: CartRecoverySettings, number: int,
                    step: RecoveryStep) -> None:
        subject, text = filled(step.subject, inp, settings), filled(step.text, inp, settings)
        if settings.personalize:
            await self.stage("writing")
            subject, text = await self._personalize(inp, number, step.channel, subject, text)
        await self.stage("sending")
        if step.channel == "email":
            assert inp.email is not None
            sent = await call_tool(inp.tenant_id, SendEmail(to=[inp.email], subject=subject, text=text,
                                                            from_name=settings.from_name), step=f"reminder:{number}")
        else:
            assert inp.phone is not None
            sent = await call_tool(inp.tenant_id, SendSms(to=inp.phone, text=text[:SMS_MAX]), step=f"reminder:{number}")
        self._sent.append(SentReminder(step=number, channel=step.channel, message_id=sent.message_id,
                                       sent_at=workflow.now()))

    async def _personalize(self, inp: CartRecoveryInput, number: int, channel: Channel, subject: str,
                           text: str) -> tuple[str, str]:
        """The reminder as the agent rewrote it for this cart; its calls recorded as usage at once."""
        agent = await run_agent(AgentLoopInput(
            tenant_id=inp.tenant_id, agent=AGENT, output_schema=EMAIL_SCHEMA, max_turns=2,
            system_prompt="You write short, friendly cart reminders for small online shops. Plain text, the "
                          "shop's facts only; keep the link and the discount code exactly as given.",
            task=(f"Rewrite reminder {number} ({channel}; an SMS stays under 300 characters) for a shopper who "
                  f"left a checkout. Cart: {items_line(inp)}, total {inp.total} {inp.currency}. The reminder as "
                  f"the shop wrote it, subject: {subject}\n\n{text}")[:19000]), key=f"reminder-{number}")
        self._usage_ids += await account(inp.tenant_id, AGENT, agent, f"reminder:{number}")
        self._llm_calls += len(agent.calls)
        email = written(agent.final)
        return email.subject, email.text

    async def _finish(self, inp: CartRecoveryInput, settings: CartRecoverySettings, status: Status,
                      skipped: list[int]) -> CartRecoveryResult:
        if self._usage_ids:
            await self.stage("reporting_usage", f"reminder:{len(self._sent)}")
            await report_usage(inp.tenant_id, self._usage_ids)
        self._enter("completed", status)
        return CartRecoveryResult(
            tenant_id=inp.tenant_id, checkout_token=inp.checkout_token, status=status, sent=list(self._sent),
            skipped_steps=skipped, completed_at=self._completed_at,
            recovered_total=inp.total if status == "recovered" else None, currency=inp.currency,
            personalized=settings.personalize, llm_calls=self._llm_calls)

    @workflow.query(name="progress")
    def progress(self) -> CartRecoveryProgress:
        return CartRecoveryProgress(
            stage=self._stage, steps_done=list(self._steps), sent=len(self._sent),  # type: ignore[arg-type]
            next_step=self._next[0] if self._next else None, next_at=self._next[1] if self._next else None,
            completed_at=self._completed_at, updated_at=self._updated_at)


CAPABILITY = Capability(
    name=NAME,
    workflow=CartRecoveryWorkflow,
    input_type=CartRecoveryInput,
    business_key=lambda inp: checkout_key(inp.checkout_token),
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=TENANT_PEOPLE,
    cancel_roles=TENANT_PEOPLE,
    triggers=(
        Trigger(source="shopify", event_type="checkouts/create", build=shopify_checkout),
        Trigger(source="shopify", event_type="checkouts/update", build=shopify_checkout, action="signal_with_start",
                signal=CHECKOUT_SIGNAL),
    ),
    settings=CartRecoverySettings,
    summary="Abandoned Cart Recovery: a shopper who left a Shopify checkout gets the tenant's reminders by email "
            "or SMS (steps, delays, texts and a discount code are the tenant's settings; with personalize an agent "
            "rewrites each), each on a durable timer, until the checkout is completed; reports whether the cart "
            "was recovered.",
)
