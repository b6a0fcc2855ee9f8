"""A validated manifest -> ``DesiredState``: defaults merged field by field, units already resolved.

Precedence for each lifecycle field: the instance's value, then ``defaults``, then fleetd's built-in value
(the defaults of the core dataclasses). ``health`` and ``rollout`` merge per field, so an instance can
change one probe setting without restating the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from fleetd.core.desired import (
    ENV_REFERENCE,
    BackendSpec,
    BackendType,
    DesiredState,
    EnvValue,
    HealthPolicy,
    InstallKind,
    InstallRecipe,
    InstanceSpec,
    Labels,
    NodeSpec,
    Placement,
    RestartPolicy,
    RolloutPolicy,
    RoutePolicy,
    Scheduling,
)
from fleetd.manifest import models

T = TypeVar("T")

_HEALTH = HealthPolicy()
_ROLLOUT = RolloutPolicy()
_RESTART = RestartPolicy()


def resolve(manifest: models.Manifest) -> DesiredState:
    defaults = manifest.defaults or models.Defaults()
    return DesiredState(
        backends=tuple(_backend(name, b) for name, b in sorted(manifest.backends.items())),
        nodes=tuple(_node(name, n) for name, n in sorted((manifest.nodes or {}).items())),
        instances=tuple(_instance(name, i, defaults) for name, i in sorted(manifest.instances.items())),
        nodes_declared=bool(manifest.nodes),
    )


def replica_bounds(instance: models.Instance) -> tuple[int, int]:
    """(min, max) replicas: min defaults to 1 (0 for on-demand instances), max to min (at least 1)."""
    scheduling = instance.scheduling
    minimum = scheduling.min_replicas
    if minimum is None:
        minimum = 0 if instance.on_demand_start else 1
    maximum = scheduling.max_replicas if scheduling.max_replicas is not None else max(minimum, 1)
    return minimum, maximum


def _first(*values: T | None) -> T:
    for value in values:
        if value is not None:
            return value
    raise AssertionError("the last candidate is a built-in default and never None")


def _labels(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _backend(name: str, backend: models.Backend) -> BackendSpec:
    install = backend.install
    if install.pip is not None:
        recipe = InstallRecipe(InstallKind.PIP, install.pip)
    elif install.binary is not None:
        recipe = InstallRecipe(InstallKind.BINARY, install.binary)
    else:
        recipe = InstallRecipe(InstallKind.IMAGE, install.image or "")
    return BackendSpec(
        name=name, type=BackendType(backend.type), install=recipe, docker_image=backend.docker_image
    )


def _node(name: str, node: models.Node) -> NodeSpec:
    return NodeSpec(
        name=name,
        address=node.address,
        labels=_labels(node.labels),
        max_replicas_per_model=node.max_replicas_per_model,
        approved=node.approved,
        drain=node.drain,
    )


def _health(instance: models.Health | None, defaults: models.Health | None) -> HealthPolicy:
    i = instance or models.Health()
    d = defaults or models.Health()
    return HealthPolicy(
        interval_ms=_first(i.interval, d.interval, _HEALTH.interval_ms),
        timeout_ms=_first(i.timeout, d.timeout, _HEALTH.timeout_ms),
        startup_timeout_ms=_first(i.startup_timeout, d.startup_timeout, _HEALTH.startup_timeout_ms),
        failure_threshold=_first(i.failure_threshold, d.failure_threshold, _HEALTH.failure_threshold),
    )


def _rollout(instance: models.Rollout | None, defaults: models.Rollout | None) -> RolloutPolicy:
    i = instance or models.Rollout()
    d = defaults or models.Rollout()
    return RolloutPolicy(
        max_unavailable=_first(i.max_unavailable, d.max_unavailable, _ROLLOUT.max_unavailable),
        max_surge=_first(i.max_surge, d.max_surge, _ROLLOUT.max_surge),
    )


def _instance(name: str, inst: models.Instance, d: models.Defaults) -> InstanceSpec:
    minimum, maximum = replica_bounds(inst)
    s = inst.scheduling
    return InstanceSpec(
        name=name,
        backend=inst.backend,
        model=inst.model,
        options=tuple(sorted(inst.options.items())),
        vram_bytes=None if inst.vram == "auto" else inst.vram,
        scheduling=Scheduling(
            min_replicas=minimum,
            max_replicas=maximum,
            node_selector=_labels(s.node_selector),
            nodes=tuple(sorted(set(s.nodes))) if s.nodes is not None else None,
            priority=s.priority,
            route_policy=RoutePolicy(s.route_policy),
        ),
        restart=RestartPolicy(
            auto_restart=_first(inst.auto_restart, d.auto_restart, _RESTART.auto_restart),
            max_restarts=_first(inst.max_restarts, d.max_restarts, _RESTART.max_restarts),
            restart_delay_ms=_first(inst.restart_delay, d.restart_delay, _RESTART.restart_delay_ms),
            restart_max_delay_ms=_first(
                inst.restart_max_delay, d.restart_max_delay, _RESTART.restart_max_delay_ms
            ),
        ),
        health=_health(inst.health, d.health),
        placement=Placement(_first(inst.placement, d.placement, Placement.BINPACK.value)),
        rollout=_rollout(inst.rollout, d.rollout),
        on_demand_start=inst.on_demand_start,
        idle_timeout_ms=inst.idle_timeout,
        docker_enabled=inst.docker_enabled,
        command_override=tuple(inst.command_override) if inst.command_override is not None else None,
        environment=tuple(
            (key, EnvValue(value, secret=bool(ENV_REFERENCE.search(value))))
            for key, value in sorted(inst.environment.items())
        ),
    )
