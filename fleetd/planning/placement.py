"""Placement: which node takes a new replica, as a chain of small checkers and scorers (Nomad's style).

Feasibility checkers run cheapest first and each rejection is counted by reason, so the plan can say
"3 nodes: insufficient VRAM; 1 node: selector". Scorers (fit for binpack or spread, anti-affinity between
replicas of one instance, backend already installed) are normalised to [0, 1] and summed; the highest wins,
ties broken by node name.

At fleet scale, scoring every node for every replica is quadratic. Like Nomad's limit iterator, the search
stops after ``SAMPLE`` feasible nodes, starting at a deterministic offset derived from the instance and
replica, so load spreads and the same inputs always give the same choice. When nothing fits, a full scan
counts every rejection. The capacity view is mutable working state of one planning pass; the planner as a
whole stays a pure function.
"""

from __future__ import annotations

import enum
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fleetd.core.desired import InstanceSpec, Placement
from fleetd.core.observed import ObservedNode

SAMPLE = 16
"""Feasible nodes scored per placement before the best is taken."""


class Rejection(enum.StrEnum):
    NOT_READY = "not_ready"
    DRAINING = "draining"
    NOT_ALLOWED = "not_allowed"
    SELECTOR = "selector"
    PLATFORM = "platform"
    REPLICA_SLOTS = "replica_slots"
    INSUFFICIENT_VRAM = "insufficient_vram"


@dataclass(slots=True)
class NodeCapacity:
    """One node as placement sees it during a planning pass: what is left after earlier placements."""

    name: str
    node: ObservedNode
    labels: dict[str, str]
    ready: bool
    """Healthy and approved (or approved by this plan), and declared when the manifest declares nodes."""
    draining: bool
    slots: int
    total: int
    """VRAM, or RAM on a node without a GPU (CPU-only llama.cpp)."""
    free: int
    counts: dict[str, int] = field(default_factory=dict)
    """Replicas per instance on this node, planned ones included."""
    released: list[str] = field(default_factory=list)
    """Ids of the unloads in this plan whose memory ``free`` already counts."""
    released_bytes: int = 0

    def take(self, instance: str, size: int) -> None:
        self.free -= size
        self.counts[instance] = self.counts.get(instance, 0) + 1

    def give_back(self, instance: str, size: int, by: str | None = None) -> None:
        """Return a replica's memory and slot; ``by`` is the unload that frees it, which a placement that
        needs the memory must then wait for."""
        self.free += size
        self.counts[instance] = max(0, self.counts.get(instance, 0) - 1)
        if by is not None and size > 0:
            self.released.append(by)
            self.released_bytes += size

    def waits_for(self, size: int) -> tuple[str, ...]:
        """The unloads a placement of ``size`` bytes here must wait for: none when it fits in what is free
        without them, otherwise all of them (an executor may run independent actions in any order)."""
        return tuple(self.released) if self.free - self.released_bytes < size else ()


@dataclass(frozen=True, slots=True)
class Request:
    instance: InstanceSpec
    size: int
    gpu_vendors: frozenset[str] | None
    """Vendors the backend runs on; ``None`` = any."""
    backend: str
    replica: int
    exclude: frozenset[str] = frozenset()
    """Nodes the replica is moving away from."""


@dataclass(frozen=True, slots=True)
class Outcome:
    node: str | None
    rejections: tuple[tuple[str, int], ...] = ()


Check = Callable[[Request, NodeCapacity], bool]


def _ready(r: Request, n: NodeCapacity) -> bool:
    return n.ready and n.name not in r.exclude


def _not_draining(_: Request, n: NodeCapacity) -> bool:
    return not n.draining


def _allowed(r: Request, n: NodeCapacity) -> bool:
    pins = r.instance.scheduling.nodes
    return pins is None or n.name in pins


def _selector(r: Request, n: NodeCapacity) -> bool:
    return all(n.labels.get(k) == v for k, v in r.instance.scheduling.node_selector)


def _platform(r: Request, n: NodeCapacity) -> bool:
    return r.gpu_vendors is None or n.node.gpu_vendor in r.gpu_vendors


def _slots(r: Request, n: NodeCapacity) -> bool:
    return n.counts.get(r.instance.name, 0) < n.slots


def _fits(r: Request, n: NodeCapacity) -> bool:
    return n.free >= r.size


CHECKS: tuple[tuple[Rejection, Check], ...] = (
    (Rejection.NOT_READY, _ready),
    (Rejection.DRAINING, _not_draining),
    (Rejection.NOT_ALLOWED, _allowed),
    (Rejection.SELECTOR, _selector),
    (Rejection.PLATFORM, _platform),
    (Rejection.REPLICA_SLOTS, _slots),
    (Rejection.INSUFFICIENT_VRAM, _fits),
)
STATIC_CHECKS = CHECKS[:5]
"""The checks that do not depend on what earlier placements took (eviction looks past the last two)."""


def first_rejection(
    request: Request, node: NodeCapacity, checks: Sequence[tuple[Rejection, Check]] = CHECKS
) -> Rejection | None:
    for reason, check in checks:
        if not check(request, node):
            return reason
    return None


def score(request: Request, node: NodeCapacity) -> float:
    """Sum of normalised scores: fit (binpack: fuller is better; spread: emptier), anti-affinity, backend."""
    after = (node.free - request.size) / node.total if node.total > 0 else 0.0
    fit = 1.0 - after if request.instance.placement is Placement.BINPACK else after
    anti_affinity = 1.0 / (1 + node.counts.get(request.instance.name, 0))
    installed = 1.0 if request.backend in node.node.backends else 0.0
    return fit + anti_affinity + 0.5 * installed


def place(request: Request, nodes: Sequence[NodeCapacity]) -> Outcome:
    """The best feasible node among a deterministic sample, or ``None`` with every rejection counted."""
    if not nodes:
        return Outcome(None)
    start = zlib.crc32(f"{request.instance.name}/{request.replica}".encode()) % len(nodes)
    best: tuple[float, tuple[int, ...], NodeCapacity] | None = None
    seen = 0
    for i in range(len(nodes)):
        node = nodes[(start + i) % len(nodes)]
        if first_rejection(request, node) is not None:
            continue
        key = (score(request, node), _reverse(node.name), node)
        if best is None or key[:2] > best[:2]:
            best = key
        seen += 1
        if seen >= SAMPLE:
            break
    if best is not None:
        return Outcome(best[2].name)
    counts = Counter(first_rejection(request, n) for n in nodes)
    return Outcome(None, tuple(sorted((r.value, c) for r, c in counts.items() if r is not None)))


def _reverse(name: str) -> tuple[int, ...]:
    """Sorts names descending so that, among equal scores, the alphabetically first node wins a max()."""
    return (*(-ord(c) for c in name), 0)
