"""Every capability is wired end to end: its start route is served, its workflow is registered on
the workflows queue, and every activity its code can call is registered on the worker of the
queue that the activity's class declares (``core.activity``).

"What a workflow can call" is read from the source, not from a run: every reference
``SomeActivities.method`` (a call through ``run_activity``, or a method passed on, as the order
workflow passes ``StripeActivities.capture``) in the workflow's module and in the ``workflows``
and ``hitl`` modules it imports (the approval mixin, the usage steps, the agent loop). A
reference counts as a call: over-counting can only demand a registration that is already
there. Child workflows referenced the same way (``AgentLoopWorkflow.run``) must be registered
too. Workflow code calls activities only through ``run_activity`` (checked below), so nothing
reaches an activity by another path that this reading would miss.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from activities.stripe import StripeActivities
from activities.tenants import TenantActivities
from api.app import create_app
from core.activity import Activities, activity_class, activity_methods
from core.names import INTEGRATIONS_QUEUE, TASK_QUEUES, WORKFLOWS_QUEUE
from tests.support import dev_settings
from workers.main import ALL_WORKFLOWS, QueueRegistration, registrations
from workflows.catalogue import CATALOGUE

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_PACKAGES = ("workflows", "hitl")


def _workflow_modules(start: str) -> list[ModuleType]:
    """``start`` and the workflow-side modules it imports, transitively."""
    seen: dict[str, ModuleType] = {}
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        module = seen[name] = importlib.import_module(name)
        tree = ast.parse(Path(module.__file__ or "").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in WORKFLOW_PACKAGES:
                todo.append(node.module)
    return list(seen.values())


def references(workflow: type) -> tuple[set[Callable[..., Any]], set[type]]:
    """The activity methods and the workflow classes that ``workflow``'s code refers to."""
    methods: set[Callable[..., Any]] = set()
    children: set[type] = set()
    for module in _workflow_modules(workflow.__module__):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
                continue
            owner = getattr(module, node.value.id, None)
            if isinstance(owner, type) and issubclass(owner, Activities):
                methods.add(getattr(owner, node.attr))
            elif isinstance(owner, type) and hasattr(owner, "__temporal_workflow_definition") and owner is not workflow:
                children.add(owner)
    return methods, children


def activity_name(method: Callable[..., Any]) -> str:
    return getattr(method, "__temporal_activity_definition").name


def problems(regs: dict[str, QueueRegistration], start_routes: set[str]) -> list[str]:
    """What is missing, per capability and per workflow the workers must run."""
    found = []
    registered = {queue: {activity_name(a) for a in reg.activities} for queue, reg in regs.items()}
    workflows = set(regs[WORKFLOWS_QUEUE].workflows)
    for cap in CATALOGUE.values():
        if f"/v1/workflows/{cap.name}" not in start_routes:
            found.append(f"{cap.name}: no start route POST /v1/workflows/{cap.name}")
    for wf in {*(c.workflow for c in CATALOGUE.values()), *ALL_WORKFLOWS}:
        if wf not in workflows:
            found.append(f"{wf.__name__}: not registered on {WORKFLOWS_QUEUE}")
        methods, children = references(wf)
        for method in methods:
            queue = activity_class(method).task_queue
            if activity_name(method) not in registered.get(queue, set()):
                found.append(f"{wf.__name__}: {method.__qualname__} ({activity_name(method)}) "
                             f"is not registered on {queue}")
        found += [f"{wf.__name__}: child {c.__name__} not registered on {WORKFLOWS_QUEUE}"
                  for c in children if c not in workflows]
    return sorted(found)


def start_routes() -> set[str]:
    app = create_app(dev_settings())
    return {r.path for r in app.routes if "POST" in getattr(r, "methods", ())}


@pytest.fixture
async def platform_regs() -> AsyncIterator[dict[str, QueueRegistration]]:
    """The registrations ``bizosaas worker`` builds for every queue (no connection is opened)."""
    regs = registrations(dev_settings(), None, TASK_QUEUES)  # type: ignore[arg-type]
    yield regs
    for reg in regs.values():
        for close in reg.closers:
            await close()


async def test_every_capability_is_served_registered_and_its_activities_run_where_declared(
    platform_regs: dict[str, QueueRegistration],
) -> None:
    assert problems(platform_regs, start_routes()) == []
    # The walk found the activities of each capability (a reader that finds nothing proves nothing).
    order, _ = references(CATALOGUE["order"].workflow)
    assert {activity_name(m) for m in order} >= {"orders.policy", "mcp.call_tool", "stripe.capture_payment",
                                                  "stripe.release_payment", "approvals.notify", "audit.write",
                                                  "approvals.verify_decision"}


