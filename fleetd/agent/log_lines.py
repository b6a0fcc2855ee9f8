"""Reading a replica's log for people: the first line that says what went wrong, without its timestamp.

A replica that gives up (``failed``) keeps the last lines of its output; the status line an operator reads first
(``fleetd status``'s LAST ERROR, ``/status``) needs the one that explains it. llama.cpp prefixes its lines with
a time and a level (``0.01.234.567 E llama_model_load: error loading model: ...``), others with a date: that
prefix is cut, and the first line that names an error wins over the last line, which is often only a shutdown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PREFIX = re.compile(
    r"^\s*(?:\d+\.\d+\.\d+\.\d+\s+[A-Z]\s+"  # llama.cpp: 0.01.234.567 E
    r"|\[?\d{4}-\d\d-\d\d[T ][\d:.,]+(?:Z|[+-]\d\d:?\d\d)?\]?\s*"  # [2026-12-03 17:00:00,123]
    r"|(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\s*[:|-]?\s+)+"
)
_ERROR = re.compile(
    r"\b(?:error|errors|failed|failure|fatal|exception|traceback|cannot|can't|unable|not found|no such|"
    r"out of memory|oom|denied|invalid|abort(?:ed)?)\b",
    re.IGNORECASE,
)
MAX_CHARS = 300


def without_prefix(line: str) -> str:
    """The line without its leading timestamp and level."""
    return _PREFIX.sub("", line, count=1).strip()


def first_error_line(lines: Sequence[str]) -> str | None:
    """The first line that names an error, else the last non-empty one, without its prefix; ``None``: no line."""
    cleaned = [without_prefix(line) for line in lines]
    cleaned = [line for line in cleaned if line]
    if not cleaned:
        return None
    found = next((line for line in cleaned if _ERROR.search(line)), cleaned[-1])
    return found if len(found) <= MAX_CHARS else found[: MAX_CHARS - 3] + "..."
