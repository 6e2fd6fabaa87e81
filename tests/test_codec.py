"""Personal data in Temporal history is ciphertext: the AES-GCM payload codec on every client, the
API's remote codec endpoint (authenticated, CORS for the Temporal UI), key rotation, tampering.

Histories are read back by a plain client without the codec and by the `temporal` CLI, as an
operator (or an attacker with read access to the Temporal store) would see them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_202_ACCEPTED,
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
)
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowExecutionStatus

from api.app import create_app
from api.auth import AUDIENCE, DEV_ISSUER, mint_dev_token
from tests.conftest import CODEC_TEST_KEYS, Tokens, assert_eventually, serve, unique
from core.client import connect
from core.codec import ENCODING, KEY_ID, AesGcmCodec, CodecError, new_key, parse_keys, payload_codec
from workers.dev import CODEC_KEYS_FILE, DEV_SECRET_FILE, dev_credentials
from workers.devcluster import temporal_cli
from core.settings import ConfigError, Settings

UI_ORIGIN = "http://127.0.0.1:8233"
TEST_KID = CODEC_TEST_KEYS.split(":", 1)[0]


# --- helpers -----------------------------------------------------------------------------

async def _plain_client(settings: Settings) -> Client:
    """What sees Temporal's store without the platform's keys: the SDK's default converter."""
    return await Client.connect(settings.temporal.address, namespace=settings.temporal.namespace)


async def _history_bytes(client: Client, workflow_id: str) -> tuple[History, bytes]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    proto = History(events=history.events)
    return proto, proto.SerializeToString()


def _payload_bytes(history: History) -> bytes:
    """The history without what the codec leaves in clear on purpose: search attributes (the
    server indexes them) and headers (the tracing context)."""
    copy = History()
    copy.CopyFrom(history)
    for event in copy.events:
        for _, attrs in event.ListFields():
            if not hasattr(attrs, "ListFields"):
                continue
            for field, _ in attrs.ListFields():
                if field.name in ("search_attributes", "header"):
                    attrs.ClearField(field.name)
    return copy.SerializeToString()


def _wire(payloads: list[Payload]) -> dict[str, Any]:
    """Payloads in the remote codec protocol's JSON."""
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return {"payloads": [{"metadata": {k: b64(v) for k, v in p.metadata.items()}, "data": b64(p.data)} for p in payloads]}


def _from_wire(body: dict[str, Any]) -> list[Payload]:
    return [
        Payload(metadata={k: base64.b64decode(v) for k, v in p["metadata"].items()}, data=base64.b64decode(p.get("data", "")))
        for p in body["payloads"]
    ]


def _with_codec_keys(settings: Settings, keys: str) -> Settings:
    return settings.model_copy(update={"codec": settings.codec.model_copy(update={"keys": keys and _secret(keys)})})


def _secret(value: str):  # noqa: ANN202
    from pydantic import SecretStr

    return SecretStr(value)


def _onboarding(tenant: str) -> dict[str, str]:
    return {"tenant_id": tenant, "name": f"{tenant} Bakery", "owner_email": f"owner@{tenant}.example"}


async def _onboard(http: httpx.AsyncClient, tokens: Tokens, tenant: str, **headers: str) -> str:
    r = await http.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers={**tokens.admin(), **headers})
    assert r.status_code == HTTP_202_ACCEPTED, r.text
    wf_id = r.json()["workflow_id"]

    async def completed() -> None:
        r = await http.get(f"/v1/workflows/{wf_id}", headers=tokens.admin())
        assert r.json()["status"] == "COMPLETED", r.text

    await assert_eventually(completed, timeout=30, interval=0.2)
    return wf_id


async def _temporal_show(settings: Settings, workflow_id: str, *codec: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        temporal_cli(), "workflow", "show", "-w", workflow_id, "--address", settings.temporal.address,
        "--namespace", settings.temporal.namespace, "-o", "json", *codec,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


# --- the history of a real onboarding ------------------------------------------------------

async def test_onboarding_history_is_ciphertext_without_the_codec_and_clear_through_the_endpoint(
    http: httpx.AsyncClient, api_url: str, tokens: Tokens, settings: Settings, client: Client
) -> None:
    tenant = unique("cx")
    email = f"owner@{tenant}.example"
    key = uuid.uuid4().hex
    wf_id = await _onboard(http, tokens, tenant, **{"Idempotency-Key": key})

    # Read without the keys: every payload (input, activity inputs and results, the result) is
    # ciphertext under the test key; the owner's email and the business name appear nowhere.
    plain = await _plain_client(settings)
    history, raw = await _history_bytes(plain, wf_id)
    assert email.encode() not in raw and b"Bakery" not in raw
    assert b"json/plain" not in _payload_bytes(history)  # no payload left in clear
    started = history.events[0].workflow_execution_started_event_attributes
    [encrypted_input] = started.input.payloads
    assert encrypted_input.metadata["encoding"] == ENCODING
    assert encrypted_input.metadata[KEY_ID] == TEST_KID.encode()
    completed = history.events[-1].workflow_execution_completed_event_attributes
    assert completed.result.payloads[0].metadata["encoding"] == ENCODING

    # The memo is a payload too: encrypted, yet the API still reads it (the Idempotency-Key of a
    # retried start is found in it, so the retry answers 202 with the same workflow, not 409).
    desc = await plain.get_workflow_handle(wf_id).describe()
    assert desc.raw_description.workflow_execution_info.memo.fields["idempotency_key"].metadata["encoding"] == ENCODING
    assert key.encode() not in desc.raw_description.SerializeToString()
    r = await http.post("/v1/workflows/onboarding", json=_onboarding(tenant), headers={**tokens.admin(), "Idempotency-Key": key})
    assert (r.status_code, r.json()["workflow_id"]) == (HTTP_202_ACCEPTED, wf_id), r.text
    # Search attributes stay in clear for the server to index, and hold no personal data.
    attrs = {k.name: v for k, v in desc.typed_search_attributes}
    assert attrs["BizTenantId"] == tenant and attrs["BizCapability"] == "onboarding"
    assert email not in json.dumps(attrs, default=str)

    # The `temporal` CLI: ciphertext without the codec, the input in clear through the endpoint.
    shown = await _temporal_show(settings, wf_id)
    sealed = base64.b64encode(ENCODING).decode()  # metadata values are base64 in its JSON
    assert email not in shown
    assert sealed in shown
    admin = tokens.admin()["authorization"]
    decoded = await _temporal_show(settings, wf_id, "--codec-endpoint", f"{api_url}/codec", "--codec-auth", admin)
    assert sealed not in decoded
    [shown_input] = json.loads(decoded)["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"]
    assert base64.b64decode(shown_input["metadata"]["encoding"]) == b"json/plain"
    assert json.loads(base64.b64decode(shown_input["data"]))["owner_email"] == email

    # The endpoint itself, as the Temporal UI calls it.
    r = await http.post("/codec/decode", json=_wire([encrypted_input]),
                        headers={**tokens.admin(), "X-Namespace": settings.temporal.namespace})
    assert r.status_code == HTTP_200_OK, r.text
    [clear] = _from_wire(r.json())
    assert clear.metadata["encoding"] == b"json/plain"
    onboarding_input = json.loads(clear.data)
    assert (onboarding_input["owner_email"], onboarding_input["tenant_id"]) == (email, tenant)
    # The platform's client decodes the same history on its own.
    assert (await client.data_converter.decode([encrypted_input]))[0]["owner_email"] == email


# --- the endpoint: who may use it, from where ------------------------------------------------

async def test_codec_endpoint_roles_tokens_and_bad_bodies(
    http: httpx.AsyncClient, tokens: Tokens, settings: Settings, client: Client
) -> None:
    encrypted = await client.data_converter.encode([{"owner_email": "someone@x.example"}])
    body = _wire(encrypted)
    bearer = lambda **kw: {"authorization": "Bearer " + mint_dev_token(settings, **kw)}  # noqa: E731
    now = int(time.time())
    forged = jwt.encode({"iss": DEV_ISSUER, "aud": AUDIENCE, "sub": "m", "roles": ["admin"], "iat": now, "exp": now + 60},
                        "another-secret-of-at-least-32-bytes!", algorithm="HS256")
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": f"Bearer {forged}"},
                    {"authorization": f"Basic {forged}"}):
        for path in ("/codec/decode", "/codec/encode"):
            r = await http.post(path, json=body, headers=headers)
            assert r.status_code == HTTP_401_UNAUTHORIZED, (path, headers, r.text)
            assert "someone@x.example" not in r.text

    may_decode = {"admin": True, "super_admin": True, "support": True, "finance": False, "partner": False, "client": False}
    for role, allowed in may_decode.items():
        who = bearer(sub=f"{role}@x", roles=[role], tenant_id="acme" if role == "client" else None,
                     tenants=["acme"] if role == "partner" else ())
        r = await http.post("/codec/decode", json=body, headers=who)
        if not allowed:
            assert r.status_code == HTTP_403_FORBIDDEN, (role, r.text)
            assert "someone@x.example" not in r.text
            continue
        assert r.status_code == HTTP_200_OK, (role, r.text)
        assert json.loads(_from_wire(r.json())[0].data) == {"owner_email": "someone@x.example"}

    # Nothing to code: the temporal CLI sends `{}` for a query without input.
    for path in ("/codec/decode", "/codec/encode"):
        r = await http.post(path, json={}, headers=tokens.admin())
        assert r.status_code == HTTP_200_OK and r.json() == {"payloads": []}, (path, r.text)

    # Encoding (the UI sends signals with it): admins only; what it encodes, the platform decodes.
    clear = client.data_converter.payload_converter.to_payloads([{"note": "from the UI"}])
    assert (await http.post("/codec/encode", json=_wire(clear), headers=bearer(sub="s", roles=["support"]))).status_code \
        == HTTP_403_FORBIDDEN
    r = await http.post("/codec/encode", json=_wire(clear), headers=tokens.admin())
    assert r.status_code == HTTP_200_OK, r.text
    [sealed] = _from_wire(r.json())
    assert sealed.metadata["encoding"] == ENCODING and b"from the UI" not in sealed.data
    assert await client.data_converter.decode([sealed]) == [{"note": "from the UI"}]

    # Bad bodies are 400s naming the problem, never a 500, never the payload.
    tampered = Payload()
    tampered.CopyFrom(encrypted[0])
    tampered.data = tampered.data[:-1] + bytes([tampered.data[-1] ^ 1])
    unknown_kid = Payload()
    unknown_kid.CopyFrom(encrypted[0])
    unknown_kid.metadata[KEY_ID] = b"retired-0"
    bad = {
        "not json": (b"{nope", "Content-Type"),
        "data not base64": (json.dumps({"payloads": [{"metadata": {}, "data": "!!!"}]}).encode(), "not base64"),
        "tampered": (json.dumps(_wire([tampered])).encode(), "failed authentication"),
        "unknown key": (json.dumps(_wire([unknown_kid])).encode(), "retired-0"),
    }
    for case, (raw, _) in bad.items():
        r = await http.post("/codec/decode", content=raw, headers={**tokens.admin(), "content-type": "application/json"})
        assert r.status_code == HTTP_400_BAD_REQUEST, (case, r.status_code, r.text)
        assert "someone@x.example" not in r.text
    r = await http.post("/codec/decode", json=_wire([tampered]), headers=tokens.admin())
    assert "failed authentication" in r.json()["detail"], r.text


