"""``fleetd serve`` says what it was asked to do: SIGHUP is logged when it arrives (then the manifest is read
again), and SIGTERM stops it with status 0."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.agent.support import wait_for
from tests.daemon.support import Served


def test_sighup_is_logged_and_sigterm_stops(tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\n")
    served = Served(manifest, tmp_path / "state", tmp_path / "serve.log")
    try:
        wait_for(lambda: (served.status() or {}).get("cycles", 0) >= 1, timeout_s=60, what="a first cycle")
        served.signal(signal.SIGHUP)
        wait_for(
            lambda: "SIGHUP: reading the manifest again" in served.output(), timeout_s=30, what="the SIGHUP line"
        )
        served.signal(signal.SIGTERM)
        assert served.process.wait(timeout=30) == 0, served.output()
    finally:
        served.stop()
