"""Placement: which node takes a new replica, as a chain of small checkers and scorers (Nomad's style).

Feasibility checkers run cheapest first and each rejection is counted by reason, so the plan can say
"3 nodes: insufficient VRAM; 1 node: selector". Scorers (fit for binpack or spread, anti-affinity between
replicas of one instance, backend already installed) are normalised to [0, 1] and summed; the highest wins,
ties broken by node name. The scorers are a table (``SCORERS``) of weighted functions, like the checks.

At fleet scale, scoring every node for every replica is quadratic. Like Nomad's limit iterator, the search
stops after ``SAMPLE`` feasible nodes, starting at a deterministic offset derived from the instance, so load
spreads and the same inputs always give the same choice. When nothing fits, a full scan counts every
rejection (``rejections``). The capacity view is mutable working state of one planning pass; the planner as a
whole stays a pure function.
"""

from __future__ import annotations

import bisect
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
    MODEL_MISSING = "model_missing"
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
    rank: int = 0
    """Position in name order: ties between equal scores go to the lower rank (the alphabetically first)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Replicas per instance on this node, planned ones included."""
    released: list[str] = field(default_factory=list)
    """Ids of the unloads in this plan whose memory ``free`` already counts."""
    released_bytes: int = 0
    version: int = 0
    """Bumped on every change of ``free`` or ``counts``: scores cached for this node are stale."""

    def reserve(self, size: int) -> None:
        """Take memory without a slot (a restart surging beside its old process, or growing)."""
        self.free -= size
        self.version += 1

    def take(self, instance: str, size: int) -> None:
        self.free -= size
        self.counts[instance] = self.counts.get(instance, 0) + 1
        self.version += 1

    def give_back(self, instance: str, size: int, by: str | None = None) -> None:
        """Return a replica's memory and slot; ``by`` is the unload that frees it, which a placement that
        needs the memory must then wait for."""
        self.free += size
        self.counts[instance] = max(0, self.counts.get(instance, 0) - 1)
        self.version += 1
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
    exclude: frozenset[str] = frozenset()
    """Nodes the replica is moving away from."""


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


def _model_present(r: Request, n: NodeCapacity) -> bool:
    """The node's agent did not say the instance's model file is missing there (asked only of the nodes a plan
    would load on; a node not asked counts as having it, and its load reports a missing file)."""
    missing = n.node.missing_models
    return not missing or r.instance.model_path not in missing


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
    (Rejection.MODEL_MISSING, _model_present),
    (Rejection.REPLICA_SLOTS, _slots),
    (Rejection.INSUFFICIENT_VRAM, _fits),
)
STATIC_CHECKS = CHECKS[:6]
"""The checks that do not depend on what earlier placements took."""
EVICTION_CHECKS = tuple((r, c) for r, c in CHECKS if r is not Rejection.INSUFFICIENT_VRAM)
"""What a node must pass for evictions there to make room: every check but free memory."""


def first_rejection(
    request: Request, node: NodeCapacity, checks: Sequence[tuple[Rejection, Check]] = CHECKS
) -> Rejection | None:
    for reason, check in checks:
        if not check(request, node):
            return reason
    return None


Scorer = Callable[[Request, NodeCapacity], float]


def _fit(r: Request, n: NodeCapacity) -> float:
    """Binpack: the fuller the node after the placement, the better; spread: the emptier."""
    after = (n.free - r.size) / n.total if n.total > 0 else 0.0
    return 1.0 - after if r.instance.placement is Placement.BINPACK else after


def _anti_affinity(r: Request, n: NodeCapacity) -> float:
    """Fewer replicas of the same instance on the node is better."""
    return 1.0 / (1 + n.counts.get(r.instance.name, 0))


def _installed(r: Request, n: NodeCapacity) -> float:
    """The backend is already installed there (no install before the load)."""
    return 1.0 if r.backend in n.node.backends else 0.0


SCORERS: tuple[tuple[float, Scorer], ...] = ((1.0, _fit), (1.0, _anti_affinity), (0.5, _installed))
"""(weight, scorer); each scorer gives a value in [0, 1]. The first ``CHANGING`` change as the pass places
replicas (free memory, counts); the others are fixed for a node and a request, so a cached sample scores them
once per node."""
CHANGING = 2


def score(request: Request, node: NodeCapacity, scorers: Sequence[tuple[float, Scorer]] = SCORERS) -> float:
    """The weighted sum of ``scorers`` (by default all: fit, anti-affinity, backend installed)."""
    total = 0.0
    for weight, scorer in scorers:
        total += weight * scorer(request, node)
    return total


