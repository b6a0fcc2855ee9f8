"""Reading a replica's log for ``fleetd logs``: the last lines read backwards in blocks, following new output,
and a rotation (copy to ``.log.1``, truncate in place) survived without losing what was written before it.

The follower is a generator driven step by step here: an empty chunk means "nothing new at this poll", so each
step is deterministic. The last test runs a real supervisor whose replica outgrows a tiny size limit.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

from fleetd.agent.log_reading import (
    follow_log,
    read_log,
    replica_log_path,
    replica_tail,
    rotated_path,
    split_lines,
    tail_lines,
)
from fleetd.agent.ports import PortAllocator
from fleetd.agent.probing import ProbeOutcome, ProbeResult
from fleetd.agent.supervisor import Launch, Supervisor
from fleetd.core.desired import BackendType
from fleetd.runtimes.probes import ProbeSpec
from tests.agent.support import wait_for


def numbered(count: int, start: int = 0) -> bytes:
    return b"".join(f"line {i}\n".encode() for i in range(start, start + count))


def rotate(log: Path) -> None:
    """What the supervisor does past its size limit: copy, then truncate in place."""
    rotated_path(log).write_bytes(log.read_bytes())
    with log.open("r+b") as handle:
        handle.truncate(0)


def append(log: Path, data: bytes) -> None:
    with log.open("ab") as handle:
        handle.write(data)


def test_the_last_lines_are_read_backwards_across_blocks(tmp_path: Path) -> None:
    log = tmp_path / "chat.0.log"
    log.write_bytes(numbered(100))
    for block in (3, 7, 64, 1 << 16):
        tail = tail_lines(log, 3, block_bytes=block)
        assert tail.lines == (b"line 97\n", b"line 98\n", b"line 99\n"), block
        assert tail.end == log.stat().st_size
    assert tail_lines(log, 1000).lines == tuple(split_lines(numbered(100)))
    assert tail_lines(log, 0) == tail_lines(log, 0)
    assert tail_lines(log, 0).lines == () and tail_lines(log, 0).end == log.stat().st_size
    assert tail_lines(tmp_path / "missing.log", 5).lines == ()


def test_a_line_being_written_counts_and_carriage_returns_do_not_split(tmp_path: Path) -> None:
    log = tmp_path / "chat.0.log"
    log.write_bytes(b"loading 10%\rloading 100%\nready\nhalf a li")
    assert tail_lines(log, 2, block_bytes=4).lines == (b"ready\n", b"half a li")
    assert tail_lines(log, 3).lines == (b"loading 10%\rloading 100%\n", b"ready\n", b"half a li")


def test_just_after_a_rotation_the_tail_reaches_into_the_rotated_generation(tmp_path: Path) -> None:
    log = replica_log_path(tmp_path / "state", "chat", 0)
    assert log == tmp_path / "state" / "agent" / "replicas" / "chat.0.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(numbered(10))
    rotate(log)
    append(log, numbered(2, start=10))
    tail = replica_tail(log, 5)
    assert tail.lines == tuple(split_lines(numbered(5, start=7)))
    assert tail.end == len(numbered(2, start=10))
    assert replica_tail(log, 2).lines == (b"line 10\n", b"line 11\n")


def test_following_yields_new_output_and_an_empty_chunk_when_there_is_none(tmp_path: Path) -> None:
    log = tmp_path / "chat.0.log"
    log.write_bytes(b"old\n")
    follower = follow_log(log, log.stat().st_size, interval_s=0)
    assert next(follower) == b""
    append(log, b"new 1\n")
    assert next(follower) == b"new 1\n"
    assert next(follower) == b""
    append(log, b"new 2\nnew 3\n")
    assert next(follower) == b"new 2\nnew 3\n"
    follower.close()


def test_following_survives_a_rotation_and_keeps_what_was_written_just_before_it(tmp_path: Path) -> None:
    log = tmp_path / "chat.0.log"
    log.write_bytes(numbered(3))
    follower = follow_log(log, 0, interval_s=0)
    assert next(follower) == numbered(3)
    append(log, b"written before the rotation\n")
    rotate(log)
    append(log, b"written after it\n")
    seen = [next(follower), next(follower)]
    assert seen == [b"written before the rotation\n", b"written after it\n"]
    assert next(follower) == b""
    rotate(log)  # a rotation with nothing new: nothing repeated
    append(log, b"x\n")
    assert next(follower) == b"x\n"


def test_a_missing_log_is_followed_until_it_appears(tmp_path: Path) -> None:
    log = tmp_path / "chat.0.log"
    follower = read_log(log, tail=10, follow=True, interval_s=0)
    assert next(follower) == b""
    log.write_bytes(b"first\n")
    assert next(follower) == b"first\n"


def test_read_log_gives_the_tail_then_only_what_comes_after_it(tmp_path: Path) -> None:
    log = tmp_path / "chat.0.log"
    log.write_bytes(numbered(5))
    assert b"".join(read_log(log, tail=2, follow=False)) == b"line 3\nline 4\n"
    assert b"".join(read_log(log, tail=0, follow=False)) == b""
    follower = read_log(log, tail=1, follow=True, interval_s=0)
    assert next(follower) == b"line 4\n"
    assert next(follower) == b""
    append(log, b"line 5\n")
    assert next(follower) == b"line 5\n"


REPLICA = """\
import pathlib, sys, time
def wait(name):
    while not pathlib.Path(sys.argv[1], name).exists():
        time.sleep(0.01)
