"""No traceback reaches an operator. Every command of the typer app (read from the app, so that a new command
fails ``test_every_command_says_how_it_is_run_here`` until ``ARGS`` says how to run it) runs against broken
setups, and ends with its documented exit code and, where the setup stops it, one line that names the path or
address, never with a traceback:

(a) a state directory that cannot be made (a file stands in its path) or written (no write permission);
(b) a registry this user may not write (a ``mode=ro`` URL, or file permissions): commands that only read it
    work, the others stop with one line naming it;
(c) a ``--http`` address for ``serve`` that is busy, invalid or out of range, and the same for the agent's
    ``--listen``;
(d) a manifest that cannot be read: missing, a directory without YAML, not UTF-8, not readable. ``serve``
    keeps running on an invalid manifest (its documented behaviour, for a fix to be picked up): it must say so
    naming the file, and stop cleanly on SIGTERM.

File permissions do not stop root: as root, those cases run the command through ``setpriv`` without the
capabilities that let root read and write any file (``tests/cli/support.py``).
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main

from fleetd.cli.app import app
from fleetd.registry.facade import open_registry
from fleetd.registry.nodes import NodeFacts
from tests.cli.support import fleetd_env, run_fleetd, unprivileged

Command = tuple[str, ...]

ARGS: dict[Command, tuple[str, ...]] = {
    ("validate",): ("{manifest}",),
    ("schema",): (),
    ("inspect",): ("{manifest}",),
    ("plan",): ("{manifest}",),
    ("apply",): ("{manifest}", "--auto-approve"),
    ("status",): ("{manifest}",),
    ("serve",): ("{manifest}", "--http", "off"),
    ("agent",): ("--node", "gpu-a", "--insecure", "--listen", "127.0.0.1:0"),
    ("version",): (),
    ("db", "upgrade"): (),
    ("db", "current"): (),
    ("replica", "restart"): ("chat", "--manifest", "{manifest}"),
    ("logs",): ("chat",),
    ("node", "list"): (),
    ("node", "approve"): ("gpu-a",),
    ("node", "drain"): ("gpu-a",),
    ("node", "undrain"): ("gpu-a",),
    ("node", "remove"): ("gpu-a",),
    ("node", "token", "create"): (),
    ("node", "token", "list"): (),
    ("node", "token", "revoke"): ("{token_id}",),
}
"""How each command runs here: its arguments, ``{manifest}`` and ``{token_id}`` filled in per test."""

STATELESS = {("validate",), ("schema",), ("inspect",), ("version",)}
"""Commands that read no state dir and no registry: a broken one does not concern them (exit 0)."""

READ_ONLY_EXITS = {
    ("status",): 0,
    ("plan",): 2,  # the manifest's replica is not running: changes pending
    ("db", "current"): 0,
    ("db", "upgrade"): 0,  # at the newest revision already: nothing to write
    ("node", "list"): 0,
    ("node", "token", "list"): 0,
    ("logs",): 1,  # one line: no replica of chat in the registry
}
"""Commands that only read the registry, and their documented exit code on a read-only one at the newest
revision; every other command that uses the registry must stop with one line naming it."""

MANIFEST = (
    "version: 1\nbackends: {fake: {type: llama_cpp, install: {binary: /bin/true}}}\n"
    "instances: {chat: {backend: fake, model: /models/m.gguf, vram: 1GiB}}\n"
)


def leaf_commands() -> list[Command]:
    """Every command the typer app runs, as the words an operator types (``("node", "token", "create")``)."""

    def walk(command: object, path: Command) -> Iterator[Command]:
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            yield path
            return
        for name, sub in subcommands.items():
            yield from walk(sub, (*path, name))

    return list(walk(typer.main.get_command(app), ()))


ALL = sorted(ARGS)
MANIFEST_COMMANDS = sorted(c for c, args in ARGS.items() if "{manifest}" in args)


def test_every_command_says_how_it_is_run_here() -> None:
    assert sorted(leaf_commands()) == ALL, "a command was added or removed: update ARGS (and the sets below it)"


@dataclass(frozen=True)
class Setup:
    root: Path
    state: Path
    manifest: Path
    env: dict[str, str]
    as_user: bool = False
    token_id: str = "jt-1a2b3c4d"

    def run(self, command: Command, *extra: str, manifest: Path | None = None) -> subprocess.CompletedProcess[str]:
        args = [
            a.format(manifest=manifest or self.manifest, token_id=self.token_id)
            for a in (*command, *ARGS[command])
        ]
        return run_fleetd([*args, *extra], env=self.env, cwd=self.root, as_user=self.as_user)


def setup_in(tmp_path: Path, state: Path, *, as_user: bool = False, **env: str) -> Setup:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(MANIFEST)
    return Setup(tmp_path, state, manifest, fleetd_env(state, **env), as_user)


def assert_one_line_naming(result: subprocess.CompletedProcess[str], named: str) -> None:
    """Exit 1, no traceback, and one ``error:`` line on stderr that names ``named``."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 1, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert named in errors[0], result.stderr


