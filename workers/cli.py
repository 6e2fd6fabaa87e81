"""The ``bizosaas`` command: dev stack, worker, API, dev tokens, migrations, schedules, signed decisions."""

from __future__ import annotations

import argparse
import asyncio
import sys

from core.settings import ConfigError, Settings, load_settings
from core.names import TASK_QUEUES
from core.process import exit_now


def _configure_logging(settings: Settings) -> None:
    from core.telemetry import configure_logging

    configure_logging(settings)


def _require_schema(settings: Settings) -> None:
    """Unless the process migrates at start: refuse to start (one line, exit 2) against a
    database that lacks a migration of this build."""
    if settings.database.migrate_on_start or settings.database.url is None:
        return  # (no database set: refused where the process first needs it)
    import asyncpg

    from core.database import SchemaBehind, check_schema

    async def check() -> None:
        conn = await asyncpg.connect(settings.database_url())
        try:
            await check_schema(conn)
        finally:
            await conn.close()

    try:
        asyncio.run(check())
    except SchemaBehind as exc:
        print(f"bizosaas: {exc}", file=sys.stderr)
        exit_now(2)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from workers.main import run_workers

    _require_schema(settings)
    asyncio.run(run_workers(settings, args.queue or TASK_QUEUES))
    exit_now(0)


def cmd_api(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from api.app import create_app

    host = args.host or settings.api.host
    port = args.port or settings.api.port
    # The bind address is part of what the settings are checked against (dev secrets on 0.0.0.0).
    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"host": host, "port": port})})
    app = create_app(settings)
    settings.require_decision_keys()  # the API signs every decider it passes on
    _require_schema(settings)  # the release step migrated the database (`bizosaas migrate`)
    # log_config=None: uvicorn's records go through the process's logging (text or JSON).
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), log_config=None,
                access_log=False, timeout_graceful_shutdown=10)
    exit_now(0)


def cmd_dev(settings: Settings, args: argparse.Namespace) -> None:
    from workers.dev import dev_settings, run_dev

    exit_now(run_dev(dev_settings(settings)))


def cmd_token(settings: Settings, args: argparse.Namespace) -> None:
    from api.auth import mint_dev_token

    try:
        token = mint_dev_token(
            settings,
            sub=args.sub or (f"{args.role}@{args.tenant}" if args.tenant else args.role),
            roles=[args.role],
            tenant_id=args.tenant,
            tenants=args.manages or (),
            act=args.act,
            ttl_seconds=args.ttl,
        )
    except (PermissionError, ValueError) as exc:
        print(f"bizosaas token: {exc}", file=sys.stderr)
        exit_now(2)
    print(token)
    exit_now(0)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    import asyncpg

    from core.database import apply_migrations

    async def migrate() -> list[int]:
        conn = await asyncpg.connect(settings.database_url())
        try:
            return await apply_migrations(conn)
        finally:
            await conn.close()

    applied = asyncio.run(migrate())
    print(f"applied {len(applied)} migration(s): {applied}" if applied else "schema is up to date")
    exit_now(0)


