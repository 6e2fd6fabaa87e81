"""Worker processes: the three task queues in one process by default, or one queue each.

``bizosaas worker`` runs every queue; ``bizosaas worker --queue biz-agents`` runs one (scale
each queue on its own). SIGTERM/SIGINT drain: polling stops, running activities get
``graceful_shutdown_seconds`` to finish, then the process exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import Worker, WorkerDeploymentConfig

from activities.affiliates import AffiliateActivities
from activities.approvals import ApprovalActivities
from activities.billing import BillingCustomerActivities
from core.database import DatabaseErrorInterceptor, create_pool
from activities.content import ContentActivities
from activities.decision_keys import DecisionKeyActivities
from activities.mail import MailActivities
from activities.orders import OrderActivities
from activities.reports import ReportActivities
from activities.schedules import ScheduleActivities
from activities.tenants import AuditActivities, TenantActivities
from activities.usage import UsageActivities, UsageLedger
from core.activity import activity_methods
from core.client import connect
from core.converter import resolve_struct_annotations
from core.settings import Settings
from core.telemetry import configure_tracing, worker_runtime
from schedules.reconciler import reconcile
from workflows.agent_loop import AgentLoopWorkflow
from workflows.catalogue import CATALOGUE, WORKFLOWS
from core.names import AGENTS_QUEUE, INTEGRATIONS_QUEUE, TASK_QUEUES, WORKFLOWS_QUEUE
from workflows.tenant_schedules import TenantCapabilitiesWorkflow
from workflows.tenant_settings import TenantSettingsWorkflow

log = logging.getLogger(__name__)

# Every workflow type a worker of the workflows queue runs (and a replay must know).
ALL_WORKFLOWS: Sequence[type] = (*WORKFLOWS, AgentLoopWorkflow, TenantCapabilitiesWorkflow, TenantSettingsWorkflow)

# Invalid input fails the workflow at once instead of retrying its task forever.
WORKFLOW_FAILURE_TYPES: Sequence[type[BaseException]] = (msgspec.ValidationError,)


@dataclass
class QueueRegistration:
    workflows: list[type] = field(default_factory=list)
    activities: list = field(default_factory=list)  # bound activity methods (core.activity.activity_methods)
    max_concurrent_activities: int | None = None
    max_activities_per_second: float | None = None
    executor: concurrent.futures.Executor | None = None
    closers: list = field(default_factory=list)  # async callables run after the workers stop


def configure_crewai(settings: Settings) -> None:
    """CrewAI's environment, set before it is first imported (agents worker only): no tracing
    (each agent would wait 5 s for it), no telemetry or version check, storage in the state dir."""
    os.environ["CREWAI_TRACING_ENABLED"] = "false"
    os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
    os.environ["CREWAI_DISABLE_VERSION_CHECK"] = "true"
    storage = Path(os.environ.get("CREWAI_STORAGE_DIR") or settings.dev.state_dir / "crewai").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    os.environ["CREWAI_STORAGE_DIR"] = str(storage)


def registrations(settings: Settings, pool: asyncpg.Pool, queues: Sequence[str],
                  notify_channels: Mapping[str, Any] | None = None) -> dict[str, QueueRegistration]:
    """What each task queue runs. Activity classes are built once and shared; each queue registers
    every activity method of its classes, and a class declared for another queue is refused.
    ``notify_channels``: channels plugged into the notifier besides email and in-app (name ->
    ``async (NotificationEvent) -> None``, e.g. outbound webhooks), called once per event."""
    regs: dict[str, QueueRegistration] = {}
    if WORKFLOWS_QUEUE in queues:
        # Settings read by workflows whose input leaves them to the tenant (tenant.capability_settings).
        tenants = TenantActivities(pool, {name: cap.settings_of for name, cap in CATALOGUE.items()})
        audit = AuditActivities(pool)
        usage = UsageActivities(pool, settings.ai.default_monthly_budget_usd)
        billing, reports = BillingCustomerActivities(pool), ReportActivities(pool)
        # Activities that apply a capability's settings get its declared settings type.
        approvals = ApprovalActivities(pool, CATALOGUE["campaign"].settings_of)
        schedules, orders = ScheduleActivities(pool, reconcile), OrderActivities(pool, CATALOGUE["order"].settings_of)
        content = ContentActivities(pool, CATALOGUE["seo-content"].settings_of, CATALOGUE["blog-engine"].settings_of)
        # The local activity that verifies signed deciders: the keys stay in this process.
        settings.require_decision_keys()
        decision_keys = DecisionKeyActivities(settings.decision.keys)
        if not settings.decision.keys:
            log.warning("BIZ_DECISION_KEYS is not set: every decision will be refused (signed with an unknown key)")
        # Approval events to people (email through the send_email tool, in-app, plugged-in
        # channels), run beside the workflows so a notification never waits for another queue.
        from activities.mcp import MCPActivities
        from activities.notify import NotifierActivities, mcp_email_sender

        from activities.outbound_webhooks import OutboundWebhookActivities, notification_channel

        notify_mcp = MCPActivities(pool)
        if notify_channels is None:  # the tenant's outbound webhook endpoints
            notify_channels = {"webhook": notification_channel(OutboundWebhookActivities(pool, settings.outbound))}
        notifier = NotifierActivities(pool, settings, mcp_email_sender(notify_mcp), channels=notify_channels)
        regs[WORKFLOWS_QUEUE] = QueueRegistration(
            workflows=list(ALL_WORKFLOWS),
            activities=activity_methods(WORKFLOWS_QUEUE, tenants, audit, usage, billing, reports, approvals,
                                        schedules, orders, content, decision_keys, MailActivities(),
                                        notifier, AffiliateActivities(pool)),
            max_concurrent_activities=settings.worker.max_concurrent_activities,
            closers=[notify_mcp.aclose],
        )
    if AGENTS_QUEUE in queues:
        configure_crewai(settings)
        from activities.agent_steps import AgentStepActivities
        from activities.agents import AgentActivities

        # Every LLM call is a usage row as it returns (budget and billing see failed attempts too).
        ledger = UsageLedger(pool)
        agents, steps = AgentActivities(settings.llm, ledger), AgentStepActivities(settings.llm, ledger)
        regs[AGENTS_QUEUE] = QueueRegistration(
            activities=activity_methods(AGENTS_QUEUE, agents, steps),
            max_concurrent_activities=settings.worker.agents_max_concurrent,
            # Crews are sync (CrewAI): they run on this bounded pool, never on the event loop.
            executor=concurrent.futures.ThreadPoolExecutor(
                max_workers=settings.worker.agents_max_concurrent, thread_name_prefix="crew"
            ),
        )
    if INTEGRATIONS_QUEUE in queues:
        # The MCP client and the Stripe and Lago SDKs load only where this queue runs.
        from activities.lago import LagoActivities
        from activities.mcp import MCPActivities
        from activities.outbound_webhooks import OutboundWebhookActivities
        from activities.stripe import StripeActivities

        mcp, stripe, lago = MCPActivities(pool), StripeActivities(settings), LagoActivities(settings, pool)
        outbound = OutboundWebhookActivities(pool, settings.outbound)
        regs[INTEGRATIONS_QUEUE] = QueueRegistration(
            activities=activity_methods(INTEGRATIONS_QUEUE, mcp, stripe, lago, outbound),
            max_activities_per_second=settings.worker.integrations_max_per_second,
            closers=[mcp.aclose, stripe.close],
        )
    return regs


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """Worker Versioning when a deployment name and build id are set; None polls unversioned."""
    w = settings.worker
    if not w.deployment_name and not w.build_id:
        return None
    if not (w.deployment_name and w.build_id):
        raise SystemExit("set both BIZ_WORKER_DEPLOYMENT_NAME and BIZ_WORKER_BUILD_ID, or neither")
    behavior = {"auto_upgrade": VersioningBehavior.AUTO_UPGRADE, "pinned": VersioningBehavior.PINNED}
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(deployment_name=w.deployment_name, build_id=w.build_id),
        use_worker_versioning=True, default_versioning_behavior=behavior[w.versioning_behavior])


def build_workers(client: Client, settings: Settings, regs: dict[str, QueueRegistration]) -> list[Worker]:
    # Every payload type is imported by now: resolve their annotations outside the sandbox.
    resolve_struct_annotations()
    workers = []
    for queue, reg in regs.items():
        if not reg.workflows and not reg.activities:
            log.info("task queue %s has nothing registered yet; not polling it", queue)
            continue
        workers.append(
            Worker(
                client,
                task_queue=queue,
                workflows=reg.workflows,
                activities=reg.activities,
                activity_executor=reg.executor,
                max_concurrent_activities=reg.max_concurrent_activities,
                max_activities_per_second=reg.max_activities_per_second,
                workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES,
                graceful_shutdown_timeout=timedelta(seconds=settings.worker.graceful_shutdown_seconds),
                max_cached_workflows=settings.worker.max_cached_workflows,
                deployment_config=deployment_config(settings),
                interceptors=[DatabaseErrorInterceptor()],
            )
        )
    return workers


async def run_workers(settings: Settings, queues: Sequence[str] = TASK_QUEUES,
                      notify_channels: Mapping[str, Any] | None = None) -> None:
    unknown = set(queues) - set(TASK_QUEUES)
    if unknown:
        raise SystemExit(f"unknown task queue(s) {sorted(unknown)}; known: {', '.join(TASK_QUEUES)}")
    configure_tracing(settings, "worker")
    runtime = worker_runtime(settings)
    client = await connect(settings, runtime=runtime)
    if settings.worker.metrics_bind():
        log.info("worker metrics on http://%s/metrics", settings.worker.metrics_bind())
    pool = await create_pool(
        settings.database_url(), min_size=settings.database.pool_min, max_size=settings.database.pool_max,
        command_timeout=settings.database.command_timeout_seconds, migrate=settings.database.migrate_on_start,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    regs = registrations(settings, pool, queues, notify_channels)
    if INTEGRATIONS_QUEUE in queues:
        from activities.mcp import MCPActivities, seed_registry

        await seed_registry(pool, urls=settings.worker.mcp_urls)
        # The tools each server offers, kept for the API's tool listing (bounded, never fatal).
        mcp = MCPActivities(pool)
        try:
            listed = await asyncio.wait_for(mcp.refresh_listings(), timeout=15)
            log.info("MCP tools listed at start-up: %s", listed)
        except TimeoutError:
            log.info("MCP tools not listed at start-up: a server did not answer within 15 s")
        finally:
            await mcp.aclose()
    if WORKFLOWS_QUEUE in queues:
        from schedules.reconciler import sync_at_startup

        # Idempotent (creates what is missing, leaves the rest); a failure is logged, never fatal.
        await sync_at_startup(client, pool)
    workers = build_workers(client, settings, regs)
    try:
        await serve_until(stop, workers)
    finally:
        for reg in regs.values():
            for close in reg.closers:
                await close()
        await pool.close()
    log.info("worker stopped")


async def serve_until(stop: asyncio.Event, workers: list[Worker]) -> None:
    """Run the workers until ``stop`` is set (or one of them fails), then drain them all."""
    tasks = [asyncio.create_task(w.run()) for w in workers]
    log.info("worker polling %s", ", ".join(w.task_queue for w in workers))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    log.info("draining: no new tasks, waiting for running ones")
    await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
