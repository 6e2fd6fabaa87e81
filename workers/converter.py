"""The msgspec payload converter: msgspec Structs are the schema of every Temporal payload.

``json/plain`` payloads are encoded and decoded (and validated against the type hint) by
msgspec. A payload that fails validation, decoded or being encoded, raises
``msgspec.ValidationError``, which workers list in ``workflow_failure_exception_types`` so bad
input fails the workflow at once.
"""

from __future__ import annotations

import dataclasses
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
    return dataclasses.replace(
        DataConverter.default, payload_converter_class=MsgspecPayloadConverter
    )
