"""Pydantic validation errors -> diagnostics with file, line, column, dotted path and a plain message.

Pydantic reports a ``loc`` tuple and a generic message; we find the position in the source map, rephrase
the common cases ("expected an integer, got string '8192'; remove the quotes") and suggest the field meant
when a key is unknown.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from fleetd.core.diagnostics import Diagnostic, FieldPath, Severity
from fleetd.manifest.models import Manifest
from fleetd.manifest.yaml_source import SourceMap


def schema_diagnostics(error: ValidationError, source: SourceMap) -> list[Diagnostic]:
    """One diagnostic per pydantic error, located in ``source``."""
    return [_diagnostic(e, source) for e in error.errors(include_url=False)]


def _diagnostic(err: Any, source: SourceMap) -> Diagnostic:
    loc: FieldPath = tuple(part for part in err["loc"] if isinstance(part, int) or not _is_tag(part))
    kind: str = err["type"]
    at_key = False
    if loc and loc[-1] == "[key]":
        loc, at_key = loc[:-1], True
    if kind == "extra_forbidden":
        at_key = True
        message = _unknown_field(loc)
    elif kind == "missing":
        message = f"missing required field {loc[-1]!r}" if loc else "missing required field"
    else:
        message = _rephrase(kind, err, source, loc)
    return Diagnostic(Severity.ERROR, message, loc, source.locate(loc, at_key=at_key))


def _is_tag(part: str) -> bool:
    """Union member tags pydantic inserts into ``loc`` (``function-after[...]``, ``int``, ``literal['auto']``)."""
    return part.startswith(("function-", "literal[", "list[", "dict[", "nullable[")) or part in {
        "int",
        "str",
        "bool",
        "float",
        "none",
    }


def _rephrase(kind: str, err: Any, source: SourceMap, loc: FieldPath) -> str:
    value = err.get("input")
    ctx = err.get("ctx") or {}
    expected = {
        "int_type": "an integer",
        "int_from_float": "an integer",
        "bool_type": "true or false",
        "string_type": "a string",
        "float_type": "a number",
        "dict_type": "a mapping (key: value)",
        "list_type": "a list",
        "model_type": "a mapping (key: value)",
    }.get(kind)
    if expected is not None:
        return f"expected {expected}, got {_describe(value)}{_yaml_hint(kind, value, source, loc)}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected', 'one of the allowed values')}, got {_describe(value)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {
            "greater_than_equal": ("at least", "ge"),
            "greater_than": ("more than", "gt"),
            "less_than_equal": ("at most", "le"),
            "less_than": ("less than", "lt"),
        }[kind]
        return f"must be {bound[0]} {ctx.get(bound[1])}, got {value!r}"
    message: str = err["msg"]
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _yaml_hint(kind: str, value: Any, source: SourceMap, loc: FieldPath) -> str:
    pos = source.position(loc)
    if kind == "string_type" and pos is not None and pos.plain_scalar and isinstance(value, bool | int | float):
        return (
            f"; YAML reads `{pos.scalar_text}` as a {'boolean' if isinstance(value, bool) else 'number'}, "
            f'quote it: "{pos.scalar_text}"'
        )
    if kind in ("int_type", "float_type", "bool_type") and isinstance(value, str):
        return "; remove the quotes"
    return ""


def _unknown_field(loc: FieldPath) -> str:
    name = str(loc[-1]) if loc else "?"
    allowed = _fields_at(loc[:-1])
    close = difflib.get_close_matches(name, allowed, n=2, cutoff=0.6)
    if close:
        return f"unknown field {name!r}; did you mean {' or '.join(repr(c) for c in close)}?"
    nested = [
        f"{field}.{sub}"
        for field in allowed
        for sub in _fields_at((*loc[:-1], field))
        if difflib.get_close_matches(name, [sub], n=1, cutoff=0.8)
    ]
    if nested:
        return f"unknown field {name!r} here; did you mean {' or '.join(repr(c) for c in nested)}?"
    if allowed:
        return f"unknown field {name!r}; allowed here: {', '.join(allowed)}"
    return f"unknown field {name!r}"


def _fields_at(loc: FieldPath) -> list[str]:
    """The field names of the model that ``loc`` points into, walking dicts and lists by their value types."""
    current: Any = Manifest
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return []
            current = info.annotation
        elif typing.get_origin(current) in (dict, list):
            current = typing.get_args(current)[-1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation
