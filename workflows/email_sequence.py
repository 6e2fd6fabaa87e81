"""Marketing Email Sequence: a new lead gets the tenant's follow-up emails, one after another,
until the sequence ends or somebody stops it.

Seed §10A: "multi-channel follow-up for new leads". Started by the tenant's people or by a
signed ``lead.created`` event (generic webhook); one sequence per lead (the workflow id's key is
the lead's id, else a digest of its address, so a lead delivered twice is followed up once).

1. The tenant's sequence is read once, at the start (``GET/PUT
   /v1/tenants/{t}/settings/email-sequence``): its steps, each sent ``after_seconds`` from the
   start, with a subject and a text in which ``{name}`` and ``{interest}`` are the lead's. A
   change of the settings reaches the sequences started after it.
2. Each step waits on a durable timer, then goes out through the ``send_email`` tool (routed
   like any tool: the sandbox, or the tenant's own mail server). A restart or a deploy during a
   wait changes nothing: the timer is Temporal's.
3. With the setting ``personalize`` (Smart Lead Nurturing), an agent (the durable agent loop,
   offline provider by default) rewrites each step's email for the lead before it goes out,
   after the tenant's AI budget is checked; its LLM calls are usage rows and Lago events, billed
   also when the sequence is stopped or canceled.
4. ``stop-sequence`` (the lead replied, unsubscribed, became a customer) ends it at once: no
   further email. A cancel does the same and the run ends canceled.

The result lists every email sent (step, subject, the mail server's message id, when) and why
the sequence ended. Without ``personalize`` no LLM is called: there is nothing to bill.

Workflow id: ``{tenant}:email-sequence:{lead key}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec
    from activities.mcp.tools import SendEmail
    from activities.tenants import CapabilitySettingsRequest, TenantActivities, decode_settings
    from core.activity import run_activity
    from core.names import EMAIL_PATTERN, SLUG_PATTERN
    from workflows.capability import TENANT_PEOPLE, Capability, Command, Event, InvalidEvent, Trigger
    from workflows.agent_loop import AgentLoopInput, run_agent
    from workflows.stages import Stages
    from workflows.tools import call_tool
    from workflows.usage import account, check_ai_budget, report_usage

NAME = "email-sequence"
AGENT = "lead-writer"
MAX_STEPS = 10
LONGEST_WAIT = 90 * 86400  # a step at most 90 days after the start

Stage = Literal["started", "reading_settings", "checking_budget", "waiting", "writing", "sending", "reporting_usage",
                "completed", "stopped", "canceled", "failed"]
StopReason = Literal["replied", "unsubscribed", "converted", "bounced", "other"]

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=5000, pattern=r"^[^\x00]*$")]


class SequenceStep(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    after_seconds: Annotated[int, msgspec.Meta(ge=0, le=LONGEST_WAIT)]
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
    text: Text


DEFAULT_STEPS = [
    SequenceStep(after_seconds=0, subject="Thanks for getting in touch, {name}",
                 text="Hi {name},\n\nthanks for your interest in {interest}. We will be glad to help: just reply "
                      "to this email with any question.\n"),
    SequenceStep(after_seconds=2 * 86400, subject="Any questions about {interest}?",
                 text="Hi {name},\n\ndid you have a chance to look at {interest}? Reply to this email and we "
                      "will answer the same day.\n"),
    SequenceStep(after_seconds=7 * 86400, subject="One last note, {name}",
                 text="Hi {name},\n\nthis is our last follow-up. If {interest} is still on your list, a reply "
                      "is all it takes.\n"),
]


class EmailSequenceSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's follow-up sequence (``GET/PUT /v1/tenants/{tenant}/settings/email-sequence``)."""

    # Sent in order, each after_seconds from the start ({name} and {interest}: the lead's).
    steps: Annotated[list[SequenceStep], msgspec.Meta(min_length=1, max_length=MAX_STEPS)] = \
        msgspec.field(default_factory=lambda: list(DEFAULT_STEPS))
    from_name: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")] | None \
        = None
    reply_to: Annotated[str, msgspec.Meta(max_length=254, pattern=EMAIL_PATTERN)] | None = None
    # An agent rewrites each email for the lead (its name, interest and source), from the step's
    # text; its LLM calls are billed as usage.
    personalize: bool = False

    def __post_init__(self) -> None:
        times = [s.after_seconds for s in self.steps]
        if times != sorted(times):
            raise ValueError("steps: each step's after_seconds must not be before the previous step's")


class EmailSequenceInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    email: Annotated[str, msgspec.Meta(max_length=254, pattern=EMAIL_PATTERN)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")] | None = None
    interest: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")] | None = None
    source: Annotated[str, msgspec.Meta(max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    # The business key of the workflow id (default: a digest of the address).
    lead_key: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)] | None = None
    requested_by: str = "system"


class StopSequence(msgspec.Struct, frozen=True, kw_only=True):
    reason: StopReason = "other"
    requested_by: str | None = None  # filled by the API with the caller


class SentEmail(msgspec.Struct, frozen=True, kw_only=True):
    step: int
    subject: str
    message_id: str
    sent_at: datetime


class SequenceState(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["running", "stopped"]
    sent: int
    next_step: int | None
    next_at: datetime | None
    stop_reason: str | None = None
    stopped_by: str | None = None


class EmailSequenceResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    status: Literal["completed", "stopped"]
    sent: list[SentEmail]
    steps: int
    stop_reason: str | None = None
    stopped_by: str | None = None
    personalized: bool = False
    offline: bool | None = None  # personalized: whether the agent ran on the offline provider
    llm_calls: int = 0


class EmailSequenceProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    sent: int = 0
    next_step: int | None = None
    next_at: datetime | None = None
    updated_at: datetime | None = None


def lead_key(email: str) -> str:
    """The key of a lead known by its address only: a digest (no address in a workflow id)."""
    return "lead-" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:16]


def filled(template: str, inp: EmailSequenceInput) -> str:
    """The step's text with the lead's name and interest (plain replacement: a template is text,
    never code)."""
    return (template.replace("{name}", inp.name or "there")
            .replace("{interest}", inp.interest or "what we do"))


# The agent's answer: the email for this lead.
EMAIL_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "subject": {"type": "string", "minLength": 1, "maxLength": 200},
    "text": {"type": "string", "minLength": 1, "maxLength": 5000}}, "required": ["subject", "text"]}


class WrittenEmail(msgspec.Struct, frozen=True, kw_only=True):
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=5000)]


def writing_task(inp: EmailSequenceInput, number: int, subject: str, text: str) -> str:
    return (f"Rewrite follow-up email {number} of a sequence for this lead, keeping its purpose and length. "
            f"Lead: {inp.name or 'unknown name'}; interested in: {inp.interest or 'not said'}; came from: "
            f"{inp.source or 'not said'}. The email as the business wrote it, subject: {subject}\n\n{text}")[:19000]


def written(final: object) -> WrittenEmail:
    """The agent's email, one line of subject (control characters out); InvalidLLMOutput when it
    does not fit its schema."""
    try:
        got = msgspec.convert(final, WrittenEmail)
    except msgspec.ValidationError as exc:
        raise ApplicationError(f"the agent's email does not match its schema: {exc}", type="InvalidLLMOutput",
                               non_retryable=True) from None
    subject = " ".join("".join(c if c.isprintable() else " " for c in got.subject).split())[:200]
    return WrittenEmail(subject=subject or "(no subject)", text=got.text.replace("\x00", ""))


def lead_created(event: Event) -> tuple[str, str, EmailSequenceInput]:
    """A signed ``lead.created`` event (generic webhook): ``{"email", "name", "interest", "source",
    "lead_id"}``; the tenant is the signing one."""
    if not event.tenant_id:
        raise InvalidEvent("a lead.created event names its tenant (X-Biz-Tenant)")
    data = event.payload
    email = data.get("email").strip() if isinstance(data.get("email"), str) else None
    if not email or re.search(EMAIL_PATTERN, email) is None:
        raise InvalidEvent("lead.created: data.email must be the lead's email address")
    lead_id = data.get("lead_id")
    key = lead_id if isinstance(lead_id, str) and _is_slug(lead_id) else None
    try:
        inp = msgspec.convert({"tenant_id": event.tenant_id, "email": email, "name": data.get("name"),
                               "interest": data.get("interest"), "source": data.get("source") or event.source,
                               "lead_key": key, "requested_by": event.sender}, EmailSequenceInput)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(f"lead.created: {exc}") from None
    return event.tenant_id, key or lead_key(inp.email), inp


def _is_slug(value: str) -> bool:
    return re.search(SLUG_PATTERN, value) is not None


