"""Bad input never gets a 5xx: each probe answers a 4xx problem (RFC 9457) naming what is wrong,
and changes nothing. Real HTTP, real workers, real Temporal and Postgres."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import asyncpg
import httpx
import pytest
import stripe
from temporalio.client import Client

from api.bodies import MAX_BODY_BYTES, MAX_JSON_DEPTH, NO_NUL_PATTERN
from api.errors import PROBLEM_JSON, PROBLEM_TYPE_BASE
from tests.conftest import Tokens, assert_eventually, unique
from tests.test_campaign import campaign_body, pending_action, start_campaign
from tests.test_dunning import stripe_event
from tests.support import workflow_exists
from tests.test_webhooks import order_id, shop_tenant, shopify_headers, shopify_order
from core.names import EMAIL_PATTERN, MAX_ROW_ID
from core.settings import Settings
from workflows.dunning import invoice_key

INVALID_UTF8 = b"\xff\xfe"
DEEP = 5000


def deep(levels: int = DEEP) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer is the problem ``code`` with ``status``, as application/problem+json."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON), r.headers
    body = r.json()
    assert (body["status"], body["code"], body["type"]) == (status, code, PROBLEM_TYPE_BASE + code), body
    assert body["title"] and body["detail"]
    return body


def names(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["source"], p["name"]) for p in body["invalid_params"]]


# --- query parameters ----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/workflows", "/v1/pending-actions", "/v1/admin/approvals"])
async def test_a_cursor_the_api_did_not_issue_is_a_400_naming_it(
    http: httpx.AsyncClient, tokens: Tokens, path: str
) -> None:
    for cursor in ("AAAA", "not base64!", "A" * 64):
        r = await http.get(path, params={"cursor": cursor}, headers=tokens.admin())
        body = problem(r, 400, "validation")
        assert names(body) == [("query", "cursor")]
    assert (await http.get(path, headers=tokens.admin())).status_code == 200


async def test_cursors_page_and_only_their_own_listing(http: httpx.AsyncClient, tokens: Tokens) -> None:
    tenant = unique("pages")
    for key in ("one", "two", "three"):
        await start_campaign(http, tokens, tenant, campaign_key=key)
    client = tokens.client(tenant)

    async def pages() -> list[str]:
        seen, cursor = [], None
        for _ in range(5):
            params = {"limit": 1, "capability": "campaign", **({"cursor": cursor} if cursor else {})}
            r = await http.get("/v1/workflows", params=params, headers=client)
            assert r.status_code == 200, r.text
            seen += [i["workflow_id"] for i in r.json()["items"]]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(f"{tenant}:campaign:{k}" for k in ("one", "two", "three")), seen
        return seen

    await assert_eventually(pages, timeout=15)

    r = await http.get("/v1/workflows", params={"limit": 1, "capability": "campaign"}, headers=client)
    cursor = r.json()["next_cursor"]
    # Another listing (other filters), or the cursor altered: refused before Temporal sees it.
    other = await http.get("/v1/workflows", params={"limit": 1, "cursor": cursor}, headers=client)
    assert names(problem(other, 400, "validation")) == [("query", "cursor")]
    altered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    r = await http.get("/v1/workflows", params={"limit": 1, "capability": "campaign", "cursor": altered},
                       headers=client)
    problem(r, 400, "validation")


async def test_outbox_before_id_beyond_bigint_is_a_400(http: httpx.AsyncClient, tokens: Tokens) -> None:
    r = await http.get("/v1/outbox", params={"before_id": str(2**63)}, headers=tokens.client(unique("ob")))
    assert names(problem(r, 400, "validation")) == [("query", "before_id")]
    r = await http.get("/v1/outbox", params={"before_id": str(MAX_ROW_ID + 1)}, headers=tokens.client(unique("ob")))
    assert names(problem(r, 400, "validation")) == [("query", "before_id")]
    r = await http.get("/v1/outbox", params={"before_id": str(MAX_ROW_ID)}, headers=tokens.client(unique("ob")))
    assert r.status_code == 200 and r.json()["items"] == []


async def test_outbox_tool_with_a_nul_byte_is_a_400(http: httpx.AsyncClient, tokens: Tokens) -> None:
    r = await http.get("/v1/outbox?tool=a%00b", headers=tokens.client(unique("ob")))
    assert names(problem(r, 400, "validation")) == [("query", "tool")]


# --- the decision route --------------------------------------------------------------------

async def test_a_decision_on_a_workflow_that_does_not_exist_is_a_404(
    http: httpx.AsyncClient, tokens: Tokens, client: Client
) -> None:
    tenant = unique("demo")
    wf_id = f"{tenant}:campaign:none"
    r = await http.post(f"/v1/pending-actions/{wf_id}~creative-1/decision", json={"decision": "approve"},
                        headers=tokens.client(tenant))
    problem(r, 404, "not_found")
    assert not await workflow_exists(client, wf_id)


@pytest.mark.parametrize("kind", ["invalid_utf8", "deep", "nul"])
async def test_an_unreadable_decision_body_is_a_400_and_the_action_stays_open(
    http: httpx.AsyncClient, tokens: Tokens, kind: str
) -> None:
    tenant = unique("dec")
    wf_id = await start_campaign(http, tokens, tenant)
    action = await pending_action(http, tokens, tenant, wf_id)
    body = {
        "invalid_utf8": b'{"decision": "approve", "comment": "' + INVALID_UTF8 + b'"}',
        "deep": ('{"decision": "edit", "edits": {"budget_usd": 900, "x": ' + deep() + "}}").encode(),
        "nul": b'{"decision": "request_changes", "comment": "more\\u0000"}',
    }[kind]
    url = f"/v1/pending-actions/{action['action_id']}/decision"
    r = await http.post(url, content=body, headers={**tokens.client(tenant), "content-type": "application/json"})
    detail = problem(r, 400, "malformed_body")["detail"]
    assert {"invalid_utf8": "UTF-8", "deep": f"deeper than {MAX_JSON_DEPTH}", "nul": "NUL"}[kind] in detail

    view = (await http.get(f"/v1/pending-actions/{action['action_id']}", headers=tokens.client(tenant))).json()
    assert view["status"] == "open" and view["decisions"] == []


# --- the start routes ----------------------------------------------------------------------

async def test_a_start_body_is_typed_as_the_document_says_and_nul_only_matters_where_kept(
    http: httpx.AsyncClient, tokens: Tokens, client: Client,
) -> None:
    """A number given as a string, a boolean as a number: 400 naming the field, nothing started
    (the document says number and boolean). A NUL in a member the input does not have is left
    aside with that member; in a member it keeps, it is a 400."""
    tenant = unique("typed")
    for field, value, expected in (("budget_usd", "500", "Expected `float`, got `str`"),
                                   ("duration_days", 30.5, "Expected `int`, got `float`"),
                                   ("channels", "google_ads", "Expected `array`, got `str`")):
        key = unique("k")
        r = await http.post("/v1/workflows/campaign", json={**campaign_body(tenant, key), field: value},
                            headers=tokens.client(tenant))
        assert r.status_code == 400, (field, r.text)
        assert r.json()["invalid_params"] == [{"name": field, "source": "body", "reason": expected}], r.json()
        assert not await workflow_exists(client, f"{tenant}:campaign:{key}")
    r = await http.put(f"/v1/tenants/{tenant}/settings/blog-engine", json={"autopilot": 0}, headers=tokens.admin())
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "autopilot", r.text
    # A number without a fraction is an integer, as JSON Schema says: 30.0 days is 30 days.
    key = unique("k")
    r = await http.post("/v1/workflows/campaign", json={**campaign_body(tenant, key), "duration_days": 30.0},
                        headers=tokens.client(tenant))
    assert r.status_code == 202, r.text
    # A refused member's name is echoed with its NUL spelled out: no NUL in an answer.
    r = await http.put(f"/v1/tenants/{tenant}/settings/blog-engine", json={"tone\u0000x": "warm"},
                       headers=tokens.admin())
    assert r.status_code == 400 and "\x00" not in r.json()["detail"] and "\\u0000" in r.json()["detail"], r.text
    key = unique("k")
    r = await http.post("/v1/workflows/campaign", headers=tokens.client(tenant),
                        json={**campaign_body(tenant, key), "note \u0000": ["left \u0000 aside"]})
    assert r.status_code == 202, r.text
    key = unique("k")
    r = await http.post("/v1/workflows/campaign", headers=tokens.client(tenant),
                        json={**campaign_body(tenant, key), "goal": "Sell more\u0000 bread"})
    assert problem(r, 400, "malformed_body") and not await workflow_exists(client, f"{tenant}:campaign:{key}")


@pytest.mark.parametrize("kind", ["invalid_utf8", "deep", "too_large"])
async def test_an_unreadable_start_body_is_a_4xx_and_starts_nothing(
    http: httpx.AsyncClient, tokens: Tokens, client: Client, kind: str
) -> None:
    tenant, key = unique("start"), unique("k")
    good = json.dumps(campaign_body(tenant, key))
    body = {
        "invalid_utf8": good.encode().replace(b"Sell more", b"Sell " + INVALID_UTF8),
        "deep": good.replace('"objective"', '"extra": ' + deep() + ', "objective"').encode(),
        "too_large": good.replace('"objective"', '"extra": "' + "x" * MAX_BODY_BYTES + '", "objective"').encode(),
    }[kind]
    r = await http.post("/v1/workflows/campaign", content=body,
                        headers={**tokens.client(tenant), "content-type": "application/json"})
    if kind == "too_large":
        assert str(MAX_BODY_BYTES) in problem(r, 413, "body_too_large")["detail"]
    else:
        problem(r, 400, "malformed_body")
    assert not await workflow_exists(client, f"{tenant}:campaign:{key}")


async def test_a_field_error_names_the_field_and_where(http: httpx.AsyncClient, tokens: Tokens) -> None:
    tenant = unique("field")
    r = await http.post("/v1/workflows/campaign", json=campaign_body(tenant, budget_usd="lots"),
                        headers=tokens.client(tenant))
    body = problem(r, 400, "validation")
    assert names(body) == [("body", "budget_usd")] and "budget_usd" in body["detail"]


async def test_a_web_address_the_platform_could_not_fetch_is_a_400_naming_it(
    http: httpx.AsyncClient, tokens: Tokens, client: Client
) -> None:
    """Caught at the start, not as a failed run (or a failed run every week from a schedule)."""
    tenant = unique("site")
    for url in ("http://exa\bmple.com/", "http://ex|ample.com/", "http://user:pw@example.com/",
                "http://example.com/a b", "http://-example.com/", "http://example..com/",
                # No IPv6 address (a workflow's URL parser refuses it) and no port past 65535.
                "http://[8cF9E0:9..:.:b0b]/", "http://[1.2.3.4]/", "http://[1::2::3]/", "http://example.com:65536/"):
        key = unique("k")
        for capability in ("presence-audit", "seo-health"):
            r = await http.post(f"/v1/workflows/{capability}",
                                json={"tenant_id": tenant, "website_url": url, "key": key, "audit_key": key},
                                headers=tokens.client(tenant))
            body = problem(r, 400, "validation")
            assert names(body) == [("body", "website_url")], (url, body)
            assert "a web address" in body["detail"] and "regex" not in body["detail"], body
    # Any script, a port, an IP address: as they are written.
    for url in ("https://café.example:8443/menü?x=1", "http://[2001:db8::1]:8080/", "http://[::ffff:192.0.2.1]/"):
        r = await http.post("/v1/workflows/presence-audit", json={"tenant_id": tenant, "website_url": url,
                                                                    "audit_key": unique("k")},
                            headers=tokens.client(tenant))
        assert r.status_code == 202, (url, r.text)


def test_every_web_address_the_pattern_takes_is_one_a_workflow_can_read() -> None:
    """What the API lets through reaches workflow code, where a URL Python's parser refuses would
    stop the run's every task: the pattern takes no such address."""
    from urllib.parse import urlsplit

    from hypothesis import given, settings, strategies as st

    from core.names import WEB_URL_PATTERN

    @settings(max_examples=500, deadline=None)
    @given(st.from_regex(WEB_URL_PATTERN, fullmatch=True))
    def readable(url: str) -> None:
        parts = urlsplit(url)
        assert parts.port is None or 0 <= parts.port <= 65535
        if parts.hostname and ":" in parts.hostname:
            ipaddress.IPv6Address(parts.hostname)

    readable()


