"""Failed replicas past their ``restart_max_delay`` never block an instance: over random fleets (the strategies
of ``test_planner_properties``, with every failed replica failed an hour ago), plan, apply and plan again
converges, every plan is executable without over-committing a node, and once converged no failed replica is
left of an instance that is not reported unschedulable.
"""

from __future__ import annotations

import dataclasses

from hypothesis import event, given, note

from fleetd.core.observed import NodeStatus, ObservedState, ReplicaState
from fleetd.core.timestamps import iso_from_ms
from fleetd.planning.plans import Reason
from tests.planning.test_planner_properties import (
    FLEETS,
    NOW,
    ROUNDS,
    SETTINGS,
    TICK_MS,
    Fleet,
    _plan,
    check_plan,
)


def _failed_an_hour_ago(observed: ObservedState) -> ObservedState:
    long_ago = iso_from_ms(NOW - 3_600_000)
    replicas = tuple(
        dataclasses.replace(r, state_since=long_ago) if r.state is ReplicaState.FAILED else r
        for r in observed.replicas
    )
    return dataclasses.replace(observed, replicas=replicas)


@SETTINGS
@given(FLEETS)
def test_failed_replicas_are_replaced_or_restarted_and_the_fleet_converges(fleet: Fleet) -> None:
    observed = _failed_an_hour_ago(fleet.observed)
    now = NOW
    result = _plan(fleet, observed, now_ms=now)
    for action in result.actions:
        if action.reason is Reason.FAILED:
            event(f"failed replica: {action.kind.value}")
    rounds = 0
    while not result.is_empty:
        note(f"round {rounds}: {[a.id + ' ' + a.reason.value for a in result.actions]}")
        assert rounds < ROUNDS, f"no convergence after {ROUNDS} rounds; still planned: {result.actions}"
        observed = check_plan(fleet, observed, result)
        rounds += 1
        now += TICK_MS
        result = _plan(fleet, observed, now_ms=now)
    short = {u.instance for u in result.unschedulable}
    declared = {i.name for i in fleet.desired.instances}
    usable = {n.name for n in observed.nodes if n.status is not NodeStatus.OFFLINE}
    for replica in observed.replicas:
        if replica.state is ReplicaState.FAILED and replica.instance in declared and replica.node in usable:
            assert replica.instance in short, f"{replica} is still failed and nothing says why"
