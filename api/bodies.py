"""Reading JSON request bodies: one decoder for every route, typed and raw (webhooks).

A body that cannot be read answers 400 ``malformed_body`` naming why, before anything
happens: not UTF-8, not JSON, nested deeper than ``MAX_JSON_DEPTH`` (deep values break the
validators, payload converters and Postgres further in), or a string holding NUL (U+0000),
which Postgres text cannot store. Bodies over ``MAX_BODY_BYTES`` answer 413 while being read.
"""

from __future__ import annotations

import re
from array import array
from itertools import accumulate
from typing import Any

import msgspec
from litestar import Request

from api.errors import MalformedBody

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# A \u0000 escape: the backslash before "u" is not itself escaped.
_NUL_ESCAPE = re.compile(rb'(?<!\\)(?:\\\\)*\\u0000')
# Brackets as +1 / -1 signed bytes; every other byte dropped.
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(body: bytes) -> int:
    """How deeply a valid JSON document nests arrays and objects (0 for a scalar)."""
    steps = _STRING.sub(b"", body).translate(_BRACKETS, _NOT_BRACKETS)
    return max(accumulate(array("b", steps)), default=0)


def decode_json_body(body: bytes) -> Any:
    """The body as JSON values (dict, list, str, ...), or MalformedBody saying what is wrong."""
    try:
        value = msgspec.json.decode(body)
    except UnicodeDecodeError:
        raise MalformedBody("the body is not valid UTF-8") from None
    except RecursionError:
        raise MalformedBody(f"the body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels") from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"the body is not JSON: {exc}") from None
    if json_depth(body) > MAX_JSON_DEPTH:
        raise MalformedBody(f"the body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels")
    if _NUL_ESCAPE.search(body):
        raise MalformedBody("the body has a NUL character (\\u0000) in a string; text cannot hold it")
    return value


class ApiRequest(Request[Any, Any, Any]):
    """The app's request: typed bodies (``JSONBody[...]``) are read with :func:`decode_json_body`."""

    async def json(self) -> Any:
        return decode_json_body(await self.body() or b"null")
