"""Social Media Scheduling: a tenant's content calendar, drafted by an agent, approved (or not,
by the tenant's mode), published at each slot, and its engagement followed for a while.

Seed: "Social Media Scheduling (optional approval mode)". Stages: AI budget check → an agent
(the durable agent loop, offline provider by default) drafts every slot's post per platform →
each version checked and fixed deterministically (``workflows.social_posts.fit_post``) → usage
rows and their Lago events (at once: a calendar runs for days) → the client's approval in
Pending Actions when the tenant's ``approval_mode`` is ``always`` (the default; ``never``
publishes without asking): approve, edit a post's text, or reject the calendar → each slot
waits for its time on a durable timer and publishes on its platforms at once (a platform's
failure is retried on its own and does not stop the others) → after publishing, every
``engagement_every_hours`` for ``engagement_for_hours`` the post's metrics are read
(``get_social_post_metrics``) → a report (kind ``social-calendar``) with each post's last
reading.

While the calendar runs, the ``reschedule`` update moves a slot that has not started publishing
(a new time), and ``withdraw`` takes a slot out: before publishing it is never published; after
publishing its posts are deleted (``delete_social_post``); while it is being published it is
refused (try again). Each has a validator (refusals answer before anything changes) and a
signal of the same name plus ``_signal`` for fire-and-forget senders (the same checks; a refused
signal is recorded in ``refused``).

Bounded history: at most ``MAX_SLOTS`` (30) slots of up to four platforms and at most
``MAX_READINGS`` (12) engagement readings per post (``workflows/social_calendar_types.py``), so a calendar never needs continue-as-new;
a longer calendar is several runs (one per week or month, each its own key).

Workflow id: ``{tenant}:social-calendar:{key}``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import msgspec
    from activities.mcp.tools import DeleteSocialPost, GetSocialPostMetrics
    from activities.reports import ReportActivities, StoreReport
    from activities.tenants import CapabilitySettingsRequest, InvalidSettings, TenantActivities, decode_settings
    from core.activity import raise_if_cancelled, run_activity
    from hitl.approvals import HumanDecisions
    from hitl.protocol import ApprovalRequest, DecisionRecord
    from workflows.agent_loop import AgentLoopInput, run_agent
    from workflows.capability import TENANT_PEOPLE, Capability, Command
    from workflows.social_calendar_types import (
        Approval, CalendarInput, CalendarProgress, CalendarReport, CalendarResult, Metrics,
        PostView, RescheduleRequest, SlotInput, SlotStatus, SlotView, SocialCalendarSettings, WithdrawRequest,
    )
    from workflows.social_posts import FittedPost, draft_schema, fit_post, publish
    from workflows.stages import Stages
    from workflows.tools import call_tool
    from workflows.usage import account, check_ai_budget, report_usage

NAME = "social-calendar"
AGENT = "social-planner"
REMIND_AFTER = timedelta(hours=24)
DECIDE_WITHIN = timedelta(hours=72)
CLIENT_ROLES = ["client", "partner", "admin", "super_admin"]
REFUSED = "SlotChangeRefused"


class _Slot:
    """A slot's state (workflow memory)."""

    def __init__(self, spec: SlotInput) -> None:
        self.spec = spec
        self.at = spec.at
        self.status: SlotStatus = "drafting"
        self.posts: dict[str, PostView] = {}
        self.version = 0  # bumped by a reschedule or a withdrawal: wakes the slot's timer
        self.withdrawn_reason: str | None = None

    def view(self) -> SlotView:
        return SlotView(slot_id=self.spec.slot_id, at=self.at, status=self.status, topic=self.spec.topic,
                        posts=list(self.posts.values()), withdrawn_reason=self.withdrawn_reason)


