"""The HTTP API over real HTTP: health, onboarding start and read-back, auth, errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import httpx

from tests.conftest import ROOT, Tokens, assert_eventually, unique


def _onboarding(tenant: str) -> dict[str, str]:
    return {"tenant_id": tenant, "name": f"{tenant} Ltd", "owner_email": f"owner@{tenant}.example"}


async def _wait_completed(http: httpx.AsyncClient, wf_id: str, headers: dict[str, str]) -> dict:
    async def check() -> dict:
        r = await http.get(f"/v1/workflows/{wf_id}", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "COMPLETED", body
        return body

    return await assert_eventually(check, timeout=15)


async def test_health_reports_both_parts(http: httpx.AsyncClient) -> None:
    r = await http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["temporal"]["ok"] and body["postgres"]["ok"]


async def test_admin_onboards_a_tenant_and_reads_the_result(http: httpx.AsyncClient, tokens: Tokens, db) -> None:  # noqa: ANN001
    tenant = unique("shop")
    r = await http.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers=tokens.admin())
    assert r.status_code == 202, r.text
    wf_id = r.json()["workflow_id"]
    assert wf_id == f"{tenant}:onboarding:{tenant}" and r.json()["run_id"]

    body = await _wait_completed(http, wf_id, tokens.admin())
    assert body["tenant_id"] == tenant and body["capability"] == "onboarding"
    assert body["result"]["status"] == "active"
    assert body["progress"]["stage"] == "completed"
    # The tenant's own client sees it too; the audit row names the admin who asked.
    assert (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.client(tenant))).status_code == 200
    assert await db.fetchval("SELECT actor FROM audit_log WHERE tenant_id = $1", tenant) == "admin@bizosaas"


async def test_same_tenant_twice_never_makes_two_workflows(http: httpx.AsyncClient, tokens: Tokens) -> None:
    tenant = unique("twice")
    answers = await asyncio.gather(
        *(http.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers=tokens.admin()) for _ in range(5))
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [202, 409, 409, 409, 409]
    conflict = next(a for a in answers if a.status_code == 409).json()
    assert conflict["workflow_id"] == f"{tenant}:onboarding:{tenant}"
    await _wait_completed(http, f"{tenant}:onboarding:{tenant}", tokens.admin())
    again = await http.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers=tokens.admin())
    assert again.status_code == 409  # also after it completed


async def test_bad_input_is_a_400_naming_the_field(http: httpx.AsyncClient, tokens: Tokens) -> None:
    bad = {**_onboarding(unique("bad")), "owner_email": "not-an-email"}
    r = await http.post("/v1/workflows/onboarding", json=bad, headers=tokens.admin())
    assert r.status_code == 400
    assert r.json()["invalid_params"][0]["name"] == "owner_email"
    missing = {"tenant_id": unique("bad"), "name": "x"}
    r = await http.post("/v1/workflows/onboarding", json=missing, headers=tokens.admin())
    assert r.status_code == 400 and "owner_email" in r.text
    r = await http.post("/v1/workflows/onboarding", content=b"{not json", headers=tokens.admin())
    assert r.status_code == 400


async def test_auth_401_403_and_other_tenant_404(http: httpx.AsyncClient, tokens: Tokens) -> None:
    tenant = unique("mine")
    assert (await http.post("/v1/workflows/onboarding", json=_onboarding(tenant))).status_code == 401
    forged = {"authorization": "Bearer " + tokens.admin()["authorization"].split()[1][:-4] + "AAAA"}
    assert (await http.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers=forged)).status_code == 401
    r = await http.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers=tokens.client(tenant))
    assert r.status_code == 403

    r = await http.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers=tokens.admin())
    wf_id = r.json()["workflow_id"]
    other = tokens.client(unique("other"))
    assert (await http.get(f"/v1/workflows/{wf_id}", headers=other)).status_code == 404
    assert (await http.post(f"/v1/workflows/{wf_id}/cancel", headers=other)).status_code == 404
    assert (await http.get("/v1/workflows/nope:onboarding:nope", headers=tokens.admin())).status_code == 404
    # A partner sees the tenants it manages, and only those.
    assert (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.partner([tenant]))).status_code == 200
    assert (await http.get(f"/v1/workflows/{wf_id}", headers=tokens.partner(["someone-else"]))).status_code == 404


async def test_openapi_31_documents_the_typed_start(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/schema/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    op = spec["paths"]["/v1/workflows/onboarding"]["post"]
    assert op["operationId"] == "start_onboarding"
    schema = spec["components"]["schemas"]["OnboardingInput"]
    assert schema["properties"]["tenant_id"]["pattern"]
    docs = await http.get("/schema")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]


def test_the_api_process_does_not_import_crewai(settings) -> None:  # noqa: ANN001
    """The API loads every route and runs its start-up; CrewAI must stay out of it."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from litestar.testing import AsyncTestClient
        from api.app import create_app
        from core.settings import Settings

        async def main():
            app = create_app(Settings(_env_file=None, environment="dev", auth={"dev_secret": "s" * 32},
                                      temporal={"address": sys.argv[1]}, database={"url": sys.argv[2]}))
            async with AsyncTestClient(app) as c:
                assert (await c.get("/health")).status_code == 200
            loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"crewai", "langchain", "langchain_core", "chromadb"})
            print("LOADED", loaded)
        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, settings.temporal.address, settings.database_url()],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert "LOADED []" in out.stdout, out.stdout + out.stderr


async def test_staff_start_a_capability_only_for_a_tenant_the_platform_knows(
    http: httpx.AsyncClient, tokens: Tokens, db, client  # noqa: ANN001
) -> None:
    """An admin names the tenant in the body: a tenant never onboarded is 404 and nothing runs
    (no report, order or approval for a tenant that does not exist)."""
    from tests.support import add_tenant, workflow_exists

    ghost = unique("ghost")
    body = {"tenant_id": ghost, "website_url": "http://127.0.0.1:9/", "audit_key": "first"}
    r = await http.post("/v1/workflows/presence-audit", json=body, headers=tokens.admin())
    assert r.status_code == 404 and r.json()["detail"] == f"tenant {ghost!r} not found", r.text
    assert not await workflow_exists(client, f"{ghost}:presence-audit:first")
    known = await add_tenant(db, "known")
    r = await http.post("/v1/workflows/presence-audit", json={**body, "tenant_id": known}, headers=tokens.admin())
    assert r.status_code == 202, r.text
    await client.get_workflow_handle(r.json()["workflow_id"]).terminate("test over")