def cmd_approvals_decide(settings: Settings, args: argparse.Namespace) -> None:
    import json
    import time

    import msgspec

    from hitl.protocol import Decider, DecisionInput, sign_decision

    try:
        edits = json.loads(args.edits) if args.edits is not None else None
        decision = msgspec.convert(msgspec.to_builtins(DecisionInput(
            request_id=args.request, decision=args.decision, comment=args.comment or "", edits=edits,
            choice=args.choice, by=Decider(sub=args.sub, roles=args.role, tenant_id=args.tenant,
                                           tenants=args.manages or []))), DecisionInput)
        key_id, secret = settings.decision.signing_key()  # in dev, the state dir's (main)
        signed = sign_decision(decision, workflow_id=args.workflow_id, key_id=key_id, secret=secret,
                               issued_at=int(time.time()), ttl_seconds=args.ttl)
    except (ValueError, LookupError, msgspec.ValidationError) as exc:
        print(f"bizosaas approvals decide: {exc}", file=sys.stderr)
        exit_now(2)
    payload = msgspec.json.encode(signed).decode()
    if args.print:
        print(payload)
        exit_now(0)

    async def send() -> None:
        from core.client import connect
        from hitl.approvals import HumanDecisions

        client = await connect(settings)
        await client.get_workflow_handle(args.workflow_id).signal(HumanDecisions.decide_signal, signed)

    from temporalio.service import RPCError

    try:
        asyncio.run(send())
    except RPCError as exc:
        print(f"bizosaas approvals decide: {args.workflow_id}: {exc.message}", file=sys.stderr)
        exit_now(1)
    print(f"sent the decide signal to {args.workflow_id}: {args.decision} {args.request} as {args.sub}; "
          "`temporal workflow query --name approvals` shows whether it was taken or refused")
    exit_now(0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bizosaas", description="BizOSaaS Workflows")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("dev", help="run the whole platform on this machine").set_defaults(fn=cmd_dev)

    w = sub.add_parser("worker", help="run workers (all task queues, or the ones named)")
    w.add_argument("--queue", action="append", choices=TASK_QUEUES, help="repeat for several; default all")
    w.set_defaults(fn=cmd_worker)

    a = sub.add_parser("api", help="run the HTTP API")
    a.add_argument("--host")
    a.add_argument("--port", type=int)
    a.set_defaults(fn=cmd_api)

    t = sub.add_parser("token", help="mint a dev token (BIZ_ENVIRONMENT=dev only)")
    t.add_argument("--role", required=True)
    t.add_argument("--tenant", help="the caller's tenant (clients, partners)")
    t.add_argument("--sub", help="subject; default ROLE@TENANT")
    t.add_argument("--manages", action="append", help="a tenant a partner manages (repeatable)")
    t.add_argument("--act", help="impersonating admin's subject (acting-as)")
    t.add_argument("--ttl", type=int, help="seconds until it expires")
    t.set_defaults(fn=cmd_token)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=cmd_migrate)

    ap = sub.add_parser("approvals", help="decide on a workflow's approval from the command line")
    apsub = ap.add_subparsers(dest="approvals_command", required=True)
    d = apsub.add_parser("decide", help="sign a decision with the first of BIZ_DECISION_KEYS and send it as the "
                                        "`decide` signal (or --print it for `temporal workflow signal --input`)")
    d.add_argument("--workflow-id", required=True)
    d.add_argument("--request", required=True, help="the request id, e.g. creative-1")
    d.add_argument("--decision", required=True, choices=["approve", "reject", "request_changes", "edit"])
    d.add_argument("--comment")
    d.add_argument("--edits", help="JSON object of proposal fields (with --decision edit)")
    d.add_argument("--choice", help="with approve, where the request offers choices")
    d.add_argument("--as", dest="sub", required=True, help="the decider's subject, e.g. owner@acme")
    d.add_argument("--role", action="append", required=True, help="a role of the decider (repeatable)")
    d.add_argument("--tenant", help="the decider's tenant (clients)")
    d.add_argument("--manages", action="append", help="a tenant a partner decider manages (repeatable)")
    d.add_argument("--ttl", type=int, default=900, help="seconds the signed decision stays valid (max 86400)")
    d.add_argument("--print", action="store_true", help="print the signed payload instead of sending it")
    d.set_defaults(fn=cmd_approvals_decide)

    from schedules.cli import add_schedules_parser

    add_schedules_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    settings = load_settings()
    _configure_logging(settings)
    try:
        if settings.environment == "dev" and args.command != "dev":
            from workers.dev import dev_credentials

            # What `bizosaas dev` keeps in its state dir, unless the environment says otherwise.
            settings = dev_credentials(settings, create=False)
        args.fn(settings, args)
    except ConfigError as exc:
        print(f"bizosaas {args.command}: {exc}", file=sys.stderr)
        exit_now(2)


if __name__ == "__main__":
    main()