def drafting_task(posts: list[SlotInput]) -> str:
    slots = [{"slot": p.slot_id, "platforms": list(p.platforms), "topic": p.topic, "link": p.link,
              "hashtags": list(p.hashtags)} for p in posts]
    return ("Draft the posts of a small business's social media calendar: for each slot, one post per platform "
            "listed, on the slot's topic, in each platform's tone (LinkedIn professional, X short and direct, "
            "Instagram visual, Facebook friendly), with a few hashtags. Limits: X 280 characters (a link counts 23), "
            f"Instagram 2200 (no clickable links), LinkedIn 3000. The slots: {msgspec.json.encode(slots).decode()}"
            )[:19000]


def calendar_schema(posts: list[SlotInput]) -> dict[str, Any]:
    return {"type": "object", "properties": {p.slot_id: draft_schema(list(p.platforms)) for p in posts},
            "required": [p.slot_id for p in posts]}


class _Draft(msgspec.Struct, frozen=True, kw_only=True):
    text: Annotated[str, msgspec.Meta(min_length=1)]
    hashtags: list[str] = []


def edit_schema(posts: dict[str, dict[str, str]]) -> dict[str, Any]:
    """What a client may edit: any post's text (checked again after the edit)."""
    text = {"type": "string", "minLength": 1, "maxLength": 5000}
    return {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
        "posts": {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
            slot: {"type": "object", "additionalProperties": False, "minProperties": 1,
                   "properties": {p: text for p in platforms}}
            for slot, platforms in posts.items()}}}}


def totals(slots: list[SlotView]) -> dict[str, int]:
    keys = ("impressions", "likes", "comments", "shares", "clicks")
    return {k: sum(getattr(p.metrics, k) for s in slots for p in s.posts if p.metrics) for k in keys}


