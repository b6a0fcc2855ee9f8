"""The manifest's revision: the git commit of the checkout that holds the manifest files, and whether those
files differ from it (edited or untracked). Operators keep fleets in git (LESSONS.md: gpustack #5755), so a
plan, an apply log and ``fleetd status`` say which commit they reconciled to."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Revision:
    """The manifest's git commit, and whether the manifest files differ from it (edited or untracked)."""

    commit: str
    dirty: bool

    def label(self) -> str:
        return f"{self.commit[:12]}{' (dirty)' if self.dirty else ''}"

    def plan_revision(self) -> str:
        """How a plan records it: the full SHA, ``-dirty`` appended when the files differ from the commit."""
        return f"{self.commit}-dirty" if self.dirty else self.commit

    def document(self) -> dict[str, Any]:
        return {"commit": self.commit, "dirty": self.dirty}


def manifest_revision(paths: Sequence[str | Path]) -> Revision | None:
    """The git commit of the checkout holding the manifest, and whether its files differ from it; ``None``
    outside a git checkout (or without git)."""
    git = shutil.which("git")
    if git is None or not paths:
        return None
    first = Path(paths[0]).resolve()
    directory = first if first.is_dir() else first.parent
    try:
        head = _git(git, directory, "rev-parse", "--verify", "HEAD")
        if head.returncode != 0:
            return None
        changes = _git(git, directory, "status", "--porcelain", "--", *(str(Path(p).resolve()) for p in paths))
    except (OSError, subprocess.TimeoutExpired):
        return None
    dirty = changes.returncode != 0 or bool(changes.stdout.strip())
    return Revision(head.stdout.strip(), dirty)


def _git(git: str, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [git, "-C", str(directory), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
    )
