"""The msgspec payload converter: msgspec Structs are the schema of every Temporal payload.

``json/plain`` payloads are encoded and decoded (and validated against the type hint) by
msgspec. A payload that fails validation, decoded or being encoded, raises
``msgspec.ValidationError``, which workers list in ``workflow_failure_exception_types`` so bad
input fails the workflow at once.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import typing
from typing import Any

import msgspec
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    BinaryNullPayloadConverter,
    BinaryPlainPayloadConverter,
    BinaryProtoPayloadConverter,
    CompositePayloadConverter,
    DataConverter,
    EncodingPayloadConverter,
    JSONProtoPayloadConverter,
)

_ENCODER = msgspec.json.Encoder()
log = logging.getLogger(__name__)


def resolve_struct_annotations() -> list[str]:
    """Evaluate the string annotations of every msgspec Struct class loaded so far, in place.

    Modules written with ``from __future__ import annotations`` keep field types as strings,
    which msgspec evaluates in the class's module each time it builds a decoder. Inside the
    workflow sandbox ``sys.modules`` is the sandbox's own: a module passed through from outside
    (the activities' payload types) may be missing from it, so a payload that decoded where the
    workflow first ran fails in a new worker replaying its history (``NameError: name 'Decimal'
    is not defined``). Resolved here, outside the sandbox, the annotations are real types and
    never need the module again. Struct classes of modules the sandbox imports itself (workflow
    modules) are new classes there and resolve against the sandbox's module, as before.

    Called by every data converter and worker build; returns the annotations that could not be
    resolved (``module.Class.field: error``), which the tests require to be none.
    """
    failures: list[str] = []
    stack: list[type] = list(msgspec.Struct.__subclasses__())
    seen: set[type] = set()
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        own = cls.__dict__.get("__annotations__")
        if not own or not any(isinstance(v, str) for v in own.values()):
            continue
        module = sys.modules.get(cls.__module__)
        globalns = dict(vars(module)) if module is not None else {}
        localns = dict(vars(cls))
        resolved = dict(own)
        for name, value in own.items():
            if not isinstance(value, str):
                continue
            try:
                resolved[name] = typing._eval_type(typing.ForwardRef(value, is_class=True), globalns, localns)  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - reported, and left for msgspec to try
                failures.append(f"{cls.__module__}.{cls.__qualname__}.{name}: {type(exc).__name__}: {exc}")
        try:
            cls.__annotations__ = resolved
        except (AttributeError, TypeError) as exc:
            failures.append(f"{cls.__module__}.{cls.__qualname__}: {exc}")
    for failure in failures:
        log.warning("struct annotation left unresolved: %s", failure)
    return failures


class MsgspecJSONPayloadConverter(EncodingPayloadConverter):
    @property
    def encoding(self) -> str:
        return "json/plain"

    def to_payload(self, value: Any) -> Payload | None:
        data = _ENCODER.encode(value)
        if isinstance(value, msgspec.Struct):
            # Constraints are checked where a payload is made, too: a workflow scheduling an
            # activity with invalid input fails at once (ValidationError is a workflow failure
            # type), where a payload the activity cannot decode would be retried forever.
            try:
                msgspec.json.decode(data, type=type(value), strict=True)
            except msgspec.ValidationError:
                raise
            except Exception:  # noqa: BLE001
                # Inside the workflow sandbox msgspec may fail to resolve a Struct's string
                # annotations (proxied stdlib types, sandboxed module globals): the check is
                # skipped there and the receiver still validates on decode.
                pass
        return Payload(metadata={"encoding": self.encoding.encode()}, data=data)

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        if type_hint is None or type_hint is Any:
            return msgspec.json.decode(payload.data)
        return msgspec.json.decode(payload.data, type=type_hint, strict=True)


class MsgspecPayloadConverter(CompositePayloadConverter):
    def __init__(self) -> None:
        super().__init__(
            BinaryNullPayloadConverter(),
            BinaryPlainPayloadConverter(),
            JSONProtoPayloadConverter(),
            BinaryProtoPayloadConverter(),
            MsgspecJSONPayloadConverter(),
        )


def data_converter() -> DataConverter:
    """The msgspec converter; resolves the Struct annotations loaded so far (see above)."""
    resolve_struct_annotations()
    return dataclasses.replace(
        DataConverter.default, payload_converter_class=MsgspecPayloadConverter
    )
