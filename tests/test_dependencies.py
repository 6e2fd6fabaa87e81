"""Every package pyproject.toml declares is one the project uses: its code imports a module of
the package, or runs one of the package's executables by name. An unused dependency is install
time, image size and security advisories for nothing (the ``langchain`` agent framework, with
LangGraph under it, was declared while only ``langchain-core`` and ``langchain-openai`` ran).

Read from the installed distributions (``make dev`` installs every extra) and the source.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("core", "agents", "activities", "workflows", "hitl", "schedules", "sandboxes", "workers", "api", "tests", "bench")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> dict[str, str]:
    """Each declared distribution -> the group declaring it ("dependencies" or the extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    return {_name(r): group for group, reqs in groups.items() for r in reqs}


def source_uses() -> tuple[set[str], set[str]]:
    """(top-level modules imported anywhere, string literals anywhere) in the project's code."""
    imported: set[str] = set()
    strings: set[str] = set()
    for package in SOURCES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    imported.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    imported.add(node.module.split(".")[0])
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    strings.add(node.value)
    return imported, strings


def executables(dist: str) -> set[str]:
    return {Path(str(f)).name for f in md.files(dist) or [] if Path(str(f)).parent.name in ("bin", "Scripts")}


def test_every_declared_dependency_is_used() -> None:
    imported, strings = source_uses()
    provided: dict[str, set[str]] = {}
    for module, dists in md.packages_distributions().items():
        for dist in dists:
            provided.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    unused = sorted(
        f"{dist} ({group})" for dist, group in declared().items()
        if not provided.get(dist, set()) & imported and not executables(dist) & strings
    )
    assert not unused, f"declared in pyproject.toml and never imported or run: {unused}"