def test_every_email_address_the_api_takes_is_one_the_mail_tools_send_to() -> None:
    """An address the API keeps (a lead, a tenant's owner, a recipient) reaches the send_email
    tool later; one the tool refuses would fail a run long after the 2xx."""
    import re

    from hypothesis import given, settings, strategies as st

    from core.names import EMAIL_PATTERN
    from sandboxes.mcp.common import Email

    tool_pattern = re.compile(next(m.pattern for m in Email.__metadata__[0].metadata if hasattr(m, "pattern")))
    assert re.search(EMAIL_PATTERN, "0@0.0") is None and re.search(EMAIL_PATTERN, "ada@example.com")

    @settings(max_examples=500, deadline=None)
    @given(st.from_regex(EMAIL_PATTERN, fullmatch=True))
    def sendable(address: str) -> None:
        assert tool_pattern.search(address), address

    sendable()


# --- signed webhooks: a valid signature over a body that is not readable -----------------------

@pytest.mark.parametrize("kind", ["invalid_utf8", "deep"])
async def test_a_signed_shopify_body_that_is_not_json_is_a_400_and_starts_nothing(
    http: httpx.AsyncClient, settings: Settings, db: asyncpg.Pool, client: Client, kind: str
) -> None:
    tenant, domain = await shop_tenant(db)
    oid = order_id()
    good = json.dumps(shopify_order(oid))
    body = (good.encode().replace(b"buyer@", INVALID_UTF8 + b"@") if kind == "invalid_utf8"
            else good.replace('"currency"', '"note": ' + deep() + ', "currency"').encode())
    r = await http.post("/v1/webhooks/shopify", content=body, headers=shopify_headers(settings, domain, body))
    problem(r, 400, "malformed_body")
    assert not await workflow_exists(client, f"{tenant}:order:shopify-{oid}")


