"""Declared schedules on the dev server: the reconciler (create once, unchanged, update,
delete, dry run, owned only), `schedules sync --dry-run` as a command, and the schedules API
over real HTTP (trigger, backfill, pause a tenant, re-time, enable/disable a capability,
tenant scope)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import asyncpg
    import httpx
    import pytest_asyncio
    from litestar import Litestar
    from litestar.di import Provide
    from litestar.middleware import DefineMiddleware
    from temporalio.client import (
        Client,
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleCalendarSpec,
        ScheduleRange,
        ScheduleSpec,
    )
    from temporalio.common import SearchAttributePair, TypedSearchAttributes
    from temporalio.worker import Worker

    from activities.schedules import ScheduleActivities, SetCapability
    from activities.tenants import AuditActivities
    from api.app import PUBLIC_PATHS
    from api.auth import BearerAuthMiddleware, TokenVerifier, role_guard
    from api.errors import EXCEPTION_HANDLERS
    from api.schedules import schedules_router
    from schedules.catalogue import SCHEDULES, schedule_id
    from schedules.cli import add_schedules_parser  # noqa: F401  (the command under test)
    from schedules.reconciler import describe_or_none, read_applied, reconcile
    from tests.conftest import ROOT, Tokens, assert_eventually, serve
    from tests.support import add_tenant, dev_env
    from workers.main import WORKFLOW_FAILURE_TYPES
    from core.settings import Settings
    from core.names import CAPABILITY, TENANT_ID
    from workflows.presence_audit import PresenceAuditInput
    from workflows.tenant_schedules import TenantCapabilitiesWorkflow

WEEKLY = "presence-audit-weekly"
SITE = "https://bakery.example/"


# --- a stand-in for the real audit (no crew, no MCP): what a schedule starts -------------

@workflow.defn(name="PresenceAudit")
class StandInPresenceAudit:
    @workflow.run
    async def run(self, inp: PresenceAuditInput) -> str:
        return f"{inp.tenant_id} {inp.website_url} {inp.requested_by}"


# --- fixtures ---------------------------------------------------------------------------

async def _delete_schedules(client: Client, tenant: str) -> None:
    for sid in [schedule_id(tenant, name) for name in (*SCHEDULES, "manual")]:
        if await describe_or_none(client, sid) is not None:
            await client.get_schedule_handle(sid).delete()


@pytest_asyncio.fixture
async def tenants(client: Client, db: asyncpg.Pool) -> AsyncIterator[list[str]]:
    """Two active tenants (Paris and Chicago time); their schedules are deleted afterwards."""
    made = [await add_tenant(db, "bakery", "Europe/Paris"), await add_tenant(db, "florist", "America/Chicago")]
    yield made
    for tenant in made:
        await _delete_schedules(client, tenant)


@pytest_asyncio.fixture
async def worker(client: Client, db: asyncpg.Pool, task_queue: str) -> AsyncIterator[ScheduleActivities]:
    """TenantCapabilities and the stand-in audit on this test's queue; schedules start runs there."""
    acts, audit = ScheduleActivities(db, reconcile, task_queue), AuditActivities(db)
    async with Worker(
        client, task_queue=task_queue, workflows=[TenantCapabilitiesWorkflow, StandInPresenceAudit],
        activities=[acts.set_capability, acts.apply_tenant, audit.write],
        workflow_failure_exception_types=WORKFLOW_FAILURE_TYPES,
    ):
        yield acts


