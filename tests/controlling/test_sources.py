"""``PathSource`` and ``ManifestTracker``: the manifest's files with their git revision, looked up again when
the files change or the revision may have moved; the last good desired state kept through an invalid edit."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fleetd.controlling.sources import REVISION_TTL_S, ManifestTracker, PathSource

MANIFEST = """\
version: 1
backends:
  b: {type: llama_cpp, install: {binary: /bin/true}}
instances:
  one: {backend: b, model: /models/one.gguf, vram: 1GiB}
"""


def git(directory: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(directory), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_revision_is_the_checkout_commit_and_dirty_follows_the_files(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(MANIFEST)
    git(tmp_path, "add", "fleet.yaml")
    git(tmp_path, "commit", "-qm", "first")
    head = git(tmp_path, "rev-parse", "HEAD")
    clock = Clock()
    source = PathSource([manifest], clock_s=clock)
    first = source.read()
    assert first.revision is not None and (first.revision.commit, first.revision.dirty) == (head, False)
    assert source.paths == (str(manifest),)

    manifest.write_text(MANIFEST.replace("1GiB", "2GiB"))  # new bytes: looked up again at once
    edited = source.read()
    assert edited.revision is not None and (edited.revision.commit, edited.revision.dirty) == (head, True)

    git(tmp_path, "commit", "-qam", "second")  # same bytes, new commit: seen once the cached lookup expires
    assert source.read().revision == edited.revision
    clock.now += REVISION_TTL_S + 1
    later = source.read().revision
    assert later is not None and later.commit == git(tmp_path, "rev-parse", "HEAD") and not later.dirty


def test_the_tracker_keeps_the_last_good_desired_state_and_its_revision(tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(MANIFEST)
    tracker = ManifestTracker(PathSource([manifest]))
    good = tracker.read()
    assert good.desired is not None and good.errors == () and good.revision is None  # not in a checkout
    manifest.write_text(MANIFEST + "bogus: 1\n")
    bad = tracker.read()
    assert bad.desired is good.desired
    assert len(bad.errors) == 1 and "bogus" in bad.errors[0]
    manifest.write_text(MANIFEST.replace("one:", "two:"))
    fixed = tracker.read()
    assert fixed.desired is not None and [i.name for i in fixed.desired.instances] == ["two"]
    assert fixed.errors == ()
