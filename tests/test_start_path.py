"""One start path: the API, a webhook trigger and a schedule start a capability the same way.

What each path sends to Temporal is recorded by a client interceptor: the workflow id, the
search attributes, the id policies, the workflow and its task queue. A second start of the same
business key, by another path, finds the first one's workflow.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import msgspec
import pytest
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from api.auth import Principal
from api.errors import ConflictError
from api.schedules.tenant import TENANT_CAPABILITIES
from api.triggers import Event, fire, seed_triggers
from api.workflows import _start
from core.client import connect
from core.names import CAPABILITY, TENANT_ID, WORKFLOWS_QUEUE
from core.settings import Settings
from schedules.catalogue import ScheduleDecl, TenantContext
from schedules.reconciler import Desired, build_desired
from tests.support import in_namespace, unique
from workflows.catalogue import CATALOGUE
from workflows.starting import AlreadyStarted, CapabilityStart, start_capability
from workflows.tenant_schedules import CapabilityChange


class Recorder(Interceptor):
    """Keeps every start a client sends (and sends it on)."""

    def __init__(self) -> None:
        self.starts: list[StartWorkflowInput] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:  # noqa: A002 - SDK name
        recorder = self

        class Recording(OutboundInterceptor):
            async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:  # noqa: A002
                recorder.starts.append(input)
                return await super().start_workflow(input)

        return Recording(next)


async def recording_client(settings: Settings, namespace: str) -> tuple[Client, Recorder]:
    """A client as the API builds it, in a namespace of the test's own (no worker runs the
    workflows started here)."""
    base = await connect(in_namespace(settings, namespace))
    recorder = Recorder()
    config = base.config()
    config["interceptors"] = [*config["interceptors"], recorder]
    return Client(**config), recorder


def sent(start: StartWorkflowInput) -> dict[str, Any]:
    """What identifies a start on the server: everything but the input and the memo."""
    return {"workflow": start.workflow, "id": start.id, "task_queue": start.task_queue,
            "search_attributes": start.search_attributes, "id_reuse_policy": start.id_reuse_policy,
            "id_conflict_policy": start.id_conflict_policy}


def shopify_order_event(tenant: str, order_id: int) -> Event:
    return Event(source="shopify", type="orders/create", id=unique("evt"), tenant_id=tenant, sender="webhook", payload={
        "id": order_id, "name": f"#{order_id}", "currency": "USD", "total_price": "42.00",
        "email": "buyer@example.com", "line_items": [{"sku": "MUG-1", "quantity": 2, "price": "21.00", "title": "Mug"}],
    })


async def test_the_api_a_webhook_and_a_schedule_start_an_order_alike(
    settings: Settings, namespace: str, db: asyncpg.Pool
) -> None:
    client, recorder = await recording_client(settings, namespace)
    await seed_triggers(db)
    tenant, order_id = unique("shop"), 7_000_000_001
    cap = CATALOGUE["order"]

    # The Shopify orders/create webhook starts the order.
    fired = await fire(client, db, shopify_order_event(tenant, order_id))
    assert fired.outcome == "started"
    assert fired.workflow_id == f"{tenant}:order:shopify-{order_id}"
    webhook_start = recorder.starts[-1]
    order = webhook_start.args[0]

    # An admin starting the same order through the API is told it exists: 409, the same id.
    admin = Principal(sub="ops@platform.example", tenant_id=None, roles=frozenset({"admin"}))
    with pytest.raises(ConflictError) as conflict:
        await _start(client, cap, order, admin)
    assert (conflict.value.status_code, conflict.value.code) == (409, "already_started")
    assert conflict.value.extra["workflow_id"] == fired.workflow_id
    api_start = recorder.starts[-1]
    assert api_start.args[0].requested_by == "ops@platform.example"  # who asked, from the caller

    # A schedule of the same order key runs the same workflow under the same id (Temporal
    # appends each run's scheduled time) with the same search attributes.
    decl = ScheduleDecl(name="order-replay", capability="order", key=f"shopify-{order_id}",
                        input=lambda ctx: order, cron=("0 6 * * 1",), min_interval=timedelta(days=1))
    desired = build_desired(decl, TenantContext(tenant_id=tenant), WORKFLOWS_QUEUE)
    assert isinstance(desired, Desired)
    action = desired.schedule(desired.applied()).action

    expected = {
        "workflow": "OrderProcessing", "id": fired.workflow_id,
        "task_queue": WORKFLOWS_QUEUE,
        "search_attributes": CapabilityStart.of(cap, order, tenant).search_attributes,
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE, "id_conflict_policy": WorkflowIDConflictPolicy.FAIL,
    }
    assert sent(webhook_start) == sent(api_start) == expected
    assert webhook_start.search_attributes.get(TENANT_ID) == tenant
    assert webhook_start.search_attributes.get(CAPABILITY) == "order"
    assert {"workflow": action.workflow, "id": action.id, "task_queue": action.task_queue,
            "search_attributes": action.typed_search_attributes} == {
        k: expected[k] for k in ("workflow", "id", "task_queue", "search_attributes")}
    # The schedule's own search attributes find it by tenant and capability, as its runs are found.
    assert desired.search_attributes == expected["search_attributes"]

    # On the server: the workflow the webhook started carries them.
    desc = await client.get_workflow_handle(fired.workflow_id).describe()
    assert desc.typed_search_attributes.get(TENANT_ID) == tenant
    assert desc.typed_search_attributes.get(CAPABILITY) == "order"

    # A second delivery of the order (a new event id) is a duplicate of the same workflow.
    again = await fire(client, db, shopify_order_event(tenant, order_id))
    assert (again.outcome, again.workflow_id, again.run_id) == ("duplicate", fired.workflow_id, fired.run_id)


async def test_a_second_start_names_the_workflow_it_found(settings: Settings, namespace: str) -> None:
    client, _ = await recording_client(settings, namespace)
    tenant = unique("t")
    change = CapabilityChange(tenant_id=tenant, capability="seo-health", enabled=True)
    first = await start_capability(client, CapabilityStart.of(TENANT_CAPABILITIES, change, tenant))
    assert first.id == f"{tenant}:tenant-capabilities:seo-health"
    with pytest.raises(AlreadyStarted) as found:
        await start_capability(client, CapabilityStart.of(TENANT_CAPABILITIES, change, tenant))
    assert (found.value.workflow_id, found.value.run_id) == (first.id, first.result_run_id)
    # Closed, a change's id starts again (the next change); an order's never does.
    await first.terminate("test")
    again = await start_capability(client, CapabilityStart.of(TENANT_CAPABILITIES, msgspec.structs.replace(
        change, enabled=False), tenant))
    assert again.id == first.id and again.result_run_id != first.result_run_id
    await again.terminate("test")


def test_every_capability_answers_the_progress_query_the_api_reads() -> None:
    """``GET /v1/workflows/{id}`` reads the progress of any workflow by this one name."""
    from temporalio import workflow

    from core.names import PROGRESS_QUERY

    missing = [name for name, cap in CATALOGUE.items()
               if PROGRESS_QUERY not in workflow._Definition.must_from_class(cap.workflow).queries]
    assert missing == []