def schedules_app(settings: Settings, client: Client, db: asyncpg.Pool, task_queue: str) -> Litestar:
    """The schedules router with the auth middleware, guard and error map of api/app.py."""
    app = Litestar(
        route_handlers=[schedules_router(task_queue)],
        dependencies={"temporal": Provide(lambda: client, sync_to_thread=False),
                      "db": Provide(lambda: db, sync_to_thread=False)},
        middleware=[DefineMiddleware(BearerAuthMiddleware, exclude=PUBLIC_PATHS)],
        guards=[role_guard],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.token_verifier = TokenVerifier(settings)
    return app


@pytest_asyncio.fixture
async def http(settings: Settings, client: Client, db: asyncpg.Pool, task_queue: str,
               worker: ScheduleActivities) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(schedules_app(settings, client, db, task_queue)) as url, \
            httpx.AsyncClient(base_url=url, timeout=20) as c:
        yield c


async def enable(acts: ScheduleActivities, tenant: str, *, enabled: bool = True, url: str | None = SITE) -> None:
    """The tenant's row, written by the real activity (tests write no business rows by hand)."""
    await acts.set_capability(SetCapability(tenant_id=tenant, capability="presence-audit", enabled=enabled,
                                            website_url=url, updated_by="test"))


async def scheduled_runs(client: Client, tenant: str, *, closed: bool = False) -> list[str]:
    query = f"BizTenantId = '{tenant}' AND BizCapability = 'presence-audit'"
    if closed:
        query += " AND ExecutionStatus = 'Completed'"
    return sorted([w.id async for w in client.list_workflows(query)])


async def run_cli(settings: Settings, *argv: str) -> str:
    """`bizosaas schedules ...` exactly as workers/cli.py will wire it, in its own process."""
    script = (
        "import argparse, sys\n"
        "from schedules.cli import add_schedules_parser\n"
        "from core.settings import load_settings\n"
        "p = argparse.ArgumentParser(prog='bizosaas')\n"
        "add_schedules_parser(p.add_subparsers(dest='command', required=True))\n"
        "args = p.parse_args(sys.argv[1:])\n"
        "args.fn(load_settings(), args)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "BIZ_TEMPORAL_ADDRESS": settings.temporal.address, "BIZ_TEMPORAL_NAMESPACE": settings.temporal.namespace,
           "BIZ_DATABASE_URL": settings.database_url(), "BIZ_LOG_LEVEL": "WARNING", **dev_env(settings)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *argv, env=env, cwd=tempfile.gettempdir(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


# --- the reconciler -----------------------------------------------------------------------

async def test_reconciler_creates_once_then_unchanged_update_and_delete(
    client: Client, db: asyncpg.Pool, task_queue: str, tenants: list[str], worker: ScheduleActivities, settings: Settings,
) -> None:
    tenant, other = tenants
    sid = schedule_id(tenant, WEEKLY)
    await enable(worker, tenant)

    async def sync(dry_run: bool = False, declarations: dict = SCHEDULES) -> dict[str, str]:
        report = await reconcile(client, db, tenant_ids=[tenant, other], dry_run=dry_run,
                                 declarations=declarations, task_queue=task_queue)
        return {c.schedule_id: c.change for c in report.changes}

    # A dry run says what it would do and does nothing.
    assert await sync(dry_run=True) == {sid: "create"}
    assert await describe_or_none(client, sid) is None
    assert await sync() == {sid: "create"}
    assert await sync() == {sid: "unchanged"}  # idempotent: describe by id, not eventual listing

    desc = await client.get_schedule_handle(sid).describe()
    spec, action = desc.schedule.spec, desc.schedule.action
    assert spec.time_zone_name == "Europe/Paris" and spec.jitter == timedelta(minutes=30)
    assert [(c.hour, c.day_of_week) for c in spec.calendars] == [((ScheduleRange(6),), (ScheduleRange(1),))]
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert (action.workflow, action.id, action.task_queue) == ("PresenceAudit", f"{tenant}:presence-audit:weekly", task_queue)
    assert action.typed_search_attributes.get(TENANT_ID) == tenant
    assert action.typed_search_attributes.get(CAPABILITY) == "presence-audit"
    assert desc.typed_search_attributes.get(TENANT_ID) == tenant and (await desc.memo())["biz_owner"] == "bizosaas"
    # Monday 06:00 in Paris is 05:00 UTC in winter, 04:00 in summer (plus up to 30 min jitter).
    assert desc.info.next_action_times and all(t.weekday() == 0 for t in desc.info.next_action_times)

    # A changed declaration is an update; the pause (and its note) survive it.
    await client.get_schedule_handle(sid).pause(note="owner on holiday")
    later = {**SCHEDULES, WEEKLY: dataclasses.replace(SCHEDULES[WEEKLY], cron=("0 7 * * 1",))}
    assert await sync(dry_run=True, declarations=later) == {sid: "update"}
    assert (await client.get_schedule_handle(sid).describe()).schedule.spec.calendars[0].hour == (ScheduleRange(6),)
    assert await sync(declarations=later) == {sid: "update"}
    desc = await client.get_schedule_handle(sid).describe()
    assert desc.schedule.spec.calendars[0].hour == (ScheduleRange(7),)
    assert (desc.schedule.state.paused, desc.schedule.state.note) == (True, "owner on holiday")
    assert await sync(declarations=later) == {sid: "unchanged"}
    # A new site is an update of the input the runs get.
    await enable(worker, tenant, url="https://new-bakery.example/")
    assert await sync(declarations=later) == {sid: "update"}

    # Disabled: the dry run (and the command) show the delete without applying it.
    await enable(worker, tenant, enabled=False, url=None)
    assert await sync(dry_run=True) == {sid: "delete"}
    async def command_shows_the_delete() -> None:
        # Every tenant and the global schedules: the delete is found through visibility.
        out = (await run_cli(settings, "schedules", "sync", "--dry-run")).splitlines()
        assert f"delete    {sid}  (no longer declared or enabled)" in out, out
        assert out[-1].endswith("(dry run: nothing applied)"), out

    await assert_eventually(command_shows_the_delete, timeout=30)
    assert await describe_or_none(client, sid) is not None
    assert await sync() == {sid: "delete"}
    assert await describe_or_none(client, sid) is None
    assert await sync() == {}


async def test_reconciler_never_touches_a_schedule_it_did_not_make(
    client: Client, db: asyncpg.Pool, task_queue: str, tenants: list[str],
) -> None:
    tenant = tenants[0]
    manual = schedule_id(tenant, "manual")
    await client.create_schedule(
        manual,
        Schedule(action=ScheduleActionStartWorkflow(StandInPresenceAudit.run, PresenceAuditInput(tenant_id=tenant, website_url=SITE),
                                                    id=f"{tenant}:presence-audit:manual", task_queue=task_queue),
                 spec=ScheduleSpec(calendars=[ScheduleCalendarSpec(hour=[ScheduleRange(3)])])),
        search_attributes=TypedSearchAttributes([SearchAttributePair(TENANT_ID, tenant)]),
    )

    async def listed_and_left_alone() -> None:
        report = await reconcile(client, db, tenant_ids=[tenant], task_queue=task_queue)
        assert [(c.schedule_id, c.change) for c in report.changes] == [(manual, "skipped")]

    await assert_eventually(listed_and_left_alone, timeout=15)
    assert await describe_or_none(client, manual) is not None


# --- the API ------------------------------------------------------------------------------

async def test_enabling_a_capability_schedules_it_and_trigger_now_runs_it(
    http: httpx.AsyncClient, client: Client, db: asyncpg.Pool, tokens: Tokens, tenants: list[str],
) -> None:
    tenant = tenants[0]
    sid = schedule_id(tenant, WEEKLY)
    owner = tokens.client(tenant)
    r = await http.post(f"/v1/tenants/{tenant}/capabilities/presence-audit", json={"website_url": SITE}, headers=owner)
    assert r.status_code == 202, r.text
    assert r.json()["workflow_id"] == f"{tenant}:tenant-capabilities:presence-audit"
    result = await client.get_workflow_handle_for(TenantCapabilitiesWorkflow.run, r.json()["workflow_id"]).result()
    assert [(c.schedule_id, c.change) for c in result.schedules] == [(sid, "create")]

    view = (await http.get(f"/v1/schedules/{sid}", headers=owner)).json()
    assert (view["tenant_id"], view["capability"], view["workflow_type"], view["paused"]) == (
        tenant, "presence-audit", "PresenceAudit", False)
    assert view["spec"] == {"cron": ["0 6 * * 1"], "every_seconds": None, "time_zone": "Europe/Paris",
                            "jitter_seconds": 1800, "source": "catalogue"}
    assert len(view["next_runs"]) >= 2 and view["recent_runs"] == []

    async def listed() -> None:
        items = (await http.get("/v1/schedules", headers=owner)).json()["items"]
        assert [i["schedule_id"] for i in items] == [sid]

    await assert_eventually(listed, timeout=15)

    # Running it now costs a run: the owner may not, an admin may.
    r = await http.post(f"/v1/schedules/{sid}/trigger", headers=owner)
    assert r.status_code == 403, r.text
    assert (await client.get_schedule_handle(sid).describe()).info.num_actions == 0
    r = await http.post(f"/v1/schedules/{sid}/trigger", headers=tokens.admin())
    assert r.status_code == 202, r.text

    async def ran() -> list[str]:
        runs = await scheduled_runs(client, tenant, closed=True)
        assert len(runs) == 1, runs
        return runs

    (run_id,) = await assert_eventually(ran, timeout=20)
    assert run_id.startswith(f"{tenant}:presence-audit:weekly-")
    assert await client.get_workflow_handle(run_id).result() == f"{tenant} {SITE} schedule"
    desc = await client.get_workflow_handle(run_id).describe()
    assert desc.typed_search_attributes.get(TENANT_ID) == tenant
    assert [run["workflow_id"] for run in (await http.get(f"/v1/schedules/{sid}", headers=owner)).json()["recent_runs"]] == [run_id]

    # Disabling deletes the schedule; both changes are in the audit log under the caller.
    r = await http.delete(f"/v1/tenants/{tenant}/capabilities/presence-audit", headers=owner)
    assert r.status_code == 202, r.text
    result = await client.get_workflow_handle_for(TenantCapabilitiesWorkflow.run, r.json()["workflow_id"]).result()
    assert [(c.schedule_id, c.change) for c in result.schedules] == [(sid, "delete")]
    assert (await http.get(f"/v1/schedules/{sid}", headers=owner)).status_code == 404
    audit = await db.fetch("SELECT actor, action FROM audit_log WHERE tenant_id = $1 ORDER BY id", tenant)
    assert [(a["actor"], a["action"]) for a in audit] == [
        (f"owner@{tenant}", "tenant.capability_enabled"), (f"owner@{tenant}", "tenant.capability_disabled")]


async def test_a_three_week_backfill_of_a_weekly_schedule_gives_three_runs(
    http: httpx.AsyncClient, client: Client, db: asyncpg.Pool, task_queue: str, tokens: Tokens,
    tenants: list[str], worker: ScheduleActivities,
) -> None:
    tenant = tenants[0]
    sid = schedule_id(tenant, WEEKLY)
    await enable(worker, tenant)
    await reconcile(client, db, tenant_ids=[tenant], task_queue=task_queue)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)  # a Thursday: Mondays 5, 12 and 19 follow
    # Every missed run, one after the other: the admin says so (the default keeps one waiting).
    body = {"start": start.isoformat(), "end": (start + timedelta(weeks=3)).isoformat(), "overlap": "buffer_all"}
    # Past runs cost as much as new ones: the tenant's owner may not backfill, nor anyone beyond 31 days.
    r = await http.post(f"/v1/schedules/{sid}/backfill", json=body, headers=tokens.client(tenant))
    assert r.status_code == 403, r.text
    year = {"start": start.isoformat(), "end": (start + timedelta(days=366)).isoformat()}
    r = await http.post(f"/v1/schedules/{sid}/backfill", json=year, headers=tokens.admin())
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "end", r.text
    assert "at most 31 days" in r.json()["invalid_params"][0]["reason"]
    assert (await client.get_schedule_handle(sid).describe()).info.num_actions == 0
    r = await http.post(f"/v1/schedules/{sid}/backfill", json=body, headers=tokens.admin())
    assert r.status_code == 202, r.text

    async def three_done() -> list[str]:
        runs = await scheduled_runs(client, tenant, closed=True)
        assert len(runs) == 3, runs
        return runs

    runs = await assert_eventually(three_done, timeout=30)
    assert [r.split("weekly-")[1][:10] for r in runs] == ["2026-01-05", "2026-01-12", "2026-01-19"]
    assert len(await scheduled_runs(client, tenant)) == 3  # none still running or extra
    assert (await client.get_schedule_handle(sid).describe()).info.num_actions == 3
    # Nonsense periods are refused, naming the field.
    r = await http.post(f"/v1/schedules/{sid}/backfill", json={"start": body["end"], "end": body["start"]},
                        headers=tokens.admin())
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "end"


async def test_pausing_all_of_a_tenants_schedules_shows_the_note(
    http: httpx.AsyncClient, client: Client, db: asyncpg.Pool, task_queue: str, tokens: Tokens,
    tenants: list[str], worker: ScheduleActivities,
) -> None:
    tenant, other = tenants
    sid = schedule_id(tenant, WEEKLY)
    for t in tenants:
        await enable(worker, t)
    await reconcile(client, db, tenant_ids=tenants, task_queue=task_queue)

    r = await http.post(f"/v1/tenants/{tenant}/schedules/pause", json={"note": "closed for renovation"},
                        headers=tokens.partner([tenant]))
    assert r.status_code == 200, r.text
    assert r.json() == {"tenant_id": tenant, "paused": True, "schedule_ids": [sid]}
    view = (await http.get(f"/v1/schedules/{sid}", headers=tokens.client(tenant))).json()
    assert (view["paused"], view["note"]) == (True, "closed for renovation")
    other_view = (await http.get(f"/v1/schedules/{schedule_id(other, WEEKLY)}", headers=tokens.admin())).json()
    assert other_view["paused"] is False and other_view["spec"]["time_zone"] == "America/Chicago"

    r = await http.post(f"/v1/tenants/{tenant}/schedules/unpause", json={"note": "open again"}, headers=tokens.admin())
    assert r.status_code == 200 and r.json()["paused"] is False
    view = (await http.get(f"/v1/schedules/{sid}", headers=tokens.admin())).json()
    assert (view["paused"], view["note"]) == (False, "open again")


async def test_another_tenant_sees_404_and_changes_nothing(
    http: httpx.AsyncClient, client: Client, db: asyncpg.Pool, task_queue: str, tokens: Tokens,
    tenants: list[str], worker: ScheduleActivities,
) -> None:
    tenant, other = tenants
    sid = schedule_id(tenant, WEEKLY)
    await enable(worker, tenant)
    await reconcile(client, db, tenant_ids=[tenant], task_queue=task_queue)
    intruder = tokens.client(other)
    # Running, backfilling and re-timing are for admins: any client is refused before the lookup.
    for answer in await asyncio.gather(
        http.post(f"/v1/schedules/{sid}/trigger", headers=intruder),
        http.post(f"/v1/schedules/{sid}/backfill", headers=intruder,
                  json={"start": "2026-01-01T00:00:00Z", "end": "2026-01-22T00:00:00Z"}),
        http.patch(f"/v1/schedules/{sid}/spec", json={"cron": ["0 3 * * *"]}, headers=intruder),
    ):
        assert answer.status_code == 403, (answer.request.method, answer.request.url, answer.text)
    attempts = [
        http.get(f"/v1/schedules/{sid}", headers=intruder),
        http.post(f"/v1/schedules/{sid}/pause", json={"note": "x"}, headers=intruder),
        http.post(f"/v1/tenants/{tenant}/schedules/pause", json={"note": "x"}, headers=intruder),
        http.delete(f"/v1/tenants/{tenant}/capabilities/presence-audit", headers=intruder),
        http.get("/v1/schedules", params={"tenant_id": tenant}, headers=intruder),
        http.get("/v1/schedules/biz:nobody:presence-audit-weekly", headers=tokens.admin()),
    ]
    for answer in await asyncio.gather(*attempts):
        assert answer.status_code == 404, (answer.request.method, answer.request.url, answer.text)
    assert (await http.get("/v1/schedules", headers=intruder)).json()["items"] == []
    desc = await client.get_schedule_handle(sid).describe()
    assert (desc.schedule.state.paused, desc.info.num_actions) == (False, 0)
    assert (await read_applied(client, desc)).spec.cron == ["0 6 * * 1"]
    # Finance reads but may not pause; a client may not act on the platform's other routes' roles.
    assert (await http.get(f"/v1/schedules/{sid}", headers=tokens._bearer(sub="f", roles=["finance"]))).status_code == 200
    r = await http.post(f"/v1/schedules/{sid}/pause", json={}, headers=tokens._bearer(sub="f", roles=["finance"]))
    assert r.status_code == 403


async def test_respecifying_a_schedule_validates_and_survives_sync(
    http: httpx.AsyncClient, client: Client, db: asyncpg.Pool, task_queue: str, tokens: Tokens,
    tenants: list[str], worker: ScheduleActivities,
) -> None:
    tenant = tenants[0]
    sid = schedule_id(tenant, WEEKLY)
    await enable(worker, tenant)
    await reconcile(client, db, tenant_ids=[tenant], task_queue=task_queue)
    owner, admin = tokens.client(tenant), tokens.admin()
    # The owner may pause and unpause, never re-time (a 60-second audit would cost a fortune).
    r = await http.patch(f"/v1/schedules/{sid}/spec", json={"every_seconds": 60}, headers=owner)
    assert r.status_code == 403, r.text
    r = await http.post(f"/v1/schedules/{sid}/pause", json={"note": "on holiday"}, headers=owner)
    assert r.status_code == 200 and r.json()["paused"] is True, r.text
    r = await http.post(f"/v1/schedules/{sid}/unpause", json={}, headers=owner)
    assert r.status_code == 200 and r.json()["paused"] is False, r.text
    for body, field in (
        ({"cron": ["61 * * * *"]}, "cron"),  # well formed, out of range
        ({"cron": ["every monday"]}, "cron"),
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"cron": ["0 6 * * 1"], "every_seconds": 3600}, "every_seconds"),
        ({"every_seconds": 5}, "every_seconds"),
    ):
        r = await http.patch(f"/v1/schedules/{sid}/spec", json=body, headers=admin)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["invalid_params"][0]["name"] == field, (body, r.json())
    # Not even an admin may make the audit fire more than once a day (its declared minimum).
    for body in ({"every_seconds": 60}, {"every_seconds": 3600}, {"cron": ["*/5 * * * *"]},
                 {"cron": ["0 6 * * 1", "0 18 * * 1"]}, {"cron": ["@hourly"]}):
        r = await http.patch(f"/v1/schedules/{sid}/spec", json=body, headers=admin)
        assert r.status_code == 422, (body, r.text)
        assert "at most once every 1 day" in r.json()["detail"], r.json()
    desc = await client.get_schedule_handle(sid).describe()
    assert (await read_applied(client, desc)).spec.cron == ["0 6 * * 1"]  # nothing changed
    r = await http.post("/v1/tenants/{}/capabilities/presence-audit".format(tenants[1]), json={}, headers=tokens.admin())
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "website_url"

    r = await http.patch(f"/v1/schedules/{sid}/spec", headers=admin,
                         json={"cron": ["30 9 * * 2"], "time_zone": "America/New_York", "jitter_seconds": 0})
    assert r.status_code == 200, r.text
    assert r.json()["spec"] == {"cron": ["30 9 * * 2"], "every_seconds": None, "time_zone": "America/New_York",
                                "jitter_seconds": None, "source": "api"}
    new_york = [datetime.fromisoformat(t).astimezone(ZoneInfo("America/New_York")) for t in r.json()["next_runs"]]
    assert new_york and {(t.weekday(), t.hour, t.minute) for t in new_york} == {(1, 9, 30)}
    # The next sync keeps what the admin chose.
    report = await reconcile(client, db, tenant_ids=[tenant], task_queue=task_queue)
    assert [(c.change, c.detail) for c in report.changes] == [("unchanged", "spec set through the API")]
    desc = await client.get_schedule_handle(sid).describe()
    assert desc.schedule.spec.time_zone_name == "America/New_York"
    assert desc.schedule.spec.calendars[0].hour == (ScheduleRange(9),)
