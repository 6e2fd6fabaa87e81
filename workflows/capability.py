"""The capability kit: what a workflow module declares once, next to its input.

Each capability module ends with ``CAPABILITY = Capability(...)``: its workflow and input, the
business key of its workflow id, the roles that may start, cancel and decide it, the events
that start it (:class:`Trigger`), what runs it on a clock (:class:`ScheduleDecl`), and its
typed per-tenant settings (a frozen msgspec Struct whose defaults are the behaviour of a
tenant that set nothing). ``workflows/catalogue.py`` lists the modules; the start routes, the
worker's registrations, the trigger table, the schedule catalogue and the settings API are
derived from these declarations.

Nothing here runs at import beyond building the declarations, so workflow modules can declare
their capability at module level (the workflow sandbox imports them again).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec
from temporalio.client import ScheduleOverlapPolicy
from temporalio.common import WorkflowIDReusePolicy

from activities.tenants import SettingsOf
from schedules.frequency import HORIZON, shortest_gap

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Role sets the declarations share: platform admins, and with them the tenant's own people (its
# client and its partner agency), each in their own tenant scope.
ADMINS = frozenset({"super_admin", "admin"})
TENANT_PEOPLE = ADMINS | {"partner", "client"}

Action = Literal["start", "signal_with_start"]


# --- events -------------------------------------------------------------------------------

class InvalidEvent(ValueError):
    """The event is well signed but cannot become the workflow's input (answered 400)."""


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """An inbound event after its signature was verified."""

    source: str
    type: str
    id: str | None  # the sender's event or delivery id
    tenant_id: str | None  # as resolved from the sender's own identification, when it has one
    payload: dict[str, Any]
    sender: str = "webhook"  # who it came from, recorded as requested_by
    # When the sender says it sent the event, when it says (Stripe `created`, Shopify
    # X-Shopify-Triggered-At, the generic X-Biz-Timestamp); older than the replay window is refused.
    sent_at: datetime | None = None


@dataclass(frozen=True)
class Trigger:
    """An inbound event that starts (or signals-with-start) the declaring capability."""

    source: str
    event_type: str
    # The tenant, the business key and the typed input, from the event; InvalidEvent when it cannot.
    build: Callable[[Event], tuple[str, str, Any]]
    action: Action = "start"
    signal: str | None = None
    capability: str = ""  # filled in by the Capability that declares it

    def __post_init__(self) -> None:
        if (self.action == "signal_with_start") != (self.signal is not None):
            raise ValueError(f"trigger {self.source}/{self.event_type}: a signal goes with signal_with_start only")


# --- schedules ----------------------------------------------------------------------------

class TenantContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a schedule's input may depend on: the tenant row and its capability row."""

    tenant_id: str
    timezone: str = "UTC"
    website_url: str | None = None


@dataclass(frozen=True)
class ScheduleDecl:
    name: str  # slug, unique: the last part of the schedule id
    key: str  # business key of the runs: {tenant}:{capability}:{key}-{scheduled time}
    input: Callable[[TenantContext], Any]  # the workflow input, built per tenant
    cron: tuple[str, ...] = ()
    every: timedelta | None = None
    # None: the tenant's time zone (per-tenant schedules), UTC for global ones.
    time_zone: str | None = None
    per_tenant: bool = True
    # A run still going when the next is due: skip it, or keep one waiting. Never more, so a
    # slow run cannot pile up paid work (an admin's backfill may choose otherwise).
    overlap: ScheduleOverlapPolicy = ScheduleOverlapPolicy.SKIP
    # No spec, declared or set through the API (by an admin), may fire more often than this:
    # each run costs crawls and LLM calls. At most a day (schedules/frequency.py).
    min_interval: timedelta = timedelta(hours=1)
    # Runs missed while Temporal was down are made up within this window, then skipped.
    catchup_window: timedelta = timedelta(days=1)
    jitter: timedelta | None = None
    # Columns of the tenant_capabilities row the input needs; enabling asks for them.
    requires: tuple[str, ...] = ()
    summary: str = ""
    # The capability started (its workflow and BizCapability); filled in by the declaring Capability.
    capability: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or not _NAME.match(self.key):
            raise ValueError(f"schedule {self.name!r}: name and key must be slugs")
        if bool(self.cron) == (self.every is not None):
            raise ValueError(f"schedule {self.name!r}: give cron or every, not both")
        if self.overlap not in (ScheduleOverlapPolicy.SKIP, ScheduleOverlapPolicy.BUFFER_ONE):
            raise ValueError(f"schedule {self.name!r}: overlap must be SKIP or BUFFER_ONE")
        if not timedelta(0) < self.min_interval <= HORIZON:
            raise ValueError(f"schedule {self.name!r}: min_interval must be more than 0 and at most {HORIZON}")
        gap = shortest_gap(self.cron, int(self.every.total_seconds()) if self.every else None)
        if gap is None or gap < self.min_interval:
            raise ValueError(f"schedule {self.name!r}: fires more often than its min_interval {self.min_interval}")
        unknown = set(self.requires) - set(TenantContext.__struct_fields__)
        if unknown:
            raise ValueError(f"schedule {self.name!r}: requires unknown fields {sorted(unknown)}")


