"""Timestamps as the registry stores them (integer Unix milliseconds) and as JSON shows them (ISO 8601 UTC)."""

from __future__ import annotations

import datetime


def iso_from_ms(ms: int) -> str:
    """``1795420800000`` -> ``"2026-11-23T08:00:00Z"`` (milliseconds shown only when not zero)."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    text = moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def ms_from_iso(text: str) -> int:
    """The inverse of ``iso_from_ms``; accepts ``Z`` or an explicit offset."""
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone; write it in UTC with a trailing Z")
    return round(moment.timestamp() * 1000)
