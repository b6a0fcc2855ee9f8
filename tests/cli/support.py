"""What the CLI tests share: running ``fleetd`` as an operator would, and as a user that file permissions apply
to even when the suite runs as root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

DROP_ROOT_FILE_ACCESS = ("--bounding-set", "-dac_override,-dac_read_search", "--")


def unprivileged(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that file permissions apply: as it is for a user; for root, through ``setpriv`` without
    the capabilities that let root read and write any file (skips the test when there is no ``setpriv``)."""
    if os.geteuid() != 0:
        return list(argv)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
    return [setpriv, *DROP_ROOT_FILE_ACCESS, *argv]


def fleetd_env(state: Path, **extra: str) -> dict[str, str]:
    """This environment without any ``FLEETD_*`` setting, with ``state`` as the state dir and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETD_")}
    return {**env, "FLEETD_STATE_DIR": str(state), **extra}


def run_fleetd(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    as_user: bool = False,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``fleetd ARGS`` in a subprocess (``as_user``: with file permissions applying, see ``unprivileged``)."""
    argv = [sys.executable, "-m", "fleetd", *args]
    return subprocess.run(
        unprivileged(argv) if as_user else argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
