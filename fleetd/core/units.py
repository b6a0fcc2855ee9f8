"""Durations and sizes as the manifest writes them ("30s", "6GiB"), parsed to integers and back.

Parsing lives in the core so that the manifest, the planner and the CLI agree on one meaning of "5m".
Durations are kept as integer milliseconds and sizes as integer bytes: no floats, so values compare
and hash exactly and a manifest round-trips through load -> dump -> load unchanged.
"""

from __future__ import annotations

import re

_DURATION_UNITS_MS: dict[str, int] = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# [0-9], not \d: Python's \d also matches other scripts' digits ("١٢s", "²"), which JSON Schema's \d does not.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_FULL = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+")
_SIZE_FULL = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]i?[bB]|[bB])")

DURATION_PATTERN = r"^\s*(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+\s*$"
SIZE_PATTERN = r"^\s*\d+(?:\.\d+)?\s*(?:[kKmMgGtT]i?[bB]|[bB])\s*$"

MAX_DURATION_MS = 366 * 86_400_000
MAX_SIZE_BYTES = 1024**5


class UnitError(ValueError):
    """A duration or size that cannot be read; the message says what forms are accepted."""


def parse_duration_ms(value: str | int, *, bare_unit_ms: int = 1000) -> int:
    """Read ``"500ms"``, ``"1h30m"`` or a bare non-negative integer (in ``bare_unit_ms`` units).

    Fractions are allowed ("1.5s") but the result must be a whole number of milliseconds.
    """
    if isinstance(value, bool):
        raise UnitError("expected a duration such as '30s', got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"a duration cannot be negative, got {value}")
        return _bounded_duration(value * bare_unit_ms)
    text = value.strip()
    if text.isascii() and text.isdigit():
        return _bounded_duration(int(text) * bare_unit_ms)
    if not _DURATION_FULL.fullmatch(text):
        raise UnitError(
            f"{value!r} is not a duration; use a number with a unit (ms, s, m, h, d), e.g. '500ms', '30s', '1h30m'"
        )
    total = 0
    for number, unit in _DURATION_PART.findall(text):
        total += _exact(number, _DURATION_UNITS_MS[unit], value, "millisecond")
    return _bounded_duration(total)


def parse_size_bytes(value: str | int) -> int:
    """Read ``"512MiB"``, ``"6GB"`` or a bare non-negative integer of bytes."""
    if isinstance(value, bool):
        raise UnitError("expected a size such as '6GiB', got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"a size cannot be negative, got {value}")
        return _bounded_size(value)
    text = value.strip()
    if text.isascii() and text.isdigit():
        return _bounded_size(int(text))
    match = _SIZE_FULL.fullmatch(text)
    if not match:
        raise UnitError(
            f"{value!r} is not a size; use a number with a unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), "
            "e.g. '512MiB' or '6GiB'"
        )
    number, unit = match.groups()
    return _bounded_size(_exact(number, _SIZE_UNITS[unit.lower()], value, "byte"))


def format_duration(ms: int) -> str:
    """The shortest exact spelling: 90_000 -> ``"90s"``, 300_000 -> ``"5m"``, 1_500 -> ``"1500ms"``."""
    if ms == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        factor = _DURATION_UNITS_MS[unit]
        if ms % factor == 0:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"


def format_size(size: int) -> str:
    """The largest exact binary unit: 6 * 1024**3 -> ``"6GiB"``, 1000 -> ``"1000B"``."""
    if size == 0:
        return "0B"
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit.lower()]
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _exact(number: str, factor: int, original: object, what: str) -> int:
    whole, _, fraction = number.partition(".")
    numerator = int(whole + fraction) * factor
    denominator = int(10 ** len(fraction))
    if numerator % denominator:
        raise UnitError(f"{original!r} is not a whole number of {what}s")
    return numerator // denominator


def _bounded_duration(ms: int) -> int:
    if ms > MAX_DURATION_MS:
        raise UnitError(f"a duration of {format_duration(ms)} is longer than the limit of 366d")
    return ms


def _bounded_size(size: int) -> int:
    if size > MAX_SIZE_BYTES:
        raise UnitError(f"a size of {format_size(size)} is larger than the limit of 1024TiB")
    return size
