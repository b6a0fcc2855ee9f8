"""``plan(desired, observed, now_ms=...) -> Plan``: the pure core of fleetd (DESIGN.md sections 5 and 6).

It compares what the manifest declares with what the registry observed and returns the actions that close the
gap, each with a reason: node approvals, labels and drains first; then, instance by instance in priority
order, replicas to load (placed by ``placement``), restart (config changed, unhealthy) and unload (removed,
scaled down, idle, evicted, drained) and forget (replicas on lost nodes). It reads no clock, file or network; ``now_ms`` is an argument.

Rules that keep plans safe and calm:
- a plan that would take the fleet from some running replicas to none by the manifest's doing (removals,
  scale-downs) is refused unless ``allow_empty``; idle timeouts and lost nodes (forgotten replicas) are not
  the manifest's doing;
- a config change rolls through an instance's replicas in batches chained by ``depends_on``, surging a new
  process before stopping the old one when ``rollout.max_surge`` and the node's free VRAM allow; a restart that
  would not fit even with the old process stopped is left out, with a note;
- a replica moved off a draining node is loaded elsewhere first, then the old one is unloaded; one on a lost node
  is forgotten and one evicted by a higher priority is unloaded at once, each replaced elsewhere (``replace``,
  ``from_node``);
- replicas above ``min_replicas`` that are idle (nothing in flight, unused for ``idle_timeout`` or the policy's
  delay) are unloaded; when every running replica is busy, one more is loaded, up to ``max_replicas``;
- VRAM accounting includes reservations and every placement made earlier in the same plan; a placement that
  needs memory an unload of this plan frees depends on that unload, so no execution order over-commits a node.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetd.core.desired import BackendSpec, DesiredState, InstanceSpec, NodeSpec
from fleetd.core.names import AUTO_LABEL_KEYS
from fleetd.core.observed import (
    NodeStatus,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    SchedulingRecord,
)
from fleetd.core.timestamps import iso_from_ms, ms_from_iso
from fleetd.planning.hysteresis import HysteresisPolicy, capacity_digest, cooling_down, next_record
from fleetd.planning.launch_config import launch_hashes
from fleetd.planning.placement import Candidates, NodeCapacity, Request, place
from fleetd.planning.plans import (
    Action,
    ActionKind,
    LoadDetails,
    Plan,
    PlanRefused,
    Reason,
    RestartDetails,
    RestartStrategy,
    Unschedulable,
    approve_action,
    drain_action,
    forget_action,
    install_action,
    labels_action,
    load_action,
    restart_action,
    unload_action,
)
from fleetd.runtimes import runtime_for

LIVE = (ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.UNHEALTHY)


@dataclass(frozen=True, slots=True)
class PlanPolicy:
    allow_empty: bool = False
    """Allow a plan that unloads every running replica of the fleet."""
    scale_up_in_flight: int = 4
    """Scale up (to ``max_replicas``) when every running replica has at least this many requests in flight."""
    scale_down_idle_ms: int = 600_000
    """Replicas above ``min_replicas`` idle this long are unloaded when the instance sets no ``idle_timeout``."""
    hysteresis: HysteresisPolicy = field(default_factory=HysteresisPolicy)


@dataclass(frozen=True, slots=True)
class _Need:
    """What every replica of one instance needs: its spec, backend, launch config hash and VRAM."""

    spec: InstanceSpec
    backend: BackendSpec
    config_hash: str
    size: int

    def request(self, replica: int, exclude: frozenset[str] = frozenset()) -> Request:
        return Request(
            self.spec, self.size, runtime_for(self.backend.type).gpu_vendors, self.backend.name, replica, exclude
        )


class _SettledNodes(dict[str, bool]):
    """Whether a running replica on a node stays where it is: the node is known, not offline and not draining.
    Filled on first use per node (a dict lookup per replica, not a call: 50,000 replicas per tick)."""

    def __init__(self, state: _Pass) -> None:
        super().__init__()
        self._state = state

    def __missing__(self, name: str) -> bool:
        node = self._state.observed.nodes_by_name.get(name)
        found = self[name] = (
            node is not None and node.status is not NodeStatus.OFFLINE and not self._state.draining(node)
        )
        return found


@dataclass
class _Pass:
    """Working state of one planning pass."""

    desired: DesiredState
    observed: ObservedState
    now_ms: int
    policy: PlanPolicy
    estimates: Mapping[str, int]
    declared: dict[str, NodeSpec] = field(default_factory=dict)
    _capacity: dict[str, NodeCapacity] = field(default_factory=dict)
    """Nodes as placement sees them, built on first use: a converged tick touches few of them."""
    _candidates: Candidates | None = None
    actions: list[Action] = field(default_factory=list)
    unschedulable: list[Unschedulable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    node_prerequisites: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    """Node name -> ids of the approve_node / set_labels actions a load there must wait for."""
    installs: dict[tuple[str, str], str] = field(default_factory=dict)
    """(node, backend) -> id of the install_backend action planned for it."""
    evicted: set[tuple[str, str, int]] = field(default_factory=set)
    capacity_key: str = ""
    records: dict[str, SchedulingRecord] = field(default_factory=dict)
    """Hysteresis records as observed; replaced by the ones this plan keeps."""
    kept_records: list[SchedulingRecord] = field(default_factory=list)
    hashes: Mapping[str, str] = field(default_factory=dict)
    """Instance name -> launch config hash."""
    settled: _SettledNodes = field(init=False)
    """Node name -> whether a running replica there simply stays (the replica loop's fast path)."""

    def __post_init__(self) -> None:
        self.settled = _SettledNodes(self)

    @property
    def priorities(self) -> dict[str, int]:
        return {i.name: i.scheduling.priority for i in self.desired.instances}

    def capacity(self, name: str) -> NodeCapacity | None:
        """The node's capacity in this pass; ``None`` for a node the registry does not know."""
        found = self._capacity.get(name)
        if found is None:
            node = self.observed.nodes_by_name.get(name)
            if node is None:
                return None
            found = self._capacity[name] = _node_capacity(self, node)
        return found

    def draining(self, node: ObservedNode) -> bool:
        spec = self.declared.get(node.name)
        return node.status is NodeStatus.DRAINING or (spec is not None and spec.drain)

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


def plan(
    desired: DesiredState,
    observed: ObservedState,
    *,
    now_ms: int,
    policy: PlanPolicy = PlanPolicy(),
    vram_estimates: Mapping[str, int] | None = None,
    revision: str | None = None,
) -> Plan:
    """The actions that take ``observed`` to ``desired``. Raises ``PlanRefused`` for an unsafe plan."""
    state = _Pass(desired, observed, now_ms, policy, vram_estimates or {})
    state.declared = {n.name: n for n in desired.nodes}
    state.capacity_key = capacity_digest(observed)
    state.records = {r.instance: r for r in observed.scheduling}
    state.hashes = launch_hashes(desired)
    _plan_nodes(state)
    replicas_by_instance = observed.replicas_by_instance
    backends = {b.name: b for b in desired.backends}
    for instance in sorted(desired.instances, key=lambda i: (-i.scheduling.priority, i.name)):
        _plan_instance(state, instance, backends[instance.backend], replicas_by_instance.get(instance.name, ()))
    wanted = {i.name for i in desired.instances}
    for name in sorted(set(replicas_by_instance) - wanted):
        for replica in replicas_by_instance[name]:
            if replica.state is not ReplicaState.STOPPING:
                state.actions.append(_unload(replica, Reason.REMOVED))
    _refuse_emptying(state)
    return Plan(
        actions=tuple(sorted(state.actions, key=_action_order)),
        unschedulable=tuple(sorted(state.unschedulable, key=lambda u: u.instance)),
        desired_digest=desired.digest,
        observed_fingerprint=observed.fingerprint,
        revision=revision,
        created_at=iso_from_ms(now_ms),
        notes=tuple(state.notes),
        scheduling=tuple(sorted(state.kept_records, key=lambda r: r.instance)),
    )


# nodes ------------------------------------------------------------------------------------------------------


def _plan_nodes(state: _Pass) -> None:
    declared = {n.name: n for n in state.desired.nodes}
    for node in state.observed.nodes:
        spec = declared.get(node.name)
        if state.desired.nodes_declared and spec is None:
            if node.status is NodeStatus.PENDING:
                state.notes.append(
                    f"node {node.name} registered but is not declared in the manifest; it stays pending"
                )
            continue
        if spec is None:
            continue
        if not node.approved and spec.approved:
            action = approve_action(node.name)
            state.actions.append(action)
            state.node_prerequisites[node.name].append(action.id)
        manifest_labels = tuple((k, v) for k, v in node.labels if k not in AUTO_LABEL_KEYS)
        slots_change = node.max_replicas_per_model != spec.max_replicas_per_model
        if manifest_labels != spec.labels or slots_change:
            # only what changes is shown: the slots only when they change
            action = labels_action(node.name, spec.labels, spec.max_replicas_per_model if slots_change else None)
            state.actions.append(action)
            state.node_prerequisites[node.name].append(action.id)
        if spec.drain and node.status is not NodeStatus.DRAINING:
            state.actions.append(drain_action(node.name))


def _node_capacity(state: _Pass, node: ObservedNode) -> NodeCapacity:
    spec = state.declared.get(node.name)
    approved_here = spec is not None and spec.approved and not node.approved  # by this plan's approve_node
    ready = (node.status in (NodeStatus.HEALTHY, NodeStatus.DRAINING) and node.approved) or (
        approved_here and node.status in (NodeStatus.PENDING, NodeStatus.HEALTHY)
    )
    if state.desired.nodes_declared and spec is None:
        ready = False
    gpu = node.total_vram > 0  # a node that reports no VRAM offers its RAM (as the registry's reserve does)
    labels = dict(node.labels)
    if spec is not None:  # placement sees the labels this plan sets
        labels = {k: v for k, v in labels.items() if k in AUTO_LABEL_KEYS} | dict(spec.labels)
    counts: dict[str, int] = {}
    for replica in state.observed.replicas_by_node.get(node.name, ()):
        if replica.state is not ReplicaState.STOPPING:
            counts[replica.instance] = counts.get(replica.instance, 0) + 1
    return NodeCapacity(
        name=node.name,
        node=node,
        labels=labels,
        ready=ready,
        draining=state.draining(node),
        slots=spec.max_replicas_per_model if spec is not None else node.max_replicas_per_model,
        total=node.total_vram if gpu else node.total_ram,
        free=max(0, (node.available_vram if gpu else node.available_ram) - node.reserved_vram),
        counts=counts,
    )


# instances --------------------------------------------------------------------------------------------------


def _plan_instance(
    state: _Pass, spec: InstanceSpec, backend: BackendSpec, observed: tuple[ObservedReplica, ...]
) -> None:
    size = spec.vram_bytes if spec.vram_bytes is not None else state.estimates.get(spec.name, 0)
    need = _Need(spec, backend, state.hashes[spec.name], size)
    staying: list[ObservedReplica] = []
    moving: list[tuple[ObservedReplica, Reason]] = []
    """Replicas to move off a draining node: loaded elsewhere first, then unloaded (depending on the load)."""
    gone: list[tuple[ObservedReplica, Reason]] = []
    """Replicas already unloaded by this plan (node lost, evicted by a higher priority): replaced, not waited on."""
    nodes = state.observed.nodes_by_name
    evicted, settled, running, want = state.evicted, state.settled, ReplicaState.RUNNING, need.config_hash
    fresh = 0
    """Replicas that stay by the fast path, running the desired config."""
    for replica in observed:  # sorted by (node, index)
        if (
            replica.state is running
            and settled[replica.node]
            and not (evicted and _replica_key(replica) in evicted)
        ):
            staying.append(replica)  # the common case, decided as the checks below would decide it
            fresh += replica.config_hash == want
            continue
        if replica.state is ReplicaState.STOPPING:
            continue
        if state.evicted and _replica_key(replica) in state.evicted:
            gone.append((replica, Reason.EVICTED))
            continue
        node = nodes.get(replica.node)
        if node is None or node.status is NodeStatus.OFFLINE:
            state.actions.append(
                forget_action(spec.name, replica.node, replica.replica, vram_bytes=replica.vram_bytes)
            )
            if (lost := state.capacity(replica.node)) is not None:
                lost.give_back(spec.name, 0)
            gone.append((replica, Reason.NODE_LOST))
            continue
        if state.draining(node):
            moving.append((replica, Reason.DRAINED))
            continue
        if replica.state is ReplicaState.FAILED:
            state.notes.append(
                f"replica {spec.name}/{replica.node}/{replica.replica} failed after {replica.restarts} restarts"
                + (f": {replica.last_error}" if replica.last_error else "")
            )
        staying.append(replica)
    settled_replicas = fresh == len(staying)
    """Every staying replica is running the desired config: no rollout, and every one of them is live."""
    target = _target_count(state, spec, staying, all_running=settled_replicas)
    # Scale down first: it frees room for what follows.
    extra = len(staying) + len(moving) - target
    if extra > 0:
        for replica, reason in _pick_for_removal(state, spec, staying, moving, extra):
            unload = _unload(replica, reason)
            state.actions.append(unload)
            _capacity(state, replica.node).give_back(spec.name, replica.vram_bytes, by=unload.id)
            if reason is Reason.DRAINED:
                moving = [(r, why) for r, why in moving if r is not replica]
            else:
                staying.remove(replica)
    if not settled_replicas:
        _rollout(state, need, staying)
    missing = target - len(staying)
    record = state.records.get(spec.name)
    if missing > 0 and cooling_down(record, now_ms=state.now_ms, capacity=state.capacity_key):
        state.unschedulable.append(Unschedulable(spec.name, missing, (("cooldown", 0),)))
        if record is not None:
            state.kept_records.append(record)
        return
    unplaced = 0
    rejections: dict[str, int] = {}
    sources = [*moving, *gone]
    used_indexes = {r.replica for r in observed} if missing > 0 else set()
    for i in range(missing):
        old = sources[i] if i < len(sources) else None
        index = _next_index(used_indexes)
        reason = Reason.REPLACE if old is not None else Reason.SCALE_UP
        # The node a replica leaves needs no exclusion: it is draining, lost, or short of the room just taken;
        # checking it as any other node keeps its rejection reason accurate.
        load = _load(state, need, index, reason, source=old[0].node if old is not None else None)
        if load is None:
            unplaced += 1
            rejections = dict(place(need.request(index), state.candidates).rejections or (("no_nodes", 0),))
            if old is not None and i < len(moving):
                state.notes.append(
                    f"replica {spec.name}/{old[0].node}/{old[0].replica} stays on its {old[1].value} node: no other "
                    "node can take it"
                )
            continue
        used_indexes.add(index)
        if old is not None and i < len(moving):
            replica, why = old
            unload = _unload(replica, why, depends_on=(load.id,))
            state.actions.append(unload)
            _capacity(state, replica.node).give_back(spec.name, replica.vram_bytes, by=unload.id)
    if unplaced:
        state.unschedulable.append(Unschedulable(spec.name, unplaced, tuple(sorted(rejections.items()))))
    kept = next_record(
        record,
        spec.name,
        failed=unplaced > 0,
        now_ms=state.now_ms,
        capacity=state.capacity_key,
        policy=state.policy.hysteresis,
    )
    if kept is not None:
        state.kept_records.append(kept)


def _target_count(
    state: _Pass, spec: InstanceSpec, staying: list[ObservedReplica], *, all_running: bool = False
) -> int:
    """How many replicas the instance should have: its live replicas within ``[min, max]``, one more when every
    running replica is busy, fewer by the replicas above ``min`` that have been idle long enough.

    Only the instance's own ``idle_timeout`` takes an on-demand instance (``min_replicas: 0``) back to zero;
    with ``idle_timeout: 0`` ("never") the policy's scale-down delay trims load-driven replicas, never the last.
    """
    s = spec.scheduling
    live = staying if all_running else [r for r in staying if r.state in LIVE]
    threshold = state.policy.scale_up_in_flight
    # every live replica running, and every one of them busy: one more (an empty list is not busy)
    if live and all(r.state is ReplicaState.RUNNING and r.in_flight >= threshold for r in live):
        return min(s.max_replicas, max(len(live) + 1, s.min_replicas))
    floor = s.min_replicas if spec.idle_timeout_ms else max(s.min_replicas, min(1, len(live)))
    if len(live) <= floor:  # nothing above the floor to trim (and no timestamps to read)
        return min(floor, s.max_replicas)
    idle = sum(1 for r in live if _is_idle(state, spec, r))
    return min(max(len(live) - idle, floor), s.max_replicas)


def _is_idle(state: _Pass, spec: InstanceSpec, replica: ObservedReplica) -> bool:
    """Running, nothing in flight, and last used longer ago than the instance's ``idle_timeout`` (or, when it
    sets none, the policy's scale-down delay). A replica that never served a request is not idle: its age is
    unknown, and unloading it would undo a scale-up before it had a chance to take load."""
    if replica.state is not ReplicaState.RUNNING or replica.in_flight or replica.last_used is None:
        return False
    idle_for = spec.idle_timeout_ms or state.policy.scale_down_idle_ms
    return state.now_ms - ms_from_iso(replica.last_used) >= idle_for


def _idle_since_ms(replica: ObservedReplica) -> int | None:
    return ms_from_iso(replica.last_used) if replica.last_used is not None else None


def _pick_for_removal(
    state: _Pass,
    spec: InstanceSpec,
    staying: list[ObservedReplica],
    moving: list[tuple[ObservedReplica, Reason]],
    count: int,
) -> list[tuple[ObservedReplica, Reason]]:
    """Replicas to unload when there are more than the target: those being drained first (no need to move
    them), then unhealthy, then least recently used (one with requests in flight is in use now), then highest
    index."""
    chosen: list[tuple[ObservedReplica, Reason]] = [(r, why) for r, why in moving][:count]

    def preference(r: ObservedReplica) -> tuple[int, int, int]:
        healthy = 0 if r.state in (ReplicaState.UNHEALTHY, ReplicaState.FAILED) else 1
        used = state.now_ms if r.in_flight > 0 else (_idle_since_ms(r) or 0)
        return (healthy, used, -r.replica)

    for replica in sorted(staying, key=preference)[: count - len(chosen)]:
        chosen.append((replica, _scale_down_reason(state, spec, replica)))
    return chosen


def _scale_down_reason(state: _Pass, spec: InstanceSpec, replica: ObservedReplica) -> Reason:
    """``idle`` when the instance's own ``idle_timeout`` ran out on this replica, ``scale_down`` otherwise."""
    if spec.idle_timeout_ms and _is_idle(state, spec, replica):
        return Reason.IDLE
    return Reason.SCALE_DOWN


def _rollout(state: _Pass, need: _Need, staying: list[ObservedReplica]) -> None:
    """Restart stale or unhealthy replicas in batches; each batch waits for the one before (``depends_on``)."""
    spec, backend, want_hash, size = need.spec, need.backend, need.config_hash, need.size
    stale = [r for r in staying if r.config_hash != want_hash or r.state is ReplicaState.UNHEALTHY]
    if not stale:
        return
    batch = max(1, spec.rollout.max_surge, spec.rollout.max_unavailable)
    previous: tuple[str, ...] = ()
    current: list[str] = []
    for replica in stale:
        node = _capacity(state, replica.node)
        surge = spec.rollout.max_surge > 0 and node.free >= size
        reason = Reason.CONFIG_CHANGED if replica.config_hash != want_hash else Reason.UNHEALTHY
        waits: tuple[str, ...] = ()
        if surge:
            waits = node.waits_for(size)
            node.reserve(size)  # the new process runs beside the old until it is healthy
        elif node.free + replica.vram_bytes >= size:
            # Stopping first frees the old process's memory; only growth (a larger estimate) takes more. Memory
            # it frees is not offered to other placements: they may run before this restart.
            growth = max(0, size - replica.vram_bytes)
            waits = node.waits_for(growth) if growth else ()
            node.reserve(growth)
        else:
            state.notes.append(
                f"replica {spec.name}/{replica.node}/{replica.replica} is not restarted ({reason.value}): it needs "
                f"{size} bytes and node {replica.node} has {node.free + replica.vram_bytes} even with it stopped"
            )
            continue
        if len(current) == batch:
            previous, current = tuple(current), []
        strategy = RestartStrategy.SURGE if surge else RestartStrategy.STOP_FIRST
        action = restart_action(
            spec.name,
            replica.node,
            replica.replica,
            backend=backend.name,
            reason=reason,
            details=RestartDetails(want_hash, replica.config_hash, strategy, size),
            depends_on=tuple(sorted({*previous, *waits})),
        )
        state.actions.append(action)
        current.append(action.id)


def _load(state: _Pass, need: _Need, index: int, reason: Reason, *, source: str | None = None) -> Action | None:
    """Place one replica and plan its load (evicting, installing the backend as needed); ``None`` when no node
    can take it. The load depends on whatever it needs first: the node's approval and labels, the backend
    install, and the unloads in this plan whose memory it uses. ``source`` is the node it replaces one on."""
    spec, backend, size = need.spec, need.backend, need.size
    request = need.request(index)
    outcome = place(request, state.candidates)
    evictions: tuple[str, ...] = ()
    node_name = outcome.node
    if node_name is None:
        node_name, evictions = _evict_for(state, request)
        if node_name is None:
            return None
    node = _capacity(state, node_name)
    depends: list[str] = [*evictions, *node.waits_for(size), *state.node_prerequisites.get(node_name, ())]
    node.take(spec.name, size)
    if backend.name not in node.node.backends:
        key = (node_name, backend.name)
        if key not in state.installs:
            install = install_action(
                node_name,
                backend.name,
                f"{backend.install.kind.value}:{backend.install.spec}",
                depends_on=tuple(state.node_prerequisites.get(node_name, ())),
            )
            state.actions.append(install)
            state.installs[key] = install.id
        depends.append(state.installs[key])
    action = load_action(
        spec.name,
        node_name,
        index,
        backend=backend.name,
        reason=reason,
        details=LoadDetails(need.config_hash, size, source),
        depends_on=tuple(sorted(set(depends))),
    )
    state.actions.append(action)
    return action


def _evict_for(state: _Pass, request: Request) -> tuple[str | None, tuple[str, ...]]:
    """Free room on one node by unloading idle replicas of lower-priority instances; the smallest eviction
    (fewest bytes) on the first such node by name wins. Returns the node and the unload action ids."""
    priorities = state.priorities
    mine = request.instance.scheduling.priority
    best: tuple[int, str, list[ObservedReplica]] | None = None
    pool, _ = state.candidates.pool(request)
    for node in pool:
        if node.counts.get(request.instance.name, 0) >= node.slots:
            continue
        victims = sorted(
            (
                r
                for r in state.observed.replicas_by_node.get(node.name, ())
                if r.in_flight == 0
                and r.state in LIVE
                and priorities.get(r.instance, mine) < mine
                and (r.instance, r.node, r.replica) not in state.evicted
            ),
            key=lambda r: (priorities.get(r.instance, 0), -r.vram_bytes, r.instance, r.replica),
        )
        freed, chosen = node.free, []
        for victim in victims:
            if freed >= request.size:
                break
            chosen.append(victim)
            freed += victim.vram_bytes
        if freed >= request.size and chosen:
            cost = sum(v.vram_bytes for v in chosen)
            if best is None or (cost, node.name) < (best[0], best[1]):
                best = (cost, node.name, chosen)
    if best is None:
        return None, ()
    ids = []
    for victim in best[2]:
        state.evicted.add((victim.instance, victim.node, victim.replica))
        unload = _unload(victim, Reason.EVICTED)
        state.actions.append(unload)
        _capacity(state, victim.node).give_back(victim.instance, victim.vram_bytes, by=unload.id)
        ids.append(unload.id)
    return best[1], tuple(ids)


def _refuse_emptying(state: _Pass) -> None:
    """Refuse a plan that takes the fleet from some live replicas to none, like Argo CD's refusal to prune to
    zero. Only the manifest's doing counts: a plan whose unloads are all idle timeouts (an on-demand instance
    going to sleep) records what the fleet does by itself, and a replica forgotten on a lost node was not taken
    away by the plan (so a plan that forgets one never empties the fleet by itself)."""
    if state.policy.allow_empty:
        return
    unloads = {a.id: a for a in state.actions if a.kind is ActionKind.UNLOAD}
    if not unloads:  # nothing is unloaded: nothing is emptied (and no need to list 50,000 replicas)
        return
    live = [r for r in state.observed.replicas if r.state in LIVE]
    if not live:
        return
    if any(a.kind is ActionKind.LOAD for a in state.actions) or len(unloads) < len(live):
        return
    if not all(_unload(r, Reason.REMOVED).id in unloads for r in live):
        return
    if all(a.reason is Reason.IDLE for a in unloads.values()):
        return
    raise PlanRefused(
        f"this plan would unload every running replica of the fleet ({len(live)}); if that is what you mean, "
        "plan again with --allow-empty"
    )


# helpers ----------------------------------------------------------------------------------------------------


def _capacity(state: _Pass, node: str) -> NodeCapacity:
    """A node the pass already knows is in the registry (it holds a replica, or placement chose it)."""
    found = state.capacity(node)
    assert found is not None, node
    return found


def _unload(replica: ObservedReplica, reason: Reason, depends_on: tuple[str, ...] = ()) -> Action:
    return unload_action(
        replica.instance,
        replica.node,
        replica.replica,
        reason=reason,
        vram_bytes=replica.vram_bytes,
        depends_on=depends_on,
    )


def _next_index(used: set[int]) -> int:
    index = 0
    while index in used:
        index += 1
    return index


def _replica_key(replica: ObservedReplica) -> tuple[str, str, int]:
    return (replica.instance, replica.node, replica.replica)


_KIND_ORDER = {
    ActionKind.APPROVE_NODE: 0,
    ActionKind.SET_LABELS: 1,
    ActionKind.DRAIN_NODE: 2,
    ActionKind.INSTALL_BACKEND: 3,
    ActionKind.LOAD: 4,
    ActionKind.RESTART: 5,
    ActionKind.UNLOAD: 6,
    ActionKind.FORGET: 7,
}


def _action_order(action: Action) -> tuple[int, str]:
    return (_KIND_ORDER[action.kind], action.id)