def say(first, count):  # one write: a rotation cannot fall between its lines
    sys.stdout.write("".join(f"line {i:03d} " + "x" * 90 + "\\n" for i in range(first, first + count)))
    sys.stdout.flush()
say(0, 15)
wait("more")
say(15, 30)
wait("last")
print("after the rotation", flush=True)
time.sleep(600)
"""


def healthy(address: str, spec: ProbeSpec, backend_type: BackendType, timeout_s: float) -> ProbeResult:
    return ProbeResult(ProbeOutcome.HEALTHY)


def test_a_real_supervisors_rotation_is_followed_without_a_line_lost_or_repeated(tmp_path: Path) -> None:
    """15 lines of 100 bytes stay under the 4,000-byte limit; 30 more pass it and the supervisor rotates the
    log while the follower reads it; the line after the rotation comes from the truncated file's start."""
    script = tmp_path / "replica.py"
    script.write_text(REPLICA)
    supervisor = Supervisor(
        tmp_path / "state" / "agent", ports=PortAllocator(), prober=healthy, log_max_bytes=4_000
    )
    supervisor.start()
    try:
        argv = (sys.executable, str(script), str(tmp_path))
        supervisor.start_replica(Launch("chat", 0, BackendType.LLAMA_CPP, argv, (), "127.0.0.1", 18999, "h"))
        log = supervisor.log_path("chat", 0)
        assert log == replica_log_path(tmp_path / "state", "chat", 0)
        wait_for(lambda: b"line 014" in log.read_bytes(), timeout_s=20, what="the replica's first lines")
        follower = read_log(log, tail=1000, follow=True, interval_s=0.01)
        seen = read_until(follower, b"line 014")
        (tmp_path / "more").touch()
        wait_for(lambda: rotated_path(log).exists(), timeout_s=20, what="the supervisor to rotate the log")
        (tmp_path / "last").touch()
        seen += read_until(follower, b"after the rotation\n")
        follower.close()
        lines = [line for line in split_lines(seen) if not line.startswith(b"--- fleetd")]
        assert [line[:8] for line in lines] == [f"line {i:03d}".encode() for i in range(45)] + [b"after th"]
        assert b"line 044" in rotated_path(log).read_bytes()
    finally:
        supervisor.close(stop_replicas=True, grace_s=2)


def both(log: Path) -> bytes:
    """The rotated generation and the current log (the supervisor may rotate at any tick)."""
    older = rotated_path(log)
    return (older.read_bytes() if older.exists() else b"") + (log.read_bytes() if log.exists() else b"")


def read_until(chunks: Iterator[bytes], marker: bytes, timeout_s: float = 20.0) -> bytes:
    """Chunks until ``marker`` has come (the follower yields at every poll, so the deadline is checked)."""
    deadline, seen = time.monotonic() + timeout_s, b""
    while marker not in seen:
        assert time.monotonic() < deadline, f"{marker!r} did not come within {timeout_s} s; got {seen[-500:]!r}"
        seen += next(chunks)
    return seen
