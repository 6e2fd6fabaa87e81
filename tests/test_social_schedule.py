"""Social Media Scheduling.

On the time-skipping server (days pass in milliseconds; the activities are fakes registered
under the real names, the workflow, the agent loop and the approval protocol are real): each
post is published at its slot and not before; a reschedule moves it; a withdrawal before its
slot means it is never published, after it means its posts are deleted; engagement is read
every N hours and the polling ends after its period; in the approval mode nothing is published
before the client approves, and an edited text is what goes out. That server has no updates, so
changes arrive as the ``reschedule_signal`` / ``withdraw_signal`` (the same checks as the updates).

On the running platform (dev server, real workers, sandbox tools, offline provider): the client
starts a calendar over HTTP, approves it in Pending Actions, a past slot publishes at once (an
outbox row), the ``withdraw`` and ``reschedule`` updates (the Temporal client) take a slot out or
are refused with the reason, the report is readable, usage rows are billed; with the tenant's
``approval_mode`` set to ``never`` nothing waits; bad input 400 naming the field; another tenant 404.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx
    import msgspec
    import pytest
    from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.approvals import Notified, Notify
    from activities.lago import ReportUsage, UsageReport
    from activities.mcp import CallToolRequest, CallToolResult
    from activities.notify import Deliver, Delivered
    from activities.reports import ReportStored, StoreReport
    from activities.tenants import AuditEntry, AuditReceipt, CapabilitySettings, CapabilitySettingsRequest
    from activities.usage import BudgetStatus, CheckBudget
    from agents.types import LlmCall, LlmStepRequest, LlmStepResult
    from core.names import AGENTS_QUEUE, INTEGRATIONS_QUEUE, WORKFLOWS_QUEUE
    from hitl.protocol import ApprovalsView, Decider, DecisionInput
    from tests.conftest import Tokens, assert_eventually, unique
    from tests.support import record_history, signed
    from tests.test_approvals_timeskip import verifier
    from workers.main import WORKFLOW_FAILURE_TYPES
    from workflows.agent_loop import AgentLoopWorkflow
    from workflows.social_schedule import (
        CalendarInput, CalendarProgress, CalendarResult, RescheduleRequest, SlotInput, SlotView,
        SocialCalendarWorkflow, WithdrawRequest,
    )


# --- fakes under the real activity names ----------------------------------------------------

class Fakes:
    def __init__(self) -> None:
        self.mode: dict[str, Any] = {"approval_mode": "never"}
        self.published: list[tuple[datetime, str, dict[str, Any]]] = []  # (server time, key, arguments)
        self.metrics: list[tuple[datetime, str]] = []
        self.deleted: list[str] = []
        self.reports: list[StoreReport] = []

    @activity.defn(name="usage.check_budget")
    async def check_budget(self, req: CheckBudget) -> BudgetStatus:
        return BudgetStatus(tenant_id=req.tenant_id, spent_usd=0)  # type: ignore[arg-type]

    @activity.defn(name="agents.llm_step")
    async def llm_step(self, req: LlmStepRequest) -> LlmStepResult:
        schema = req.output_schema or {}
        final = {slot: {p: {"text": f"News of {slot} on {p}", "hashtags": ["#bakery"]}
                        for p in spec["properties"]} for slot, spec in schema["properties"].items()}
        return LlmStepResult(final=final, calls=[LlmCall(model="fake", tokens_in=10, tokens_out=10)],
                             provider="fake", offline=True, usage_per_call=True, usage_ids=[1])

    @activity.defn(name="lago.report_usage")
    async def report_usage(self, req: ReportUsage) -> UsageReport:
        return UsageReport(usage_ids=req.usage_ids, sent=len(req.usage_ids), duplicates=0, more=False)

    @activity.defn(name="tenant.capability_settings")
    async def settings(self, req: CapabilitySettingsRequest) -> CapabilitySettings:
        return CapabilitySettings(settings=self.mode)

    @activity.defn(name="reports.store")
    async def store(self, req: StoreReport) -> ReportStored:
        self.reports.append(req)
        return ReportStored(report_id=len(self.reports), created=True)

    @activity.defn(name="approvals.notify")
    async def notify(self, n: Notify) -> Notified:
        return Notified(notification_id=1, created=True)

    @activity.defn(name="notifications.deliver")
    async def deliver(self, d: Deliver) -> Delivered:
        return Delivered(sent=1)

    @activity.defn(name="audit.write")
    async def audit(self, e: AuditEntry) -> AuditReceipt:
        return AuditReceipt(audit_id=1, written=True)

    @activity.defn(name="mcp.call_tool")
    async def call_tool(self, req: CallToolRequest) -> CallToolResult:
        at = activity.info().current_attempt_scheduled_time  # the server's (skipped) time
        args = req.arguments
        if req.tool == "publish_social_post":
            self.published.append((at, req.idempotency_key, args))
            content: dict[str, Any] = {"post_id": f"{args['platform']}-{len(self.published)}",
                                       "platform": args["platform"], "status": "published",
                                       "url": f"https://social.example/{len(self.published)}",
                                       "published_at": at.isoformat()}
        elif req.tool == "get_social_post_metrics":
            self.metrics.append((at, args["post_id"]))
            n = sum(1 for _, p in self.metrics if p == args["post_id"])
            content = {"post_id": args["post_id"], "platform": args["platform"], "impressions": 100 * n,
                       "likes": 10 * n, "comments": n, "shares": n, "clicks": 5 * n}
        elif req.tool == "delete_social_post":
            self.deleted.append(args["post_id"])
            content = {"post_id": args["post_id"], "platform": args["platform"], "deleted": True}
        else:
            raise AssertionError(f"unexpected tool {req.tool}")
        return CallToolResult(server="sandbox", tool=req.tool, content=content)


@pytest.fixture
async def fakes(time_skipping_env: WorkflowEnvironment):  # noqa: ANN201
    f = Fakes()
    client = time_skipping_env.client
    async with Worker(client, task_queue=WORKFLOWS_QUEUE, workflows=[SocialCalendarWorkflow, AgentLoopWorkflow],
                      activities=[f.check_budget, f.settings, f.store, f.notify, f.deliver, f.audit,
                                  verifier().verify_decision],
                      workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES), \
            Worker(client, task_queue=AGENTS_QUEUE, activities=[f.llm_step]), \
            Worker(client, task_queue=INTEGRATIONS_QUEUE, activities=[f.call_tool, f.report_usage]):
        yield f


async def start(env: WorkflowEnvironment, slots: list[tuple[str, timedelta, list[str]]],
                **kw: Any) -> tuple[WorkflowHandle, datetime]:
    now = await env.get_current_time()
    inp = CalendarInput(tenant_id="acme", key="week-1", posts=[
        SlotInput(slot_id=s, at=now + offset, platforms=platforms, topic=f"topic {s}")  # type: ignore[arg-type]
        for s, offset, platforms in slots], **kw)
    handle = await env.client.start_workflow(
        SocialCalendarWorkflow.run, inp, id=f"acme:social-calendar:{uuid.uuid4().hex[:10]}", task_queue=WORKFLOWS_QUEUE)
    return handle, now


async def progress(handle: WorkflowHandle) -> CalendarProgress:
    return await handle.query(SocialCalendarWorkflow.progress, result_type=CalendarProgress)


async def test_each_post_goes_out_at_its_slot_and_engagement_polling_ends(
    time_skipping_env: WorkflowEnvironment, fakes: Fakes,
) -> None:
    env = time_skipping_env
    handle, t0 = await start(env, [("mon", timedelta(hours=2), ["x", "linkedin"]),
                                   ("wed", timedelta(days=2), ["facebook"])],
                             engagement_every_hours=6, engagement_for_hours=18)
    await env.sleep(timedelta(hours=1))
    assert fakes.published == []  # drafted, not yet due
    slots = {s.slot_id: s for s in (await progress(handle)).slots}
    assert slots["mon"].status == "scheduled" and slots["mon"].posts[0].text.startswith("News of mon")

    result = await handle.result()
    by_key = {key.rsplit(":", 2)[-2] + ":" + key.rsplit(":", 1)[-1]: at for at, key, _ in fakes.published}
    assert set(by_key) == {"mon:x", "mon:linkedin", "wed:facebook"}
    # Published at the slot, not before (and not long after).
    for key, at in by_key.items():
        due = t0 + (timedelta(hours=2) if key.startswith("mon") else timedelta(days=2))
        assert due <= at < due + timedelta(minutes=1), key
    # Three readings each (every 6 h for 18 h), the last one kept; then the polling ended.
    reads: dict[str, list[datetime]] = {}
    for at, post_id in fakes.metrics:
        reads.setdefault(post_id, []).append(at)
    assert sorted(len(v) for v in reads.values()) == [3, 3, 3]
    posts = [p for s in result.slots for p in s.posts]
    assert all(p.status == "published" and p.readings == 3 and p.engagement_done for p in posts)
    assert all(p.metrics is not None and p.metrics.impressions == 300 for p in posts)
    assert result.approval == "not_needed" and result.totals["impressions"] == 900
    assert fakes.reports[-1].kind == "social-calendar" and result.report_id == len(fakes.reports)


async def test_a_rescheduled_slot_moves_and_a_withdrawn_one_never_goes_out(
    time_skipping_env: WorkflowEnvironment, fakes: Fakes,
) -> None:
    env = time_skipping_env
    handle, t0 = await start(env, [("a", timedelta(hours=2), ["x"]), ("b", timedelta(hours=4), ["linkedin"])],
                             engagement_for_hours=0)
    await env.sleep(timedelta(hours=1))
    await handle.signal(SocialCalendarWorkflow.reschedule_signal,
                        RescheduleRequest(slot_id="a", at=t0 + timedelta(hours=10)))
    await handle.signal(SocialCalendarWorkflow.withdraw_signal, WithdrawRequest(slot_id="b", reason="sold out"))
    await env.sleep(timedelta(hours=5))  # past both original slots
    assert fakes.published == []
    # Changes to a withdrawn slot are refused, and say why.
    await handle.signal(SocialCalendarWorkflow.reschedule_signal,
                        RescheduleRequest(slot_id="b", at=t0 + timedelta(hours=6)))
    result = await handle.result()
    assert [(key.rsplit(":", 2)[-2], at) for at, key, _ in fakes.published][0][0] == "a"
    at = fakes.published[0][0]
    assert len(fakes.published) == 1 and t0 + timedelta(hours=10) <= at < t0 + timedelta(hours=10, minutes=1)
    slots = {s.slot_id: s for s in result.slots}
    assert (slots["a"].status, slots["b"].status, slots["b"].withdrawn_reason) == ("published", "withdrawn", "sold out")
    assert any("b" in r and "withdrawn" in r for r in (await progress(handle)).refused)


async def test_withdrawing_a_published_slot_deletes_its_posts_and_stops_the_polling(
    time_skipping_env: WorkflowEnvironment, fakes: Fakes,
) -> None:
    env = time_skipping_env
    handle, _ = await start(env, [("a", timedelta(hours=1), ["x", "facebook"])],
                            engagement_every_hours=6, engagement_for_hours=48)
    await env.sleep(timedelta(hours=8))  # published, one reading taken
    assert len(fakes.published) == 2 and len(fakes.metrics) == 2
    await handle.signal(SocialCalendarWorkflow.withdraw_signal, WithdrawRequest(slot_id="a", reason="typo"))
    result = await handle.result()
    assert len(fakes.metrics) == 2  # no reading after the withdrawal
    (slot,) = result.slots
    assert slot.status == "withdrawn" and {p.status for p in slot.posts} == {"deleted"}
    assert sorted(fakes.deleted) == sorted(p.post_id for p in slot.posts)


async def test_in_approval_mode_nothing_goes_out_before_the_client_approves_and_the_edit_is_published(
    time_skipping_env: WorkflowEnvironment, fakes: Fakes,
) -> None:
    env = time_skipping_env
    fakes.mode = {}  # the default: always ask
    handle, t0 = await start(env, [("a", timedelta(hours=1), ["x"]), ("b", timedelta(hours=30), ["linkedin"])],
                             engagement_for_hours=0)
    await env.sleep(timedelta(hours=3))  # slot a is due, but nobody approved
    assert fakes.published == []
    view = await handle.query(SocialCalendarWorkflow.approvals, result_type=ApprovalsView)
    assert view.open is not None and view.open.request.proposal["posts"]["a"]["x"].startswith("News of a")
    decision = DecisionInput(request_id="calendar", decision="edit", edits={"posts": {"a": {"x": "Fresh rye today"}}},
                             by=Decider(sub="owner@acme", roles=["client"], tenant_id="acme"))
    await handle.signal(SocialCalendarWorkflow.decide_signal,
                        signed(decision, handle.id, await env.get_current_time()))  # type: ignore[arg-type]
    result = await handle.result()
    texts = {a["platform"]: (at, a["text"]) for at, _, a in fakes.published}
    # Slot a (past due) went out on approval with the client's text; b at its own time.
    assert texts["x"][1].startswith("Fresh rye today") and texts["x"][0] >= t0 + timedelta(hours=3)
    assert t0 + timedelta(hours=30) <= texts["linkedin"][0] < t0 + timedelta(hours=30, minutes=1)
    assert result.approval == "approved" and [d.decided_by for d in result.decisions] == ["owner@acme"]
    x = next(p for s in result.slots for p in s.posts if p.platform == "x")
    assert "edited by the client" in x.fixes


async def test_a_rejected_calendar_publishes_nothing(time_skipping_env: WorkflowEnvironment, fakes: Fakes) -> None:
    env = time_skipping_env
    fakes.mode = {"approval_mode": "always"}
    handle, _ = await start(env, [("a", timedelta(hours=1), ["x"])], engagement_for_hours=0)
    await env.sleep(timedelta(minutes=10))
    decision = DecisionInput(request_id="calendar", decision="reject", comment="not this week",
                             by=Decider(sub="owner@acme", roles=["client"], tenant_id="acme"))
    await handle.signal(SocialCalendarWorkflow.decide_signal,
                        signed(decision, handle.id, await env.get_current_time()))  # type: ignore[arg-type]
    result = await handle.result()
    assert result.approval == "rejected" and [s.status for s in result.slots] == ["rejected"]
    assert fakes.published == []


# --- on the running platform ------------------------------------------------------------------

def calendar_body(tenant: str, **kw: Any) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    body = {"tenant_id": tenant, "key": unique("week"), "engagement_for_hours": 0, "posts": [
        {"slot_id": "today", "at": (now - timedelta(minutes=1)).isoformat(), "platforms": ["x", "linkedin"],
         "topic": "Pumpkin bread is back", "link": "https://bakery.example/pumpkin", "hashtags": ["#autumn"]},
        {"slot_id": "later", "at": (now + timedelta(days=3)).isoformat(), "platforms": ["facebook"],
         "topic": "Christmas stollen pre-orders"},
    ]}
    body.update(kw)
    return body


async def finished(http: httpx.AsyncClient, headers: dict[str, str], wf_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any]:
        view = (await http.get(f"/v1/workflows/{wf_id}", headers=headers)).json()
        assert view["status"] == "COMPLETED", view
        return view

    return await assert_eventually(done, timeout=60, interval=0.2)


async def slot_status(client: Client, wf_id: str, slot_id: str, want: str) -> SlotView:
    async def check() -> SlotView:
        slots = await client.get_workflow_handle(wf_id).query(SocialCalendarWorkflow.calendar,
                                                              result_type=list[SlotView])
        slot = next(s for s in slots if s.slot_id == slot_id)
        assert slot.status == want, slot
        return slot

    return await assert_eventually(check, timeout=60, interval=0.2)


async def test_client_approves_a_calendar_a_due_slot_publishes_the_other_is_withdrawn(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client,
) -> None:
    tenant = unique("bakery")
    owner = tokens.client(tenant)
    r = await http.post("/v1/workflows/social-calendar", headers=owner, json=calendar_body(tenant))
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]

    async def listed() -> dict[str, Any]:
        items = (await http.get("/v1/pending-actions", headers=owner)).json()["items"]
        mine = [a for a in items if a["workflow_id"] == wf_id]
        assert mine
        return mine[0]

    action = await assert_eventually(listed, timeout=60)
    assert action["request_id"] == "calendar" and set(action["allowed"]) == {"approve", "reject", "edit"}
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE workflow_id = $1", wf_id) == 0
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", headers=owner,
                        json={"decision": "approve", "comment": "looks good"})
    assert r.status_code == 200, r.text

    # The due slot goes out at once: one outbox row per platform.
    await slot_status(client, wf_id, "today", "published")
    rows = await db.fetch("SELECT arguments FROM outbox WHERE workflow_id = $1 AND tool = 'publish_social_post'", wf_id)
    assert sorted(r["arguments"]["platform"] for r in rows) == ["linkedin", "x"]
    handle = client.get_workflow_handle(wf_id)
    commands = f"/v1/workflows/{wf_id}/commands"
    # A published slot cannot move: 409 with the reason, and nothing changes.
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    r = await http.post(f"{commands}/reschedule-slot", headers=owner, json={"slot_id": "today", "at": tomorrow})
    assert r.status_code == 409 and "already published" in r.text and "SlotChangeRefused" in r.text, r.text
    r = await http.post(f"{commands}/reschedule-slot", headers=owner, json={"slot_id": "nope", "at": tomorrow})
    assert r.status_code == 409 and "no slot 'nope'" in r.text, r.text
    r = await http.post(f"{commands}/reschedule-slot", headers=owner, json={"slot_id": "later", "at": "soon"})
    assert r.status_code == 400 and "at" in r.json()["detail"], r.text
    r = await http.post(f"{commands}/withdraw-slot", headers=tokens.client(unique("rival")),
                        json={"slot_id": "later"})
    assert r.status_code == 404, r.text
    # The slot not yet due moves, then is withdrawn (the same as the Temporal client's update).
    in_four_days = datetime.now(timezone.utc) + timedelta(days=4)
    r = await http.post(f"{commands}/reschedule-slot", headers=owner,
                        json={"slot_id": "later", "at": in_four_days.isoformat()})
    assert r.status_code == 200 and r.json()["status"] == "scheduled", r.text
    assert datetime.fromisoformat(r.json()["at"]) == in_four_days
    with pytest.raises(WorkflowUpdateFailedError) as refused:  # the update itself, as the route runs it
        await handle.execute_update(SocialCalendarWorkflow.reschedule, RescheduleRequest(slot_id="today",
                                                                                        at=in_four_days))
    assert "already published" in str(refused.value.cause)
    r = await http.post(f"{commands}/withdraw-slot", headers=owner,
                        json={"slot_id": "later", "reason": "stollen sold out"})
    assert r.status_code == 200 and r.json()["status"] == "withdrawn", r.text
    assert r.json()["withdrawn_reason"] == "stollen sold out"

    view = await finished(http, owner, wf_id)
    await record_history(handle, "social-calendar")
    result = view["result"]
    assert result["approval"] == "approved" and result["offline"] is True
    slots = {s["slot_id"]: s for s in result["slots"]}
    assert slots["later"]["status"] == "withdrawn" and slots["today"]["status"] == "published"
    x = next(p for p in slots["today"]["posts"] if p["platform"] == "x")
    assert "https://bakery.example/pumpkin" in x["text"] and "#autumn" in x["hashtags"]
    reports = (await http.get("/v1/reports", params={"kind": "social-calendar"}, headers=owner)).json()["items"]
    assert [rep["workflow_id"] for rep in reports] == [wf_id]
    usage = await db.fetch("SELECT agent, reported_to_lago_at FROM llm_usage WHERE workflow_id = $1 "
                           "OR starts_with(workflow_id, $1 || ':')", wf_id)
    assert usage and {u["agent"] for u in usage} == {"social-planner"}
    assert all(u["reported_to_lago_at"] is not None for u in usage)


async def test_with_approval_mode_never_the_calendar_publishes_without_asking(
    http: httpx.AsyncClient, tokens: Tokens, db: asyncpg.Pool, client: Client,
) -> None:
    tenant = unique("florist")
    await db.execute("INSERT INTO tenants (id, name, plan, owner_email, status) VALUES ($1, 'F', 'starter', "
                     "'o@f.io', 'active')", tenant)
    owner = tokens.client(tenant)
    r = await http.put(f"/v1/tenants/{tenant}/settings/social-calendar", json={"approval_mode": "never"},
                       headers=owner)
    assert r.status_code == 202, r.text
    await client.get_workflow_handle(r.json()["workflow_id"]).result()
    body = calendar_body(tenant)
    body["posts"] = body["posts"][:1]
    r = await http.post("/v1/workflows/social-calendar", headers=owner, json=body)
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    result = (await finished(http, owner, wf_id))["result"]
    assert result["approval"] == "not_needed" and result["slots"][0]["status"] == "published"
    assert (await http.get("/v1/pending-actions", headers=owner)).json()["items"] == []
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE workflow_id = $1", wf_id) == 2


@pytest.mark.parametrize(("change", "field"), [
    ({"posts": []}, "posts"),
    ({"key": "Not A Slug"}, "key"),
    ({"engagement_every_hours": 1, "engagement_for_hours": 48}, "engagement_for_hours"),
    ({"posts": [{"slot_id": "a", "at": "2026-12-01T09:00:00", "platforms": ["x"], "topic": "t"}]}, "posts[].at"),
    ({"posts": [{"slot_id": "a", "at": "2026-12-01T09:00:00Z", "platforms": ["myspace"], "topic": "t"}]},
     "platforms"),
    ({"posts": [{"slot_id": "a", "at": "2026-12-01T09:00:00Z", "platforms": ["x"], "topic": "t"}] * 2}, "slot_id"),
    ({"posts": [{"slot_id": f"s{i}", "at": "2026-12-01T09:00:00Z", "platforms": ["x"], "topic": "t"}
                for i in range(31)]}, "posts"),
])
async def test_bad_input_answers_400_naming_the_field_and_starts_nothing(
    http: httpx.AsyncClient, tokens: Tokens, change: dict[str, Any], field: str,
) -> None:
    tenant = unique("cafe")
    r = await http.post("/v1/workflows/social-calendar", headers=tokens.client(tenant),
                        json=calendar_body(tenant, **change))
    assert r.status_code == 400 and field in r.text, r.text
    r = await http.get("/v1/workflows", params={"capability": "social-calendar"}, headers=tokens.client(tenant))
    assert r.json()["items"] == []


async def test_another_tenant_gets_404_and_nothing_starts(http: httpx.AsyncClient, tokens: Tokens) -> None:
    mine, theirs = unique("cafe"), unique("rival")
    r = await http.post("/v1/workflows/social-calendar", headers=tokens.client(theirs), json=calendar_body(mine))
    assert r.status_code == 404, r.text
    r = await http.get("/v1/workflows", params={"capability": "social-calendar"}, headers=tokens.client(mine))
    assert r.json()["items"] == []
    r = await http.get(f"/v1/tenants/{mine}/settings/social-calendar", headers=tokens.client(theirs))
    assert r.status_code == 404
