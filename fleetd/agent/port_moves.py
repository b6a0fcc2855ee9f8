"""Moving a replica to another port: for a restart whose port another process took while the replica was down.

The argv of a replica names its port (``--port 18003``; ``-p 127.0.0.1:18003:18003`` for a container), written
by the backend's launcher. Which words those are is found once, when the launch is built, by building it for two
ports and comparing (``port_slots``): no launcher needs to know about moves, and a launcher whose argv changes
shape with the port is simply not movable (``None``). The slots are kept in the replica's state file, so a
restarted agent can still move an adopted replica. ``PORT`` in the environment follows the launch's port at
every start (``Supervisor._spawn``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetd.agent.supervisor import Launch


def port_slots(argv_at: Callable[[int], tuple[str, ...]], port: int) -> tuple[int, ...] | None:
    """Indexes of the argv words that hold the port, or ``None`` when the argv cannot be moved to another."""
    other = port + 1 if port < 65535 else port - 1
    here, there = argv_at(port), argv_at(other)
    if len(here) != len(there):
        return None
    return tuple(i for i, (a, b) in enumerate(zip(here, there, strict=True)) if a != b)


def movable(launch: Launch) -> bool:
    return launch.port_slots is not None


def with_port(launch: Launch, port: int) -> Launch:
    """``launch`` listening on ``port`` instead (only for a ``movable`` launch)."""
    assert launch.port_slots is not None
    old, new = str(launch.port), str(port)
    argv = list(launch.argv)
    for i in launch.port_slots:
        argv[i] = argv[i].replace(old, new)
    return replace(launch, argv=tuple(argv), port=port)
