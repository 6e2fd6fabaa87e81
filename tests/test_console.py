"""The approvals console in a real browser: Playwright for Python driving Debian's chromium
against the real app (real workers, dev server, Postgres, HTTP on loopback).

- a client signs in with a dev token, approves a campaign with an edited budget (a value out
  of the edit schema's range is refused by field first) and sees the receipt; a second person
  of the tenant deciding at the same moment is told who decided;
- an admin filters the Approval Hub and approves an over-cap budget, then looks at the
  workflow explorer, schedules and reports;
- another tenant's action URL shows "not found".

Screenshots of every page go to build/screenshots/. One browser for the session; chromium is
installed with apt-get when it is missing and we are root, otherwise the tests skip saying so
(in CI, where ``CI`` is set, they fail instead).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr
import pytest
import pytest_asyncio

from api.auth import mint_dev_token
from core.settings import Settings
from tests.conftest import ROOT, Tokens, assert_eventually, unique
from tests.test_campaign import finished, pending_action, start_campaign

pytestmark = pytest.mark.long(seconds=45)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = ROOT / "build" / "screenshots"


def _chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and we may (never `playwright install`)."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    reason = ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                              env=env, capture_output=True, text=True, timeout=900)
        if done.returncode == 0 and Path(CHROMIUM).exists():
            return CHROMIUM
        reason = f"`apt-get install chromium` failed: {done.stderr[-500:]}"
    else:
        reason = "Debian's chromium (/usr/bin/chromium) is missing and this user may not install it: " \
                 "run `apt-get install chromium` as root"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest_asyncio.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    executable = _chromium()
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest_asyncio.fixture
async def console(browser: Any, api_url: str) -> AsyncIterator["Console"]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    c = Console(browser, api_url)
    try:
        yield c
    finally:
        for context in c.contexts:
            await context.close()


class Console:
    """People in browsers: each signs in in a context of their own (own cookies)."""

    def __init__(self, browser: Any, base: str) -> None:
        self.browser, self.base = browser, base
        self.contexts: list[Any] = []

    async def person(self, token: str, shot: str | None = None) -> Any:
        context = await self.browser.new_context(base_url=self.base)
        self.contexts.append(context)
        page = await context.new_page()
        response = await page.goto("/console/")
        assert re.search(r"/console/login\?next=", page.url), page.url  # not signed in yet
        assert response.ok
        if shot:
            await check(page, shot)
        await page.get_by_label("Dev token").fill(token)
        await follow(page, page.get_by_role("button", name="Sign in"))
        return page


async def check(page: Any, name: str) -> None:
    """The page is accessible in the ways a test can see (a language, one h1, every control
    labelled, the skip link first in the tab order), then a screenshot of it."""
    assert await page.get_attribute("html", "lang") == "en"
    assert await page.locator("h1").count() == 1
    unlabelled = await page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter(e => e.type !== 'hidden')
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !(e.textContent || '').trim())
        .map(e => e.outerHTML)""")
    assert unlabelled == [], unlabelled
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    await page.locator("body").focus()
    await page.keyboard.press("Tab")
    assert await page.evaluate("() => document.activeElement.textContent.trim()") == "Skip to content"
    await page.evaluate("() => document.activeElement.blur()")


async def follow(page: Any, target: Any) -> None:
    """Click what leads to another page (a link, a form's button) and wait until that page has
    loaded. Waiting for the load state after the click alone can see the old page, and a reload
    then collides with the navigation still under way."""
    async with page.expect_navigation():
        await target.click()


def _token(settings: Settings, **kw: Any) -> str:
    return mint_dev_token(settings, **kw)


