"""What happened to the replicas between two cycles, as lines for the ``serve`` log (the daemon says them).

Pure: two observations in, events out. A replica that became ready says where to send requests; one whose address
changed says so (a restart moved it off a taken port); one whose restart count rose says why it restarted (its
``last_error``: "killed by SIGKILL", "exited with status 1"); one that turned ``failed`` says the first line of its
error. The agent's supervisor says the same about its own node, with the restart delay; ``quiet_nodes`` are the
nodes whose supervisor logs into this same log (the embedded mode), so nothing is said twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from fleetd.core.observed import ObservedReplica, ReplicaState

Key = tuple[str, str, int]
"""(instance, node, replica index)."""


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    message: str
    level: int = logging.INFO
    fields: dict[str, str | int | None] = field(default_factory=dict)


def replica_events(
    before: Mapping[Key, ObservedReplica],
    after: Mapping[Key, ObservedReplica],
    *,
    announced: Mapping[Key, str | None],
    quiet_nodes: set[str],
) -> Iterator[ReplicaEvent]:
    """The events of each replica in ``after`` compared with ``before``, in (instance, node, index) order.
    ``announced``: the address each replica was last said ready at (``still_announced``)."""
    for key in sorted(after):
        yield from _events_of(before.get(key), after[key], quiet=key[1] in quiet_nodes)
        yield from _ready(key, after[key], announced)


def still_announced(
    announced: Mapping[Key, str | None], after: Mapping[Key, ObservedReplica]
) -> dict[Key, str | None]:
    """The ready addresses to remember after this cycle: a running replica's, and a restarting one's last."""
    kept = {key: address for key, address in announced.items() if key in after}
    kept.update({key: r.address for key, r in after.items() if r.state is ReplicaState.RUNNING})
    return kept


def _ready(key: Key, new: ObservedReplica, announced: Mapping[Key, str | None]) -> Iterator[ReplicaEvent]:
    """Where to send requests, when a replica is ready at an address not said yet (new, or moved)."""
    if new.state is not ReplicaState.RUNNING or (key in announced and announced[key] == new.address):
        return
    name = f"{new.instance}/{new.replica}"
    was = announced.get(key)
    yield ReplicaEvent(
        f"{name} ready at http://{new.address} on {new.node}"
        + (f" (moved from {was})" if was is not None else "")
        + " (OpenAI API: POST /v1/chat/completions)",
        logging.INFO,
        {"replica": name, "node": new.node, "event": "replica_ready", "address": new.address},
    )


def _events_of(old: ObservedReplica | None, new: ObservedReplica, *, quiet: bool) -> Iterator[ReplicaEvent]:
    name = f"{new.instance}/{new.replica}"
    fields: dict[str, str | int | None] = {"replica": name, "node": new.node}
    first_error = (new.last_error or "").partition("\n")[0] or None
    if old is not None and new.restarts > old.restarts and not quiet:
        yield ReplicaEvent(
            f"{name} on {new.node} restarted (restart {new.restarts})"
            + (f": {first_error}" if first_error else ""),
            logging.WARNING,
            {**fields, "event": "replica_restarted", "restarts": new.restarts, "error": first_error},
        )
    if new.state is ReplicaState.FAILED and (old is None or old.state is not ReplicaState.FAILED) and not quiet:
        yield ReplicaEvent(
            f"{name} on {new.node} failed after {new.restarts} restarts"
            + (f": {first_error}" if first_error else ""),
            logging.ERROR,
            {**fields, "event": "replica_failed", "restarts": new.restarts, "error": first_error},
        )
