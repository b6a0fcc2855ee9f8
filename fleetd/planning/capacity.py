"""The fleet as one planning pass sees it: each node's capacity, built on first use, and what stays put.

``plan`` reads nodes three ways: whether a running replica on a node simply stays (``settled``, the fast path
of every tick), a node's capacity as placement sees it (``capacity``: labels as this plan sets them, slots,
free memory after the placements and unloads planned so far) and every node in name order for placement
(``candidates``). A converged tick touches few nodes, so capacities and candidates are built only when asked
for. This is the working state of one pass; the planner as a whole stays a pure function.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleetd.core.desired import NodeSpec
from fleetd.core.names import AUTO_LABEL_KEYS
from fleetd.core.observed import NodeStatus, ObservedNode, ObservedState, ReplicaState
from fleetd.planning.placement import Candidates, NodeCapacity


class _SettledNodes(dict[str, bool]):
    """Whether a running replica on a node stays where it is: the node is known, not offline, not draining and
    declared (when the manifest declares nodes). Filled on first use per node: a dict lookup per replica, not a
    call (50,000 replicas per tick)."""

    def __init__(self, fleet: FleetView) -> None:
        super().__init__()
        self._fleet = fleet

    def __missing__(self, name: str) -> bool:
        fleet = self._fleet
        node = fleet.observed.nodes_by_name.get(name)
        found = self[name] = (
            node is not None
            and node.status is not NodeStatus.OFFLINE
            and not fleet.draining(node)
            and not fleet.undeclared(name)
        )
        return found


class FleetView:
    """Nodes as placement sees them during one pass (mutable: placements take room, unloads give it back)."""

    __slots__ = ("_candidates", "_capacity", "declared", "nodes_declared", "observed", "settled")

    def __init__(self, observed: ObservedState, declared: Mapping[str, NodeSpec], *, nodes_declared: bool) -> None:
        self.observed = observed
        self.declared = declared
        self.nodes_declared = nodes_declared
        """The manifest declares the complete inventory: an undeclared node takes nothing and keeps nothing."""
        self._capacity: dict[str, NodeCapacity] = {}
        self._candidates: Candidates | None = None
        self.settled = _SettledNodes(self)
        """Node name -> whether a running replica there simply stays (the replica loop's fast path)."""

    def draining(self, node: ObservedNode) -> bool:
        spec = self.declared.get(node.name)
        return node.status is NodeStatus.DRAINING or (spec is not None and spec.drain)

    def undeclared(self, name: str) -> bool:
        return self.nodes_declared and name not in self.declared

    def capacity(self, name: str) -> NodeCapacity | None:
        """The node's capacity in this pass; ``None`` for a node the registry does not know."""
        found = self._capacity.get(name)
        if found is None:
            node = self.observed.nodes_by_name.get(name)
            if node is None:
                return None
            found = self._capacity[name] = self._node_capacity(node)
        return found

    def known(self, name: str) -> NodeCapacity:
        """A node the pass already knows is in the registry (it holds a replica, or placement chose it)."""
        found = self.capacity(name)
        assert found is not None, name
        return found

    @property
    def candidates(self) -> Candidates:
        """Every node, in name order, for placement (built on the first placement of the pass)."""
        if self._candidates is None:
            ordered = [self.capacity(n.name) for n in sorted(self.observed.nodes, key=lambda n: n.name)]
            nodes = [c for c in ordered if c is not None]
            for rank, capacity in enumerate(nodes):
                capacity.rank = rank
            self._candidates = Candidates(nodes)
        return self._candidates

    def _node_capacity(self, node: ObservedNode) -> NodeCapacity:
        spec = self.declared.get(node.name)
        approved_here = spec is not None and spec.approved and not node.approved  # by this plan's approve_node
        ready = (node.status in (NodeStatus.HEALTHY, NodeStatus.DRAINING) and node.approved) or (
            approved_here and node.status in (NodeStatus.PENDING, NodeStatus.HEALTHY)
        )
        gpu = node.total_vram > 0  # a node that reports no VRAM offers its RAM (as the registry's reserve does)
        labels = dict(node.labels)
        if spec is not None:  # placement sees the labels this plan sets
            labels = {k: v for k, v in labels.items() if k in AUTO_LABEL_KEYS} | dict(spec.labels)
        counts: dict[str, int] = {}
        for replica in self.observed.replicas_by_node.get(node.name, ()):
            if replica.state is not ReplicaState.STOPPING:
                counts[replica.instance] = counts.get(replica.instance, 0) + 1
        return NodeCapacity(
            name=node.name,
            node=node,
            labels=labels,
            ready=ready and not self.undeclared(node.name),
            draining=self.draining(node),
            slots=spec.max_replicas_per_model if spec is not None else node.max_replicas_per_model,
            total=node.total_vram if gpu else node.total_ram,
            free=max(0, (node.available_vram if gpu else node.available_ram) - node.reserved_vram),
            counts=counts,
        )
