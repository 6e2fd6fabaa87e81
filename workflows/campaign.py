"""Campaign Strategy & Generation: AI plans and writes a multi-channel campaign, the client
approves its creative and budget, then it launches.

1. The tenant's AI budget is checked.
2. A strategy agent (durable single-agent loop, child workflow) proposes positioning,
   audiences and key messages.
3. A creative crew (copywriter and creative director, one CrewAI activity) writes one ad per
   channel.
4. The client approves the creative and the budget (Pending Actions): approve, reject, request
   changes with a comment, or edit copy and budget (kept as a diff against the AI's proposal).
   Reminder after 24 h; after 72 h the request escalates to the tenant's partner or an admin.
   ``request_changes`` regenerates the creative with every comment so far, at most
   ``max_rounds`` times.
5. A budget above the tenant's cap (campaign settings ``budget_cap_usd``, default $1,000)
   also needs an admin's (or finance's) approval in the Approval Hub.
6. Each channel's campaign is created through the ``upsert_ads_campaign`` tool (routed by the
   MCP registry; the shipped default records one outbox row per channel), idempotent on the
   workflow id and channel.
7. LLM usage is recorded per call and reported to Lago.

Workflow id: ``{tenant_id}:campaign:{campaign_key}``.
"""

from __future__ import annotations

import asyncio

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from temporalio import workflow
from temporalio.exceptions import is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import msgspec
    from activities.agents import AgentActivities
    from agents.types import CreativeOutcome, CreativeRequest
    from activities.approvals import ApprovalActivities, TenantPolicyRequest
    from activities.mcp.tools import AdsCampaign, UpsertAdsCampaign
    from workflows.tools import call_tool
    from hitl.approvals import HumanDecisions
    from hitl.protocol import ApprovalRequest, DecisionRecord
    from workflows.agent_loop import AgentLoopInput, run_agent
    from core.activity import run_activity
    from core.names import SLUG_PATTERN
    from workflows.stages import Stages
    from workflows.capability import TENANT_PEOPLE, Capability
    from workflows.usage import account, check_ai_budget, report_usage

NAME = "campaign"
# Versioning marker (workflow.patched): a cancel arriving as a running activity's error gets the
# cancel's cleanup too.
CANCEL_IN_ACTIVITY = "campaign-cancel-in-activity"

Channel = Literal["google_ads", "meta_ads", "linkedin_ads", "tiktok_ads"]
Objective = Literal["awareness", "traffic", "leads", "sales"]
Stage = Literal["started", "checking_budget", "planning_strategy", "writing_creative", "awaiting_client_approval",
                "awaiting_budget_approval", "launching", "pausing_ads", "reporting_usage", "completed", "failed",
                "canceled"]
Status = Literal["launched", "rejected", "budget_rejected", "changes_limit_reached"]

# The approval timings of the catalogue: remind after a day, escalate after three.
REMIND_AFTER = timedelta(hours=24)
ESCALATE_AFTER = timedelta(hours=72)
CLIENT_ROLES = ["client", "partner", "admin", "super_admin"]
ESCALATION_ROLES = ["partner", "admin", "super_admin"]
BUDGET_ROLES = ["admin", "super_admin", "finance"]
MAX_BUDGET_USD = 1_000_000

STRATEGY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "positioning": {"type": "string", "maxLength": 500},
        "target_audiences": {"type": "array", "items": {"type": "string", "maxLength": 200}, "minItems": 1,
                             "maxItems": 5},
        "key_messages": {"type": "array", "items": {"type": "string", "maxLength": 200}, "minItems": 1,
                         "maxItems": 5},
    },
    "required": ["positioning", "target_audiences", "key_messages"],
}


class CampaignInput(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
    campaign_key: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]  # the business key of the id
    goal: Annotated[str, msgspec.Meta(min_length=3, max_length=2000)]
    channels: Annotated[list[Channel], msgspec.Meta(min_length=1, max_length=4)]
    budget_usd: Annotated[float, msgspec.Meta(gt=0, le=MAX_BUDGET_USD)]
    duration_days: Annotated[int, msgspec.Meta(ge=1, le=365)] = 30
    objective: Objective = "traffic"
    start_date: date | None = None
    max_rounds: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3  # creative rounds (request_changes)
    requested_by: str = "system"


class CampaignSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's campaign policy (``GET/PUT /v1/tenants/{tenant}/settings/campaign``)."""

    # A budget above this also needs an admin's (or finance's) approval after the client's.
    budget_cap_usd: Annotated[float, msgspec.Meta(ge=0, le=MAX_BUDGET_USD)] = 1000.0


class LaunchedCampaign(msgspec.Struct, frozen=True, kw_only=True):
    channel: str
    campaign_id: str
    status: str
    daily_budget: float
    headline: str


class CampaignResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    campaign_key: str
    status: Status
    offline: bool
    budget_usd: float  # as approved (edits included)
    rounds: int
    launched: list[LaunchedCampaign] = []
    ads: dict[str, dict[str, Any]] = {}  # as approved, by channel
    decisions: list[DecisionRecord] = []
    llm_calls: int = 0


class CampaignProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: Stage
    steps_done: list[str]
    round: int = 0
    pending_request: str | None = None
    updated_at: datetime | None = None


def _channels(inp: CampaignInput) -> list[str]:
    return list(dict.fromkeys(inp.channels))


def edit_schema(channels: list[str]) -> dict[str, Any]:
    """What a client may edit: the budget and each channel's copy."""
    ad = {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
        "headline": {"type": "string", "minLength": 1, "maxLength": 90},
        "body": {"type": "string", "minLength": 1, "maxLength": 500},
        "call_to_action": {"type": "string", "minLength": 1, "maxLength": 40},
        "asset_brief": {"type": "string", "minLength": 1, "maxLength": 1000},
    }}
    return {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
        "budget_usd": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_BUDGET_USD},
        "ads": {"type": "object", "additionalProperties": False, "minProperties": 1,
                "properties": {c: ad for c in channels}},
    }}


def _ad_name(inp: CampaignInput, channel: str) -> str:
    return f"{inp.campaign_key} ({channel})"[:255]


def _live(channel: str, ad: dict[str, Any], done: AdsCampaign) -> LaunchedCampaign:
    return LaunchedCampaign(channel=channel, campaign_id=done.campaign_id, status=done.status,
                            daily_budget=done.daily_budget, headline=ad["headline"])