async def test_codec_endpoint_answers_the_temporal_ui_origin_with_cors(http: httpx.AsyncClient, tokens: Tokens) -> None:
    preflight = {"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type,x-namespace"}
    for path in ("/codec/decode", "/codec/encode"):
        # The browser's preflight carries no token: answered without one.
        r = await http.options(path, headers=preflight)
        assert r.status_code < 300, r.text
        assert r.headers["access-control-allow-origin"] == UI_ORIGIN
        assert r.headers["access-control-allow-credentials"] == "true"
        assert "POST" in r.headers["access-control-allow-methods"]
        allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-namespace"} <= allowed
        # Another origin gets no CORS grant.
        r = await http.options(path, headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers

    body = {"payloads": []}
    r = await http.post("/codec/decode", json=body, headers={**tokens.admin(), "Origin": "http://localhost:8233"})
    assert r.status_code == HTTP_200_OK and r.json() == {"payloads": []}
    assert r.headers["access-control-allow-origin"] == "http://localhost:8233"
    # Errors carry the grant too, so the UI shows a 401 rather than a CORS failure.
    r = await http.post("/codec/decode", json=body, headers={"Origin": UI_ORIGIN})
    assert r.status_code == HTTP_401_UNAUTHORIZED
    assert r.headers["access-control-allow-origin"] == UI_ORIGIN
    r = await http.post("/codec/decode", json=body, headers={**tokens.admin(), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    # Only the codec paths: the rest of the API grants no origin.
    r = await http.get("/v1/outbox", headers={**tokens.admin(), "Origin": UI_ORIGIN})
    assert r.status_code == HTTP_200_OK and "access-control-allow-origin" not in r.headers


# --- rotation and tampering ------------------------------------------------------------------

async def test_history_written_with_the_old_key_decodes_after_a_new_key_is_added_first(
    http: httpx.AsyncClient, tokens: Tokens, settings: Settings
) -> None:
    tenant = unique("rot")
    wf_id = await _onboard(http, tokens, tenant)  # written by the platform under the test key
    new = new_key("k-2")
    rotated = _with_codec_keys(settings, f"{new},{CODEC_TEST_KEYS}")
    after = await connect(rotated)
    handle = after.get_workflow_handle(wf_id)
    result = await handle.result()
    assert result["tenant_id"] == tenant  # the result, sealed under the old key
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    assert (await after.data_converter.decode(list(started.input.payloads)))[0]["owner_email"] == f"owner@{tenant}.example"

    # What is written from now on is sealed with the new key.
    queue = f"tq-{uuid.uuid4().hex}"  # nobody polls it: the start is enough
    fresh = await after.start_workflow("OnboardingWorkflow", _onboarding(unique("rot2")), id=f"rot:{uuid.uuid4().hex}",
                                       task_queue=queue)
    try:
        raw = (await (await _plain_client(settings)).get_workflow_handle(fresh.id).fetch_history()).events[0]
        assert raw.workflow_execution_started_event_attributes.input.payloads[0].metadata[KEY_ID] == b"k-2"
    finally:
        await fresh.terminate("rotation test done")

    # The API's codec endpoint under the rotated keys decodes the old history as well.
    async with serve(create_app(rotated)) as url, httpx.AsyncClient(base_url=url, timeout=10) as api:
        r = await api.post("/codec/decode", json=_wire(list(started.input.payloads)), headers=tokens.admin())
        assert r.status_code == HTTP_200_OK, r.text
        assert json.loads(_from_wire(r.json())[0].data)["owner_email"] == f"owner@{tenant}.example"

    # Dropping the old key too early fails loudly, naming the key the history needs.
    too_early = await connect(_with_codec_keys(settings, new))
    with pytest.raises(CodecError, match=TEST_KID):
        await too_early.data_converter.decode(list(started.input.payloads))


async def test_failure_messages_are_sealed_too(client: Client) -> None:
    """An error text quoting a customer (a tool's or Stripe's message) is encrypted in history."""
    from temporalio.api.failure.v1 import Failure
    from temporalio.exceptions import ApplicationError

    failure = Failure()
    await client.data_converter.encode_failure(
        ApplicationError("send_email: mailbox owner@x.example is full", type="ToolError"), failure)
    assert b"owner@x.example" not in failure.SerializeToString()
    assert failure.encoded_attributes.metadata["encoding"] == ENCODING
    restored = await client.data_converter.decode_failure(failure)
    assert isinstance(restored, ApplicationError)
    assert (restored.message, restored.type) == ("send_email: mailbox owner@x.example is full", "ToolError")


async def test_tampered_ciphertext_fails_loudly() -> None:
    codec = AesGcmCodec(parse_keys(f"{new_key('a')},{new_key('b')}"))
    clear = Payload(metadata={"encoding": b"json/plain"}, data=b'{"owner_email":"o@x.example"}')
    [sealed] = await codec.encode([clear])
    assert await codec.decode([sealed]) == [clear]
    assert b"o@x.example" not in sealed.SerializeToString()

    def altered(**change: Any) -> Payload:
        p = Payload()
        p.CopyFrom(sealed)
        for k, v in change.items():
            if k == "data":
                p.data = v
            else:
                p.metadata[k] = v
        return p

    data = sealed.data
    for case, payload, message in (
        ("a flipped bit", altered(data=data[:20] + bytes([data[20] ^ 0x01]) + data[21:]), "failed authentication"),
        ("another known key id", altered(**{KEY_ID: b"b"}), "failed authentication"),
        ("truncated", altered(data=data[:10]), "truncated"),
        ("an unknown key id", altered(**{KEY_ID: b"zz"}), "'zz'"),
    ):
        with pytest.raises(CodecError, match=message):
            await codec.decode([payload])
    # A payload written before encryption was enabled still reads.
    assert await codec.decode([clear]) == [clear]


# --- keys from settings and from the dev state dir -----------------------------------------------

def test_codec_keys_from_settings_and_their_errors() -> None:
    a, b = new_key("a"), new_key("b.2")
    assert [k.kid for k in parse_keys(f" {a} , {b} ")] == ["a", "b.2"]
    assert [k.kid for k in parse_keys(json.dumps([b, a]))] == ["b.2", "a"]
    secret = a.split(":", 1)[1]
    for raw, message in (
        (f"a:{base64.b64encode(b'short').decode()}", "32 bytes"),
        ("a:not*base64", "not base64"),
        (secret, "kid:base64key"),
        (f"{a},{a}", "twice"),
        ('{"a": 1}', "JSON"),
        ("[1]", "JSON"),
        (",", "no key"),
    ):
        with pytest.raises(ConfigError, match=message) as info:
            parse_keys(raw)
        assert secret not in str(info.value)

    def env(environment: str, keys: str | None) -> Settings:
        return Settings(_env_file=None, environment=environment, codec={"keys": keys})

    with pytest.raises(ConfigError, match="BIZ_CODEC_KEYS is not set"):
        payload_codec(env("production", None))
    with pytest.raises(ConfigError, match="BIZ_ENVIRONMENT is not set"):
        payload_codec(Settings(_env_file=None, codec={"keys": a}))
    assert payload_codec(env("dev", None)) is None  # dev without keys: clear payloads
    codec = payload_codec(env("production", f"{b},{a}"))
    assert codec is not None and (codec.encrypting_key_id, codec.key_ids) == ("b.2", ["b.2", "a"])
    assert secret not in repr(env("production", a))


def test_bizosaas_dev_keeps_one_dev_secret_and_codec_key_in_its_state_dir(tmp_path: Path) -> None:
    base = Settings(_env_file=None, environment="dev", dev={"state_dir": tmp_path / "state"})
    assert dev_credentials(base, create=False).codec.keys is None  # nothing made by reading
    first = dev_credentials(base, create=True)
    again = dev_credentials(base, create=True)
    for name in (DEV_SECRET_FILE, CODEC_KEYS_FILE):
        assert (tmp_path / "state" / name).stat().st_mode & 0o777 == 0o600
    assert first.codec.keys.get_secret_value() == again.codec.keys.get_secret_value()
    assert first.auth.dev_secret.get_secret_value() == again.auth.dev_secret.get_secret_value()
    assert len(first.auth.dev_secret.get_secret_value()) >= 32
    assert payload_codec(first).encrypting_key_id.startswith("dev-")
    # What the environment names wins over the state dir.
    mine = new_key("mine")
    explicit = Settings(_env_file=None, environment="dev", dev={"state_dir": tmp_path / "state"}, codec={"keys": mine})
    assert dev_credentials(explicit, create=True).codec.keys.get_secret_value() == mine