async def test_client_approves_with_an_edited_budget_and_sees_the_receipt(
    console: Console, http: httpx.AsyncClient, tokens: Tokens, settings: Settings
) -> None:
    tenant = unique("bakery")
    wf_id = await start_campaign(http, tokens, tenant)
    action = await pending_action(http, tokens, tenant, wf_id)

    owner = await console.person(_token(settings, sub=f"owner@{tenant}", roles=["client"], tenant_id=tenant), "login")
    assert owner.url.endswith("/console/pending")
    await check(owner, "pending-actions")
    link = owner.get_by_role("link", name=re.compile("Approve the creative and budget"))
    await follow(owner, link.first)
    assert await owner.locator("#status").inner_text() == "open"
    assert "600" in await owner.locator("#proposal").inner_text()
    assert (await owner.locator("#due").inner_text()).endswith("UTC")
    await check(owner, "action")

    # A colleague opens the same approval at the same time.
    colleague = await console.person(_token(settings, sub=f"colleague@{tenant}", roles=["client"], tenant_id=tenant))
    await colleague.goto(f"/console/actions/{quote(action['action_id'])}")

    # Out of the edit schema's range: refused by field, nothing sent to the workflow.
    await owner.get_by_label("Budget USD").fill("2000000")
    await follow(owner, owner.get_by_role("button", name="Approve with edits"))
    budget = owner.get_by_label("Budget USD")
    assert await budget.get_attribute("aria-invalid") == "true"
    assert "Budget USD must be at most 1000000" in await owner.locator(".field .error").first.inner_text()
    await check(owner, "action-invalid-edit")

    await owner.get_by_label("Budget USD").fill("900")
    meta = owner.get_by_role("group", name="Meta ads")
    await meta.get_by_label("Headline").fill("Warm sourdough, every morning")
    await owner.get_by_label("Comment").nth(1).fill("a bit more budget")
    await follow(owner, owner.get_by_role("button", name="Approve with edits"))
    assert await owner.locator("h1").inner_text() == "Decision recorded"
    receipt = await owner.locator("#receipt-message").inner_text()
    assert f"Approve with edits by owner@{tenant} was recorded" in receipt and "This approval is closed." in receipt
    await check(owner, "receipt")

    # The colleague approves a moment later: told who decided, nothing recorded for them.
    await follow(colleague, colleague.get_by_role("button", name="Approve", exact=True))
    notice = await colleague.locator("#notice").inner_text()
    assert f"owner@{tenant} (client) decided it first: Approve with edits" in notice, notice
    await check(colleague, "action-decided-by-someone-else")

    view = await finished(http, tokens.client(tenant), wf_id)
    assert view["result"]["status"] == "launched" and view["result"]["budget_usd"] == 900
    assert [d["decided_by"] for d in view["result"]["decisions"]] == [f"owner@{tenant}"]

    # The workflow's page: its progress and its timeline from history.
    await follow(owner, owner.get_by_role("link", name="Follow the workflow"))
    assert await owner.locator("#wf-status").inner_text() == "completed"
    timeline = await owner.locator("#timeline").inner_text()
    assert re.search(r"workflow execution update accepted\s+decide", timeline), timeline
    assert "activity task completed" in timeline and "workflow execution completed" in timeline
    assert '"launched"' in await owner.locator("#result").inner_text()
    await check(owner, "workflow")


async def test_admin_filters_the_hub_and_approves_an_over_cap_budget(
    console: Console, http: httpx.AsyncClient, tokens: Tokens, settings: Settings
) -> None:
    tenant = unique("gym")
    wf_id = await start_campaign(http, tokens, tenant, budget_usd=5000)
    action = await pending_action(http, tokens, tenant, wf_id)
    r = await http.post(f"/v1/pending-actions/{action['action_id']}/decision", json={"decision": "approve"},
                        headers=tokens.client(tenant))
    assert r.status_code == 200, r.text

    async def in_hub() -> None:
        r = await http.get("/v1/admin/approvals", params={"tenant_id": tenant}, headers=tokens.admin())
        assert [a for a in r.json()["items"] if a["workflow_id"] == wf_id], r.json()

    await assert_eventually(in_hub, timeout=30)

    admin = await console.person(_token(settings, sub="admin@bizosaas", roles=["admin"]))
    assert admin.url.endswith("/console/hub")
    # A filter that is no tenant id is named, not sent.
    await admin.get_by_label("Tenant").fill("Not a tenant!")
    await follow(admin, admin.get_by_role("button", name="Filter"))
    assert "not a tenant id" in await admin.locator("#filter-tenant_id-error").inner_text()

    await admin.get_by_label("Tenant").fill(tenant)
    await admin.get_by_label("Capability").select_option("campaign")
    await admin.get_by_label("Role").select_option("admin")
    await admin.get_by_label("Due").select_option("no")
    await follow(admin, admin.get_by_role("button", name="Filter"))
    rows = admin.locator("tbody tr")
    assert await rows.count() == 1
    assert "above the tenant's cap" in await rows.first.inner_text()
    await check(admin, "approval-hub")

    await follow(admin, rows.first.get_by_role("link"))
    assert await admin.get_by_label("Budget USD").count() == 0  # approve or reject only: no edit form
    await check(admin, "hub-action")
    await admin.get_by_label("Comment").fill("seasonal push, approved")
    await follow(admin, admin.get_by_role("button", name="Approve", exact=True))
    assert "Approve by admin@bizosaas was recorded" in await admin.locator("#receipt-message").inner_text()

    result = (await finished(http, tokens.admin(), wf_id))["result"]
    assert result["status"] == "launched" and result["budget_usd"] == 5000
    assert [(d["request_id"], d["decided_by"], d["comment"]) for d in result["decisions"]][-1] == \
        ("budget-override", "admin@bizosaas", "seasonal push, approved")

    # The explorer lists the tenant's workflow; schedules and reports open.
    await follow(admin, admin.get_by_role("link", name="Workflows"))
    await admin.get_by_label("Tenant").fill(tenant)
    await admin.get_by_label("Status").select_option("completed")
    await follow(admin, admin.get_by_role("button", name="Filter"))
    assert f"tenant_id={tenant}" in admin.url, admin.url

    async def listed() -> None:
        await admin.reload()
        assert wf_id in await admin.locator("main").inner_text()

    await assert_eventually(listed, timeout=15, interval=0.3)
    await check(admin, "workflows")
    await follow(admin, admin.get_by_role("link", name="Schedules"))
    assert await admin.locator("h1").inner_text() == "Schedules"
    await check(admin, "schedules")
    await follow(admin, admin.get_by_role("link", name="Reports"))
    assert await admin.locator("h1").inner_text() == "Reports"
    await check(admin, "reports")


