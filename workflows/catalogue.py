"""The catalogue: the capability modules. Each declares ``CAPABILITY`` next to its input
(workflows/capability.py); everything else is derived from these declarations.

- ``CATALOGUE`` (name -> Capability): the API's typed start routes and settings routes;
- ``WORKFLOWS``: what the worker of the workflows queue registers;
- the trigger table (api/triggers.py ``TRIGGERS``) and the schedule catalogue
  (schedules/catalogue.py ``SCHEDULES``): the capabilities' ``triggers`` and ``schedules``.

The modules are found, not listed: every module of the ``workflows`` package whose
``CAPABILITY`` is a :class:`Capability` is one (sorted by module name, so the order is stable).
Adding a capability is its module.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import workflows
from workflows.capability import Capability, Command, ScheduleDecl, Trigger


def _capability_modules() -> tuple[ModuleType, ...]:
    found = []
    for info in sorted(pkgutil.iter_modules(workflows.__path__), key=lambda i: i.name):
        if info.name == __name__.rsplit(".", 1)[-1]:
            continue
        module = importlib.import_module(f"{workflows.__name__}.{info.name}")
        if isinstance(getattr(module, "CAPABILITY", None), Capability):
            found.append(module)
    return tuple(found)


MODULES: tuple[ModuleType, ...] = _capability_modules()


def _catalogue(modules: tuple[ModuleType, ...]) -> dict[str, Capability]:
    found: dict[str, Capability] = {}
    for module in modules:
        cap = getattr(module, "CAPABILITY", None)
        if not isinstance(cap, Capability):
            raise TypeError(f"{module.__name__} declares no CAPABILITY = Capability(...)")
        if cap.name in found:
            raise ValueError(f"capability {cap.name!r} is declared twice")
        found[cap.name] = cap
    return found


CATALOGUE: dict[str, Capability] = _catalogue(MODULES)

WORKFLOWS: list[type] = [c.workflow for c in CATALOGUE.values()]


def triggers() -> list[Trigger]:
    """Every declared trigger (each names its capability)."""
    found: dict[tuple[str, str], Trigger] = {}
    for cap in CATALOGUE.values():
        for t in cap.triggers:
            if (t.source, t.event_type) in found:
                raise ValueError(f"trigger {t.source}/{t.event_type} is declared twice")
            found[(t.source, t.event_type)] = t
    return list(found.values())


def schedules() -> list[ScheduleDecl]:
    """Every declared schedule (each names its capability)."""
    found: dict[str, ScheduleDecl] = {}
    for cap in CATALOGUE.values():
        for s in cap.schedules:
            if s.name in found:
                raise ValueError(f"schedule {s.name!r} is declared twice")
            found[s.name] = s
    return list(found.values())


def commands() -> dict[str, tuple[Capability, Command]]:
    """Every declared command by name (its route), with the capability that declares it."""
    found: dict[str, tuple[Capability, Command]] = {}
    for cap in CATALOGUE.values():
        for c in cap.commands:
            if c.name in found:
                raise ValueError(f"command {c.name!r} is declared by {found[c.name][0].name} and {cap.name}")
            found[c.name] = (cap, c)
    return found
