"""Probing a backend over real HTTP, against the fake backend run as a process: loading while it starts,
healthy once ready, busy (not dead) when it hangs with its port open, dead once it exits or on a closed port,
and the number of requests in flight read while a chat request is generating."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fleetd.agent.probing import ProbeOutcome, ProbeResult, probe
from fleetd.core.desired import BackendSpec, BackendType, InstallKind, InstallRecipe, InstanceSpec
from fleetd.runtimes import ProbeSpec, build_command, probe_spec
from tests.agent.support import FAKE_BACKEND, wait_for

HOST = "127.0.0.1"
PROBE_TIMEOUT_S = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Backend:
    process: subprocess.Popen[bytes]
    port: int
    kind: BackendType
    log: Path

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def probe(self, timeout_s: float = PROBE_TIMEOUT_S) -> ProbeResult:
        return probe(self.address, probe_spec(self.kind), self.kind, timeout_s=timeout_s)


Start = Callable[..., Backend]


def healthy(backend: Backend) -> ProbeResult | None:
    result = backend.probe()
    return result if result.outcome is ProbeOutcome.HEALTHY else None


@pytest.fixture
def start_backend(tmp_path: Path) -> Iterator[Start]:
    """Start the fake with the argv fleetd would build for ``kind``; every process is killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(kind: BackendType, *, wait: bool = True, **behaviour: str) -> Backend:
        port = free_port()
        spec = InstanceSpec(name="chat", backend="fake", model="org/chat-model")
        backend = BackendSpec("fake", kind, InstallRecipe(InstallKind.BINARY, "/x"))
        command = build_command(
            spec, backend, executable="backend", host=HOST, port=port, replica=0, environment=behaviour
        )
        log = tmp_path / f"{kind.value}-{port}.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, str(FAKE_BACKEND), *command.argv],
                env={**os.environ, **dict(command.env)},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        started.append(process)
        if wait:
            wait_for(
                lambda: listening(port) or process.poll() is not None, timeout_s=15, what="the fake to listen"
            )
            assert process.poll() is None, log.read_text()
        return Backend(process, port, kind, log)

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize("kind", [BackendType.VLLM, BackendType.MLX_LM, BackendType.LLAMA_CPP])
def test_loading_during_a_slow_start_then_healthy(start_backend: Start, kind: BackendType) -> None:
    backend = start_backend(kind, FAKE_BACKEND_START_DELAY_MS="2000")
    first = backend.probe()
    assert first.outcome is ProbeOutcome.LOADING, first
    assert "503" in first.detail
    ready = wait_for(lambda: healthy(backend), timeout_s=15, what="healthy")
    assert ready.in_flight == (None if kind is BackendType.MLX_LM else 0)


@pytest.mark.parametrize("kind", [BackendType.VLLM, BackendType.MLX_LM])
def test_a_hanging_backend_is_busy_not_dead(start_backend: Start, kind: BackendType) -> None:
    backend = start_backend(kind, FAKE_BACKEND_HANG="1")
    result = backend.probe(timeout_s=0.3)
    assert result.outcome is ProbeOutcome.BUSY, result
    assert f'"GET {probe_spec(kind).health_path} HTTP/1.1"' in backend.log.read_text()


@pytest.mark.parametrize("kind", [BackendType.VLLM, BackendType.MLX_LM])
def test_dead_once_the_process_is_gone(start_backend: Start, kind: BackendType) -> None:
    backend = start_backend(kind)
    assert backend.probe().outcome is ProbeOutcome.HEALTHY
    backend.process.terminate()
    assert backend.process.wait(timeout=10) == 0, "SIGTERM ends the fake with status 0"
    result = backend.probe()
    assert result.outcome is ProbeOutcome.DEAD, result
    assert "ConnectError" in result.detail


def test_dead_on_a_closed_port() -> None:
    result = probe(f"{HOST}:{free_port()}", probe_spec(BackendType.VLLM), BackendType.VLLM, timeout_s=1.0)
    assert result.outcome is ProbeOutcome.DEAD
    assert result.in_flight is None


def test_dead_on_an_error_status_other_than_loading(start_backend: Start) -> None:
    backend = start_backend(BackendType.VLLM)
    # A path the fake answers with 404 stands in for a health endpoint that fails.
    result = probe(backend.address, ProbeSpec("/nope", "/v1/models", None), BackendType.VLLM, timeout_s=1.0)
    assert result.outcome is ProbeOutcome.DEAD
    assert result.detail.startswith("HTTP 404")


def test_a_crashing_backend_exits_with_status_1_and_is_then_dead(start_backend: Start) -> None:
    backend = start_backend(BackendType.VLLM, wait=False, FAKE_BACKEND_CRASH_AFTER_MS="300")
    assert wait_for(lambda: backend.process.poll() is not None, timeout_s=15, what="the crash")
    assert backend.process.returncode == 1
    assert backend.probe().outcome is ProbeOutcome.DEAD


def test_a_backend_that_cannot_bind_says_address_already_in_use(start_backend: Start) -> None:
    backend = start_backend(BackendType.VLLM, wait=False, FAKE_BACKEND_NO_BIND="1")
    assert backend.process.wait(timeout=15) == 98
    assert "address already in use" in backend.log.read_text()
    assert not listening(backend.port)


@pytest.mark.parametrize("kind", [BackendType.VLLM, BackendType.LLAMA_CPP, BackendType.MLX_LM])
def test_in_flight_is_read_while_a_chat_request_is_generating(start_backend: Start, kind: BackendType) -> None:
    backend = start_backend(kind, FAKE_BACKEND_GENERATE_MS="3000")
    replies: list[httpx.Response] = []

    def chat() -> None:
        body = {"model": "chat", "messages": [{"role": "user", "content": "hello there"}]}
        replies.append(httpx.post(f"http://{backend.address}/v1/chat/completions", json=body, timeout=30))

    thread = threading.Thread(target=chat)
    thread.start()
    try:
        if kind is BackendType.MLX_LM:
            wait_for(lambda: "POST /v1/chat/completions" in backend.log.read_text(), timeout_s=15, what="the chat")
            assert backend.probe().in_flight is None
        else:
            busy = wait_for(lambda: backend.probe().in_flight == 1, timeout_s=15, what="one request in flight")
            assert busy
    finally:
        thread.join(timeout=30)
    (reply,) = replies
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == "Hello from the fake backend."
    after = backend.probe()
    assert after.outcome is ProbeOutcome.HEALTHY
    assert after.in_flight == (None if kind is BackendType.MLX_LM else 0)


def test_the_fake_serves_the_model_under_the_name_fleetd_gives_it(start_backend: Start) -> None:
    backend = start_backend(BackendType.VLLM)
    models = httpx.get(f"http://{backend.address}/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["chat"]
    metrics = httpx.get(f"http://{backend.address}/metrics", timeout=5).text
    assert 'vllm:num_requests_waiting{engine="0",model_name="chat"} 0.0' in metrics
