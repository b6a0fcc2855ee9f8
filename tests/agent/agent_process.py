"""An agent in its own process, for the adoption test: ``agent_process.py STATE MANIFEST OUT``.

It starts a ``LocalAgent`` on STATE (adopting what an earlier one left), makes sure replica 0 of every instance
of MANIFEST is loaded (installing backends first), and then writes ``<state> <pid> <restarts>`` of the first
replica to OUT every 50 ms until it is killed. SIGTERM closes it without stopping the replicas.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from fleetd.agent.local import LocalAgent
from fleetd.manifest.loading import load_manifest
from fleetd.planning.launch_config import config_hash
from fleetd.transport.agent_api import LaunchRequest


def main(state: str, manifest: str, out: str) -> int:
    loaded = load_manifest([Path(manifest)])
    desired = loaded.desired
    assert desired is not None, [d.message for d in loaded.errors]
    agent = LocalAgent("node-1", Path(state))
    agent.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    for spec in desired.instances:
        backend = desired.backend(spec.backend)
        assert backend is not None
        agent.install_backend(backend)
        agent.load(LaunchRequest(spec, backend, 0, config_hash(spec, backend)))
    target = Path(out)
    while not done.wait(0.05):
        replicas = agent.list_replicas()
        if replicas:
            first = replicas[0]
            tmp = target.with_suffix(".tmp")
            tmp.write_text(f"{first.state.value} {first.pid} {first.restarts}")
            tmp.replace(target)
    agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
