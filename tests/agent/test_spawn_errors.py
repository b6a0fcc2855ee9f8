"""A start that fails before any process runs (a NUL byte in an argument or in the environment, a missing
executable) is a replica failure like a crash: retried under the restart policy with its doubling delays, failed
once ``max_restarts`` is used up, and said in ``last_error`` meanwhile; never retried at every monitor tick.

The launches are built by hand, as a state file or a controller that skipped validation could hand them over."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.agent.supervisor import Launch, Supervisor
from fleetd.core.desired import BackendType, RestartPolicy
from fleetd.core.observed import ReplicaState
from fleetd.transport.agent_api import ReplicaStatus
from tests.agent.support import wait_for

SECRET = "hunter2-value"


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    running = Supervisor(tmp_path / "agent")
    running.start()
    try:
        yield running
    finally:
        running.close(stop_replicas=True)


def launch(argv: tuple[str, ...], *, env: tuple[tuple[str, str], ...] = (), max_restarts: int) -> Launch:
    return Launch(
        instance="chat",
        replica=0,
        backend_type=BackendType.VLLM,
        argv=argv,
        env=env,
        host="127.0.0.1",
        port=1,
        config_hash="h",
        restart=RestartPolicy(max_restarts=max_restarts, restart_delay_ms=100, restart_max_delay_ms=200),
    )


def attempts(supervisor: Supervisor) -> int:
    path = supervisor.log_path("chat", 0)
    return path.read_bytes().count(b"--- fleetd: starting") if path.exists() else 0


def failed(supervisor: Supervisor) -> ReplicaStatus | None:
    found = supervisor.get("chat", 0)
    return found if found is not None and found.state is ReplicaState.FAILED else None


def test_a_nul_byte_in_the_environment_fails_the_replica_under_its_restart_policy(supervisor: Supervisor) -> None:
    supervisor.start_replica(
        launch((sys.executable, "-c", "pass"), env=(("BAD", f"{SECRET}\x00x"),), max_restarts=2)
    )
    gave_up = wait_for(lambda: failed(supervisor), timeout_s=20, what="the replica to be given up")
    assert gave_up.restarts == 2
    assert attempts(supervisor) == 3, "one start and max_restarts restarts, no more"
    error = gave_up.last_error or ""
    assert error.startswith("cannot start"), error
    assert "environment variable BAD contains a NUL byte" in error and "gave up after 2 restarts" in error
    assert SECRET not in error, "the value is never shown: it may be a secret"


def test_a_nul_byte_in_an_argument_is_retried_with_doubling_delays_not_at_every_tick(
    supervisor: Supervisor,
) -> None:
    started = time.monotonic()
    supervisor.start_replica(launch((sys.executable, "-c", "pass\x00"), max_restarts=-1))
    wait_for(lambda: attempts(supervisor) >= 4, timeout_s=20, what="four start attempts")
    # Delays of 100, 200 and 200 ms (restart_max_delay) come between the four attempts.
    assert time.monotonic() - started >= 0.5
    now = supervisor.get("chat", 0)
    assert now is not None and now.state is ReplicaState.STARTING, "unlimited restarts: it keeps trying"
    assert "argument 2 of the command contains a NUL byte" in (now.last_error or ""), now.last_error


def test_a_missing_executable_is_retried_under_the_restart_policy(supervisor: Supervisor, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-server"
    supervisor.start_replica(launch((str(missing), "--port", "1"), max_restarts=1))
    gave_up = wait_for(lambda: failed(supervisor), timeout_s=20, what="the replica to be given up")
    assert gave_up.restarts == 1
    assert attempts(supervisor) == 2
    assert (gave_up.last_error or "").startswith(f"cannot start {missing}: [Errno 2]"), gave_up.last_error
