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
import msgspec.inspect
from litestar import Request
from litestar.exceptions import ValidationException
from litestar._openapi.schema_generation import SchemaCreator
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.spec import OpenAPIType, Reference, Schema
from litestar.typing import FieldDefinition

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


def decode_json_body(body: bytes, *, nul_checked_later: bool = False) -> Any:
    """The body as JSON values (dict, list, str, ...), or MalformedBody saying what is wrong.
    ``nul_checked_later``: a NUL is refused by the caller, in what its type keeps of the body."""
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
    if not nul_checked_later and _NUL_ESCAPE.search(body):
        raise _holds_nul_error()
    return value


def _holds_nul_error() -> MalformedBody:
    return MalformedBody("the body has a NUL character (\\u0000) in a string; text cannot hold it")


_AT = re.compile(r"`\$\.?([^`]*)`$")  # where msgspec says the error is: `$.inventory`, `key` in `$.inventory`


class ApiRequest(Request[Any, Any, Any]):
    """The app's request: typed bodies (``JSONBody[...]``) are read with :func:`decode_json_body`,
    then checked against their type strictly, as the OpenAPI document states them: a number is
    not taken from a string, nor a boolean from a number (Litestar's own conversion is lenient,
    so ``"100"`` would pass as 100). A NUL character is refused in what the type keeps; members
    the type does not have are left aside, as they always were."""

    async def json(self) -> Any:
        body = await self.body() or b"null"
        data_type = _body_type(self.route_handler)
        value = decode_json_body(body, nul_checked_later=data_type is not None)
        if data_type is None:
            return value
        try:
            try:
                typed = msgspec.convert(value, data_type, strict=True)
            except msgspec.ValidationError:
                # 3.0 is an integer to JSON Schema (and so to the document): JSON numbers with no
                # fraction are read as integers, and a float field takes them as well.
                value = _whole_numbers_as_int(value)
                typed = msgspec.convert(value, data_type, strict=True)
        except msgspec.ValidationError as exc:
            message, _, _ = str(exc).partition(" - at ")
            at = _AT.search(str(exc))
            key = at.group(1) if at and at.group(1) else "data"  # "data": the body as a whole
            raise ValidationException(detail=f"body {key}: {message}",
                                      extra=[{"key": key, "message": message, "source": "body"}]) from None
        if _NUL_ESCAPE.search(body) and _holds_nul(msgspec.to_builtins(typed)):
            raise _holds_nul_error()
        return value


def _body_type(handler: Any) -> type | None:
    """The type of the handler's ``data`` (its typed JSON body), or None (no body, or ``Any``)."""
    field = handler.parsed_fn_signature.parameters.get("data")
    kind = field.annotation if field is not None else None
    return kind if isinstance(kind, type) and issubclass(kind, msgspec.Struct) else None


def _whole_numbers_as_int(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _whole_numbers_as_int(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_int(v) for v in value]
    return value


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(v) for v in value)
    return False


# Text the API refuses anywhere in a body (see decode_json_body); said in the document on every
# string that has no pattern of its own.
NO_NUL_PATTERN = r"^[^\x00]*$"


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """The OpenAPI schema of a body type says all that the API checks, so a client generating
    requests from the document (or a fuzzer) sends nothing it is told is valid and gets a 400:

    - a type that refuses unknown members (``forbid_unknown_fields=True``) says
      ``additionalProperties: false``;
    - the constraints msgspec checks inside lists and maps (each item's length and pattern, each
      key's pattern, numbers' bounds), which Litestar leaves out of nested types;
    - a string without a pattern of its own says it holds no NUL character."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType):
            if info.forbid_unknown_fields:
                schema.additional_properties = False
            for field in info.fields:
                _tighten((schema.properties or {}).get(field.encode_name), field.type)
        return schema


def _tighten(schema: Schema | Reference | None, t: msgspec.inspect.Type) -> None:
    """Add to ``schema`` what the msgspec type ``t`` checks and the schema does not say yet."""
    while isinstance(t, msgspec.inspect.Metadata):
        t = t.type
    if not isinstance(schema, Schema):
        return
    if isinstance(t, msgspec.inspect.UnionType):
        kinds = [k for k in t.types if not isinstance(k, msgspec.inspect.NoneType)]
        for sub in schema.one_of or schema.any_of or []:
            for k in kinds:
                if _json_type(k) is not None and isinstance(sub, Schema) and sub.type == _json_type(k):
                    _tighten(sub, k)
        if not (schema.one_of or schema.any_of) and len(kinds) == 1:
            _tighten(schema, kinds[0])
        return
    if isinstance(t, msgspec.inspect.StrType) and schema.type == OpenAPIType.STRING and not schema.enum \
            and schema.const is None:
        schema.min_length = schema.min_length if schema.min_length is not None else t.min_length
        schema.max_length = schema.max_length if schema.max_length is not None else t.max_length
        schema.pattern = schema.pattern or t.pattern or (NO_NUL_PATTERN if not schema.format else None)
    elif isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType) and \
            schema.type in (OpenAPIType.INTEGER, OpenAPIType.NUMBER):
        schema.minimum = schema.minimum if schema.minimum is not None else t.ge
        schema.maximum = schema.maximum if schema.maximum is not None else t.le
        schema.exclusive_minimum = schema.exclusive_minimum if schema.exclusive_minimum is not None else t.gt
        schema.exclusive_maximum = schema.exclusive_maximum if schema.exclusive_maximum is not None else t.lt
    elif isinstance(t, msgspec.inspect.ListType | msgspec.inspect.SetType | msgspec.inspect.FrozenSetType |
                    msgspec.inspect.VarTupleType) and schema.type == OpenAPIType.ARRAY:
        schema.min_items = schema.min_items if schema.min_items is not None else t.min_length
        schema.max_items = schema.max_items if schema.max_items is not None else t.max_length
        if isinstance(schema.items, Schema):
            _tighten(schema.items, t.item_type)
    elif isinstance(t, msgspec.inspect.DictType) and schema.type == OpenAPIType.OBJECT:
        schema.min_properties = schema.min_properties if schema.min_properties is not None else t.min_length
        schema.max_properties = schema.max_properties if schema.max_properties is not None else t.max_length
        key = t.key_type
        while isinstance(key, msgspec.inspect.Metadata):
            key = key.type
        if schema.property_names is None and isinstance(key, msgspec.inspect.StrType):
            schema.property_names = Schema(type=OpenAPIType.STRING, pattern=key.pattern or NO_NUL_PATTERN,
                                           min_length=key.min_length, max_length=key.max_length)
        elif schema.property_names is None and isinstance(key, msgspec.inspect.LiteralType):
            schema.property_names = Schema(type=OpenAPIType.STRING, enum=sorted(key.values))
        if isinstance(schema.additional_properties, Schema):
            _tighten(schema.additional_properties, t.value_type)


def _json_type(t: msgspec.inspect.Type) -> OpenAPIType | None:
    while isinstance(t, msgspec.inspect.Metadata):
        t = t.type
    return {msgspec.inspect.StrType: OpenAPIType.STRING, msgspec.inspect.IntType: OpenAPIType.INTEGER,
            msgspec.inspect.FloatType: OpenAPIType.NUMBER, msgspec.inspect.ListType: OpenAPIType.ARRAY,
            msgspec.inspect.SetType: OpenAPIType.ARRAY, msgspec.inspect.FrozenSetType: OpenAPIType.ARRAY,
            msgspec.inspect.VarTupleType: OpenAPIType.ARRAY,
            msgspec.inspect.DictType: OpenAPIType.OBJECT}.get(type(t))
