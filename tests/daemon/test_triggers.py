"""The triggers of ``fleetd serve``: the worker runs one cycle per burst, is alive only while its cycle makes
progress and can be left behind by a bounded stop; replica events are spaced, and the manifest watcher fires on
a content change, also through a swapped symlink."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fleetd.daemon.triggers import CycleWorker, ManifestWatcher, SpacedTrigger
from tests.agent.support import wait_for


def test_spaced_trigger_passes_the_first_call_at_once_and_a_burst_once_after_the_gap() -> None:
    calls: list[float] = []
    spaced = SpacedTrigger(lambda: calls.append(time.monotonic()), min_gap_s=0.3)
    started = time.monotonic()
    for _ in range(10):
        spaced()
    assert len(calls) == 1 and calls[0] - started < 0.3, "the first call waited"
    assert spaced.pending
    wait_for(lambda: len(calls) == 2, timeout_s=5, what="the burst passed on once")
    assert calls[1] - calls[0] >= 0.3 - 0.01
    assert not spaced.pending, "a second deferred call is waiting: the burst was passed on twice"


def test_a_cancelled_spaced_trigger_passes_nothing_on() -> None:
    calls: list[float] = []
    spaced = SpacedTrigger(lambda: calls.append(time.monotonic()), min_gap_s=60)
    spaced()
    spaced()
    spaced.cancel()
    assert not spaced.pending and len(calls) == 1


def test_the_worker_runs_one_cycle_for_a_burst_of_triggers() -> None:
    release = threading.Event()
    cycles: list[int] = []

    def cycle() -> None:
        cycles.append(len(cycles))
        release.wait(10)

    worker = CycleWorker(cycle, on_error=lambda exc: None)
    worker.start()
    try:
        worker.trigger()
        wait_for(lambda: cycles == [0], timeout_s=5, what="the first cycle")
        for _ in range(20):
            worker.trigger()  # while the first cycle runs: all of them make one more cycle
        release.set()
        wait_for(lambda: len(cycles) == 2, timeout_s=5, what="the second cycle")
    finally:
        worker.stop()
    assert cycles == [0, 1]


def test_a_cycle_without_progress_is_stuck_and_progress_or_an_allowance_ends_it() -> None:
    release = threading.Event()

    def cycle() -> None:
        release.wait(30)

    worker = CycleWorker(cycle, on_error=lambda exc: None, stuck_after_s=0.3)
    worker.start()
    try:
        assert worker.alive() and worker.stuck() is None  # idle is not stuck
        worker.trigger()
        stuck = wait_for(worker.stuck, timeout_s=10, what="the cycle said stuck")
        assert stuck[0] > 0.3 and stuck[1] == 0.3
        assert not worker.alive(), "a stuck worker still said alive"
        worker.progress(allowance_s=60)  # e.g. the cycle starts a load with a long startup deadline
        assert worker.stuck() is None and worker.alive()
        release.set()
        wait_for(lambda: worker.busy_for() is None, timeout_s=10, what="the cycle finished")
        assert worker.alive()
    finally:
        release.set()
        assert worker.stop(timeout_s=10)


def test_a_bounded_stop_leaves_a_cycle_that_never_ends() -> None:
    never = threading.Event()

    def cycle() -> None:
        never.wait(60)

    worker = CycleWorker(cycle, on_error=lambda exc: None)
    worker.start()
    worker.trigger()
    wait_for(lambda: worker.busy_for() is not None, timeout_s=10, what="the cycle running")
    started = time.monotonic()
    assert worker.stop(timeout_s=0.3) is False
    assert time.monotonic() - started < 5
    never.set()


def test_a_change_made_while_the_watch_is_set_up_is_not_missed(tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\n# before\n")
    changes: list[float] = []
    watcher = ManifestWatcher([manifest], lambda: changes.append(time.monotonic()))
    manifest.write_text("version: 1\n# after\n")  # before the watch exists: no event will ever report it
    watcher.start()
    try:
        wait_for(lambda: changes, timeout_s=10, what="the change noticed once the watch was in place")
        assert watcher.wait_until_watching(timeout_s=0)
    finally:
        watcher.stop()


def test_the_watcher_fires_when_a_symlinked_manifest_is_swapped(tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    (releases / "a.yaml").write_text("version: 1\n# a\n")
    (releases / "b.yaml").write_text("version: 1\n# b\n")
    current = tmp_path / "fleet.yaml"
    current.symlink_to(releases / "a.yaml")
    changes: list[float] = []
    watcher = ManifestWatcher([current], lambda: changes.append(time.monotonic()))
    watcher.start()
    try:
        assert watcher.wait_until_watching(timeout_s=10)
        swap = tmp_path / "fleet.yaml.new"
        swap.symlink_to(releases / "b.yaml")
        swap.replace(current)  # how deploy tools switch releases: an atomic rename of a new link
        wait_for(lambda: changes, timeout_s=10, what="the swap noticed")
        (releases / "b.yaml").write_text("version: 1\n# b, edited in place\n")
        wait_for(lambda: len(changes) >= 2, timeout_s=10, what="an edit of the link's target noticed")
    finally:
        watcher.stop()
