"""``fleetd serve``'s liveness flags, as an operator mistypes them: one line naming the flag, exit 1, nothing
started (no registry created)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--unhealthy-after", "30s", "--lost-after", "20s"), "--unhealthy-after must be positive and shorter"),
        (("--max-replacements", "0"), "--max-replacements must be at least 1"),
        (("--lost-after", "soon"), "soon"),
    ],
)
def test_bad_liveness_flags_are_one_line_errors(tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "fleetd", "serve", str(manifest), "--http", "off", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "FLEETD_STATE_DIR": str(tmp_path / "state")},
    )
    assert result.returncode == 1
    assert message in result.stderr and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state" / "fleetd.db").exists()


def test_a_busy_http_address_is_named(tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "fleetd", "serve", str(manifest), "--http", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "FLEETD_STATE_DIR": str(tmp_path / "state")},
        )
    assert result.returncode == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in result.stderr and "--http off" in result.stderr
    assert "Traceback" not in result.stderr
