"""Render a ``DesiredState`` for ``fleetd inspect``: what each instance will run with, defaults merged.

The JSON and YAML forms are one document: the manifest's paths and digest, and the desired state, with the
fields that are name -> value maps in the manifest (``options``, ``environment``, ``labels``,
``node_selector``) written as objects again. Secret environment values show as their ``${env:NAME}``
reference, never a resolved value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fleetd.core.canonical import to_plain
from fleetd.core.desired import DesiredState, InstanceSpec
from fleetd.core.units import format_duration, format_size

MAP_FIELDS = frozenset({"options", "environment", "labels", "node_selector"})
"""Fields the desired state keeps as sorted (name, value) pairs that the manifest writes as maps."""


def desired_document(desired: DesiredState, paths: Sequence[str]) -> dict[str, Any]:
    """What ``--format json`` and ``--format yaml`` print."""
    return {"manifest": {"paths": list(paths), "digest": desired.digest}, "desired": _maps(to_plain(desired))}


def render_desired_json(desired: DesiredState, paths: Sequence[str]) -> str:
    return json.dumps(desired_document(desired, paths), indent=2) + "\n"


def render_desired_yaml(desired: DesiredState, paths: Sequence[str]) -> str:
    import yaml

    return yaml.safe_dump(desired_document(desired, paths), sort_keys=False, allow_unicode=True, width=115)


def _maps(value: Any, key: str | None = None) -> Any:
    """``to_plain``'s lists of [name, value] pairs, for the fields in ``MAP_FIELDS``, as objects."""
    if isinstance(value, dict):
        return {k: _maps(v, k) for k, v in value.items()}
    if isinstance(value, list):
        if key in MAP_FIELDS and all(isinstance(p, list) and len(p) == 2 for p in value):
            return {str(name): _maps(item) for name, item in value}
        return [_maps(item) for item in value]
    return value


def render_desired_text(desired: DesiredState, paths: Sequence[str]) -> str:
    lines = [f"manifest {', '.join(paths)}  {desired.digest}"]
    backends = ", ".join(
        f"{b.name} ({b.type.value}, {b.install.kind.value} {b.install.spec})" for b in desired.backends
    )
    lines.append(f"backends: {backends or 'none'}")
    if desired.nodes_declared:
        for node in desired.nodes:
            labels = ",".join(f"{k}={v}" for k, v in node.labels) or "-"
            flags = [f for f, on in (("approved", node.approved), ("drain", node.drain)) if on]
            lines.append(
                f"node {node.name}  address {node.address or '-'}  labels {labels}  "
                f"slots/model {node.max_replicas_per_model}  {' '.join(flags)}".rstrip()
            )
    else:
        lines.append("nodes: not declared (every approved node is used; on one machine, the local node)")
    for inst in desired.instances:
        lines.extend(_instance_lines(inst))
    return "\n".join(lines) + "\n"


def _instance_lines(i: InstanceSpec) -> list[str]:
    s = i.scheduling
    r = i.restart
    h = i.health
    where = []
    if s.node_selector:
        where.append("selector " + ",".join(f"{k}={v}" for k, v in s.node_selector))
    if s.nodes is not None:
        where.append("nodes " + ",".join(s.nodes))
    restarts = "unlimited" if r.max_restarts < 0 else str(r.max_restarts)
    lines = [
        f"instance {i.name}  backend {i.backend}  model {i.model}",
        f"  replicas {s.min_replicas}..{s.max_replicas}  placement {i.placement.value}  priority {s.priority}  "
        f"route {s.route_policy.value}  {'  '.join(where)}".rstrip(),
        f"  vram {'auto' if i.vram_bytes is None else format_size(i.vram_bytes)}  "
        f"idle_timeout {format_duration(i.idle_timeout_ms) if i.idle_timeout_ms else 'never'}  "
        f"on_demand_start {str(i.on_demand_start).lower()}  docker {str(i.docker_enabled).lower()}",
        f"  restart {'on' if r.auto_restart else 'off'} (max {restarts}, {format_duration(r.restart_delay_ms)} "
        f"doubling to {format_duration(r.restart_max_delay_ms)})  health every {format_duration(h.interval_ms)}, "
        f"timeout {format_duration(h.timeout_ms)}, startup {format_duration(h.startup_timeout_ms)}, "
        f"{h.failure_threshold} failures",
        f"  rollout max_unavailable {i.rollout.max_unavailable} max_surge {i.rollout.max_surge}",
    ]
    if i.options:
        lines.append("  options " + " ".join(f"{k}={json.dumps(v)}" for k, v in i.options))
    if i.command_override is not None:
        lines.append("  command " + " ".join(i.command_override))
    if i.environment:
        lines.append("  environment " + " ".join(f"{k}={v.template}" for k, v in i.environment))
    return lines