async def test_another_tenants_action_url_shows_not_found(
    console: Console, http: httpx.AsyncClient, tokens: Tokens, settings: Settings
) -> None:
    tenant, other = unique("florist"), unique("rival")
    wf_id = await start_campaign(http, tokens, tenant)
    action = await pending_action(http, tokens, tenant, wf_id)

    stranger = await console.person(_token(settings, sub=f"owner@{other}", roles=["client"], tenant_id=other))
    response = await stranger.goto(f"/console/actions/{quote(action['action_id'])}")
    assert response.status == 404
    assert await stranger.locator("h1").inner_text() == "Not found"
    await check(stranger, "not-found")
    # Nor its workflow, and their own Pending Actions do not list it.
    response = await stranger.goto(f"/console/workflows/{quote(wf_id)}")
    assert response.status == 404
    await stranger.goto("/console/pending")
    assert action["title"] not in await stranger.locator("main").inner_text()
    # The owner still sees it open: nothing was decided.
    detail = (await http.get(f"/v1/pending-actions/{action['action_id']}", headers=tokens.client(tenant))).json()
    assert detail["status"] == "open" and detail["decisions"] == []


# --- OIDC sign-in: authorization code + PKCE against an issuer on loopback ------------------

class Issuer:
    """A tiny OIDC provider: ``/authorize`` signs in one fixed person and redirects back with a
    code, ``/token`` trades a code for tokens only with the PKCE verifier of its challenge,
    ``/jwks`` publishes the signing key."""

    def __init__(self, jwks: Any, issuer: str, audience: str, claims: dict[str, Any]) -> None:
        self.jwks, self.issuer, self.audience, self.claims = jwks, issuer, audience, claims
        self.codes: dict[str, dict[str, str]] = {}
        self.refused = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        import base64
        import hashlib
        import json
        import secrets
        import time
        from urllib.parse import parse_qs, urlencode

        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": f"{message['type']}.complete"})
                if message["type"] == "lifespan.shutdown":
                    return

        async def answer(status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> None:
            await send({"type": "http.response.start", "status": status, "headers": headers or []})
            await send({"type": "http.response.body", "body": body})

        path = scope["path"]
        if path == "/jwks":
            return await answer(200, json.dumps(self.jwks.document()).encode(), [(b"content-type", b"application/json")])
        if path == "/authorize":
            q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
            code = secrets.token_urlsafe(16)
            self.codes[code] = q
            target = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"
            return await answer(302, headers=[(b"location", target.encode())])
        if path == "/token":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            asked = self.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            proof = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if (asked is None or asked.get("code_challenge_method") != "S256" or proof != asked.get("code_challenge")
                    or form.get("redirect_uri") != asked.get("redirect_uri")
                    or form.get("client_id") != asked.get("client_id") or form.get("grant_type") != "authorization_code"):
                self.refused += 1
                return await answer(400, b'{"error": "invalid_grant"}', [(b"content-type", b"application/json")])
            now = int(time.time())
            base = {"iss": self.issuer, "iat": now, "exp": now + 300, **self.claims}
            tokens = {"token_type": "Bearer", "expires_in": 300,
                      "access_token": self.jwks.sign({**base, "aud": self.audience}, "k1"),
                      "id_token": self.jwks.sign({**base, "aud": asked["client_id"], "nonce": asked["nonce"]}, "k1")}
            return await answer(200, json.dumps(tokens).encode(), [(b"content-type", b"application/json")])
        return await answer(404)


async def test_oidc_sign_in_with_code_and_pkce(settings: Settings, client: Any) -> None:
    from api.app import create_app
    from tests.conftest import serve
    from tests.test_auth import Jwks

    tenant = unique("oidc")
    jwks = Jwks()
    jwks.add("k1")
    issuer = Issuer(jwks, "https://auth.test/application/o/bizosaas/", "bizosaas-api",
                    {"sub": f"owner@{tenant}", "tenant_id": tenant, "roles": ["client"]})
    async with serve(issuer) as idp:
        auth = settings.auth.model_copy(update={
            "mode": "oidc", "oidc_issuer": issuer.issuer, "oidc_audience": issuer.audience,
            "oidc_jwks_url": f"{idp}/jwks", "oidc_authorization_url": f"{idp}/authorize",
            "oidc_token_url": f"{idp}/token", "oidc_client_id": "bizosaas-console"})
        s = settings.model_copy(update={
            "auth": auth, "console": settings.console.model_copy(update={"session_secret": SecretStr("console-session-test-" * 2)})})
        async with serve(create_app(s)) as url:
            async def sign_in(browser: httpx.AsyncClient) -> dict[str, str]:
                r = await browser.get("/console/login")
                assert r.status_code == 200 and "/console/login/oidc" in r.text
                r = await browser.get("/console/login/oidc", params={"next": "/console/pending"})
                assert r.status_code in (302, 303) and r.headers["location"].startswith(f"{idp}/authorize?")
                asked = dict(httpx.URL(r.headers["location"]).params)
                assert asked["code_challenge_method"] == "S256" and asked["client_id"] == "bizosaas-console"
                assert asked["redirect_uri"] == f"{url}/console/auth/callback"
                async with httpx.AsyncClient() as to_idp:
                    back = await to_idp.get(r.headers["location"])
                assert back.status_code == 302
                return dict(httpx.URL(back.headers["location"]).params)

            async with httpx.AsyncClient(base_url=url) as alice, httpx.AsyncClient(base_url=url) as mallory:
                # Signed in: the callback trades the code (with the verifier) and opens a session.
                code = await sign_in(alice)
                r = await alice.get("/console/auth/callback", params=code)
                assert r.status_code in (302, 303) and r.headers["location"] == "/console/pending", r.text
                cookie = r.headers["set-cookie"].lower()
                assert "httponly" in cookie and "samesite=lax" in cookie
                r = await alice.get("/console/pending")
                assert r.status_code == 200 and f"owner@{tenant}" in r.text

                # A code injected into another person's sign-in (their state, not their
                # verifier) is refused by the issuer: no session.
                theirs = await sign_in(mallory)
                stolen = await sign_in(alice)
                r = await mallory.get("/console/auth/callback", params={"code": stolen["code"], "state": theirs["state"]})
                assert r.headers["location"] == "/console/login?error=refused" and issuer.refused == 1
                r = await mallory.get("/console/pending")
                assert r.status_code in (302, 303) and r.headers["location"].startswith("/console/login")
                # A callback whose state is not the flow's never reaches the issuer.
                r = await mallory.get("/console/auth/callback", params={"code": theirs["code"], "state": "forged"})
                assert r.headers["location"] == "/console/login?error=state" and issuer.refused == 1


# --- the session and its forms, without a browser ----------------------------------------

def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def test_forms_without_the_sessions_csrf_token_decide_nothing(
    http: httpx.AsyncClient, api_url: str, tokens: Tokens, settings: Settings
) -> None:
    tenant = unique("cafe")
    wf_id = await start_campaign(http, tokens, tenant)
    action = await pending_action(http, tokens, tenant, wf_id)
    token = _token(settings, sub=f"owner@{tenant}", roles=["client"], tenant_id=tenant)
    async with httpx.AsyncClient(base_url=api_url) as browser:
        page = await browser.get("/console/login")
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        assert "no-store" in page.headers["cache-control"]
        # Signing in needs the login form's own token too.
        r = await browser.post("/console/login", data={"token": token, "csrf": "forged"})
        assert r.status_code == 403 and "biz_console=" not in r.headers.get("set-cookie", "")
        r = await browser.post("/console/login", data={"token": token, "csrf": _csrf(page.text)})
        assert r.status_code == 303 and "biz_console=" in r.headers["set-cookie"]

        url = f"/console/actions/{quote(action['action_id'])}"
        good = _csrf((await browser.get(url)).text)
        for sent in ({"decision": "approve"}, {"decision": "approve", "csrf": good[:-2] + "xx"}):
            r = await browser.post(f"{url}/decision", data=sent)
            assert r.status_code == 403 and "did not come from this console" in r.text
        detail = (await http.get(f"/v1/pending-actions/{action['action_id']}", headers=tokens.client(tenant))).json()
        assert detail["status"] == "open" and detail["decisions"] == []

        # A session cookie changed by hand is no session.
        cookie = browser.cookies.get("biz_console")
        r = await browser.get("/console/pending")
        assert r.status_code == 200 and f"owner@{tenant}" in r.text
    async with httpx.AsyncClient(base_url=api_url) as stranger:
        tampered = cookie[:-3] + ("AAA" if not cookie.endswith("AAA") else "BBB")
        r = await stranger.get("/console/pending", headers={"cookie": f"biz_console={tampered}"})
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=/console/pending")

    schema = (await http.get("/schema/openapi.json")).json()
    assert not [p for p in schema["paths"] if p.startswith("/console")]
