"""The daemons' log: one line per event, as ``logfmt`` (the default) or JSON (``--log-format json``).

``fleetd serve`` and ``fleetd agent`` log through the standard ``logging`` module under the ``fleetd`` logger; this
module formats those records. Each line carries a UTC timestamp, the level, the part that speaks (``serve``,
``agent``, ``agent.supervisor``), the message for people, and the event's fields for machines (``replica=tiny/0
node=local exit="killed by SIGKILL"``), passed as ``extra={"fields": {...}}``. In the embedded mode the agent runs
inside ``serve``, so its supervisor's events (a crash, the restart and its delay, a replica given up, a port
moved) land in the same log.

Field values are the event's own words and numbers: secrets never reach them (the supervisor holds only the
templates of an instance's environment).
"""

from __future__ import annotations

import datetime
import enum
import json
import logging
from collections.abc import Mapping
from typing import TextIO

FieldValue = str | int | float | bool | None
ROOT = "fleetd"
_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@+,%")


class LogFormat(enum.StrEnum):
    LOGFMT = "logfmt"
    JSON = "json"


def fields_of(record: logging.LogRecord) -> Mapping[str, FieldValue]:
    found = getattr(record, "fields", None)
    return found if isinstance(found, Mapping) else {}


def source_of(record: logging.LogRecord) -> str:
    """``fleetd.agent.supervisor`` -> ``agent.supervisor``."""
    name = record.name
    return name[len(ROOT) + 1 :] if name.startswith(ROOT + ".") else name


def logfmt_value(value: FieldValue) -> str:
    """A value as logfmt writes it: bare when it is one plain word, else double-quoted with escapes."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text and all(c in _BARE for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class EventFormatter(logging.Formatter):
    """Formats a ``fleetd`` log record as one line of ``logfmt`` or JSON."""

    def __init__(self, style: LogFormat) -> None:
        super().__init__()
        self._format = style

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:  # a bug's traceback stays whole, in the message: one event, one line
            message = f"{message}\n{self.formatException(record.exc_info)}"
        head: dict[str, FieldValue] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "src": source_of(record),
            "msg": message,
        }
        fields = {k: v for k, v in fields_of(record).items() if k not in head}
        if self._format is LogFormat.JSON:
            return json.dumps({**head, **fields}, ensure_ascii=False)
        return " ".join(f"{key}={logfmt_value(value)}" for key, value in {**head, **fields}.items())


def _timestamp(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def configure_logging(stream: TextIO, style: LogFormat) -> logging.Logger:
    """Send the ``fleetd`` loggers' INFO and above to ``stream`` in ``style``; returns the ``fleetd`` logger."""
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EventFormatter(style))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger
