"""Strict reading of JSON documents without pydantic: parse errors and type errors that name the JSON path.

Used by the plan file (``planfile``) and the observed-state snapshot (``observed_json``). A message reads
``nodes[2].total_vram: expected an integer, got "8GiB"``. Duplicate keys in an object, ``NaN`` and
``Infinity`` are refused: JSON parsers differ on them, and a saved plan must mean one thing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

E = TypeVar("E", bound="JsonShapeError")


class JsonShapeError(ValueError):
    """A document that is not valid JSON or not of the expected shape; ``path`` says where (``""``: the top)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


def parse_json(text: str, error: type[E]) -> Any:
    """``json.loads`` that refuses duplicate keys and non-finite numbers, raising ``error`` with a position."""

    def refuse_constant(name: str) -> Any:
        raise error("", f"{name} is not a JSON number")

    try:
        return json.loads(
            text, object_pairs_hook=_object_without_duplicates(error), parse_constant=refuse_constant
        )
    except json.JSONDecodeError as exc:
        raise error("", f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None


def _object_without_duplicates(error: type[E]) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise error("", f"the key {key!r} appears twice in one object")
            result[key] = value
        return result

    return build


def describe(value: Any) -> str:
    """How a JSON value looks in a message: its kind and, when short, itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def is_int(value: Any) -> bool:
    """A JSON integer (``true`` and ``1.0`` are not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


_MISSING: Any = object()


class ObjectReader:
    """One JSON object being read field by field; ``finish`` refuses the keys nobody asked for."""

    def __init__(self, value: Any, path: str, error: type[JsonShapeError]) -> None:
        if not isinstance(value, dict):
            if path:
                raise error(path, f"expected an object, got {describe(value)}")
            raise error("", f"expected a JSON object at the top level, got {describe(value)}")
        self.data: dict[str, Any] = value
        self.path = path
        self.error = error
        self._seen: set[str] = set()

    def at(self, key: str | int) -> str:
        return join(self.path, key)

    def fail(self, key: str | int, problem: str) -> JsonShapeError:
        return self.error(self.at(key), problem)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self._seen.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise self.fail(key, "is required")
            return default
        return self.data[key]

    def string(self, key: str, default: str | None = None) -> str:
        value = self.raw(key, _MISSING if default is None else default)
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {describe(value)}")
        return value

    def optional_string(self, key: str) -> str | None:
        value = self.raw(key, None)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, f"expected a string or null, got {describe(value)}")
        return value

    def integer(self, key: str, default: int | None = None, *, minimum: int | None = None) -> int:
        value = self.raw(key, _MISSING if default is None else default)
        if not is_int(value):
            raise self.fail(key, f"expected an integer, got {describe(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"expected an integer of at least {minimum}, got {value}")
        return int(value)

    def optional_integer(self, key: str, *, minimum: int | None = None) -> int | None:
        value = self.raw(key, None)
        if value is None:
            return None
        if not is_int(value):
            raise self.fail(key, f"expected an integer or null, got {describe(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"expected an integer of at least {minimum}, got {value}")
        return int(value)

    def boolean(self, key: str, default: bool | None = None) -> bool:
        value = self.raw(key, _MISSING if default is None else default)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {describe(value)}")
        return value

    def array(self, key: str, default: list[Any] | None = None) -> list[Any]:
        value = self.raw(key, _MISSING if default is None else default)
        if not isinstance(value, list):
            raise self.fail(key, f"expected an array, got {describe(value)}")
        return value

    def strings(self, key: str, default: list[str] | None = None) -> tuple[str, ...]:
        items = self.array(key, None if default is None else list(default))
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise self.error(join(self.at(key), index), f"expected a string, got {describe(item)}")
        return tuple(items)

    def string_map(self, key: str, default: dict[str, str] | None = None) -> tuple[tuple[str, str], ...]:
        """An object of string values, as (key, value) pairs in document order."""
        value = self.raw(key, _MISSING if default is None else default)
        if not isinstance(value, dict):
            raise self.fail(key, f"expected an object of strings, got {describe(value)}")
        for name, item in value.items():
            if not isinstance(item, str):
                raise self.error(join(self.at(key), name), f"expected a string, got {describe(item)}")
        return tuple(value.items())

    def object(self, key: str, default: dict[str, Any] | None = None) -> ObjectReader:
        return ObjectReader(self.raw(key, _MISSING if default is None else default), self.at(key), self.error)

    def finish(self, *, strict: bool = True) -> None:
        """Refuse keys that were never read (a typo that passes silently is worse than an error)."""
        if not strict:
            return
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen))
            raise self.fail(unknown[0], f"unknown field; expected one of: {known}")
