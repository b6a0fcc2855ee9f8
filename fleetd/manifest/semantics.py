"""Checks beyond the schema (architecture.md §4): references, bounds, feasibility against declared nodes,
backend options, secrets, and strings no process could be started with (a NUL byte).

Each check is a small function over the merged manifest that yields ``(severity, path, message, at_key)``;
``check_semantics`` locates them in the source files. The checks only read the manifest: whether a node is
up, or has the VRAM, is the planner's business at plan time.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fleetd.core.desired import ENV_REFERENCE, BackendType
from fleetd.core.diagnostics import Diagnostic, FieldPath, Severity
from fleetd.core.names import AUTO_LABEL_KEYS
from fleetd.manifest.merging import SourceIndex
from fleetd.manifest.models import Instance, Manifest, Node
from fleetd.manifest.resolving import replica_bounds
from fleetd.runtimes import runtime_for

Finding = tuple[Severity, FieldPath, str, bool]
"""severity, field path, message, and whether to point at the key rather than the value."""

_E, _W = Severity.ERROR, Severity.WARNING
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|CREDENTIAL", re.IGNORECASE)


def check_semantics(manifest: Manifest, index: SourceIndex) -> list[Diagnostic]:
    return [
        Diagnostic(severity, message, path, index.locate(path, at_key=at_key))
        for check in CHECKS
        for severity, path, message, at_key in check(manifest)
    ]


def _references(m: Manifest) -> Iterator[Finding]:
    for name, inst in m.instances.items():
        if inst.backend not in m.backends:
            yield (
                _E,
                ("instances", name, "backend"),
                _missing("backend", inst.backend, list(m.backends)),
                False,
            )
    used = {inst.backend for inst in m.instances.values()}
    for name in m.backends:
        if name not in used:
            yield _W, ("backends", name), f"backend {name!r} is not used by any instance", True


def _replica_bounds(m: Manifest) -> Iterator[Finding]:
    for name, inst in m.instances.items():
        base = ("instances", name, "scheduling")
        minimum, maximum = replica_bounds(inst)
        if minimum > maximum:
            yield _E, (*base, "min_replicas"), f"{minimum} is greater than max_replicas {maximum}", False
        if minimum == 0 and not inst.on_demand_start:
            yield (
                _E,
                (*base, "min_replicas"),
                "0 replicas with on_demand_start off means the instance never runs; set on_demand_start: true, "
                "or remove the instance to stop it",
                False,
            )
        if inst.on_demand_start and inst.scheduling.min_replicas:
            yield (
                _W,
                (*base, "min_replicas"),
                f"on_demand_start has no effect while min_replicas is {inst.scheduling.min_replicas}: that many "
                "replicas always run",
                False,
            )
        pins = inst.scheduling.nodes or []
        for i, pin in enumerate(pins):
            if pin in pins[:i]:
                yield _E, (*base, "nodes", i), f"node {pin!r} is listed twice", False


def _placement_feasibility(m: Manifest) -> Iterator[Finding]:
    if not m.nodes:
        return
    selected: dict[tuple[tuple[str, str], ...], _Matched] = {}
    for name, inst in m.instances.items():
        yield from _instance_feasibility(name, inst, m.nodes, selected)


def _instance_feasibility(
    name: str, inst: Instance, nodes: dict[str, Node], selected: dict[tuple[tuple[str, str], ...], _Matched]
) -> Iterator[Finding]:
    """``selected`` memoizes the nodes each distinct selector matches and their slots: many instances share a
    selector, and matching or counting every instance against every node is instances x nodes work (1,000 x 200
    in bench/validate.py; 5,000 x 10,000 in bench/cycle.py)."""
    base = ("instances", name, "scheduling")
    pins = inst.scheduling.nodes
    selector = inst.scheduling.node_selector
    for i, pin in enumerate(pins or []):
        if pin not in nodes:
            yield _E, (*base, "nodes", i), _missing("node", pin, list(nodes)), False
    key = tuple(sorted(selector.items()))
    matched = selected.get(key)
    if matched is None:
        matched = selected[key] = _matched([n for n in nodes if _selects(selector, n, nodes[n])], nodes)
    if pins is not None:
        allowed = set(pins)
        matched = _matched([n for n in matched.names if n in allowed], nodes)
    candidates = matched.names
    if not candidates:
        what = " and ".join(
            filter(
                None,
                [
                    f"node_selector {_show(selector)}" if selector else "",
                    f"nodes {pins}" if pins is not None else "",
                ],
            )
        )
        yield (
            _E,
            (*base, "node_selector" if selector else "nodes"),
            f"no declared node satisfies {what}",
            False,
        )
        return
    minimum, _ = replica_bounds(inst)
    slots = matched.slots
    if minimum > slots:
        yield (
            _E,
            (*base, "min_replicas"),
            f"{minimum} replicas cannot fit: the declared nodes that match ({', '.join(candidates)}) offer "
            f"{slots} replica slot{'s' if slots != 1 else ''} (max_replicas_per_model)",
            False,
        )
        return
    active_slots = matched.active_slots
    if minimum > active_slots:
        yield (
            _W,
            (*base, "min_replicas"),
            f"{minimum} replicas will not all run while nodes drain: the matching nodes that are not draining "
            f"offer {active_slots} replica slot{'s' if active_slots != 1 else ''}",
            False,
        )


@dataclass(frozen=True, slots=True)
class _Matched:
    """The declared nodes that an instance's selector (and pins) admit, and their replica slots."""

    names: tuple[str, ...]
    slots: int
    active_slots: int
    """The slots of those nodes that are not draining."""