def assert_clean(result: subprocess.CompletedProcess[str], code: int) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == code, output


# (a) a state directory that cannot be made or written ---------------------------------------------------------


@pytest.mark.parametrize("command", ALL, ids=" ".join)
def test_a_state_dir_that_cannot_be_made(tmp_path: Path, command: Command) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    setup = setup_in(tmp_path, blocker / "state")
    result = setup.run(command)
    if command in STATELESS:
        assert_clean(result, 0)
    else:
        assert_one_line_naming(result, str(blocker))


@pytest.mark.parametrize("command", ALL, ids=" ".join)
def test_a_state_dir_this_user_may_not_write(tmp_path: Path, command: Command) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o555)
    try:
        result = setup_in(tmp_path, state, as_user=True).run(command)
    finally:
        state.chmod(0o755)
    assert not any(state.iterdir()), "something was created in a state dir this user may not write"
    if command in STATELESS:
        assert_clean(result, 0)
    elif command == ("db", "current"):
        assert_clean(result, 1)  # documented: 1 when the registry is not at the newest revision (here: none)
        assert f"no registry at sqlite:///{state / 'fleetd.db'}" in result.stderr
    else:
        assert_one_line_naming(result, str(state))


# (b) a registry this user may not write -----------------------------------------------------------------------


def seeded_registry(state: Path) -> str:
    """A registry at the newest revision with a pending node ``gpu-a`` and a join token; returns the token's id."""
    registry = open_registry(f"sqlite:///{state / 'fleetd.db'}")
    try:
        registry.register_node("gpu-a", NodeFacts(gpu_vendor="nvidia", total_vram=8 << 30, available_vram=8 << 30))
        return registry.create_join_token(ttl_ms=3_600_000, uses=1).id
    finally:
        registry.engine.dispose()


def assert_read_only_outcome(setup: Setup, command: Command) -> None:
    database = setup.state / "fleetd.db"
    before = database.read_bytes()
    result = setup.run(command)
    if command in STATELESS:
        assert_clean(result, 0)
    elif command in READ_ONLY_EXITS:
        assert_clean(result, READ_ONLY_EXITS[command])
    else:
        assert_one_line_naming(result, str(database))
    assert database.read_bytes() == before, "the read-only registry was written"


READ_ONLY_CASES = [c for c in ALL if c != ("agent",)]  # the agent uses no registry; (a) covers its state dir


@pytest.mark.parametrize("command", READ_ONLY_CASES, ids=" ".join)
def test_a_registry_opened_read_only_by_its_url(tmp_path: Path, command: Command) -> None:
    state = tmp_path / "state"
    token_id = seeded_registry(state)
    url = f"sqlite:///file:{state / 'fleetd.db'}?mode=ro&uri=true"
    setup = setup_in(tmp_path, state, FLEETD_DATABASE_URL=url)
    assert_read_only_outcome(Setup(setup.root, state, setup.manifest, setup.env, token_id=token_id), command)


@pytest.mark.parametrize("command", READ_ONLY_CASES, ids=" ".join)
def test_a_registry_this_user_may_not_write(tmp_path: Path, command: Command) -> None:
    state = tmp_path / "state"
    token_id = seeded_registry(state)
    (state / "fleetd.db").chmod(0o444)
    state.chmod(0o555)
    try:
        setup = setup_in(tmp_path, state, as_user=True)
        listing = sorted(state.iterdir())
        assert_read_only_outcome(Setup(setup.root, state, setup.manifest, setup.env, True, token_id), command)
        assert sorted(state.iterdir()) == listing, "a file was created beside the read-only registry"
    finally:
        state.chmod(0o755)


