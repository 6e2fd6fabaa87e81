"""An approval's edit schema (JSON schema of an object of proposal fields) as form fields, and
a submitted form back as ``edits``: only the fields the person changed, typed per the schema,
with every problem named by its field."""

from __future__ import annotations

from typing import Any

import msgspec
from jsonschema import Draft202012Validator

PREFIX = "edit."
MAX_DEPTH = 6


class Field(msgspec.Struct, kw_only=True):
    name: str  # the form field: edit.ads.meta_ads.headline
    path: tuple[str, ...]
    label: str
    input: str  # number | text | textarea | checkbox | select
    value: str = ""
    options: list[str] = []
    attrs: dict[str, str] = {}
    hint: str = ""
    error: str = ""

    @property
    def id(self) -> str:
        return "f-" + "-".join(self.path)


class Group(msgspec.Struct, kw_only=True):
    label: str
    path: tuple[str, ...]
    children: list[Group | Field] = []
    error: str = ""

    @property
    def kind(self) -> str:
        return "group"


def label(key: str) -> str:
    words = [("USD" if w == "usd" else w) for w in key.split("_")]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def _at(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def fields(schema: dict[str, Any] | None, proposal: dict[str, Any]) -> list[Group | Field]:
    """The schema's properties as fields, prefilled with the proposal."""
    if not isinstance(schema, dict):
        return []
    return _children(schema, proposal, (), 0)


def _children(schema: dict[str, Any], proposal: dict[str, Any], path: tuple[str, ...], depth: int) -> list[Group | Field]:
    out: list[Group | Field] = []
    props = schema.get("properties")
    if not isinstance(props, dict) or depth > MAX_DEPTH:
        return out
    for key, sub in props.items():
        if not isinstance(sub, dict):
            continue
        here = (*path, str(key))
        kind = sub.get("type")
        if kind == "object" or "properties" in sub:
            out.append(Group(label=label(str(key)), path=here, children=_children(sub, proposal, here, depth + 1)))
            continue
        current = _at(proposal, here)
        attrs: dict[str, str] = {}
        hint = []
        if kind in ("number", "integer"):
            control = "number"
            attrs["step"] = "1" if kind == "integer" else "any"
            for bound, attr, word in (("minimum", "min", "at least"), ("maximum", "max", "at most")):
                if isinstance(sub.get(bound), int | float):
                    attrs[attr] = _shown(sub[bound])
                    hint.append(f"{word} {_shown(sub[bound])}")
            if isinstance(sub.get("exclusiveMinimum"), int | float):
                hint.append(f"more than {_shown(sub['exclusiveMinimum'])}")
        elif kind == "boolean":
            control = "checkbox"
        elif isinstance(sub.get("enum"), list):
            control = "select"
        else:
            max_length = sub.get("maxLength")
            control = "textarea" if isinstance(max_length, int) and max_length > 200 else "text"
            if isinstance(max_length, int):
                attrs["maxlength"] = str(max_length)
                hint.append(f"at most {max_length} characters")
        out.append(Field(name=PREFIX + ".".join(here), path=here, label=label(str(key)), input=control,
                         value=_shown(current), options=[_shown(o) for o in sub.get("enum") or []],
                         attrs=attrs, hint=", ".join(hint)))
    return out


def leaves(items: list[Group | Field]) -> list[Field]:
    out: list[Field] = []
    for item in items:
        out.extend(leaves(item.children) if isinstance(item, Group) else [item])
    return out


def _schema_at(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        schema = (schema.get("properties") or {}).get(key) or {}
    return schema


def _set(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def parse_edits(schema: dict[str, Any], proposal: dict[str, Any], form: dict[str, str],
                ) -> tuple[dict[str, Any], list[Group | Field], dict[str, str]]:
    """(edits, the fields as submitted, errors by field name; "" for the form as a whole)."""
    items = fields(schema, proposal)
    errors: dict[str, str] = {}
    edits: dict[str, Any] = {}
    for f in leaves(items):
        sub = _schema_at(schema, f.path)
        if f.input == "checkbox":
            sent = "true" if form.get(f.name) else "false"
        else:
            sent = (form.get(f.name) or "").strip()
        f.value = sent
        if sent == _shown(_at(proposal, f.path)):
            continue  # unchanged
        if sent == "" and f.input != "checkbox":
            errors[f.name] = "is required; leave it as proposed or give a value"
            continue
        value: Any = sent
        if f.input == "number":
            try:
                number = float(sent)
            except ValueError:
                errors[f.name] = "must be a number"
                continue
            if number != number or number in (float("inf"), float("-inf")):
                errors[f.name] = "must be a number"
                continue
            if sub.get("type") == "integer":
                if not number.is_integer():
                    errors[f.name] = "must be a whole number"
                    continue
                value = int(number)
            else:
                value = int(number) if number.is_integer() and "." not in sent else number
        elif f.input == "checkbox":
            value = sent == "true"
        _set(edits, f.path, value)
    if not errors:
        for problem in Draft202012Validator(schema).iter_errors(edits):
            path = tuple(str(p) for p in problem.absolute_path)
            name = PREFIX + ".".join(path) if path else ""
            if problem.validator == "minProperties" and not path:
                errors.setdefault("", "change at least one field to approve with edits")
            else:
                errors.setdefault(name, _reason(problem))
    for f in leaves(items):
        f.error = errors.get(f.name, "")
    return edits, items, errors


def _reason(problem: Any) -> str:
    kind, limit = problem.validator, problem.validator_value
    return {
        "maximum": f"must be at most {_shown(limit)}",
        "minimum": f"must be at least {_shown(limit)}",
        "exclusiveMinimum": f"must be more than {_shown(limit)}",
        "exclusiveMaximum": f"must be less than {_shown(limit)}",
        "maxLength": f"must be at most {limit} characters",
        "minLength": f"must be at least {limit} character{'s' if limit != 1 else ''}",
        "type": f"must be a {limit}",
        "enum": "must be one of the options",
    }.get(kind, problem.message)