@workflow.defn(name="EmailSequence")
class EmailSequenceWorkflow(Stages):
    def __init__(self) -> None:
        Stages.__init__(self)
        self._sent: list[SentEmail] = []
        self._steps_total = 0
        self._next: tuple[int, datetime] | None = None
        self._stop: StopSequence | None = None
        self._finished = False
        self._usage_ids: list[int] = []
        self._llm_calls = 0
        self._offline: bool | None = None

    @workflow.run
    async def run(self, inp: EmailSequenceInput) -> EmailSequenceResult:
        try:
            return await self.failed_on_error(self._run(inp))
        except asyncio.CancelledError:
            if self._usage_ids:  # canceled: the emails written so far are billed all the same
                self._enter("reporting_usage", "cancel_requested")
                await report_usage(inp.tenant_id, self._usage_ids)
            self._enter("canceled")
            raise

    async def _run(self, inp: EmailSequenceInput) -> EmailSequenceResult:
        await self.stage("reading_settings")
        stored = await run_activity(TenantActivities.capability_settings,
                                    CapabilitySettingsRequest(tenant_id=inp.tenant_id, capability=NAME))
        settings = decode_settings(stored.settings, EmailSequenceSettings)
        self._steps_total = len(settings.steps)
        if settings.personalize:
            await self.stage("checking_budget", "settings_read")
            await check_ai_budget(inp.tenant_id)
        started = workflow.now()
        for number, step in enumerate(settings.steps, 1):
            due = started + timedelta(seconds=step.after_seconds)
            self._next = (number, due)
            await self.stage("waiting", f"email:{number - 1}" if number > 1 else "settings_read")
            wait = (due - workflow.now()).total_seconds()
            if wait > 0:
                try:
                    await workflow.wait_condition(lambda: self._stop is not None, timeout=wait,
                                                  timeout_summary=f"email {number}")
                except asyncio.TimeoutError:
                    pass
            if self._stop is not None:
                break
            subject, text = filled(step.subject, inp), filled(step.text, inp)
            if settings.personalize:
                await self.stage("writing")
                subject, text = await self._personalize(inp, number, subject, text)
            await self.stage("sending")
            sent = await call_tool(inp.tenant_id, SendEmail(
                to=[inp.email], subject=subject, text=text, from_name=settings.from_name, reply_to=settings.reply_to),
                step=f"email:{number}")
            self._sent.append(SentEmail(step=number, subject=subject, message_id=sent.message_id,
                                        sent_at=workflow.now()))
        self._next = None
        self._finished = True
        stop = self._stop
        if self._usage_ids:
            await self.stage("reporting_usage", f"email:{len(self._sent)}")
            await report_usage(inp.tenant_id, self._usage_ids)
        self._enter("stopped" if stop else "completed", "usage_reported" if self._usage_ids else f"email:{len(self._sent)}")
        return EmailSequenceResult(
            tenant_id=inp.tenant_id, status="stopped" if stop else "completed", sent=list(self._sent),
            steps=self._steps_total, stop_reason=stop.reason if stop else None,
            stopped_by=stop.requested_by if stop else None, personalized=settings.personalize,
            offline=self._offline, llm_calls=self._llm_calls)

    async def _personalize(self, inp: EmailSequenceInput, number: int, subject: str, text: str) -> tuple[str, str]:
        """The step's email as the agent rewrote it for the lead; its calls recorded as usage at once."""
        agent = await run_agent(AgentLoopInput(
            tenant_id=inp.tenant_id, agent=AGENT, output_schema=EMAIL_SCHEMA, max_turns=2,
            system_prompt="You write short, friendly follow-up emails for small businesses. Plain text, no "
                          "placeholders, the business's facts only.",
            task=writing_task(inp, number, subject, text)), key=f"email-{number}")
        self._usage_ids += await account(inp.tenant_id, AGENT, agent, f"email:{number}")
        self._llm_calls += len(agent.calls)
        self._offline = agent.offline if self._offline is None else self._offline and agent.offline
        email = written(agent.final)
        return email.subject, email.text

    @workflow.update(name="stop_sequence")
    def stop_sequence(self, req: StopSequence) -> SequenceState:
        self._stop = req
        return self._state()

    @stop_sequence.validator
    def _validate_stop(self, req: StopSequence) -> None:
        if self._finished:
            raise ApplicationError("the sequence has ended: every email was sent", type="SequenceEnded")
        if self._stop is not None:
            raise ApplicationError(f"the sequence was stopped already ({self._stop.reason})", type="AlreadyStopped")

    def _state(self) -> SequenceState:
        return SequenceState(
            status="stopped" if self._stop else "running", sent=len(self._sent),
            next_step=None if self._stop or not self._next else self._next[0],
            next_at=None if self._stop or not self._next else self._next[1],
            stop_reason=self._stop.reason if self._stop else None,
            stopped_by=self._stop.requested_by if self._stop else None)

    @workflow.query(name="progress")
    def progress(self) -> EmailSequenceProgress:
        return EmailSequenceProgress(
            stage=self._stage, steps_done=list(self._steps), sent=len(self._sent),  # type: ignore[arg-type]
            next_step=self._next[0] if self._next else None, next_at=self._next[1] if self._next else None,
            updated_at=self._updated_at)


CAPABILITY = Capability(
    name=NAME,
    workflow=EmailSequenceWorkflow,
    input_type=EmailSequenceInput,
    business_key=lambda inp: inp.lead_key or lead_key(inp.email),
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=TENANT_PEOPLE,
    cancel_roles=TENANT_PEOPLE,
    triggers=(Trigger(source="generic", event_type="lead.created", build=lead_created),),
    settings=EmailSequenceSettings,
    commands=(
        Command(name="stop-sequence", update="stop_sequence", input_type=StopSequence, roles=TENANT_PEOPLE,
                summary="Stop a lead's follow-up emails at once (the lead replied, unsubscribed, became a "
                "customer); refused once every email was sent (SequenceEnded) or when stopped already "
                "(AlreadyStopped)."),
    ),
    summary="Marketing Email Sequence (and Smart Lead Nurturing with the setting personalize): a new lead gets "
            "the tenant's follow-up emails (steps, delays and texts are the tenant's settings; with personalize an "
            "agent rewrites each for the lead), each on a durable timer, until the last is sent or the sequence "
            "is stopped.",
)