def _matched(names: list[str], nodes: dict[str, Node]) -> _Matched:
    slots = sum(nodes[n].max_replicas_per_model for n in names)
    active = sum(nodes[n].max_replicas_per_model for n in names if not nodes[n].drain)
    return _Matched(tuple(names), slots, active)


def _selects(selector: dict[str, str], node_name: str, node: Node) -> bool:
    for key, value in selector.items():
        if key == "node.name":
            if value != node_name:
                return False
        elif key in AUTO_LABEL_KEYS:
            continue  # known only once the node reports; cannot be ruled out here
        elif node.labels.get(key) != value:
            return False
    return True


def _node_labels(m: Manifest) -> Iterator[Finding]:
    for name, node in (m.nodes or {}).items():
        for key in node.labels:
            if key in AUTO_LABEL_KEYS:
                yield (
                    _E,
                    ("nodes", name, "labels", key),
                    f"label {key!r} is set by fleetd itself from what the node reports; select on it, "
                    "do not set it",
                    True,
                )
    if m.nodes is not None and not m.nodes:
        yield (
            _W,
            ("nodes",),
            "`nodes: {}` declares no node; every approved node will be used, as if the section were absent",
            True,
        )


def _backend_options(m: Manifest) -> Iterator[Finding]:
    for name, inst in m.instances.items():
        backend = m.backends.get(inst.backend)
        if backend is None:
            continue
        runtime = runtime_for(BackendType(backend.type))
        for option, value in inst.options.items():
            problem = runtime.option_problem(option, value)
            if problem is not None:
                at_key = option not in runtime.options
                yield _E, ("instances", name, "options", option), problem, at_key
        if inst.docker_enabled and backend.docker_image is None:
            yield (
                _E,
                ("instances", name, "docker_enabled"),
                f"docker_enabled needs backends.{inst.backend}.docker_image to say which image to run",
                False,
            )


def _lifecycle(m: Manifest) -> Iterator[Finding]:
    scopes: list[tuple[FieldPath, Any]] = [(("defaults",), m.defaults)] if m.defaults else []
    scopes += [(("instances", name), inst) for name, inst in m.instances.items()]
    for base, scope in scopes:
        health = scope.health
        if (
            health is not None
            and health.timeout is not None
            and health.interval is not None
            and health.timeout > health.interval
        ):
            yield (
                _W,
                (*base, "health", "timeout"),
                "the probe timeout is longer than the probe interval",
                False,
            )
        rollout = scope.rollout
        if rollout is not None and rollout.max_unavailable == 0 and rollout.max_surge == 0:
            yield (
                _E,
                (*base, "rollout"),
                "max_unavailable and max_surge cannot both be 0: a rollout could never replace a replica",
                True,
            )
        if (
            scope.restart_delay is not None
            and scope.restart_max_delay is not None
            and scope.restart_delay > scope.restart_max_delay
        ):
            yield (
                _W,
                (*base, "restart_delay"),
                "restart_delay is longer than restart_max_delay; the cap wins",
                False,
            )


def _secrets(m: Manifest) -> Iterator[Finding]:
    for name, inst in m.instances.items():
        for key, value in inst.environment.items():
            if value and _SECRET_NAME.search(key) and not ENV_REFERENCE.search(value):
                yield (
                    _W,
                    ("instances", name, "environment", key),
                    f"{key} looks like a secret written in clear; write ${{env:{key}}} so it stays out of git and "
                    "is redacted",
                    False,
                )


def _strings(m: Manifest) -> Iterator[Finding]:
    """Every string value of the manifest, walked once: a NUL byte, which no process argument or environment
    value can carry (the spawn would fail), and a ``${env:...}`` reference outside ``environment``. The message
    never shows the value: it may be a secret."""
    for path, text in _string_values(m.model_dump(mode="python"), ()):
        if "\x00" in text:
            yield (
                _E,
                path,
                "contains a NUL byte (\\0); a process's arguments and environment values are NUL-terminated, "
                "so the backend could never be started with it",
                False,
            )
        elif "${env:" in text and not (len(path) > 3 and path[0] == "instances" and path[2] == "environment"):
            yield (
                _E,
                path,
                "${env:...} references are resolved only in `environment` values; pass the value to the "
                "backend through an environment variable",
                False,
            )


def _string_values(value: Any, path: FieldPath) -> Iterator[tuple[FieldPath, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _string_values(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _string_values(item, (*path, i))
    elif isinstance(value, str):
        yield path, value


def _missing(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"{kind} {name!r} is not defined; did you mean {close[0]!r}?"
    listed = ", ".join(sorted(known)) if known else "none"
    return f"{kind} {name!r} is not defined (defined {kind}s: {listed})"


def _show(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in labels.items()) + "}"


CHECKS: tuple[Callable[[Manifest], Iterator[Finding]], ...] = (
    _references,
    _replica_bounds,
    _placement_feasibility,
    _node_labels,
    _backend_options,
    _lifecycle,
    _secrets,
    _strings,
)