# --- commands -----------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Command:
    """A message people send a running workflow of the capability: ``POST
    /v1/workflows/{workflow_id}/commands/{name}`` with ``input_type`` as its body runs the
    workflow's update ``update`` and answers its result (move a post's publish time, withdraw a
    scheduled post). The update's validator refuses what the workflow cannot do now
    (``ApplicationError(type=...)``: 409 naming the type); a body field ``requested_by`` is filled
    with the caller. Names are unique across the catalogue: a route is a name."""

    name: str
    update: str
    input_type: type
    roles: frozenset[str]
    summary: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"command {self.name!r}: the name must be a slug")
        if getattr(self.input_type, "__struct_config__", None) is None:
            raise ValueError(f"command {self.name!r}: the input must be a msgspec Struct")
        if not self.roles:
            raise ValueError(f"command {self.name!r}: name the roles that may send it")


# --- settings -----------------------------------------------------------------------------

class NoSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A capability without per-tenant settings."""


def departures(settings: msgspec.Struct) -> dict[str, Any]:
    """The fields of ``settings`` that differ from their declared defaults (what a tenant stores:
    the defaults stay in code, so a tenant that never set a field follows its default)."""
    values, defaults = msgspec.to_builtins(settings), msgspec.to_builtins(type(settings)())
    return {k: v for k, v in values.items() if defaults.get(k) != v}


# --- the declaration ----------------------------------------------------------------------

@dataclass(frozen=True)
class Capability:
    name: str
    workflow: type
    input_type: type
    # The business key of the workflow id `{tenant}:{capability}:{key}`.
    business_key: Callable[[Any], str]
    # Roles that may start it; the input's tenant, when the input names one.
    start_roles: frozenset[str]
    tenant_in_input: Callable[[Any], str] | None = None
    # Its start creates the tenant (onboarding): the API does not require it to exist first.
    creates_tenant: bool = False
    summary: str = ""
    # Roles that may cancel a run (in their tenant scope). Workflows holding money or promises
    # compensate when canceled (an order releases its payment).
    cancel_roles: frozenset[str] = ADMINS
    # Roles that may decide its approvals: every request the workflow asks (and its escalation)
    # names roles from this set only; a request naming another fails when it is asked.
    decide_roles: frozenset[str] = frozenset()
    # A business key runs once: a closed workflow's id is not started again (409 / duplicate).
    id_reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.REJECT_DUPLICATE
    # Unless its completed run's result says the key is still free: a run that ended before doing
    # anything because something was missing (no WordPress site connected). A start of the key
    # then starts a new run under the same id (workflows.starting.start_capability).
    starts_again: Callable[[Any], bool] | None = None
    triggers: tuple[Trigger, ...] = ()
    schedules: tuple[ScheduleDecl, ...] = ()
    # The tenant's settings: a frozen, kw_only msgspec Struct, every field with a default.
    settings: type[msgspec.Struct] = NoSettings
    # Settings fields only platform admins change (a tenant's own client or partner changes the rest).
    admin_settings: frozenset[str] = frozenset()
    # Settings fields no two tenants may hold with the same value (letter case ignored), each
    # backed by a unique index of ``tenant_settings`` (a Shopify shop domain).
    unique_settings: frozenset[str] = frozenset()
    # Messages people send its running workflows (routes under /v1/workflows/{id}/commands/).
    commands: tuple[Command, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"capability {self.name!r}: the name must be a slug")
        defn = getattr(self.workflow, "__temporal_workflow_definition", None)
        updates = set(defn.updates) if defn is not None else set()
        for c in self.commands:
            if c.update not in updates:
                raise ValueError(f"command {c.name} of {self.name}: {self.workflow.__name__} has no update "
                                 f"{c.update!r}")
        if len({c.name for c in self.commands}) != len(self.commands):
            raise ValueError(f"capability {self.name!r}: two commands share a name")
        for t in self.triggers:
            if t.capability not in ("", self.name):
                raise ValueError(f"trigger {t.source}/{t.event_type} of {self.name}: names {t.capability!r}")
        for s in self.schedules:
            if s.capability not in ("", self.name):
                raise ValueError(f"schedule {s.name} of {self.name}: names {s.capability!r}")
        # Each trigger and schedule names the capability that declares it.
        object.__setattr__(self, "triggers", tuple(replace(t, capability=self.name) for t in self.triggers))
        object.__setattr__(self, "schedules", tuple(replace(s, capability=self.name) for s in self.schedules))
        config = getattr(self.settings, "__struct_config__", None)
        if config is None or not config.frozen or not config.forbid_unknown_fields:
            # A misspelt field in a PUT must answer 400, not be dropped.
            raise ValueError(f"capability {self.name!r}: settings must be a frozen msgspec Struct "
                             "with forbid_unknown_fields=True")
        try:
            self.settings()
        except TypeError:
            raise ValueError(f"capability {self.name!r}: every setting needs a default") from None
        # A workflow that asks people (hitl.approvals.HumanDecisions) takes its deciders from here.
        asks_people = hasattr(self.workflow, "decide_roles")
        if asks_people and not self.decide_roles:
            raise ValueError(f"capability {self.name!r}: its workflow asks people; declare decide_roles")
        if not asks_people and self.decide_roles:
            raise ValueError(f"capability {self.name!r}: decide_roles declared, but its workflow asks nobody")
        if asks_people and self.workflow.decide_roles not in (None, self.decide_roles):  # type: ignore[attr-defined]
            raise ValueError(f"capability {self.name!r}: {self.workflow.__name__} is declared by another "
                             "capability with other decide_roles")
        unknown = (self.admin_settings | self.unique_settings) - set(self.settings.__struct_fields__)
        if unknown:
            raise ValueError(f"capability {self.name!r}: settings have no fields {sorted(unknown)}")
        if asks_people:  # declared and checked: hand the deciders to the workflow
            self.workflow.decide_roles = frozenset(self.decide_roles)  # type: ignore[attr-defined]

    @property
    def run(self) -> Callable[..., Any]:
        return self.workflow.run  # type: ignore[attr-defined]

    @property
    def settings_of(self) -> SettingsOf[Any]:
        """Its settings as the activities that apply them read them (given by the worker)."""
        return SettingsOf(self.name, self.settings)


def platform_change(name: str, workflow: type, input_type: type, start_roles: frozenset[str],
                    summary: str) -> Capability:
    """The platform's own workflow behind a change of a tenant's configuration (its settings of a
    capability, a scheduled capability turned on or off). The input names ``tenant_id`` and the
    ``capability`` it changes; one change per tenant and capability runs at a time (the id
    ``{tenant}:{name}:{capability}``), and the next change reuses the id once it closed. Not in
    the catalogue: the API route that validates the change starts it (``api.workflows.start_change``)."""
    return Capability(name=name, workflow=workflow, input_type=input_type,
                      business_key=lambda change: change.capability,
                      tenant_in_input=lambda change: change.tenant_id,
                      start_roles=start_roles, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                      summary=summary)


def host_key(url: str) -> str:
    """A URL's host as a slug (business keys of website capabilities)."""
    host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
    return "".join(c if c.isalnum() else "-" for c in host).strip("-")[:63] or "site"
