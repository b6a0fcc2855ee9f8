"""``Fleet``: what a reconcile cycle needs of the nodes, whatever the mode (architecture.md §3).

The registry (what was recorded), an ``AgentClient`` per reachable node (the only way to act on a node), and
``observe()``: bring the registry up to date with what the agents report, then take one consistent snapshot
for the planner. ``EmbeddedFleet`` (one in-process agent) implements it; the distributed fleet (gRPC agents,
NATS heartbeats) will too. ``RecordedFleet`` is the registry alone, for a look that must not start an agent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from fleetd.core.observed import ObservedState
from fleetd.registry.facade import Registry
from fleetd.transport.agent_api import AgentClient


class Fleet(Protocol):
    @property
    def registry(self) -> Registry: ...

    @property
    def agents(self) -> Mapping[str, AgentClient]:
        """Node name -> its agent, for every node that can take commands now."""
        ...

    def observe(self) -> ObservedState:
        """Record what the agents report, then snapshot the registry."""
        ...


@dataclass(frozen=True)
class RecordedFleet:
    """The fleet as the registry last recorded it, with no agent: ``fleetd plan`` and a ``status`` while
    another controller leads. ``preview`` may add what the registry does not know yet (the local node before
    the first apply registered it)."""

    registry: Registry
    preview: Callable[[ObservedState], ObservedState] = field(default=lambda observed: observed)
    readers: Mapping[str, AgentClient] = field(default_factory=dict)
    """Agents asked only for ``vram: auto`` estimates (``fleetd plan`` in the distributed mode)."""

    @property
    def agents(self) -> Mapping[str, AgentClient]:
        return self.readers

    def observe(self) -> ObservedState:
        return self.preview(self.registry.snapshot())


@dataclass(frozen=True)
class SnapshotFleet:
    """A recorded observation and nothing else: ``fleetd plan --observed snapshot.json`` (CI) touches no
    database, no agent and no network."""

    snapshot: ObservedState

    @property
    def registry(self) -> Registry:
        raise RuntimeError("a recorded snapshot has no registry: nothing may be written")

    @property
    def agents(self) -> Mapping[str, AgentClient]:
        return {}

    def observe(self) -> ObservedState:
        return self.snapshot
