"""The canonical launch config of an instance and its hash: what a replica process is started with.

A replica reports the hash it was started with; the planner restarts exactly the replicas whose hash differs
from the desired one. Only what reaches the process counts (backend type and install spec, model, options,
command override, environment references, container image); scheduling, health and restart policy do not,
so editing them never restarts anything. The hash is over a canonical form, so YAML formatting and key order
never count as a change (LESSONS.md).
"""

from __future__ import annotations

from functools import lru_cache

from fleetd.core.canonical import digest
from fleetd.core.desired import BackendSpec, InstanceSpec


def launch_config(instance: InstanceSpec, backend: BackendSpec) -> dict[str, object]:
    return {
        "backend_type": backend.type.value,
        "install": [backend.install.kind.value, backend.install.spec],
        "image": backend.docker_image if instance.docker_enabled else None,
        "model": instance.model,
        "options": [[k, v] for k, v in instance.options],
        "command_override": list(instance.command_override) if instance.command_override is not None else None,
        "environment": [[k, v.template] for k, v in instance.environment],
    }


@lru_cache(maxsize=65_536)
def config_hash(instance: InstanceSpec, backend: BackendSpec) -> str:
    """Memoised: the inputs are immutable values, and a fleet of thousands of instances hashes them every plan."""
    return digest(launch_config(instance, backend))
