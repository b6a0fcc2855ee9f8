"""Place: the loads that bring an instance up to its target, replacing what moves or is gone first.

The third step of the per-instance pipeline. Each missing replica is placed by ``placement`` (evicting idle
lower-priority replicas when nothing fits); the first ones take over from replicas being moved off their node
(those are unloaded once the new one is loaded: the unload depends on the load) or already gone (lost,
evicted: ``replace`` with ``from_node``), the rest are scale-ups. A load depends on whatever it needs first:
the node's approval and labels, the backend install (planned once per node and backend), and the unloads of
this plan whose memory it uses, so no execution order over-commits a node. Placement hysteresis (``hysteresis``)
turns repeated failures into a cooldown during which nothing is attempted.
"""

from __future__ import annotations

from fleetd.core.observed import ObservedReplica
from fleetd.planning.classify import Classified
from fleetd.planning.context import Need, Pass
from fleetd.planning.hysteresis import cooldown_reasons, cooling_down, next_record
from fleetd.planning.missing_models import note_missing_model
from fleetd.planning.placement import Rejection, Request, place, rejections
from fleetd.planning.plans import (
    Action,
    LoadDetails,
    Reason,
    Unschedulable,
    install_action,
    load_action,
    unload_action,
)

Rejections = tuple[tuple[str, int], ...]
_STAYS_WORDS = {Reason.DRAINED: "drained", Reason.NODE_UNDECLARED: "undeclared"}
"""How the note for a replica that cannot be moved names its node."""


class ReplicaIndexes:
    """The replica indexes an instance uses, observed and planned: a new replica takes the lowest free one."""

    __slots__ = ("_observed", "_used")

    def __init__(self, observed: tuple[ObservedReplica, ...]) -> None:
        self._observed = observed
        self._used: set[int] | None = None

    def next(self) -> int:
        if self._used is None:
            self._used = {r.replica for r in self._observed}
        index = 0
        while index in self._used:
            index += 1
        return index

    def take(self, index: int) -> None:
        assert self._used is not None
        self._used.add(index)


def place_missing(p: Pass, need: Need, classified: Classified, missing: int, indexes: ReplicaIndexes) -> None:
    """Plan ``missing`` loads (moved and gone replicas first), honouring and updating the hysteresis record."""
    if missing <= 0:  # placed in full: no record to keep
        return
    name = need.spec.name
    record = p.inputs.records.get(name)
    now, capacity = p.inputs.now_ms, p.inputs.capacity_key
    if cooling_down(record, now_ms=now, capacity=capacity):
        assert record is not None  # cooling_down is False without one
        p.draft.add_unschedulable(Unschedulable(name, missing, cooldown_reasons(record)))
        p.draft.kept_records.append(record)
        return
    unplaced, rejected = _load_missing(p, need, classified, missing, indexes)
    reasons = tuple(sorted(rejected))
    if unplaced:
        p.draft.add_unschedulable(Unschedulable(name, unplaced, reasons))
        if any(code == Rejection.MODEL_MISSING.value for code, _ in reasons):
            note_missing_model(p, need.spec)
    policy = p.inputs.policy.hysteresis
    kept = next_record(
        record, name, failed=unplaced > 0, now_ms=now, capacity=capacity, policy=policy, reasons=reasons
    )
    if kept is not None:
        p.draft.kept_records.append(kept)


def _load_missing(
    p: Pass, need: Need, classified: Classified, missing: int, indexes: ReplicaIndexes
) -> tuple[int, Rejections]:
    """Loads for the missing replicas; how many could not be placed, and why."""
    moving = classified.moving
    sources = [*moving, *classified.gone]
    # The node a replica leaves needs no exclusion: it is draining, undeclared, lost, or short of the room just
    # taken; checking it as any other node keeps its rejection reason accurate.
    request = need.request()
    for i in range(missing):
        old = sources[i] if i < len(sources) else None
        index = indexes.next()
        reason = Reason.REPLACE if old is not None else Reason.SCALE_UP
        source = old[0].node if old is not None else None
        load, rejections = load_replica(p, need, request, index, reason, source=source)
        if load is None:
            # Nothing changes until a placement succeeds: every replica left fails the same way.
            for replica, why in moving[i:]:
                p.draft.notes.append(
                    f"replica {need.spec.name}/{replica.node}/{replica.replica} stays on its {_STAYS_WORDS[why]} "
                    "node: no other node can take it"
                )
            return missing - i, rejections
        indexes.take(index)
        if i < len(moving):
            replica, why = moving[i]
            unload = unload_action(
                need.spec.name,
                replica.node,
                replica.replica,
                reason=why,
                vram_bytes=replica.vram_bytes,
                depends_on=(load.id,),
            )
            p.draft.actions.append(unload)
            p.fleet.known(replica.node).give_back(need.spec.name, replica.vram_bytes, by=unload.id)
    return 0, ()


def load_replica(
    p: Pass,
    need: Need,
    request: Request,
    index: int,
    reason: Reason,
    *,
    source: str | None = None,
    evict: bool = True,
) -> tuple[Action | None, Rejections]:
    """Place replica ``index`` and plan its load (evicting when ``evict``, installing the backend as needed);
    with ``None``, the rejections of every node. ``source`` is the node of the replica it replaces."""
    spec, backend, size = need.spec, need.backend, need.size
    evictions: tuple[str, ...] = ()
    node_name = place(request, p.fleet.candidates)
    if node_name is None:
        found = p.evictions.find(request, p.fleet) if evict else None
        if found is None:
            return None, rejections(request, p.fleet.candidates) or (("no_nodes", 0),)
        node_name, evictions = found[0], _evict(p, found[1])
    node = p.fleet.known(node_name)
    depends: list[str] = [*evictions, *node.waits_for(size), *p.draft.node_prerequisites.get(node_name, ())]
    node.take(spec.name, size)
    if backend.name not in node.node.backends:
        depends.append(_install(p, node_name, need))
    action = load_action(
        spec.name,
        node_name,
        index,
        backend=backend.name,
        reason=reason,
        details=LoadDetails(need.config_hash, size, source),
        depends_on=tuple(sorted(set(depends))) if depends else (),
    )
    p.draft.actions.append(action)
    return action, ()


def _evict(p: Pass, victims: list[ObservedReplica]) -> tuple[str, ...]:
    """Unload ``victims`` (reason ``evicted``); the ids of the unloads, which the load waits for."""
    ids = []
    for victim in victims:
        p.evictions.mark(victim)
        unload = unload_action(
            victim.instance, victim.node, victim.replica, reason=Reason.EVICTED, vram_bytes=victim.vram_bytes
        )
        p.draft.actions.append(unload)
        p.fleet.known(victim.node).give_back(victim.instance, victim.vram_bytes, by=unload.id)
        ids.append(unload.id)
    return tuple(ids)


def _install(p: Pass, node: str, need: Need) -> str:
    """The id of the install of the instance's backend on ``node``, planned on first need."""
    backend = need.backend
    key = (node, backend.name)
    if key not in p.draft.installs:
        install = install_action(
            node,
            backend.name,
            f"{backend.install.kind.value}:{backend.install.spec}",
            depends_on=tuple(p.draft.node_prerequisites.get(node, ())),
        )
        p.draft.actions.append(install)
        p.draft.installs[key] = install.id
    return p.draft.installs[key]
