"""Reading a replica's log for ``fleetd logs``: its last lines, then what it writes next (``-f``).

Each replica writes its output to ``<state>/agent/replicas/<instance>.<n>.log`` (the supervisor's file). Past
its size limit the supervisor copies it to ``.log.1`` and truncates it in place, so the replica keeps its
append-mode descriptor. This module reads that file for two callers: ``fleetd logs`` on the machine whose state
dir holds it (``fleetd.controlling.replica_logs``), and the agent's ``ReplicaLogs`` gRPC stream for a remote
node (``LocalAgent.replica_logs`` behind ``AgentService``). It only reads, and works on bytes as written: no
decoding, so what a backend printed reaches the terminal unchanged.

- ``tail_lines`` reads backwards from the end in blocks until it has the lines asked for (never the whole of a
  large file), and says where the file ended, so following continues exactly after the tail.
- ``follow_log`` polls the file's size (a short interval; no inotify, which a network file system may not
  have). When the size drops below the read offset the file was truncated by a rotation: what was written
  between the last poll and the rotation is read from ``.log.1``, and reading continues from offset 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fleetd.transport.agent_api import LogStream

BLOCK_BYTES = 64 * 1024
"""How much ``tail_lines`` reads per step backwards, and the most one chunk of output carries."""
POLL_S = 0.25
"""How often a follower looks at the file's size."""


@dataclass(frozen=True, slots=True)
class LogTail:
    lines: tuple[bytes, ...]
    """The last lines, oldest first, each with its ``\\n`` (the last one may lack it: still being written)."""
    end: int
    """The file's size when it was read: where following continues."""


def replica_log_path(state_dir: Path, instance: str, replica: int) -> Path:
    """Where the agent of ``state_dir`` (a fleetd state dir) writes the output of replica ``instance/replica``."""
    return log_file(replicas_dir(state_dir / "agent"), instance, replica)


def replicas_dir(agent_dir: Path) -> Path:
    """The supervisor's directory of replica state files and logs under an agent's directory."""
    return agent_dir / "replicas"


def log_file(directory: Path, instance: str, replica: int) -> Path:
    return directory / f"{instance}.{replica}.log"


def rotated_path(log: Path) -> Path:
    """The one older generation of ``log`` that rotation keeps (``<instance>.<n>.log.1``)."""
    return log.with_name(log.name + ".1")


def tail_lines(path: Path, n: int, *, block_bytes: int = BLOCK_BYTES) -> LogTail:
    """The last ``n`` lines of ``path`` (fewer when it has fewer; none for a missing file or ``n <= 0``)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return LogTail((), 0)
    with handle:
        end = handle.seek(0, os.SEEK_END)
        if n <= 0:
            return LogTail((), end)
        start, data = end, b""
        # The n lines are complete once n newlines precede the last byte (a final "\n" ends the last line).
        while start > 0 and data.count(b"\n", 0, max(0, len(data) - 1)) < n:
            step = min(block_bytes, start)
            start -= step
            handle.seek(start)
            data = handle.read(step) + data
    return LogTail(tuple(split_lines(data)[-n:]), end)


def replica_tail(log: Path, n: int) -> LogTail:
    """The last ``n`` lines of a replica's output: from ``log``, and from its rotated generation before them
    when ``log`` has fewer (just after a rotation). ``end`` is ``log``'s."""
    current = tail_lines(log, n)
    missing = n - len(current.lines)
    if missing <= 0:
        return current
    older = tail_lines(rotated_path(log), missing).lines
    return LogTail(older + current.lines, current.end)


def split_lines(data: bytes) -> list[bytes]:
    """``data`` cut after each ``\\n`` only (``bytes.splitlines`` would also cut at the ``\\r`` of a progress
    bar), each piece keeping its newline."""
    pieces = data.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])
    return lines


def follow_log(path: Path, offset: int, *, interval_s: float = POLL_S) -> LogStream:
    """What is written to ``path`` from ``offset`` on, as it comes, forever: chunks of at most ``BLOCK_BYTES``,
    and an empty chunk after each poll that found nothing new, so that the consumer can stop between polls (by
    closing the iterator). A size below ``offset`` is a rotation: the rest of the old file is read from its
    rotated copy, then ``path`` from its start."""
    while True:
        size = _size(path)
        if size < offset:
            yield from _read_from(rotated_path(path), offset)
            offset = 0
        if size > offset:
            data = _read(path, offset, min(size - offset, BLOCK_BYTES))
            offset += len(data)
            if data:
                yield data
                continue
        yield b""
        time.sleep(interval_s)  # polling the file's size, the follower's only way to learn of new output


def read_log(log: Path, *, tail: int, follow: bool, interval_s: float = POLL_S) -> LogStream:
    """A replica's output as ``fleetd logs`` prints it: its last ``tail`` lines, then, with ``follow``, what it
    writes next (``follow_log``: never ends by itself). Read when iterated, not before."""
    last = replica_tail(log, tail)
    yield from chunks(b"".join(last.lines))
    if follow:
        yield from follow_log(log, last.end, interval_s=interval_s)


def chunks(data: bytes, size: int = BLOCK_BYTES) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (none for empty data)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _size(path: Path) -> int:
    """The file's size; a missing file counts as empty."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read(path: Path, offset: int, length: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(length)
    except FileNotFoundError:
        return b""


def _read_from(path: Path, offset: int) -> Iterator[bytes]:
    """``path`` from ``offset`` to its end, in chunks (nothing when it is shorter or missing)."""
    size = _size(path)
    while offset < size:
        data = _read(path, offset, min(size - offset, BLOCK_BYTES))
        if not data:
            return
        offset += len(data)
        yield data
