"""The leader's fence for an apply: the lease it holds and its epoch (architecture.md §3, several controllers).

An executor started by a leader carries its ``Fence``; every registry write of the apply checks the epoch in
its own transaction (``leases.fence``), so a deposed leader's executor stops at its next step instead of
writing over the new leader's work.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fence:
    lease: str
    """The lease's name, e.g. ``controller``."""
    holder: str
    epoch: int