@workflow.defn(name="Campaign")
class CampaignWorkflow(HumanDecisions, Stages):
    def __init__(self) -> None:
        HumanDecisions.__init__(self)
        Stages.__init__(self)
        self._round = 0
        self._usage_ids: list[int] = []
        self._launched: list[LaunchedCampaign] = []  # live ads, paused again if the campaign is canceled

    @workflow.run
    async def run(self, inp: CampaignInput) -> CampaignResult:
        try:
            result = await self._run(inp)
            # Whatever the outcome, the LLM calls it made are billed (Lago: one event per call).
            await self.stage("reporting_usage", result.status)
            await report_usage(inp.tenant_id, self._usage_ids)
            self._enter("completed", "usage_reported")
        except asyncio.CancelledError:
            await self._canceled(inp)
            raise
        except Exception as exc:
            # A cancel that reaches a running activity (a notice being delivered, an ad being
            # launched) arrives as that activity's error: the same cleanup. Runs canceled so
            # before this code ended "failed" without it, and replay so.
            if is_cancelled_exception(exc) and workflow.patched(CANCEL_IN_ACTIVITY):
                await self._canceled(inp)
            else:
                self._enter("failed")
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    async def _canceled(self, inp: CampaignInput) -> None:
        """Canceled (the client, or an admin): ads already live are paused, and the LLM calls
        made so far are billed all the same. These commands only follow the cancel request in
        history."""
        if self._launched:
            self._enter("pausing_ads", "cancel_requested")
            for ad in self._launched:
                await self._upsert_ad(inp, f"pause:{ad.channel}", UpsertAdsCampaign(
                    platform=ad.channel, campaign_id=ad.campaign_id, status="paused",
                    name=_ad_name(inp, ad.channel), objective=inp.objective, daily_budget=ad.daily_budget))
        self._enter("reporting_usage", "cancel_requested")
        await report_usage(inp.tenant_id, self._usage_ids)
        self._enter("canceled", "usage_reported")

    async def _run(self, inp: CampaignInput) -> CampaignResult:
        channels = _channels(inp)
        calls = 0
        await self.stage("checking_budget")
        await check_ai_budget(inp.tenant_id)

        await self.stage("planning_strategy", "budget_checked")
        strategy = await run_agent(AgentLoopInput(
            tenant_id=inp.tenant_id, agent="campaign-strategist", output_schema=STRATEGY_SCHEMA, max_turns=3,
            system_prompt="You are a marketing strategist for small businesses.",
            task=f"Plan a {inp.objective} campaign on {', '.join(channels)} with a budget of ${inp.budget_usd:,.2f} "
                 f"over {inp.duration_days} days. The business's goal: {inp.goal}",
        ))
        self._usage_ids += await account(inp.tenant_id, "campaign-strategist", strategy, "strategy")
        calls += len(strategy.calls)
        offline = strategy.offline

        feedback: list[str] = []
        decisions: list[DecisionRecord] = []
        budget = inp.budget_usd
        while True:
            self._round += 1
            await self.stage("writing_creative", "strategy_planned" if self._round == 1 else "changes_requested")
            creative: CreativeOutcome = await run_activity(
                AgentActivities.campaign_creative_crew,
                CreativeRequest(tenant_id=inp.tenant_id, workflow_id=workflow.info().workflow_id, goal=inp.goal,
                                objective=inp.objective, channels=channels, strategy=strategy.final,
                                feedback=feedback),
            )
            self._usage_ids += await account(inp.tenant_id, "campaign-creative-crew", creative, f"creative:{self._round}")
            calls += len(creative.calls)
            offline = offline or creative.offline

            await self.stage("awaiting_client_approval", "creative_written")
            proposal = {"budget_usd": budget, "duration_days": inp.duration_days, "objective": inp.objective,
                        "ads": {c: msgspec.to_builtins(creative.ads[c]) for c in channels},
                        "strategy": strategy.final, "summary": creative.summary}
            outcome = await self.ask(ApprovalRequest(
                request_id=f"creative-{self._round}", kind="campaign.creative",
                title=f"Approve the creative and budget of campaign {inp.campaign_key}",
                summary=f"{len(channels)} channel(s), ${budget:,.2f} over {inp.duration_days} days. {creative.summary}",
                proposal=proposal, allowed=["approve", "reject", "request_changes", "edit"], audience="client",
                roles=CLIENT_ROLES, due_in_seconds=int(ESCALATE_AFTER.total_seconds()),
                remind_after_seconds=[int(REMIND_AFTER.total_seconds())], timeout_action="escalate",
                escalate_to_audience="admin", escalate_to_roles=ESCALATION_ROLES,
                edit_schema=edit_schema(channels),
            ))
            decisions += outcome.decisions
            if outcome.outcome == "changes_requested":
                feedback.append(outcome.comment)
                if self._round >= inp.max_rounds:
                    return self._result(inp, "changes_limit_reached", offline, budget, decisions, calls)
                continue
            if not outcome.approved:
                return self._result(inp, "rejected", offline, budget, decisions, calls)
            approved = outcome.proposal
            budget = float(approved["budget_usd"])
            break
        self._steps.append("client_approved")

        policy = await run_activity(ApprovalActivities.tenant_policy, TenantPolicyRequest(tenant_id=inp.tenant_id))
        if budget > policy.campaign_budget_cap_usd:
            await self.stage("awaiting_budget_approval")
            override = await self.ask(ApprovalRequest(
                request_id="budget-override", kind="campaign.budget_override",
                title=f"Budget ${budget:,.2f} of campaign {inp.campaign_key} is above the tenant's cap",
                summary=f"The tenant's cap is ${policy.campaign_budget_cap_usd:,.2f}; the client approved "
                        f"${budget:,.2f} over {inp.duration_days} days on {', '.join(channels)}.",
                proposal={"budget_usd": budget, "cap_usd": policy.campaign_budget_cap_usd},
                allowed=["approve", "reject"], audience="admin", roles=BUDGET_ROLES,
                due_in_seconds=int(ESCALATE_AFTER.total_seconds()), remind_after_seconds=[int(REMIND_AFTER.total_seconds())],
                timeout_action="auto_reject",
            ))
            decisions += override.decisions
            if not override.approved:
                return self._result(inp, "budget_rejected", offline, budget, decisions, calls)
            self._steps.append("budget_approved")

        await self.stage("launching")
        launched = await self._launch(inp, channels, approved["ads"], budget)
        return self._result(inp, "launched", offline, budget, decisions, calls, launched=launched,
                            ads=approved["ads"])

    async def _launch(self, inp: CampaignInput, channels: list[str], ads: dict[str, Any],
                      budget: float) -> list[LaunchedCampaign]:
        daily = round(budget / inp.duration_days / len(channels), 2)
        start = inp.start_date or workflow.now().date()
        launched = []
        for channel in channels:
            ad = ads[channel]
            # A launch asked for completes even if the campaign is canceled meanwhile: its ad
            # is then known, and paused again by the cancellation (no ad left running unseen).
            call = asyncio.ensure_future(self._upsert_ad(inp, f"launch:{channel}", UpsertAdsCampaign(
                platform=channel, name=_ad_name(inp, channel), objective=inp.objective,
                daily_budget=max(daily, 0.01), status="active", start_date=start,
                end_date=start + timedelta(days=inp.duration_days - 1),
                targeting={"headline": ad["headline"], "body": ad["body"], "call_to_action": ad["call_to_action"]},
            )))
            try:
                done = await asyncio.shield(call)
            except asyncio.CancelledError:
                self._launched.append(_live(channel, ad, await call))
                raise
            live = _live(channel, ad, done)
            self._launched.append(live)
            launched.append(live)
        return launched

    async def _upsert_ad(self, inp: CampaignInput, step: str, ad: UpsertAdsCampaign) -> AdsCampaign:
        return await call_tool(inp.tenant_id, ad, step=step)

    def _result(self, inp: CampaignInput, status: Status, offline: bool, budget: float,
                decisions: list[DecisionRecord], calls: int, *, launched: list[LaunchedCampaign] | None = None,
                ads: dict[str, Any] | None = None) -> CampaignResult:
        return CampaignResult(tenant_id=inp.tenant_id, campaign_key=inp.campaign_key, status=status, offline=offline,
                              budget_usd=budget, rounds=self._round, launched=launched or [], ads=ads or {},
                              decisions=decisions, llm_calls=calls)

    @workflow.query(name="progress")
    def progress(self) -> CampaignProgress:
        return CampaignProgress(stage=self._stage, steps_done=list(self._steps), round=self._round,  # type: ignore[arg-type]
                                pending_request=self._approval.request.request_id if self._approval else None,
                                updated_at=self._updated_at)


CAPABILITY = Capability(
    name=NAME,
    workflow=CampaignWorkflow,
    input_type=CampaignInput,
    business_key=lambda inp: inp.campaign_key,
    tenant_in_input=lambda inp: inp.tenant_id,
    start_roles=TENANT_PEOPLE,
    cancel_roles=TENANT_PEOPLE,
    decide_roles=frozenset(CLIENT_ROLES + ESCALATION_ROLES + BUDGET_ROLES),
    summary="Plan and write a multi-channel ad campaign with AI; the client approves creative and budget "
            "(Pending Actions), a budget above the tenant's cap also needs an admin; then it launches.",
    settings=CampaignSettings,
    # The cap is the platform's check on a tenant's spend: the tenant does not raise its own.
    admin_settings=frozenset({"budget_cap_usd"}),
)
