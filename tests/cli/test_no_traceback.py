"""No traceback reaches an operator: every command run against a state directory that cannot be made (a file
sits where it should be) ends with one line naming the path and what to check, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = [
    ("status", "{manifest}"),
    ("plan", "{manifest}"),
    ("apply", "{manifest}", "--auto-approve"),
    ("node", "list"),
    ("node", "token", "create"),
    ("replica", "restart", "chat", "--manifest", "{manifest}"),
    ("logs", "chat"),
    ("serve", "{manifest}", "--http", "off"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_an_unusable_state_dir_is_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(
        "version: 1\nbackends: {fake: {type: llama_cpp, install: {binary: /bin/true}}}\n"
        "instances: {chat: {backend: fake, model: /models/m.gguf, vram: 1GiB}}\n"
    )
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    state = blocker / "state"
    argv = [part.format(manifest=manifest) for part in command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETD_")}
    result = subprocess.run(
        [sys.executable, "-m", "fleetd", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**env, "FLEETD_STATE_DIR": str(state)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines and str(blocker) in lines[-1], result.stderr
