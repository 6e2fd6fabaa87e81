"""Schedules, two resources: one schedule at a time (``schedule.py``: list, describe, pause,
unpause, trigger, backfill, re-time under ``/v1/schedules``) and a tenant's (``tenant.py``: pause
or unpause all of a tenant's schedules, enable or disable a scheduled capability under
``/v1/tenants/{t}``). ``common.py`` holds what they share (roles, the note body, the 400
naming a field, the tenant scope check). ``schedules_router`` is what the app mounts.
"""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide

from api.schedules.schedule import ScheduleController
from api.schedules.tenant import TenantSchedulesController
from core.names import WORKFLOWS_QUEUE


def schedules_router(task_queue: str = WORKFLOWS_QUEUE) -> Router:
    """``task_queue``: where TenantCapabilities runs (tests use their own)."""
    return Router(
        path="/",
        route_handlers=[ScheduleController, TenantSchedulesController],
        dependencies={"schedules_task_queue": Provide(lambda: task_queue, sync_to_thread=False)},
    )
