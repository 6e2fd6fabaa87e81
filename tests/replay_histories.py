"""Replay stored workflow histories on the current code, in this (fresh) interpreter.

``python -m tests.replay_histories [DIR ...]`` replays every ``*.json`` history in the DIRs
(default ``tests/histories`` and ``tests/histories/released``) with the workflows and data converter a worker of the tests uses (the
tests' codec key: histories recorded encrypted decode, those recorded in clear pass through), prints one line per
history and exits 1 if any replay fails (non-determinism, or a payload that no longer decodes).
Run as its own process, nothing is cached from having run the workflow: a type that only
resolves where the workflow first ran fails here, as it would in a newly started worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.support import dev_settings
from core.client import platform_data_converter
from workers.main import ALL_WORKFLOWS, WORKFLOW_FAILURE_TYPES

DEFAULT_DIR = Path(__file__).resolve().parent / "histories"
# Histories recorded by earlier releases, kept as they were: runs they started may still be open.
RELEASED = "released"


async def replay(directories: list[Path]) -> int:
    files = [f for d in directories for f in sorted(d.glob("*.json"))]
    if not files:
        print(f"no histories in {', '.join(map(str, directories))}", file=sys.stderr)
        return 1
    replayer = Replayer(workflows=list(ALL_WORKFLOWS), data_converter=platform_data_converter(dev_settings()),
                        workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES)
    failed = 0
    for path in files:
        record = json.loads(path.read_text())
        history = WorkflowHistory.from_json(record["workflow_id"], record["history"])
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        if result.replay_failure is None:
            print(f"ok      {path.parent.name}/{path.name}")
        else:
            failed += 1
            print(f"FAILED  {path.parent.name}/{path.name}: {type(result.replay_failure).__name__}: {result.replay_failure}")
    return 1 if failed else 0


def main() -> None:
    directories = [Path(a) for a in sys.argv[1:]] or [DEFAULT_DIR, DEFAULT_DIR / RELEASED]
    code = asyncio.run(replay(directories))
    sys.stdout.flush()
    os._exit(code)  # the SDK can abort at interpreter exit (sdk-python#300)


if __name__ == "__main__":
    main()
