"""Nothing retries forever or hangs: an MCP tool that keeps failing ends after the capped
attempts, a database constraint violation fails its activity at once, a slow statement is
cancelled by the pool's command timeout, and a decision that no worker can take answers 503
with Retry-After within its bound while the action stays open."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx
    import pytest
    from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
    from temporalio.exceptions import ActivityError, ApplicationError, RetryState
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.approvals import ApprovalActivities, Notified, Notify
    from core.database import create_pool
    from activities.mcp import (
        MCP_TOOL_DEADLINE,
        MCP_TOOL_RETRY,
        MCP_TOOL_TIMEOUT,
        CallToolRequest,
        CallToolResult,
        MCPActivities,
        ServerConfig,
        register_server,
    )
    from api.app import create_app
    from tests.conftest import Tokens
    from tests.support import assert_eventually, connect_when_ready, free_port, in_namespace, platform_workers, serve, unique
    from tests.test_campaign import campaign_body, pending_action
    from workers.main import WORKFLOW_FAILURE_TYPES, QueueRegistration, build_workers
    from core.settings import Settings
    from core.names import TASK_QUEUES
    from core.policies import DB_RETRY, DB_TIMEOUT


async def activity_attempts(handle: WorkflowHandle) -> list[int]:
    return [e.activity_task_started_event_attributes.attempt async for e in handle.fetch_history_events()
            if e.HasField("activity_task_started_event_attributes")]


async def failure_of(handle: WorkflowHandle, timeout: float) -> ActivityError:
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), timeout)
    assert isinstance(failed.value.cause, ActivityError)
    return failed.value.cause


# --- MCP tools: capped attempts and a deadline over all of them ------------------------------

@workflow.defn(name="TestMCPToolWithProductionPolicy")
class ToolCallWorkflow:
    """Calls one tool with exactly the options every platform workflow uses."""

    @workflow.run
    async def run(self, req: CallToolRequest) -> CallToolResult:
        return await workflow.execute_activity_method(
            MCPActivities.call_tool, req, start_to_close_timeout=MCP_TOOL_TIMEOUT,
            schedule_to_close_timeout=MCP_TOOL_DEADLINE, retry_policy=MCP_TOOL_RETRY,
        )


async def test_a_tool_that_stays_unavailable_fails_after_the_capped_attempts(
    time_skipping_env: WorkflowEnvironment, db: asyncpg.Pool
) -> None:
    # The time-skipping server lets the minutes of back-off between attempts pass at once.
    client, task_queue = time_skipping_env.client, f"tq-{unique()}"
    tenant, name = unique("acme"), unique("down")
    await register_server(db, ServerConfig(name=name, transport="streamable-http",
                                           url=f"http://127.0.0.1:{free_port()}/mcp", timeout_seconds=2))
    mcp = MCPActivities(db)
    try:
        async with Worker(client, task_queue=task_queue, workflows=[ToolCallWorkflow], activities=[mcp.call_tool],
                          workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES):
            handle = await client.start_workflow(
                ToolCallWorkflow.run,
                CallToolRequest(tenant_id=tenant, server=name, tool="send_sms", idempotency_key=f"{tenant}:sms",
                                arguments={"to": "+14155550123", "text": "Your table is ready"}),
                id=f"{tenant}:test-bounded:{unique()}", task_queue=task_queue,
            )
            error = await failure_of(handle, timeout=120)
    finally:
        await mcp.aclose()
    assert error.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
    assert isinstance(error.cause, ApplicationError) and error.cause.type == "MCPUnavailable"
    assert f"MCP server {name!r} unavailable" in error.cause.message
    assert MCP_TOOL_RETRY.maximum_attempts == 12
    assert await activity_attempts(handle) == [MCP_TOOL_RETRY.maximum_attempts]


# --- Postgres: constraint violations and data errors are final; statements are bounded -------

@workflow.defn(name="TestNotifyOnce")
class NotifyWorkflow:
    @workflow.run
    async def run(self, n: Notify) -> Notified:
        return await workflow.execute_activity(
            "approvals.notify", n, result_type=Notified, start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY)


async def test_a_constraint_violation_or_refused_data_fails_the_activity_at_once(
    client: Client, settings: Settings, db: asyncpg.Pool, task_queue: str
) -> None:
    tenant = unique("acme")

    def notify(**kw: object) -> Notify:
        fields: dict[str, object] = dict(
            idempotency_key=f"{tenant}:{unique()}", tenant_id=tenant, workflow_id=f"{tenant}:campaign:x",
            request_id="creative-1", event="reminder", audience="client", roles=["client"], title="Approve it")
        return Notify(**{**fields, **kw})  # type: ignore[arg-type]

    # A worker built the way every platform worker is (workers.main.build_workers).
    regs = {task_queue: QueueRegistration(workflows=[NotifyWorkflow], activities=[ApprovalActivities(db).notify])}
    [worker] = build_workers(client, settings, regs)
    async with worker:
        outcomes = {}
        for case, n in {"check": notify(event="postponed"), "data": notify(title="Approve\x00it"),
                        "fine": notify()}.items():
            handle = await client.start_workflow(NotifyWorkflow.run, n, id=f"{tenant}:test-notify:{case}",
                                                 task_queue=task_queue)
            if case == "fine":
                outcomes[case] = await asyncio.wait_for(handle.result(), 20)
                continue
            started = time.monotonic()
            outcomes[case] = await failure_of(handle, timeout=20), time.monotonic() - started
            assert await activity_attempts(handle) == [1]
    (check, check_took), (data, data_took) = outcomes["check"], outcomes["data"]
    for error, took in ((check, check_took), (data, data_took)):
        assert error.retry_state == RetryState.NON_RETRYABLE_FAILURE and took < 5
    assert isinstance(check.cause, ApplicationError) and check.cause.type == "DatabaseConstraintViolation"
    assert check.cause.message == ("CheckViolationError (SQLSTATE 23514): table approval_notifications, "
                                   "constraint approval_notifications_event_check")
    assert isinstance(data.cause, ApplicationError) and data.cause.type == "DatabaseDataError"
    assert "\x00" not in data.cause.message and "Approve" not in data.cause.message  # never the values
    assert outcomes["fine"].created is True
    rows = await db.fetch("SELECT event FROM approval_notifications WHERE tenant_id = $1", tenant)
    assert [r["event"] for r in rows] == ["reminder"]


async def test_a_statement_longer_than_the_command_timeout_is_cancelled(database_url: str) -> None:
    pool = await create_pool(database_url, command_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await pool.fetchval("SELECT pg_sleep(10)")
        assert time.monotonic() - started < 3
        assert await pool.fetchval("SELECT 1") == 1  # the pool is still usable
    finally:
        await pool.close()


# --- the decision endpoint: 503 when no worker takes it --------------------------------------

async def test_a_decision_no_worker_takes_answers_503_with_retry_after_and_the_action_stays_open(
    settings: Settings, namespace: str, db: asyncpg.Pool, tokens: Tokens, mcp_sandbox: str
) -> None:
    ours = in_namespace(settings, namespace)
    ours = ours.model_copy(update={"api": ours.api.model_copy(update={"decision_timeout_seconds": 1.5})})
    client = await connect_when_ready(ours)
    tenant = unique("bakery")
    async with serve(create_app(ours)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        async with platform_workers(client, ours, db, TASK_QUEUES):
            r = await http.post("/v1/workflows/campaign", json=campaign_body(tenant), headers=tokens.client(tenant))
            assert r.status_code == 202, r.text
            wf_id = r.json()["workflow_id"]
            action = await pending_action(http, tokens, tenant, wf_id)
        # The workers are gone: nothing polls this namespace any more.
        decision = f"/v1/pending-actions/{action['action_id']}/decision"
        started = time.monotonic()
        r = await http.post(decision, json={"decision": "approve"}, headers=tokens.client(tenant))
        took = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "2"
        assert "did not take the decision within 1.5 s" in r.text
        assert 1.4 < took < 5
        # Still open: listed in Pending Actions, and the workflow still waits for it.
        r = await http.get("/v1/pending-actions", headers=tokens.client(tenant))
        assert [a["action_id"] for a in r.json()["items"]] == [action["action_id"]]
        assert (await client.get_workflow_handle(wf_id).describe()).status.name == "RUNNING"
        history = [e async for e in client.get_workflow_handle(wf_id).fetch_history_events()]
        assert not any(e.HasField("workflow_execution_update_accepted_event_attributes") for e in history)

        # Temporal kept the decision: when a worker polls again it is recorded, and asking
        # again (as Retry-After says) answers that it was.
        async with platform_workers(client, ours, db, TASK_QUEUES):
            async def recorded() -> None:
                r = await http.post(decision, json={"decision": "approve"}, headers=tokens.client(tenant))
                assert r.status_code == 409, r.text

            await assert_eventually(recorded, timeout=20, interval=0.5)
            r = await http.get(f"/v1/pending-actions/{action['action_id']}", headers=tokens.client(tenant))
            assert [(d["decision"], d["decided_by"]) for d in r.json()["decisions"]] == [("approve", f"owner@{tenant}")]
