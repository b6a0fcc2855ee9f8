"""``vram: auto`` estimates for the planner, asked of the agents (architecture.md §3: the agent of the node
that has the model file estimates it; the controller never opens a model).

An instance's allow-listed nodes are asked first, then every other node with an agent, in name order; the first
answer wins. A node without the model answers ``AgentError`` and the next is asked. An instance no agent can
estimate gets no entry: the planner then counts it as needing no memory beyond what the node reports, and its
load reports the missing model.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleetd.core.desired import DesiredState, InstanceSpec
from fleetd.transport.agent_api import AgentClient, AgentError


def estimate_vram(desired: DesiredState, agents: Mapping[str, AgentClient]) -> dict[str, int]:
    """Instance name -> bytes, for every ``vram: auto`` instance that some agent could estimate."""
    found: dict[str, int] = {}
    for spec in desired.instances:
        if spec.vram_bytes is None and agents:
            size = _estimate(spec, agents)
            if size is not None:
                found[spec.name] = size
    return found


def _estimate(spec: InstanceSpec, agents: Mapping[str, AgentClient]) -> int | None:
    preferred = [n for n in spec.scheduling.nodes or () if n in agents]
    for node in [*preferred, *sorted(set(agents) - set(preferred))]:
        try:
            return agents[node].estimate(spec)
        except AgentError:
            continue
    return None
