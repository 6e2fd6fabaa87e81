"""The remote codec endpoint: ``POST /codec/encode`` and ``POST /codec/decode``.

The Temporal remote codec protocol, as the Temporal UI and the ``temporal`` CLI speak it
(``--codec-endpoint http://api/codec --codec-auth 'Bearer <token>'``): a body
``{"payloads": [{"metadata": {"encoding": "<base64>", ...}, "data": "<base64>"}]}`` answered with
the same shape, encrypted or decrypted by the platform's payload codec; the ``X-Namespace``
header is accepted and not needed (one set of keys serves the platform's namespaces).

Decoding turns any tenant's history into clear text, so it is for platform staff who may read
every tenant: super_admin, admin and support. Encoding (the UI uses it to send a signal or start a
workflow) is for the roles that act on any workflow: super_admin and admin. Partners and clients
get neither: they read their own workflows through the API, scoped to their tenants; finance
reads through the API as well.

Browsers: the Temporal UI's origins (``BIZ_CODEC_CORS_ORIGINS``) get CORS headers on these paths,
including on errors, and preflights are answered without a token.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

import msgspec
from litestar import Request, Router, post
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import ValidationException
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK
from litestar.types import Message, Scope
from temporalio.api.common.v1 import Payload

from core.codec import AesGcmCodec, CodecError

PATH = "/codec"
DECODE_ROLES = frozenset({"super_admin", "admin", "support"})
ENCODE_ROLES = frozenset({"super_admin", "admin"})
MAX_PAYLOADS = 10_000
CORS_ALLOW_HEADERS = "authorization, content-type, x-namespace"
CORS_MAX_AGE_SECONDS = 600


# Standard base64, the padding optional (as the temporal CLI and UI send it).
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==)?|[A-Za-z0-9+/]{3}=?)?$"
Base64 = Annotated[str, msgspec.Meta(pattern=BASE64_PATTERN)]


class CodecPayload(msgspec.Struct, kw_only=True):
    # Metadata values and data are base64, as in Temporal's JSON form of a payload.
    metadata: dict[str, Base64] = {}
    data: Base64 = ""


class CodecPayloads(msgspec.Struct, kw_only=True):
    # The temporal CLI sends `{}` when there is nothing to encode (a query without input).
    payloads: Annotated[list[CodecPayload], msgspec.Meta(max_length=MAX_PAYLOADS)] = []


def _b64decode(value: str, what: str) -> bytes:
    s = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationException(f"{what} is not base64") from None


def _to_proto(body: CodecPayloads) -> list[Payload]:
    return [
        Payload(
            metadata={k: _b64decode(v, f"payloads[{i}].metadata.{k}") for k, v in p.metadata.items()},
            data=_b64decode(p.data, f"payloads[{i}].data"),
        )
        for i, p in enumerate(body.payloads)
    ]


def _from_proto(payloads: list[Payload]) -> CodecPayloads:
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return CodecPayloads(payloads=[
        CodecPayload(metadata={k: b64(v) for k, v in p.metadata.items()}, data=b64(p.data)) for p in payloads
    ])


def _codec(request: Request) -> AesGcmCodec | None:
    return request.app.state.codec


@post("/encode", operation_id="codec_encode", status_code=HTTP_200_OK, opt={"roles": ENCODE_ROLES},
      summary="Encrypt payloads (Temporal remote codec)")
async def encode(request: Request, data: JSONBody[CodecPayloads]) -> CodecPayloads:
    codec = _codec(request)
    payloads = _to_proto(data)
    return _from_proto(await codec.encode(payloads) if codec is not None else payloads)


@post("/decode", operation_id="codec_decode", status_code=HTTP_200_OK, opt={"roles": DECODE_ROLES},
      summary="Decrypt payloads (Temporal remote codec)")
async def decode(request: Request, data: JSONBody[CodecPayloads]) -> CodecPayloads:
    codec = _codec(request)
    payloads = _to_proto(data)
    if codec is None:
        return _from_proto(payloads)
    out = []
    for i, p in enumerate(payloads):
        try:
            out.append(codec.decrypt(p))
        except CodecError as err:
            raise ValidationException(f"payloads[{i}]: {err}") from None
    return _from_proto(out)


def codec_router() -> Router:
    return Router(path=PATH, route_handlers=[encode, decode], tags=["codec"])


def codec_cors(origins: list[str] | tuple[str, ...]):  # noqa: ANN201 - a Litestar before_send hook
    """CORS on the codec paths for the allowed origins, on every answer (errors included: the hook
    runs after the exception handlers) and on preflights, which need no token."""
    allowed = frozenset(origins)

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or not str(scope.get("path", "")).startswith(PATH + "/"):
            return
        origin = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"origin"), None)
        headers = MutableScopeHeaders.from_message(message)
        headers.add("Vary", "Origin")
        if origin is None or origin not in allowed:
            return
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
        if scope.get("method") == "OPTIONS":
            headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
            headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_SECONDS)

    return before_send
