"""The layers point down: api, workers (entry points) -> sandboxes -> workflows, hitl, schedules
-> activities -> agents -> core. Read from the source (every import statement, also those inside
functions), so the picture in the README stays true.

``sandboxes/`` (the fakes of the outside services, run by ``bizosaas dev`` and the tests) sits
right under the entry points: it uses the ground and the fetch policy of ``activities.netguard``,
and no workflow, schedule or activity may import it (workflows reach it over the network only).

``core/`` is checked strictly: it imports no layer at all. For the rest, the upward imports
that remain are listed below by name; the list may only shrink (a new one fails here).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {"core": 0, "agents": 1, "activities": 2, "workflows": 3, "hitl": 3, "schedules": 3, "sandboxes": 4,
          "workers": 5, "api": 5}

# Upward imports still to remove (each "importer -> imported"). Remove a line when its import goes.
REMAINING_UPWARD: set[str] = set()


def modules() -> dict[str, Path]:
    found = {}
    for package in FLOORS:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            found[".".join(p for p in rel.parts if p != "__init__")] = path
    return found


def imports_of(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                names.add(node.module)
    return {n for n in names if n.split(".")[0] in FLOORS}


def upward() -> set[str]:
    found = set()
    for module, path in modules().items():
        floor = FLOORS[module.split(".")[0]]
        for imported in imports_of(path, module):
            if FLOORS[imported.split(".")[0]] > floor:
                found.add(f"{module} -> {imported}")
    return found


def test_the_ground_floor_imports_no_layer() -> None:
    offending = sorted(f"{m} -> {i}" for m, p in modules().items() if m.startswith("core")
                       for i in imports_of(p, m) if not i.startswith("core"))
    assert offending == []


def test_no_new_import_runs_back_up() -> None:
    found = upward()
    assert found - REMAINING_UPWARD == set(), "an import runs back up a floor"
    assert REMAINING_UPWARD - found == set(), "gone: remove these from REMAINING_UPWARD"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The reader itself: a ground-floor module importing a workflow, at top level or inside a
    function, is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("import json\nfrom workflows.campaign import CampaignInput\n\ndef f():\n"
                   "    from api import app\n    from . import names\n")
    assert imports_of(bad, "core.bad") == {"workflows.campaign", "api", "core"}
