"""JSON for the frozen specs that travel to an agent: ``InstanceSpec`` and ``BackendSpec`` (architecture.md §3).

The gRPC messages carry these as JSON text rather than as a second schema in the ``.proto``: the specs follow
the manifest's own versioned schema, and one generic codec driven by the dataclasses' type hints cannot drift
from them. Decoding is strict: a field of the wrong type or an unknown field raises ``CodecError`` naming the
path, which the agent answers as a bad request (it changes nothing).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar

from fleetd.core.desired import BackendSpec, InstanceSpec

T = TypeVar("T")
_PRIMITIVES = (bool, int, float, str)


class CodecError(ValueError):
    """A message's JSON does not describe the expected value; the text names the field."""


def encode(value: object) -> str:
    """A spec as compact JSON (dataclasses as objects, enums as their values, tuples as arrays)."""
    return json.dumps(_plain(value), separators=(",", ":"), sort_keys=True)


def decode_instance(text: str) -> InstanceSpec:
    return _decode_text(text, InstanceSpec)


def decode_backend(text: str) -> BackendSpec:
    return _decode_text(text, BackendSpec)


def _decode_text(text: str, cls: type[T]) -> T:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CodecError(f"{cls.__name__}: not JSON ({exc})") from exc
    value: T = _decode(data, cls, cls.__name__)
    return value


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


@cache
def _hints(cls: type) -> Mapping[str, Any]:
    return typing.get_type_hints(cls)


def _decode(data: object, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _decode_union(data, typing.get_args(hint), path)
    if origin is tuple:
        return _decode_tuple(data, typing.get_args(hint), path)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_dataclass(data, hint, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(data)
        except ValueError as exc:
            raise CodecError(f"{path}: {data!r} is not a {hint.__name__}") from exc
    if hint in _PRIMITIVES:
        return _primitive(data, hint, path)
    if hint is type(None) and data is None:
        return None
    raise CodecError(f"{path}: cannot decode {type(data).__name__} as {hint}")


def _primitive(data: object, hint: type, path: str) -> object:
    if hint is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if type(data) is not hint:
        raise CodecError(f"{path}: expected {hint.__name__}, got {type(data).__name__}")
    return data


def _decode_union(data: object, options: tuple[Any, ...], path: str) -> object:
    if data is None:
        if type(None) in options:
            return None
        raise CodecError(f"{path}: must not be null")
    if all(option in _PRIMITIVES or option is type(None) for option in options):
        if type(data) in options:
            return data
        raise CodecError(f"{path}: {type(data).__name__} is not allowed here")
    for option in options:
        if option is type(None):
            continue
        try:
            return _decode(data, option, path)
        except CodecError:
            continue
    raise CodecError(f"{path}: matches none of {options}")


def _decode_tuple(data: object, args: tuple[Any, ...], path: str) -> tuple[object, ...]:
    if not isinstance(data, list):
        raise CodecError(f"{path}: expected an array, got {type(data).__name__}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_decode(item, args[0], f"{path}[{i}]") for i, item in enumerate(data))
    if len(args) != len(data):
        raise CodecError(f"{path}: expected {len(args)} items, got {len(data)}")
    return tuple(_decode(item, arg, f"{path}[{i}]") for i, (item, arg) in enumerate(zip(data, args, strict=True)))


def _decode_dataclass(data: object, cls: type, path: str) -> object:
    if not isinstance(data, dict):
        raise CodecError(f"{path}: expected an object, got {type(data).__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CodecError(f"{path}: unknown field {unknown[0]!r}")
    values = {name: _decode(item, hints[name], f"{path}.{name}") for name, item in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise CodecError(f"{path}: {exc}") from exc
