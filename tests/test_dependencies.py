"""Every package pyproject.toml declares is one the project uses: its code imports a module of
the package, runs one of the package's executables by name, or the test command loads it as a
pytest plugin by name (``-p NAME`` in the Makefile's ``test`` recipe or pytest's ``addopts``). An unused dependency is install
time, image size and security advisories for nothing (the ``langchain`` agent framework, with
LangGraph under it, was declared while only ``langchain-core`` and ``langchain-openai`` ran).

Read from the installed distributions (``make dev`` installs every extra) and the source.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import shlex
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


def pytest_command_args() -> list[str]:
    """The arguments the test command gives pytest: the Makefile's ``test`` recipe and ``addopts``."""
    args: list[str] = []
    recipe = re.search(r"^test:.*\n((?:\t.*\n?)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "the Makefile has no test recipe"
    for line in recipe[1].splitlines():
        args += shlex.split(line)
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    return args + shlex.split(ini.get("addopts", ""))


def loaded_plugins(args: list[str]) -> set[str]:
    """Distributions whose pytest plugin (entry point group ``pytest11``) ``-p NAME`` loads."""
    names = {b for a, b in zip(args, args[1:]) if a == "-p"} | {a[2:] for a in args if a.startswith("-p") and len(a) > 2}
    return {ep.dist.name.lower().replace("_", "-") for ep in md.entry_points(group="pytest11")
            if ep.name in names and ep.dist is not None}


def test_every_declared_dependency_is_used() -> None:
    imported, strings = source_uses()
    plugins = loaded_plugins(pytest_command_args())
    provided: dict[str, set[str]] = {}
    for module, dists in md.packages_distributions().items():
        for dist in dists:
            provided.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    unused = sorted(
        f"{dist} ({group})" for dist, group in declared().items()
        if not provided.get(dist, set()) & imported and not executables(dist) & strings and dist not in plugins
    )
    assert not unused, f"declared in pyproject.toml and never imported or run: {unused}"

