"""Stages: where a capability's workflow is, and the one pause every capability honours.

A capability's workflow class inherits :class:`Stages` (calling ``Stages.__init__(self)`` when it
has an ``__init__`` of its own) and marks each step boundary with ``await self.stage(name,
done)``: the step ``done`` is recorded as finished, ``name`` becomes the current stage, and,
while an admin has the workflow paused, it waits there before starting the step. What it gets:

- the ``pause`` and ``resume`` signals (:data:`~core.names.PAUSE_SIGNAL`,
  :data:`~core.names.RESUME_SIGNAL`), each a :class:`ControlRequest` saying who and why. Pausing
  never interrupts a step: the activity, child workflow or approval under way runs to its end
  and the workflow stops at the next boundary. Signals, not updates: a pause reaches a workflow
  whose worker is down, and takes effect when it comes back;
- the ``control`` query (:data:`~core.names.CONTROL_QUERY`): :class:`ControlState`: paused or
  not, by whom, why and since when, whether it is already waiting at a boundary, and every
  pause and resume so far;
- ``self._stage``, ``self._steps`` and ``self._updated_at`` for the workflow's own ``progress``
  query, and ``self._enter(name, done)``: the same bookkeeping without the wait, for terminal
  stages (completed, failed, canceled) and for compensation after a cancel, which never wait for
  a resume.

Replay: a workflow that was never paused awaits nothing more at a boundary than before (the
wait is only entered while paused), so histories recorded before this existed replay as they
are.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, Literal, TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import msgspec

    from core.names import CONTROL_QUERY, PAUSE_SIGNAL, RESUME_SIGNAL

T = TypeVar("T")
ControlAction = Literal["pause", "resume"]


class ControlRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A pause or resume: who asked (the authenticated admin) and why."""

    by: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class ControlRecord(msgspec.Struct, frozen=True, kw_only=True):
    action: ControlAction
    by: str
    reason: str
    at: datetime
    stage: str  # the stage the workflow was in when it arrived


class ControlState(msgspec.Struct, frozen=True, kw_only=True):
    paused: bool
    stage: str
    # Paused and stopped at a step boundary (False while paused but still finishing its step).
    waiting: bool = False
    paused_by: str | None = None
    reason: str | None = None
    paused_since: datetime | None = None
    history: list[ControlRecord] = []


class Stages:
    """Mixin: stage bookkeeping and pause/resume at step boundaries. See the module."""

    def __init__(self) -> None:
        self._stage = "started"
        self._steps: list[str] = []
        self._updated_at: datetime | None = None
        self._pause: ControlRecord | None = None  # set while paused
        self._control: list[ControlRecord] = []
        self._waiting_at_boundary = False

    # --- messages ------------------------------------------------------------------------
    @workflow.signal(name=PAUSE_SIGNAL)
    def pause(self, req: ControlRequest) -> None:
        record = ControlRecord(action="pause", by=req.by, reason=req.reason, at=workflow.now(), stage=self._stage)
        self._control.append(record)
        if self._pause is None:
            self._pause = record

    @workflow.signal(name=RESUME_SIGNAL)
    def resume(self, req: ControlRequest) -> None:
        self._control.append(ControlRecord(action="resume", by=req.by, reason=req.reason, at=workflow.now(),
                                           stage=self._stage))
        self._pause = None

    @workflow.query(name=CONTROL_QUERY)
    def control(self) -> ControlState:
        p = self._pause
        return ControlState(
            paused=p is not None, stage=self._stage, waiting=p is not None and self._waiting_at_boundary,
            paused_by=p.by if p else None, reason=p.reason if p else None, paused_since=p.at if p else None,
            history=list(self._control),
        )

    # --- step boundaries -----------------------------------------------------------------
    def _enter(self, stage: str, done: str | None = None) -> None:
        """Record ``done`` as finished and enter ``stage``, without waiting (terminal stages,
        compensation)."""
        if done:
            self._steps.append(done)
        self._stage = stage
        self._updated_at = workflow.now()

    async def failed_on_error(self, steps: Awaitable[T]) -> T:
        """Await a run's steps; an exception they raise leaves the stage ``failed`` (what the
        progress query and the console show) and fails the run as before."""
        try:
            return await steps
        except Exception:
            self._enter("failed")
            raise

    async def stage(self, stage: str, done: str | None = None) -> None:
        """A step boundary: record ``done``, enter ``stage`` and, while paused, wait here for a
        resume before the step starts. A cancel while waiting raises here as anywhere."""
        self._enter(stage, done)
        if self._pause is None:
            return  # never paused: nothing awaited, the commands are those of before
        self._waiting_at_boundary = True
        try:
            await workflow.wait_condition(lambda: self._pause is None)
        finally:
            self._waiting_at_boundary = False