async def test_the_walk_sees_a_missing_activity_workflow_or_route(
    platform_regs: dict[str, QueueRegistration],
) -> None:
    routes = start_routes()
    integrations = platform_regs[INTEGRATIONS_QUEUE]
    integrations.activities = [a for a in integrations.activities if activity_name(a) != "stripe.release_payment"]
    platform_regs[WORKFLOWS_QUEUE].workflows.remove(CATALOGUE["dunning"].workflow)
    assert problems(platform_regs, routes - {"/v1/workflows/seo-health"}) == [
        "DunningWorkflow: not registered on biz-workflows",
        "OrderProcessingWorkflow: StripeActivities.release (stripe.release_payment) is not registered on "
        "biz-integrations",
        "seo-health: no start route POST /v1/workflows/seo-health",
    ]


async def test_a_class_is_registered_only_on_the_queue_it_declares() -> None:
    with pytest.raises(ValueError, match="TenantActivities runs on 'biz-workflows', not on 'biz-integrations'"):
        activity_methods(INTEGRATIONS_QUEUE, TenantActivities(None))  # type: ignore[arg-type]
    # A registered class brings every one of its activity methods.
    stripe = StripeActivities(dev_settings())
    try:
        assert {activity_name(m) for m in activity_methods(INTEGRATIONS_QUEUE, stripe)} == {
            "stripe.create_customer", "stripe.pay_invoice", "stripe.capture_payment", "stripe.release_payment",
            "stripe.transfer"}
    finally:
        await stripe.close()


def test_workflow_code_calls_activities_only_through_run_activity() -> None:
    """So each call takes its queue and options from the activity's class (and the walk above
    sees every call). The agent loop alone names queues, from its input."""
    direct, queues = [], []
    for package in WORKFLOW_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in (
                        "execute_activity", "execute_activity_method", "start_activity", "start_activity_method",
                        "execute_local_activity", "execute_local_activity_method", "start_local_activity",
                        "start_local_activity_method"):
                    direct.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "run_activity"
                        and any(k.arg == "task_queue" for k in node.keywords)):
                    queues.append(path.relative_to(ROOT).as_posix())
    assert direct == []
    assert set(queues) <= {"workflows/agent_loop.py"}


def test_an_activity_class_must_say_where_it_runs() -> None:
    with pytest.raises(TypeError, match="task_queue must be one of"):
        type("Nowhere", (Activities,), {})
    assert activity_class(StripeActivities.capture) is StripeActivities


def test_every_capability_pauses_at_its_step_boundaries() -> None:
    """Workflow control: every capability's workflow takes ``pause``/``resume`` and marks its
    step boundaries with ``await self.stage(...)`` (workflows/stages.py), so an admin's pause
    stops each of them at its next boundary."""
    from workflows.stages import Stages

    for cap in CATALOGUE.values():
        assert issubclass(cap.workflow, Stages), f"{cap.name}: its workflow must inherit workflows.stages.Stages"
        source = Path(importlib.import_module(cap.workflow.__module__).__file__ or "").read_text()
        assert "await self.stage(" in source, f"{cap.name}: no step boundary (await self.stage(...))"
        defn = getattr(cap.workflow, "__temporal_workflow_definition")
        assert {"pause", "resume"} <= set(defn.signals) and "control" in defn.queries, cap.name


def test_a_step_that_catches_an_activity_error_lets_a_cancel_through() -> None:
    """A cancel requested while an activity runs reaches the workflow as an ``ActivityError``; a
    step that catches that error to go on without the activity must re-raise the cancel first
    (``raise_if_cancelled``), or the run swallows it and waits on, never canceled. A handler that
    cleans up and re-raises (``raise`` last) lets it through as it is."""
    missing = []
    for package in WORKFLOW_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ExceptHandler) or node.type is None:
                    continue
                names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                if "ActivityError" not in names:
                    continue
                first = node.body[0]
                if isinstance(node.body[-1], ast.Raise) and node.body[-1].exc is None:
                    continue
                if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
                        and isinstance(first.value.func, ast.Name) and first.value.func.id == "raise_if_cancelled"):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert missing == []
