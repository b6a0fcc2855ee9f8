"""Fencing at the agent: the highest controller lease epoch this node has obeyed, persisted (architecture.md §3).

Every mutating command (install, load, restart, unload) carries the epoch of the controller lease its sender
holds. The agent obeys an epoch at least as high as the highest it has seen and refuses a lower one, so a
controller that lost its lease (paused, partitioned, slow to notice) cannot act on any node once its successor
has spoken to it. The epoch is written to the state dir (atomically, fsynced) before the command runs, so an
agent restart does not forget it.

A leader's health probe carries its epoch too: the agent raises its highest epoch to it without refusing anything
(``observe``), so a new leader's first look at a node, at its first cycle, fences the old leader out there even
before it has had anything to command.

A command that was admitted keeps running if a newer controller speaks meanwhile (a load waiting on its
replica's health): the newer controller's next observation sees the replica and plans on it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

EPOCH_FILE = "controller-epoch"


class Fenced(Exception):
    """A command from a deposed controller (or from none); the message names both epochs."""


class EpochGuard:
    """The node's highest seen epoch; ``admit`` is thread-safe."""

    def __init__(self, node: str, state_dir: Path) -> None:
        self._node = node
        self._path = state_dir / EPOCH_FILE
        self._lock = threading.Lock()
        self._highest = _read(self._path)

    @property
    def highest(self) -> int:
        return self._highest

    def admit(self, epoch: int | None, holder: str, what: str) -> None:
        """Raise ``Fenced`` unless ``epoch`` is at least the highest seen; remember a higher one first."""
        if epoch is None or epoch <= 0:
            raise Fenced(
                f"node {self._node} refuses to {what}: the command carries no controller lease epoch "
                "(only a controller holding the lease may act on a node)"
            )
        with self._lock:
            if epoch < self._highest:
                raise Fenced(
                    f"node {self._node} refuses to {what} for {holder or 'a controller'}: its lease epoch "
                    f"{epoch} is lower than epoch {self._highest} already seen here; a newer controller leads"
                )
            if epoch > self._highest:
                _write(self._path, epoch)
                self._highest = epoch

    def observe(self, epoch: int) -> bool:
        """A leader's read announced its epoch: remember it if higher (never refuse a read); True if it was."""
        with self._lock:
            if epoch <= self._highest:
                return False
            _write(self._path, epoch)
            self._highest = epoch
            return True


def _read(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError as exc:
        raise ValueError(f"{path}: not an epoch number; remove the file only if no controller runs") from exc


def _write(path: Path, epoch: int) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as stream:
        stream.write(f"{epoch}\n")
        stream.flush()
        os.fsync(stream.fileno())
    tmp.replace(path)
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