@workflow.defn(name="SocialCalendar")
class SocialCalendarWorkflow(HumanDecisions, Stages):
    def __init__(self) -> None:
        HumanDecisions.__init__(self)
        Stages.__init__(self)
        self._slots: dict[str, _Slot] = {}
        self._refused: list[str] = []
        self._inp: CalendarInput | None = None

    @workflow.run
    async def run(self, inp: CalendarInput) -> CalendarResult:
        result = await self.failed_on_error(self._run(inp))
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    async def _run(self, inp: CalendarInput) -> CalendarResult:
        self._inp = inp
        self._slots = {p.slot_id: _Slot(p) for p in inp.posts}
        await self.stage("checking_budget")
        await check_ai_budget(inp.tenant_id)

        await self.stage("drafting", "budget_checked")
        agent = await run_agent(AgentLoopInput(
            tenant_id=inp.tenant_id, agent=AGENT, output_schema=calendar_schema(list(inp.posts)), max_turns=3,
            system_prompt="You are a social media planner for small businesses.", task=drafting_task(list(inp.posts)),
        ))
        try:
            drafts = msgspec.convert(agent.final, dict[str, dict[str, _Draft]])
            for slot in self._slots.values():
                for platform in slot.spec.platforms:
                    drafts[slot.spec.slot_id][platform]  # noqa: B018 - each slot and platform answered
        except (msgspec.ValidationError, KeyError) as exc:
            raise ApplicationError(f"the agent's drafts do not match their schema: {exc}", type="InvalidLLMOutput",
                                   non_retryable=True) from None

        await self.stage("checking_versions", "drafted")
        for slot in self._slots.values():
            for platform in slot.spec.platforms:
                draft = drafts[slot.spec.slot_id][platform]
                slot.posts[platform] = _view(fit_post(platform, draft.text, link=slot.spec.link,
                                                      hashtags=[*slot.spec.hashtags, *draft.hashtags]))

        # Billed now: the calendar may run for weeks.
        await self.stage("recording_usage", "versions_checked")
        usage_ids = await account(inp.tenant_id, AGENT, agent, "drafting")
        await self.stage("reporting_usage", "usage_recorded")
        await report_usage(inp.tenant_id, usage_ids)

        await self.stage("loading_settings", "usage_reported")
        stored = await run_activity(TenantActivities.capability_settings,
                                    CapabilitySettingsRequest(tenant_id=inp.tenant_id, capability=NAME))
        try:
            settings = decode_settings(stored.settings, SocialCalendarSettings)
        except InvalidSettings as exc:
            raise ApplicationError(f"{NAME} settings: {exc}", type="InvalidSettings", non_retryable=True) from None

        decisions: list[DecisionRecord] = []
        approval: Approval = "not_needed"
        if settings.approval_mode == "always":
            await self.stage("awaiting_approval", "settings_loaded")
            approval, decisions = await self._approve(inp)
            if approval != "approved":
                for slot in self._live():
                    slot.status = "rejected"
        else:
            self._steps.append("settings_loaded")

        await self.stage("running", "approved" if approval == "approved" else "no_approval_needed")
        live = self._live()
        for slot in live:
            slot.status = "scheduled"
        await asyncio.gather(*(self._run_slot(inp, slot) for slot in live))

        await self.stage("storing_report", "slots_done")
        slots = [s.view() for s in self._slots.values()]
        report = CalendarReport(offline=agent.offline, approval=approval, slots=slots, totals=totals(slots))
        stored_report = await run_activity(ReportActivities.store, StoreReport(
            tenant_id=inp.tenant_id, kind=NAME, workflow_id=workflow.info().workflow_id, subject=inp.key,
            offline=agent.offline, body=msgspec.to_builtins(report)))
        self._enter("completed", "report_stored")
        return CalendarResult(tenant_id=inp.tenant_id, key=inp.key, approval=approval, offline=agent.offline,
                              slots=slots, totals=report.totals, report_id=stored_report.report_id,
                              decisions=decisions, llm_calls=len(agent.calls))

    def _live(self) -> list[_Slot]:
        return [s for s in self._slots.values() if s.status not in ("withdrawn", "rejected")]

    async def _approve(self, inp: CalendarInput) -> tuple[Any, list[DecisionRecord]]:
        live = self._live()
        for slot in live:
            slot.status = "awaiting_approval"
        texts = {s.spec.slot_id: {p: v.text for p, v in s.posts.items()} for s in live}
        proposal = {"posts": texts, "slots": {s.spec.slot_id: {"at": s.at.isoformat(), "topic": s.spec.topic}
                                              for s in live}}
        outcome = await self.ask(ApprovalRequest(
            request_id="calendar", kind="social.calendar", title=f"Approve the social media calendar {inp.key}",
            summary=f"{len(live)} slot(s), {sum(len(s.posts) for s in live)} post(s), "
                    f"from {min(s.at for s in live):%Y-%m-%d %H:%M} UTC.",
            proposal=proposal, allowed=["approve", "reject", "edit"], audience="client", roles=CLIENT_ROLES,
            due_in_seconds=int(DECIDE_WITHIN.total_seconds()), remind_after_seconds=[int(REMIND_AFTER.total_seconds())],
            timeout_action="auto_reject", edit_schema=edit_schema(texts),
        ))
        if not outcome.approved:
            return ("timed_out" if outcome.outcome.startswith("timed_out") else "rejected"), outcome.decisions
        for slot_id, edited in (outcome.proposal.get("posts") or {}).items():
            slot = self._slots.get(slot_id)
            for platform, text in edited.items():
                if slot is not None and platform in slot.posts and text != slot.posts[platform].text:
                    slot.posts[platform] = _view(fit_post(platform, text, link=slot.spec.link), edited=True)
        return "approved", outcome.decisions

    async def _run_slot(self, inp: CalendarInput, slot: _Slot) -> None:
        # The slot's durable timer: a reschedule or a withdrawal wakes it to wait again or stop.
        while slot.status != "withdrawn":
            wait = (slot.at - workflow.now()).total_seconds()
            if wait <= 0:
                break
            version = slot.version
            try:
                await workflow.wait_condition(lambda: slot.version != version, timeout=wait)
            except asyncio.TimeoutError:
                pass
        if slot.status == "withdrawn":
            return
        slot.status = "publishing"
        platforms = list(slot.posts)
        outcomes = await asyncio.gather(*(
            publish(inp.tenant_id, _fitted(slot.posts[p]), step=f"publish:{slot.spec.slot_id}:{p}",
                    media_urls=list(slot.spec.media_urls), page=inp.pages.get(p))  # type: ignore[call-overload]
            for p in platforms))
        for o in outcomes:
            slot.posts[o.platform] = msgspec.structs.replace(
                slot.posts[o.platform], status=o.status, post_id=o.post_id, url=o.url, published_at=o.published_at,
                error=o.error, engagement_done=o.status != "published")
        ok = [o for o in outcomes if o.status == "published"]
        slot.status = "published" if len(ok) == len(outcomes) else "partial" if ok else "failed"
        await asyncio.gather(*(self._follow(inp, slot, o.platform) for o in ok))

    async def _follow(self, inp: CalendarInput, slot: _Slot, platform: str) -> None:
        """Engagement readings every ``engagement_every_hours`` for ``engagement_for_hours``."""
        every = timedelta(hours=inp.engagement_every_hours)
        readings = inp.engagement_for_hours // inp.engagement_every_hours
        for n in range(1, readings + 1):
            await workflow.sleep(every)
            post = slot.posts[platform]
            if post.status != "published" or post.post_id is None:
                break  # withdrawn (deleted) meanwhile
            try:
                got = await call_tool(inp.tenant_id, GetSocialPostMetrics(platform=platform,  # type: ignore[arg-type]
                                                                           post_id=post.post_id),
                                      step=f"metrics:{slot.spec.slot_id}:{platform}:{n}")
            except ActivityError as err:
                raise_if_cancelled(err)
                cause = err.cause
                slot.posts[platform] = msgspec.structs.replace(
                    slot.posts[platform], engagement_done=True,
                    error=f"engagement: {cause.message if isinstance(cause, ApplicationError) else err}")
                return
            slot.posts[platform] = msgspec.structs.replace(
                slot.posts[platform], readings=n, metrics=Metrics(
                    impressions=got.impressions, likes=got.likes, comments=got.comments, shares=got.shares,
                    clicks=got.clicks, measured_at=workflow.now()))
        slot.posts[platform] = msgspec.structs.replace(slot.posts[platform], engagement_done=True)

    # --- changes while it runs ------------------------------------------------------------

    def _refusal(self, slot_id: str, action: str) -> str | None:
        slot = self._slots.get(slot_id)
        if slot is None:
            return f"no slot {slot_id!r} in this calendar"
        if slot.status == "withdrawn":
            return f"slot {slot_id!r} was withdrawn"
        if slot.status == "rejected":
            return f"slot {slot_id!r} was rejected"
        if slot.status == "publishing":
            return f"slot {slot_id!r} is being published; try again in a moment"
        if action == "reschedule" and slot.status in ("published", "partial", "failed"):
            return f"slot {slot_id!r} was already published at {slot.at.isoformat()}: it cannot move"
        return None

    @workflow.update(name="reschedule")
    async def reschedule(self, req: RescheduleRequest) -> SlotView:
        slot = self._slots[req.slot_id]
        slot.at, slot.version = req.at, slot.version + 1
        return slot.view()

    @reschedule.validator
    def _check_reschedule(self, req: RescheduleRequest) -> None:
        why = self._refusal(req.slot_id, "reschedule") or (None if req.at.tzinfo else "at needs a time zone")
        if why:
            raise ApplicationError(why, type=REFUSED)

    @workflow.update(name="withdraw")
    async def withdraw(self, req: WithdrawRequest) -> SlotView:
        return await self._withdraw(req)

    @withdraw.validator
    def _check_withdraw(self, req: WithdrawRequest) -> None:
        why = self._refusal(req.slot_id, "withdraw")
        if why:
            raise ApplicationError(why, type=REFUSED)

    @workflow.signal(name="reschedule_signal")
    async def reschedule_signal(self, req: RescheduleRequest) -> None:
        why = self._refusal(req.slot_id, "reschedule") or (None if req.at.tzinfo else "at needs a time zone")
        if why:
            self._refused.append(f"reschedule {req.slot_id}: {why}")
            return
        await self.reschedule(req)

    @workflow.signal(name="withdraw_signal")
    async def withdraw_signal(self, req: WithdrawRequest) -> None:
        why = self._refusal(req.slot_id, "withdraw")
        if why:
            self._refused.append(f"withdraw {req.slot_id}: {why}")
            return
        await self._withdraw(req)

    async def _withdraw(self, req: WithdrawRequest) -> SlotView:
        slot = self._slots[req.slot_id]
        published = slot.status in ("published", "partial", "failed")
        slot.status, slot.version = "withdrawn", slot.version + 1
        slot.withdrawn_reason = req.reason or f"withdrawn by {req.requested_by}"
        if published and self._inp is not None:
            # Already out: its posts are taken down (idempotent per slot and platform).
            for platform, post in list(slot.posts.items()):
                if post.status == "published" and post.post_id:
                    await call_tool(self._inp.tenant_id, DeleteSocialPost(platform=platform,  # type: ignore[arg-type]
                                                                          post_id=post.post_id),
                                    step=f"delete:{req.slot_id}:{platform}")
                    slot.posts[platform] = msgspec.structs.replace(slot.posts[platform], status="deleted",
                                                                   engagement_done=True)
        return slot.view()

    @workflow.query(name="calendar")
    def calendar(self) -> list[SlotView]:
        return [s.view() for s in self._slots.values()]

    @workflow.query(name="progress")
    def progress(self) -> CalendarProgress:
        return CalendarProgress(stage=self._stage, steps_done=list(self._steps),  # type: ignore[arg-type]
                                slots=self.calendar(), refused=list(self._refused),
                                pending_request=self._approval.request.request_id if self._approval else None,
                                updated_at=self._updated_at)


