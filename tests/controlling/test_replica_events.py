"""Replica events between two cycles: ready (and moved), restarted with why, failed with its first error line."""

from __future__ import annotations

import logging

from fleetd.controlling.replica_events import Key, replica_events, still_announced
from fleetd.core.observed import ObservedReplica, ReplicaState


def seen(*replicas: ObservedReplica) -> dict[Key, ObservedReplica]:
    return {(r.instance, r.node, r.replica): r for r in replicas}


def running(address: str = "10.0.0.5:18000", restarts: int = 0, error: str | None = None) -> ObservedReplica:
    return ObservedReplica(
        "tiny", "gpu-a", 0, ReplicaState.RUNNING, address=address, restarts=restarts, last_error=error
    )


def test_a_new_replica_is_announced_once() -> None:
    after = seen(running())
    (event,) = replica_events({}, after, announced={}, quiet_nodes=set())
    assert (
        event.message == "tiny/0 ready at http://10.0.0.5:18000 on gpu-a (OpenAI API: POST /v1/chat/completions)"
    )
    announced = still_announced({}, after)
    assert list(replica_events(after, after, announced=announced, quiet_nodes=set())) == []


def test_a_restart_on_a_remote_node_says_why_and_a_move_says_from_where() -> None:
    before = seen(running())
    announced = still_announced({}, before)
    restarting = ObservedReplica(
        "tiny",
        "gpu-a",
        0,
        ReplicaState.STARTING,
        address="10.0.0.5:18001",
        restarts=1,
        last_error="killed by SIGKILL",
    )
    (restart,) = replica_events(before, seen(restarting), announced=announced, quiet_nodes=set())
    assert restart.message == "tiny/0 on gpu-a restarted (restart 1): killed by SIGKILL"
    assert restart.level == logging.WARNING and restart.fields["event"] == "replica_restarted"
    announced = still_announced(announced, seen(restarting))
    back = seen(running("10.0.0.5:18001", restarts=1, error="killed by SIGKILL"))
    (ready,) = replica_events(seen(restarting), back, announced=announced, quiet_nodes=set())
    assert "ready at http://10.0.0.5:18001 on gpu-a (moved from 10.0.0.5:18000)" in ready.message


def test_a_failure_is_said_with_its_first_line_and_an_in_process_node_is_left_to_its_supervisor() -> None:
    before = seen(running())
    failed = ObservedReplica(
        "tiny", "gpu-a", 0, ReplicaState.FAILED, restarts=5, last_error="exited with status 1: no model\ntail"
    )
    events = list(replica_events(before, seen(failed), announced={}, quiet_nodes=set()))
    assert [(e.level, e.message) for e in events] == [
        (logging.WARNING, "tiny/0 on gpu-a restarted (restart 5): exited with status 1: no model"),
        (logging.ERROR, "tiny/0 on gpu-a failed after 5 restarts: exited with status 1: no model"),
    ]
    assert list(replica_events(before, seen(failed), announced={}, quiet_nodes={"gpu-a"})) == []
