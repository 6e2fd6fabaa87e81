"""Activity classes that carry their task queue and their options, and the one way workflows call them.

Every activity class derives from ``Activities`` and says once where it runs and how it is called::

    class StripeActivities(Activities):
        task_queue = INTEGRATIONS_QUEUE
        default_policy = BILLING

A method that needs other options than its class says so with ``@with_policy(...)``. Workflows
call an activity with ``await run_activity(StripeActivities.pay_invoice, req)``: the queue and
the options come from the class; any of them can be overridden for one call (keyword arguments
named as in ``workflow.execute_activity_method``). The worker registers whole classes
(``activity_methods``), and refuses a class on a queue other than the one it declares.

Classes of the workflows queue run beside the workflows that call them: a call names no queue,
so the activity goes to the calling workflow's own task queue (``WORKFLOWS_QUEUE`` in production,
a test's own queue in tests). A ``local`` class runs as a local activity of that worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, TypeVar, overload

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import is_cancelled_exception

from core.names import TASK_QUEUES, WORKFLOWS_QUEUE

A = TypeVar("A")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

_CLASS_ATTR = "__biz_activity_class__"
_POLICY_ATTR = "__biz_activity_policy__"


@dataclass(frozen=True, kw_only=True)
class ActivityPolicy:
    """How an activity is called: its timeouts and retry policy (None: Temporal's default)."""

    start_to_close: timedelta | None = None
    schedule_to_close: timedelta | None = None
    heartbeat: timedelta | None = None
    retry: RetryPolicy | None = None


class Activities:
    """Base of every activity class: ``task_queue`` and ``default_policy`` are required class attributes."""

    task_queue: ClassVar[str]
    default_policy: ClassVar[ActivityPolicy]
    # A local activity of the worker that runs the calling workflow (no queue of its own).
    local: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        queue, policy = getattr(cls, "task_queue", None), getattr(cls, "default_policy", None)
        if queue not in TASK_QUEUES:
            raise TypeError(f"{cls.__qualname__}.task_queue must be one of {TASK_QUEUES}, not {queue!r}")
        if not isinstance(policy, ActivityPolicy):
            raise TypeError(f"{cls.__qualname__}.default_policy must be an ActivityPolicy")
        if cls.local and queue != WORKFLOWS_QUEUE:
            raise TypeError(f"{cls.__qualname__} is local: it runs on the workflows queue")
        for value in vars(cls).values():
            if activity._Definition.from_callable(value) is not None:
                setattr(value, _CLASS_ATTR, cls)


def with_policy(policy: ActivityPolicy) -> Callable[[F], F]:
    """Options of one method that differ from its class's ``default_policy``."""

    def mark(fn: F) -> F:
        setattr(fn, _POLICY_ATTR, policy)
        return fn

    return mark


def activity_class(method: Callable[..., Any]) -> type[Activities]:
    """The ``Activities`` class that declares ``method`` (an unbound or bound activity method)."""
    fn = getattr(method, "__func__", method)
    cls = getattr(fn, _CLASS_ATTR, None)
    if cls is None:
        raise TypeError(f"{getattr(fn, '__qualname__', fn)!r} is not an activity method of an Activities class")
    return cls


def policy_of(method: Callable[..., Any]) -> ActivityPolicy:
    fn = getattr(method, "__func__", method)
    return getattr(fn, _POLICY_ATTR, None) or activity_class(fn).default_policy


def activity_methods(task_queue: str, *instances: Activities) -> list[Callable[..., Any]]:
    """Every activity method of each instance, bound, for a worker of ``task_queue``. A class
    declared for another queue is refused here, when the worker is built."""
    methods: list[Callable[..., Any]] = []
    for instance in instances:
        cls = type(instance)
        if not isinstance(instance, Activities):
            raise TypeError(f"{cls.__qualname__} is not an Activities class")
        if cls.task_queue != task_queue:
            raise ValueError(f"{cls.__qualname__} runs on {cls.task_queue!r}, not on {task_queue!r}")
        for name in dir(cls):
            if activity._Definition.from_callable(getattr(cls, name)) is not None:
                methods.append(getattr(instance, name))
    return methods


def activity_names(cls: type[Activities]) -> set[str]:
    """The activity type names (``@activity.defn(name=...)``) of a class."""
    return {d.name for d in (activity._Definition.from_callable(getattr(cls, n)) for n in dir(cls)) if d and d.name}


@overload
async def run_activity(method: Callable[[Any, A], Awaitable[R]], arg: A, *, task_queue: str | None = None,
                       start_to_close_timeout: timedelta | None = None,
                       schedule_to_close_timeout: timedelta | None = None,
                       heartbeat_timeout: timedelta | None = None, retry_policy: RetryPolicy | None = None) -> R: ...


@overload
async def run_activity(method: Callable[[Any, A], R], arg: A, *, task_queue: str | None = None,
                       start_to_close_timeout: timedelta | None = None,
                       schedule_to_close_timeout: timedelta | None = None,
                       heartbeat_timeout: timedelta | None = None, retry_policy: RetryPolicy | None = None) -> R: ...


async def run_activity(method: Callable[..., Any], arg: Any, *, task_queue: str | None = None,
                       start_to_close_timeout: timedelta | None = None,
                       schedule_to_close_timeout: timedelta | None = None,
                       heartbeat_timeout: timedelta | None = None, retry_policy: RetryPolicy | None = None) -> Any:
    """Run an activity method from workflow code with its class's queue and options; each keyword
    given replaces that one option for this call. Reads only class attributes: deterministic."""
    cls, policy = activity_class(method), policy_of(method)
    start_to_close = start_to_close_timeout or policy.start_to_close
    schedule_to_close = schedule_to_close_timeout or policy.schedule_to_close
    retry = retry_policy or policy.retry
    if cls.local:
        if task_queue or heartbeat_timeout:
            raise TypeError(f"{cls.__qualname__} is a local activity: no task queue or heartbeat")
        return await workflow.execute_local_activity_method(
            method, arg, start_to_close_timeout=start_to_close, schedule_to_close_timeout=schedule_to_close,
            retry_policy=retry)
    queue = task_queue or (None if cls.task_queue == WORKFLOWS_QUEUE else cls.task_queue)
    return await workflow.execute_activity_method(
        method, arg, task_queue=queue, start_to_close_timeout=start_to_close,
        schedule_to_close_timeout=schedule_to_close, heartbeat_timeout=heartbeat_timeout or policy.heartbeat,
        retry_policy=retry)


CANCELS_PROPAGATE = "cancel-not-swallowed"
"""Patch id: from here on a cancel that reaches a step's ``except ActivityError`` ends the run as
canceled. Runs that swallowed one before (and went on waiting) replay as they ran."""


def raise_if_cancelled(err: BaseException) -> None:
    """Re-raise ``err`` when it is the workflow's cancellation reaching an activity call.

    A cancel requested while an activity runs arrives as ``ActivityError(cause=CancelledError)``;
    a step that catches ``ActivityError`` to go on without that activity (a notification not
    delivered, a tool's error shown to the model) must not take the cancel for that failure.
    Call it first in every such ``except``."""
    if is_cancelled_exception(err) and workflow.patched(CANCELS_PROPAGATE):
        raise err