@pytest.mark.parametrize("kind", ["invalid_utf8", "deep"])
async def test_a_signed_stripe_body_that_is_not_json_is_a_400_and_starts_nothing(
    http: httpx.AsyncClient, settings: Settings, client: Client, kind: str
) -> None:
    tenant, invoice = unique("dun"), f"in_{unique('x')}"
    good = stripe_event("invoice.payment_failed", tenant, invoice)
    body = (good.encode().replace(b"billing@", INVALID_UTF8 + b"@") if kind == "invalid_utf8"
            else good.replace('"currency"', '"note": ' + deep() + ', "currency"').encode())
    # Stripe signs text: what the verifier reads of these bytes is what is signed.
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode("utf-8", "replace"), settings.stripe.webhook_secret.get_secret_value())
    r = await http.post("/v1/webhooks/stripe", content=body, headers={"stripe-signature": header})
    problem(r, 400, "malformed_body")
    assert not await workflow_exists(client, f"{tenant}:dunning:{invoice_key(invoice)}")


# --- one error schema, documented ----------------------------------------------------------

async def test_every_error_is_a_problem_with_a_stable_code(http: httpx.AsyncClient, tokens: Tokens) -> None:
    problem(await http.get("/v1/outbox"), 401, "unauthenticated")
    problem(await http.get("/v1/admin/approvals", headers=tokens.client(unique("c"))), 403, "forbidden")
    problem(await http.get("/v1/workflows/nope:onboarding:nope", headers=tokens.admin()), 404, "not_found")
    problem(await http.get("/v1/no-such-route", headers=tokens.admin()), 404, "not_found")
    problem(await http.delete("/v1/outbox", headers=tokens.admin()), 405, "method_not_allowed")
    problem(await http.get("/v1/workflows", params={"limit": 0}, headers=tokens.admin()), 400, "validation")
    problem(await http.post("/v1/webhooks/shopify", content=b"{}"), 401, "unauthenticated")


