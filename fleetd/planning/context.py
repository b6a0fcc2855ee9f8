"""What one planning pass reads and what it writes, passed to each step of ``plan``.

A pass is four parts: ``PassInputs`` (frozen: the desired and observed states, ``now_ms``, the policy and what
is derived from them once), the ``FleetView`` of ``capacity`` (nodes as placement sees them), the ``Draft``
(the actions, notes, unschedulable replicas and hysteresis records found so far) and the ``Evictions`` made so
far. The steps (node actions, then per instance: classify, stop, rollout, place, replace failed) read the
inputs and append to the draft.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetd.core.desired import BackendSpec, BackendType, DesiredState, InstanceSpec, NodeSpec
from fleetd.core.observed import ObservedState, SchedulingRecord
from fleetd.planning.capacity import FleetView
from fleetd.planning.eviction import Evictions
from fleetd.planning.hysteresis import HysteresisPolicy
from fleetd.planning.placement import Request
from fleetd.planning.plans import Action, Unschedulable
from fleetd.runtimes import runtime_for


@dataclass(frozen=True, slots=True)
class PlanPolicy:
    allow_empty: bool = False
    """Allow a plan that unloads every running replica of the fleet."""
    scale_up_in_flight: int = 4
    """Scale up (to ``max_replicas``) when every running replica has at least this many requests in flight."""
    scale_down_idle_ms: int = 600_000
    """Replicas above ``min_replicas`` idle this long are unloaded when the instance sets no ``idle_timeout``."""
    hysteresis: HysteresisPolicy = field(default_factory=HysteresisPolicy)
    max_replacements: int = 20
    """Replicas on lost nodes forgotten and re-placed per plan; the rest wait for the next cycle (``deferred``),
    so a partition that takes many nodes at once cannot move the whole fleet in one cycle."""


@dataclass(frozen=True, slots=True)
class PassInputs:
    desired: DesiredState
    observed: ObservedState
    now_ms: int
    policy: PlanPolicy
    estimates: Mapping[str, int]
    """Instance name -> estimated VRAM, for instances with ``vram: auto``."""
    hashes: Mapping[str, str]
    """Instance name -> launch config hash."""
    declared: Mapping[str, NodeSpec]
    records: Mapping[str, SchedulingRecord]
    """Hysteresis records as observed, by instance."""
    capacity_key: str
    """Digest of the fleet's placement structure (a change ends a hysteresis cooldown)."""
    priorities: Mapping[str, int]
    """Instance name -> priority, for the declared instances."""


@dataclass(slots=True)
class Draft:
    """The plan as found so far."""

    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unschedulable: dict[str, Unschedulable] = field(default_factory=dict)
    kept_records: list[SchedulingRecord] = field(default_factory=list)
    node_prerequisites: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """Node name -> ids of the approve_node / set_labels actions a load there must wait for."""
    installs: dict[tuple[str, str], str] = field(default_factory=dict)
    """(node, backend) -> id of the install_backend action planned for it."""
    replacements: int = 0
    """Replicas on lost nodes forgotten (and so re-placed) by this plan so far."""
    deferred: int = 0
    """Replicas on lost nodes left for the next cycle by ``PlanPolicy.max_replacements``."""
    failed: int = 0
    """Failed replicas left where they are until their ``restart_max_delay`` has passed (each has a note)."""

    def add_unschedulable(self, entry: Unschedulable) -> None:
        """Record replicas that cannot run, merged with what the instance already has (one entry each)."""
        found = self.unschedulable.get(entry.instance)
        self.unschedulable[entry.instance] = entry if found is None else found.merged(entry)


@dataclass(frozen=True, slots=True)
class Pass:
    inputs: PassInputs
    fleet: FleetView
    draft: Draft
    evictions: Evictions


@dataclass(frozen=True, slots=True)
class Need:
    """What every replica of one instance needs: its spec, backend, launch config hash and VRAM."""

    spec: InstanceSpec
    backend: BackendSpec
    config_hash: str
    size: int

    def request(self, exclude: frozenset[str] = frozenset()) -> Request:
        """What placement is asked for each replica (the same for all: a request names no replica)."""
        return Request(self.spec, self.size, _VENDORS[self.backend.type], self.backend.name, exclude)


_VENDORS = {t: runtime_for(t).gpu_vendors for t in BackendType}
"""Backend type -> the GPU vendors it runs on (``None``: any); looked up once per placement."""
