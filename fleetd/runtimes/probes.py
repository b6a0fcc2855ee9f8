"""Where a backend says it is ready and how busy it is, and how to read its answers, as pure values.

The agent (``fleetd.agent.probing``) does the HTTP requests; this module says which paths to ask and turns a
response body into a number of requests in flight, so that the routing and idle-unload logic never needs to
know which backend it talks to. Prometheus text is parsed by hand: this layer imports no I/O library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fleetd.core.desired import BackendType

InFlightParser = Callable[[str], int | None]


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """The HTTP paths that tell whether a backend is ready and how many requests it is working on."""

    health_path: str
    """200 when ready; llama-server answers 503 while it loads the model."""
    models_path: str
    """The OpenAI model list."""
    in_flight_path: str | None
    """Where the number of requests in flight is read (``parse_in_flight`` reads the body); ``None``: nowhere."""


def probe_spec(backend_type: BackendType) -> ProbeSpec:
    """The probe paths of ``backend_type``."""
    from fleetd.runtimes import probes_for  # the dispatch table imports this module

    return probes_for(backend_type)[0]


def parse_in_flight(backend_type: BackendType, body: str) -> int | None:
    """The number of requests in flight that the body of ``in_flight_path`` reports; ``None`` when unreadable."""
    from fleetd.runtimes import probes_for

    return probes_for(backend_type)[1](body)


def prometheus_samples(text: str, name: str) -> list[float]:
    """The values of every sample of metric ``name`` (whatever its labels) in Prometheus text format."""
    values: list[float] = []
    for line in text.splitlines():
        sample = _sample(line.strip())
        if sample is not None and sample[0] == name:
            values.append(sample[1])
    return values


def prometheus_gauge_sum(text: str, name: str) -> int | None:
    """The sum of metric ``name`` over its label sets (one per engine or model), or ``None`` when absent."""
    values = [v for v in prometheus_samples(text, name) if math.isfinite(v)]
    return round(sum(values)) if values else None


def count_processing_slots(body: str) -> int | None:
    """The number of llama-server slots at work in a ``GET /slots`` body (a JSON list of slot objects).

    Slots report ``is_processing``; releases before it (2024) reported ``state`` (0 = idle).
    """
    try:
        slots = json.loads(body)
    except ValueError:
        return None
    if not isinstance(slots, list) or not all(isinstance(slot, dict) for slot in slots):
        return None
    busy = 0
    for slot in slots:
        if "is_processing" in slot:
            busy += slot["is_processing"] is True
        elif "state" in slot:
            busy += slot["state"] != 0
        else:
            return None
    return busy


def _sample(line: str) -> tuple[str, float] | None:
    """``(name, value)`` of one exposition line, or ``None`` for comments, blanks and malformed lines."""
    if not line or line.startswith("#"):
        return None
    brace = line.find("{")
    space = _first_space(line)
    if brace != -1 and (space == -1 or brace < space):
        name = line[:brace]
        end = _labels_end(line, brace)
        if end is None:
            return None
        rest = line[end + 1 :]
    elif space != -1:
        name, rest = line[:space], line[space:]
    else:
        return None
    fields = rest.split()
    if not name or not fields:
        return None
    try:
        return name, float(fields[0])
    except ValueError:
        return None


def _first_space(line: str) -> int:
    positions = [p for p in (line.find(" "), line.find("\t")) if p != -1]
    return min(positions) if positions else -1


def _labels_end(line: str, start: int) -> int | None:
    """The index of the ``}`` that closes the label set opened at ``start`` (label values may hold ``}``)."""
    quoted = False
    chars: Iterator[tuple[int, str]] = enumerate(line[start + 1 :], start + 1)
    for index, char in chars:
        if quoted and char == "\\":
            next(chars, None)
        elif char == '"':
            quoted = not quoted
        elif char == "}" and not quoted:
            return index
    return None