async def test_the_openapi_document_lists_each_routes_problems(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/schema/openapi.json")).json()
    assert spec["components"]["schemas"]["Problem"]["required"] == ["code", "detail", "status", "title", "type"]
    errors = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                # The probes answer their own body (what is down) with their 503.
                if int(status) >= 400 and path not in ("/health", "/readyz"):
                    errors += 1
                    assert response["content"] == {
                        PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}, (method, path, status)

    def statuses(method: str, path: str) -> set[int]:
        return {int(s) for s in spec["paths"][path][method]["responses"] if int(s) >= 400}

    assert errors > 100
    assert statuses("post", "/v1/workflows/campaign") == {400, 401, 403, 404, 409, 413, 429, 503}
    assert statuses("post", "/v1/pending-actions/{action_id}/decision") == {400, 401, 403, 404, 409, 413, 422, 503}
    assert statuses("get", "/v1/workflows") == {400, 401, 404, 503}  # 404: tenant_id out of scope
    assert statuses("get", "/v1/admin/approvals") == {400, 401, 403, 404, 503}
    assert statuses("get", "/v1/outbox") == {400, 401, 404, 503}
    assert statuses("post", "/v1/workflows/{workflow_id}/cancel") == {400, 401, 403, 404, 409, 503}
    assert statuses("post", "/v1/webhooks/{source}") == {400, 401, 404, 413, 503}
    # Public operations say no token is needed; the others need the bearer token.
    assert spec["paths"]["/v1/webhooks/{source}"]["post"]["security"] == [{}]
    assert spec["paths"]["/health"]["get"]["security"] == [{}]
    assert "security" not in spec["paths"]["/v1/workflows"]["get"] and spec["security"] == [{"bearer": []}]


async def test_the_document_says_what_bodies_the_api_refuses(http: httpx.AsyncClient, tokens: Tokens) -> None:
    """What a client generating bodies from the OpenAPI document is told is valid, the API takes:
    unknown members, the constraints on list items and map keys, NUL in text."""
    schemas = (await http.get("/schema/openapi.json")).json()["components"]["schemas"]
    assert schemas["DecisionBody"]["additionalProperties"] is False
    assert schemas["ContentInput"]["properties"]["keywords"]["items"]["minLength"] == 2
    inventory = schemas["OrderSettings"]["properties"]["inventory"]
    assert inventory["propertyNames"]["minLength"] == 1 and inventory["additionalProperties"]["minimum"] == 0
    assert schemas["CampaignInput"]["properties"]["goal"]["pattern"] == NO_NUL_PATTERN
    assert schemas["OnboardingInput"]["properties"]["owner_email"]["pattern"] == EMAIL_PATTERN
    assert "campaign" in schemas["BulkBody"]["properties"]["capability"]["enum"]
    assert "facebook" in schemas["CrossPostInput"]["properties"]["pages"]["propertyNames"]["enum"]
    assert schemas["CodecPayload"]["properties"]["metadata"]["propertyNames"]["pattern"] == NO_NUL_PATTERN
    spec = (await http.get("/schema/openapi.json")).json()
    report_id = spec["paths"]["/v1/reports/{report_id}"]["get"]["parameters"][0]["schema"]
    assert report_id["maximum"] == MAX_ROW_ID  # stated exactly: a larger id in the document is a larger id here
    # ...and each is what the API does.
    admin = tokens.admin()
    r = await http.put("/v1/tenants/demo/settings/order", json={"inventory": {"": 1}}, headers=admin)
    assert r.status_code == 400 and r.json()["invalid_params"][0]["name"] == "inventory", r.text
    r = await http.put("/v1/tenants/demo/settings/campaign", json={"budget_cap_usd": 10, "colour": "red"},
                       headers=admin)
    assert r.status_code == 400 and "colour" in r.text, r.text
    r = await http.post("/v1/workflows/onboarding", headers=admin, json={
        "tenant_id": unique("nul"), "name": "Shop", "owner_email": "owner@shop\u0085.example"})
    assert r.status_code == 400 and "an email address" in r.json()["detail"], r.text


async def test_options_and_405_name_every_method_the_document_has_for_the_path(
    http: httpx.AsyncClient, tokens: Tokens,
) -> None:
    """The Allow header agrees with the OpenAPI document, also on paths whose handlers are
    registered in two places (a capability's settings GET and PUT, a controller's list and create)."""
    spec = (await http.get("/schema/openapi.json")).json()
    checked = 0
    for path, item in spec["paths"].items():
        methods = {m.upper() for m in item if m != "parameters"}
        url = "/".join(("1" if seg.startswith("{") else seg) for seg in path.replace("{tenant_id}", "demo").split("/"))
        r = await http.options(url, headers=tokens.admin())
        assert r.status_code == 204, (path, r.status_code)
        assert set(r.headers["allow"].replace(" ", "").split(",")) == methods | {"OPTIONS"}, (path, r.headers["allow"])
        unused = next(m for m in ("PATCH", "DELETE", "PUT", "POST", "GET") if m not in methods)
        r = await http.request(unused, url, headers=tokens.admin())
        if r.status_code == 405:  # else a sibling path with a parameter took it (e.g. a 404 for id "1")
            assert set(r.headers["allow"].replace(" ", "").split(",")) == methods | {"OPTIONS"}, (path, unused)
        checked += 1
    assert checked > 60


@pytest.mark.parametrize("shape", ["data_not_object", "metadata_not_object", "created_overflow"])
async def test_a_signed_stripe_event_of_the_wrong_shape_is_a_400_and_starts_nothing(
    http: httpx.AsyncClient, settings: Settings, client: Client, shape: str
) -> None:
    tenant, invoice = unique("dun"), f"in_{unique('x')}"
    event = json.loads(stripe_event("invoice.payment_failed", tenant, invoice))
    if shape == "data_not_object":
        event["data"] = [event["data"]]
    elif shape == "metadata_not_object":
        event["data"]["object"]["metadata"] = f"tenant_id={tenant}"
    else:
        event["created"] = 10**20
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(payload, settings.stripe.webhook_secret.get_secret_value())
    r = await http.post("/v1/webhooks/stripe", content=payload, headers={"stripe-signature": header})
    problem(r, 400, "validation")
    assert not await workflow_exists(client, f"{tenant}:dunning:{invoice_key(invoice)}")