class Candidates:
    """The nodes of one planning pass, with the work that repeats between placements done once.

    The first six checks (readiness, draining, pins, selector, platform, model present) do not change as the pass
    places replicas, and instances share few distinct profiles (pins, selector, vendors, model), so each profile's
    feasible
    pool and its rejection counts are computed once. The replicas of one instance are placed one after the
    other from the same sample, so the sample's scores are kept and only the nodes changed since (``version``)
    are scored again: one placement costs a pass over ``SAMPLE`` cached entries, not ``SAMPLE`` scorings.
    """

    __slots__ = ("_profiles", "_scanned", "_start", "_window", "_window_key", "nodes")

    def __init__(self, nodes: Sequence[NodeCapacity]) -> None:
        self.nodes = nodes
        """In name order; ``rank`` is each node's index."""
        self._profiles: dict[tuple[object, ...], tuple[list[NodeCapacity], Counter[Rejection]]] = {}
        self._window_key: tuple[object, ...] | None = None
        self._window: list[_Entry] = []
        """The sample: pool nodes in ring order from the instance's offset, with their cached scores."""
        self._start = 0
        self._scanned = 0
        """How many pool nodes (in ring order) the window holds."""

    def pool(self, request: Request) -> tuple[list[NodeCapacity], Counter[Rejection]]:
        """Statically feasible nodes (name order) and the static rejections of the others."""
        s = request.instance.scheduling
        key = (s.nodes, s.node_selector, request.gpu_vendors, request.exclude, request.instance.model_path)
        found = self._profiles.get(key)
        if found is None:
            pool: list[NodeCapacity] = []
            rejected: Counter[Rejection] = Counter()
            for node in self.nodes:
                reason = first_rejection(request, node, STATIC_CHECKS)
                if reason is None:
                    pool.append(node)
                else:
                    rejected[reason] += 1
            found = self._profiles[key] = (pool, rejected)
        return found

    def window(self, request: Request, pool: list[NodeCapacity]) -> list[_Entry]:
        """The cached sample for this request; a new one when the instance or its needs differ from the last."""
        s = request.instance.scheduling
        key = (request.instance.name, request.size, request.backend, s.nodes, s.node_selector, request.exclude)
        if key != self._window_key:
            offset = zlib.crc32(request.instance.name.encode()) % len(self.nodes)
            self._window_key, self._window, self._scanned = key, [], 0
            self._start = bisect.bisect_left(pool, offset, key=lambda n: n.rank)
        return self._window

    def extend(self, request: Request, pool: list[NodeCapacity]) -> _Entry | None:
        """The next pool node in ring order, added to the window; ``None`` when the window holds them all."""
        if self._scanned >= len(pool):
            return None
        node = pool[(self._start + self._scanned) % len(pool)]
        self._scanned += 1
        entry = _Entry(node, -1, None)
        self._window.append(entry)
        return entry


@dataclass(slots=True)
class _Entry:
    node: NodeCapacity
    version: int
    """The node's version when ``key`` was computed; -1 before the first scoring."""
    key: tuple[float, int] | None
    """(score, -rank) when feasible, ``None`` when the dynamic checks reject it."""
    fixed: float | None = None
    """The sum of the scorers that do not change during the pass (computed on first scoring)."""


_CHANGING_SCORERS = SCORERS[:CHANGING]
_FIXED_SCORERS = SCORERS[CHANGING:]


def _score_entry(request: Request, entry: _Entry) -> None:
    node = entry.node
    entry.version = node.version
    if not (_slots(request, node) and _fits(request, node)):
        entry.key = None
        return
    if entry.fixed is None:
        entry.fixed = score(request, node, _FIXED_SCORERS)
    # the changing scores first, then the fixed ones: the same sum, in the same order, as ``score``
    entry.key = (score(request, node, _CHANGING_SCORERS) + entry.fixed, -node.rank)


def place(request: Request, candidates: Candidates) -> str | None:
    """The best feasible node among a deterministic sample, or ``None`` (``rejections`` then says why).

    The sample is the first ``SAMPLE`` feasible nodes in name order from an offset derived from the instance,
    wrapping around; replicas of one instance share it, and anti-affinity spreads them within it. A request
    names no replica: every replica of an instance asks the same, and is told apart by what earlier ones took.
    """
    if not candidates.nodes:
        return None
    pool, _ = candidates.pool(request)
    window = candidates.window(request, pool)
    best: tuple[float, int] | None = None
    best_node: NodeCapacity | None = None
    seen = 0
    i = 0
    while seen < SAMPLE:
        if i < len(window):
            entry: _Entry | None = window[i]
        else:
            entry = candidates.extend(request, pool)
            if entry is None:
                break
        assert entry is not None
        i += 1
        if entry.version != entry.node.version:
            _score_entry(request, entry)
        key = entry.key
        if key is None:
            continue
        seen += 1
        if best is None or key > best:
            best, best_node = key, entry.node
    return best_node.name if best_node is not None else None


def rejections(request: Request, candidates: Candidates) -> tuple[tuple[str, int], ...]:
    """How many nodes each check rules out for ``request``, by reason (a full scan: asked only when ``place``
    found nothing)."""
    if not candidates.nodes:
        return ()
    pool, rejected = candidates.pool(request)
    counts = rejected + Counter(first_rejection(request, n, CHECKS[len(STATIC_CHECKS) :]) for n in pool)
    return tuple(sorted((r.value, c) for r, c in counts.items() if r is not None))
