"""Port allocation: a port held by anything on the host, or reserved by another agent, is never handed out."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from fleetd.agent.port_moves import port_slots, with_port
from fleetd.agent.ports import PortAllocator, PortLocks
from fleetd.agent.supervisor import Launch
from fleetd.core.desired import BackendType


def free_block(size: int) -> int:
    """The first port of ``size`` consecutive ports nothing listens on now (from an OS-chosen start)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first: int = probe.getsockname()[1]
        if first + size < 65535 and all(_free(first + i) for i in range(size)):
            return first


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_two_allocators_never_hand_out_one_port(tmp_path: Path) -> None:
    """Two agents with the same range: the first one's choice is not bound yet, and still not handed out twice."""
    first = free_block(4)
    one = PortAllocator(first, first + 3, locks=PortLocks(tmp_path))
    two = PortAllocator(first, first + 3, locks=PortLocks(tmp_path))
    taken = [one.allocate(), two.allocate(), one.allocate(), two.allocate()]
    assert sorted(taken) == [first, first + 1, first + 2, first + 3]


def test_a_reservation_held_by_another_process_is_respected(tmp_path: Path) -> None:
    first = free_block(2)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, fcntl, os; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            str(tmp_path / str(first)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    with holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            assert PortAllocator(first, first + 1, locks=PortLocks(tmp_path)).allocate() == first + 1
        finally:
            holder.kill()
    # The holder died: the kernel dropped its lock, and the port is available again.
    assert PortAllocator(first, first, locks=PortLocks(tmp_path)).allocate() == first


def test_a_port_something_listens_on_is_skipped(tmp_path: Path) -> None:
    first = free_block(2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first))
        squatter.listen()
        assert PortAllocator(first, first + 1, locks=PortLocks(tmp_path)).allocate() == first + 1


def test_a_released_port_can_be_reserved_by_another_agent(tmp_path: Path) -> None:
    first = free_block(1)
    one = PortAllocator(first, first, locks=PortLocks(tmp_path))
    assert one.allocate() == first
    one.release(first)
    assert PortAllocator(first, first, locks=PortLocks(tmp_path)).allocate() == first


def test_the_port_words_of_an_argv_are_found_and_moved() -> None:
    def argv_at(port: int) -> tuple[str, ...]:
        return ("docker", "run", "-p", f"127.0.0.1:{port}:{port}", "img", "--port", str(port), "--ctx", "18000")

    slots = port_slots(argv_at, 18000)
    assert slots == (3, 6)  # the context size that happens to equal the port is not one of them
    launch = Launch(
        "chat", 0, BackendType.LLAMA_CPP, argv_at(18000), (), "127.0.0.1", 18000, "h", port_slots=slots
    )
    moved = with_port(launch, 18007)
    assert moved.argv == argv_at(18007)
    assert moved.port == 18007 and moved.address == "127.0.0.1:18007"


def test_an_argv_whose_shape_changes_with_the_port_is_not_movable() -> None:
    assert port_slots(lambda port: ("x",) * (port % 2 + 1), 18000) is None
