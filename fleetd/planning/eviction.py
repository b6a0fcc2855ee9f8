"""Eviction: room for a replica that fits nowhere, made by unloading idle replicas of lower priorities.

Asked only when placement failed. The candidates are live replicas with nothing in flight, of a declared
instance of lower priority than the one being placed, not evicted already. A node qualifies when it passes
every placement check but free memory (``EVICTION_CHECKS``) and its free memory plus its candidates below the
request's priority cover the request; on each such node the candidates go in order (lowest priority first,
then largest, then by instance and index) until enough is free. The smallest eviction in bytes wins, ties
broken by node name.

The candidates are indexed once per pass, on first use: per node, sorted with running totals, so a node is
judged with a binary search instead of a scan of its replicas; and nodes are ordered by their lowest candidate
priority, so a request visits only the nodes that hold something it may evict.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from fleetd.core.observed import ObservedReplica, ObservedState, ReplicaState
from fleetd.planning.capacity import FleetView
from fleetd.planning.placement import EVICTION_CHECKS, Request, first_rejection

_LIVE = (ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.UNHEALTHY)
ReplicaKey = tuple[str, str, int]
"""(instance, node, replica)."""


@dataclass(frozen=True, slots=True)
class _NodeCandidates:
    """One node's evictable replicas in eviction order, with their priorities and running VRAM totals."""

    replicas: tuple[ObservedReplica, ...]
    priorities: tuple[int, ...]
    totals: tuple[int, ...]
    """``totals[k]``: the VRAM of the first ``k`` replicas."""

    @classmethod
    def of(cls, replicas: Sequence[ObservedReplica], priorities: Mapping[str, int]) -> _NodeCandidates:
        """``replicas`` in eviction order."""
        return cls(
            tuple(replicas),
            tuple(priorities[r.instance] for r in replicas),
            tuple(accumulate((r.vram_bytes for r in replicas), initial=0)),
        )

    def freeable_below(self, priority: int) -> int:
        return self.totals[bisect.bisect_left(self.priorities, priority)]

    def enough(self, priority: int, needed: int) -> list[ObservedReplica]:
        """The fewest replicas, in order, below ``priority`` that free ``needed`` bytes (empty: none needed, or
        not enough there)."""
        below = bisect.bisect_left(self.priorities, priority)
        count = bisect.bisect_left(self.totals, needed, hi=below + 1)
        return list(self.replicas[:count]) if count <= below and needed > 0 else []

    def without(self, victim: ObservedReplica, priorities: Mapping[str, int]) -> _NodeCandidates:
        return _NodeCandidates.of([r for r in self.replicas if r is not victim], priorities)


class Evictions:
    """The pass's evictions: what was evicted so far, and the candidate index (built on first use)."""

    __slots__ = ("_by_node", "_order", "_priorities", "evicted", "observed")

    def __init__(self, observed: ObservedState, priorities: Mapping[str, int]) -> None:
        self.observed = observed
        self._priorities = priorities
        self.evicted: set[ReplicaKey] = set()
        """(instance, node, replica) of every replica evicted so far in this pass."""
        self._by_node: dict[str, _NodeCandidates] | None = None
        self._order: list[tuple[int, str]] = []
        """(lowest candidate priority, node) in order; an entry may be stale after evictions (lower)."""

    def find(self, request: Request, fleet: FleetView) -> tuple[str, list[ObservedReplica]] | None:
        """The node and the replicas to evict there so that ``request`` fits; ``None`` when no eviction helps."""
        mine = request.instance.scheduling.priority
        best: tuple[int, str, list[ObservedReplica]] | None = None
        for name, candidates in self._nodes_below(mine):
            node = fleet.capacity(name)
            if node is None or node.free + candidates.freeable_below(mine) < request.size:
                continue
            if first_rejection(request, node, EVICTION_CHECKS) is not None:
                continue
            chosen = candidates.enough(mine, request.size - node.free)
            if not chosen:
                continue
            cost = sum(v.vram_bytes for v in chosen)
            if best is None or (cost, name) < (best[0], best[1]):
                best = (cost, name, chosen)
        return (best[1], best[2]) if best is not None else None

    def mark(self, victim: ObservedReplica) -> None:
        """``victim`` is evicted: it is no longer a candidate, and its instance replaces it elsewhere."""
        self.evicted.add((victim.instance, victim.node, victim.replica))
        by_node = self._index()
        found = by_node.get(victim.node)
        if found is not None:
            by_node[victim.node] = found.without(victim, self._priorities)

    def _nodes_below(self, priority: int) -> Iterator[tuple[str, _NodeCandidates]]:
        by_node = self._index()
        for lowest, name in self._order:
            if lowest >= priority:
                return
            yield name, by_node[name]

    def _index(self) -> dict[str, _NodeCandidates]:
        if self._by_node is None:
            self._by_node = {}
            priorities = self._priorities
            for name, replicas in self.observed.replicas_by_node.items():
                found = sorted(
                    (
                        r
                        for r in replicas
                        if r.in_flight == 0
                        and r.state in _LIVE
                        and r.instance in priorities
                        and (r.instance, r.node, r.replica) not in self.evicted
                    ),
                    key=lambda r: (priorities[r.instance], -r.vram_bytes, r.instance, r.replica),
                )
                if found:
                    self._by_node[name] = _NodeCandidates.of(found, priorities)
            self._order = sorted((c.priorities[0], name) for name, c in self._by_node.items())
        return self._by_node