# (c) addresses ------------------------------------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port this test listens on, so that nothing else can."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_serve_names_a_busy_http_address(tmp_path: Path, busy_port: int) -> None:
    setup = setup_in(tmp_path, tmp_path / "state")
    result = setup.run(("serve",), "--http", f"127.0.0.1:{busy_port}")
    assert_one_line_naming(result, f"127.0.0.1:{busy_port}")
    assert "--http" in result.stderr


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999", "127.0.0.1:", "[::1:9464", "::1:9464"])
def test_serve_names_an_invalid_http_address(tmp_path: Path, address: str) -> None:
    result = setup_in(tmp_path, tmp_path / "state").run(("serve",), "--http", address)
    assert_one_line_naming(result, f"--http: {address!r}")


def test_the_agent_names_a_busy_listen_address(tmp_path: Path, busy_port: int) -> None:
    setup = setup_in(tmp_path, tmp_path / "state")
    result = run_fleetd(
        ["agent", "--node", "gpu-a", "--insecure", "--listen", f"127.0.0.1:{busy_port}"], env=setup.env
    )
    assert_one_line_naming(result, f"127.0.0.1:{busy_port}")


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:99999"])
def test_the_agent_names_an_invalid_listen_address(tmp_path: Path, address: str) -> None:
    setup = setup_in(tmp_path, tmp_path / "state")
    result = run_fleetd(["agent", "--node", "gpu-a", "--insecure", "--listen", address], env=setup.env)
    assert_one_line_naming(result, repr(address))


# (d) a manifest that cannot be read ---------------------------------------------------------------------------


def unreadable_manifest(tmp_path: Path, how: str, suffix: str = ".yaml") -> Path:
    if how == "missing":
        return tmp_path / f"missing{suffix}"
    if how == "a directory":
        (tmp_path / "manifests").mkdir()
        return tmp_path / "manifests"
    path = tmp_path / f"broken{suffix}"
    if how == "not UTF-8":
        path.write_bytes(b"version: 1\n\xff\xfe\n")
    else:
        path.write_text(MANIFEST)
        path.chmod(0o200)
    return path


UNREADABLE = ["missing", "a directory", "not UTF-8", "not readable"]


@pytest.mark.parametrize("how", UNREADABLE)
@pytest.mark.parametrize("command", [c for c in MANIFEST_COMMANDS if c != ("serve",)], ids=" ".join)
def test_an_unreadable_manifest_is_named(tmp_path: Path, command: Command, how: str) -> None:
    manifest = unreadable_manifest(tmp_path, how)
    setup = setup_in(tmp_path, tmp_path / "state", as_user=how == "not readable")
    result = setup.run(command, manifest=manifest)
    assert_clean(result, 1)
    where = result.stdout if command == ("validate",) else result.stderr  # validate's diagnostics are its output
    assert f"{manifest}:1:1: error:" in where or f"{manifest}:2:1: error:" in where, where
    assert not (tmp_path / "state").exists(), "a command went on to the registry with an unreadable manifest"


@pytest.mark.parametrize("how", UNREADABLE)
def test_schema_check_names_an_unreadable_file(tmp_path: Path, how: str) -> None:
    path = unreadable_manifest(tmp_path, how, ".json")
    result = run_fleetd(
        ["schema", "--check", str(path)], env=fleetd_env(tmp_path / "state"), as_user=how == "not readable"
    )
    assert_clean(result, 1)
    assert str(path) in result.stderr


@pytest.mark.parametrize("how", UNREADABLE)
def test_serve_keeps_running_on_an_unreadable_manifest_and_names_it(tmp_path: Path, how: str) -> None:
    manifest = unreadable_manifest(tmp_path, how)
    setup = setup_in(tmp_path, tmp_path / "state")
    argv = [sys.executable, "-m", "fleetd", "serve", str(manifest), "--http", "off"]
    process = subprocess.Popen(
        unprivileged(argv) if how == "not readable" else argv,
        env=setup.env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in process.stderr or ():
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while True:
            line = lines.get(timeout=60)
            assert line is not None, "serve stopped: " + "".join(seen)
            seen.append(line)
            if "manifest invalid" in line:
                assert manifest.name in line, line
                break
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        reader.join(timeout=60)
        if process.stderr is not None:
            process.stderr.close()
    while (line := lines.get(timeout=5)) is not None:
        seen.append(line)
    assert code == 0, "".join(seen)
    assert "Traceback" not in "".join(seen)
