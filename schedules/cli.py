"""``bizosaas schedules sync [--dry-run] [--tenant T ...]``: apply the declared schedules.

Prints one line per schedule id (create / update / delete / unchanged / skipped) and the
counts. ``--dry-run`` only prints what a sync would do.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import TYPE_CHECKING, Any

from core.settings import Settings

if TYPE_CHECKING:
    from schedules.reconciler import SyncReport


async def run_sync(settings: Settings, *, dry_run: bool, tenants: list[str] | None) -> SyncReport:
    from core.database import create_pool
    from schedules.reconciler import reconcile
    from core.client import connect

    client = await connect(settings)
    pool = await create_pool(settings.database_url(), min_size=1, max_size=4)
    try:
        return await reconcile(client, pool, tenant_ids=tenants, dry_run=dry_run)
    finally:
        await pool.close()


def cmd_schedules_sync(settings: Settings, args: argparse.Namespace) -> None:
    from schedules.reconciler import format_report
    from core.process import exit_now

    report = asyncio.run(run_sync(settings, dry_run=args.dry_run, tenants=args.tenant))
    print(format_report(report))
    exit_now(0)


def _tenant_id(value: str) -> str:
    from core.names import SLUG_PATTERN

    if not re.match(SLUG_PATTERN, value):
        raise argparse.ArgumentTypeError(f"not a tenant id: {value!r}")
    return value


def add_schedules_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``bizosaas schedules ...``; the command function is in ``args.fn(settings, args)``."""
    s = subparsers.add_parser("schedules", help="declared cron schedules")
    sub = s.add_subparsers(dest="schedules_command", required=True)
    sync = sub.add_parser("sync", help="create, update and delete Temporal schedules to match the declarations")
    sync.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
    sync.add_argument("--tenant", action="append", type=_tenant_id, help="only this tenant's schedules (repeatable); "
                      "default every tenant and the global ones")
    sync.set_defaults(fn=cmd_schedules_sync)
    return s