def _view(fitted: FittedPost, edited: bool = False) -> PostView:
    fixes = (["edited by the client"] if edited else []) + list(fitted.fixes)
    return PostView(platform=fitted.platform, text=fitted.text, link=fitted.link, hashtags=fitted.hashtags,
                    fixes=fixes)


def _fitted(post: PostView) -> FittedPost:
    return FittedPost(platform=post.platform, text=post.text, link=post.link, hashtags=post.hashtags)


CAPABILITY = Capability(
    name=NAME,
    workflow=SocialCalendarWorkflow,
    input_type=CalendarInput,
    business_key=lambda inp: inp.key,
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=TENANT_PEOPLE,
    cancel_roles=TENANT_PEOPLE,
    decide_roles=frozenset(CLIENT_ROLES),
    summary="Social Media Scheduling: a content calendar drafted per platform by an agent, approved by the client "
            "(tenant setting approval_mode), published at each slot; reschedule or withdraw a slot while it runs; "
            "engagement read for a while after publishing and stored as a report.",
    settings=SocialCalendarSettings,
    commands=(
        Command(name="reschedule-slot", update="reschedule", input_type=RescheduleRequest,
                roles=frozenset(CLIENT_ROLES),
                summary="Move a calendar slot that has not started publishing to a new time (body: slot_id, at)."),
        Command(name="withdraw-slot", update="withdraw", input_type=WithdrawRequest, roles=frozenset(CLIENT_ROLES),
                summary="Take a slot out of the calendar: before its time it is never published; after, its posts "
                        "are deleted (body: slot_id, reason)."),
    ),
)
