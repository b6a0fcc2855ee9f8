"""A manifest path that would block never hangs a command (issue 15, item 4).

Only regular files are read: a FIFO with no writer (given as the manifest, or among a directory's ``*.yaml``
files) and a device are errors at their path, within a deadline; the commands run as subprocesses, as an
operator runs them, with a timeout that fails the test instead of hanging it. The read's own deadline (for a
hung network mount, which a test cannot make) is shown on a call that really blocks: opening a FIFO for reading
without ``O_NONBLOCK``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetd.manifest.reading import read_manifest_files

DEADLINE_S = 30


def fleetd(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETD_STATE_DIR": str(state)}
    return subprocess.run(
        [sys.executable, "-m", "fleetd", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )


@pytest.mark.parametrize("command", ["validate", "inspect", "plan"])
def test_a_fifo_manifest_is_an_error_naming_its_path(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "fleet.yaml"
    os.mkfifo(fifo)
    done = fleetd(tmp_path / "state", command, str(fifo))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{fifo} is not a regular file (a FIFO)" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_fifo_among_a_directorys_files_is_an_error_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\n")
    os.mkfifo(tmp_path / "b.yaml")
    files, diagnostics = read_manifest_files([tmp_path])
    assert [f.name for f in files] == [str(tmp_path / "a.yaml")]
    assert [d.message for d in diagnostics] == [f"{tmp_path / 'b.yaml'} is not a regular file (a FIFO)"]


def test_a_device_is_not_read(tmp_path: Path) -> None:
    files, diagnostics = read_manifest_files([Path("/dev/zero")])
    assert files == []
    assert [d.message for d in diagnostics] == ["/dev/zero is not a regular file (a character device)"]


def test_a_read_that_blocks_ends_at_its_deadline(tmp_path: Path) -> None:
    from fleetd.manifest.reading import call_with_deadline  # new in issue 15: the other tests run without it

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def blocking_read() -> bytes:
        with fifo.open("rb") as handle:  # blocks until a writer opens the other end
            return handle.read()

    started = time.monotonic()
    thread, result = call_with_deadline(blocking_read, 0.5, name="test-read")
    assert result is None and thread.is_alive()
    assert time.monotonic() - started < 5
    with fifo.open("wb"):  # let the stuck thread end
        pass
    thread.join(DEADLINE_S)
    assert not thread.is_alive()
    assert call_with_deadline(lambda: 42, 5, name="test-read")[1] == 42
