"""A faithful fake of an inference server (vLLM, MLX's mlx_lm.server or llama.cpp's llama-server), run as a process.

vLLM and MLX cannot run on the project's machines (architecture.md §8), so the agent's supervisor and probes
are tested against this program. It takes the argv the builders in ``fleetd.runtimes`` produce, unchanged
(``serve MODEL --host H --port P ...`` for vLLM, ``--model M --host H --port P ...`` for the others; a leading
program name is skipped), and speaks the endpoints fleetd uses, with the real servers' shapes:

- ``GET /health``: 200 when ready; 503 with llama-server's "Loading model" body while starting;
- ``GET /v1/models``: the OpenAI model list, with the served model name;
- ``GET /metrics``: vLLM's ``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` gauges, or
  llama-server's ``llamacpp:*`` metrics (``llamacpp:requests_processing``); MLX has none (404);
- ``GET /slots``: llama-server's slot list (``is_processing`` per slot); others 404;
- ``POST /v1/chat/completions``: a fixed reply, counted in flight while it "generates".

Misbehaviour is chosen by environment variables, so the argv keeps the real shape:

- ``FAKE_BACKEND_START_DELAY_MS``: answer 503 to everything for that long after start (slow model load);
- ``FAKE_BACKEND_HANG=1``, or ``FAKE_BACKEND_HANG_FILE=PATH`` once PATH exists: accept connections, read
  requests, never answer (a busy single-threaded server);
- ``FAKE_BACKEND_CRASH_AFTER_MS``: exit with status 1 that long after start (a crash loop when restarted);
- ``FAKE_BACKEND_NO_BIND=1``: print "address already in use" and exit 98 without listening;
- ``FAKE_BACKEND_GENERATE_MS``: how long a chat completion takes (default 0);
- ``FAKE_BACKEND_KIND``: ``vllm``, ``mlx`` or ``llama``; otherwise inferred from the argv.

It logs one line per request on stderr when the request arrives (a hung request is logged too), and a
"listening" line once it listens. SIGTERM (or SIGINT) makes it exit 0 at once. Standard library only.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

KINDS = ("vllm", "mlx", "llama")
DEFAULT_PORTS = {"vllm": 8000, "mlx": 8080, "llama": 8080}
OWNERS = {"vllm": "vllm", "mlx": "system", "llama": "llamacpp"}
VALUE_FLAGS = {"--host", "--port", "--model", "-m", "--served-model-name", "--parallel", "-np", "--alias"}
REPLY = "Hello from the fake backend."
LOADING_BODY = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
STARTED = time.monotonic()


@dataclass(frozen=True, slots=True)
class Config:
    """What the argv says: which server this pretends to be, its model and its address."""

    kind: str
    model: str
    served_name: str
    host: str
    port: int
    slots: int = 1
    metrics_enabled: bool = True


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the environment asks of this run."""

    start_delay_s: float = 0.0
    hang: bool = False
    hang_file: Path | None = None
    crash_after_s: float | None = None
    no_bind: bool = False
    generate_s: float = 0.0

    @classmethod
    def from_environment(cls, env: dict[str, str]) -> Behaviour:
        crash = env.get("FAKE_BACKEND_CRASH_AFTER_MS")
        hang_file = env.get("FAKE_BACKEND_HANG_FILE")
        return cls(
            start_delay_s=_ms(env.get("FAKE_BACKEND_START_DELAY_MS")),
            hang=env.get("FAKE_BACKEND_HANG") == "1",
            hang_file=Path(hang_file) if hang_file else None,
            crash_after_s=_ms(crash) if crash else None,
            no_bind=env.get("FAKE_BACKEND_NO_BIND") == "1",
            generate_s=_ms(env.get("FAKE_BACKEND_GENERATE_MS")),
        )

    def hanging(self) -> bool:
        return self.hang or (self.hang_file is not None and self.hang_file.exists())

    def loading(self) -> bool:
        return time.monotonic() - STARTED < self.start_delay_s


def _ms(value: str | None) -> float:
    return int(value) / 1000 if value else 0.0


def parse_argv(argv: list[str], kind: str | None = None) -> Config:
    """The server's configuration from the argv a real vLLM, mlx_lm.server or llama-server would get."""
    args = list(argv)
    program = ""
    if args and not args[0].startswith("-") and args[0] != "serve":
        program = args.pop(0).rsplit("/", 1)[-1]
    values: dict[str, str] = {}
    positional: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        name, equals, inline = token.partition("=")
        if token.startswith("-") and equals and name in VALUE_FLAGS:
            values[name] = inline
        elif token in VALUE_FLAGS and index + 1 < len(args):
            values[token] = args[index + 1]
            index += 1
        elif not token.startswith("-"):
            positional.append(token)
        index += 1
    if kind is None:
        kind = _infer_kind(program, positional, args)
    if kind not in KINDS:
        raise SystemExit(f"fake backend: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    if kind == "vllm":
        model = positional[1] if positional[:1] == ["serve"] and len(positional) > 1 else values.get("--model", "")
    else:
        model = values.get("--model", values.get("-m", ""))
    if not model:
        raise SystemExit("fake backend: no model in the argv")
    served = values.get("--served-model-name", values.get("--alias", model))
    return Config(
        kind=kind,
        model=model,
        served_name=served,
        host=values.get("--host", "127.0.0.1"),
        port=int(values.get("--port", DEFAULT_PORTS[kind])),
        slots=max(1, int(values.get("--parallel", values.get("-np", "1")))),
        metrics_enabled=kind != "llama" or "--metrics" in args,
    )


def _infer_kind(program: str, positional: list[str], args: list[str]) -> str:
    if "vllm" in program or positional[:1] == ["serve"]:
        return "vllm"
    if "llama" in program or "--metrics" in args or "--slots" in args:
        return "llama"
    return "mlx"


class Server(ThreadingHTTPServer):
    """An HTTP server that knows what it pretends to be and how many requests are generating."""

    daemon_threads = True

    def __init__(self, config: Config, behaviour: Behaviour) -> None:
        self.config = config
        self.behaviour = behaviour
        self.in_flight = 0
        self.lock = threading.Lock()
        if ":" in config.host:
            self.address_family = socket.AF_INET6
        super().__init__((config.host.strip("[]"), config.port), Handler)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: without it, a delayed ACK stalls 40 ms

    def do_GET(self) -> None:
        if self._gate():
            return
        config, path = self.server.config, self.path.split("?", 1)[0]
        if path == "/health":
            self._json(200, None if config.kind == "vllm" else {"status": "ok"})
        elif path == "/v1/models":
            self._json(200, self._models())
        elif path == "/metrics" and config.kind != "mlx":
            if not config.metrics_enabled:
                message = "This server does not support metrics endpoint. Start it with `--metrics`"
                self._json(501, {"error": {"code": 501, "message": message, "type": "not_supported_error"}})
            else:
                self._text(200, self._metrics())
        elif path == "/slots" and config.kind == "llama":
            self._json(200, self._slots())
        else:
            self._json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self._gate():
            return
        if self.path.split("?", 1)[0] != "/v1/chat/completions":
            self._json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})
            return
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            self._json(400, {"error": {"code": 400, "message": "invalid JSON", "type": "invalid_request_error"}})
            return
        with self.server.lock:
            self.server.in_flight += 1
        try:
            time.sleep(self.server.behaviour.generate_s)  # the fake's "generation", not synchronisation
        finally:
            with self.server.lock:
                self.server.in_flight -= 1
        prompt = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
        self._json(200, self._completion(prompt))

    # behaviour ---------------------------------------------------------------------------------------------

    def _gate(self) -> bool:
        """Log the request as it arrives; hang or answer 503 when asked to. True when it was answered here."""
        _say(f'{self.client_address[0]} "{self.requestline}"')
        if self.server.behaviour.hanging():
            threading.Event().wait()  # never answers: the process ends on SIGTERM
        if self.server.behaviour.loading():
            self._json(503, LOADING_BODY)
            return True
        return False

    # bodies ------------------------------------------------------------------------------------------------

    def _models(self) -> dict[str, Any]:
        config = self.server.config
        entry: dict[str, Any] = {
            "id": config.served_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": OWNERS[config.kind],
        }
        if config.kind == "vllm":
            entry |= {"root": config.model, "parent": None, "max_model_len": 4096}
        return {"object": "list", "data": [entry]}

    def _metrics(self) -> str:
        config = self.server.config
        with self.server.lock:
            running = self.server.in_flight
        if config.kind == "vllm":
            labels = f'{{engine="0",model_name="{config.served_name}"}}'
            return (
                "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                "# TYPE vllm:num_requests_running gauge\n"
                f"vllm:num_requests_running{labels} {float(running)}\n"
                "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
                "# TYPE vllm:num_requests_waiting gauge\n"
                f"vllm:num_requests_waiting{labels} 0.0\n"
                "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
                "# TYPE vllm:kv_cache_usage_perc gauge\n"
                f"vllm:kv_cache_usage_perc{labels} 0.0\n"
            )
        processing = min(running, config.slots)
        return "".join(
            f"# HELP llamacpp:{name} {help_text}\n# TYPE llamacpp:{name} {kind}\nllamacpp:{name} {value}\n"
            for name, kind, help_text, value in (
                ("prompt_tokens_total", "counter", "Number of prompt tokens processed.", 0),
                ("prompt_seconds_total", "counter", "Prompt process time", 0),
                ("tokens_predicted_total", "counter", "Number of generation tokens processed.", 0),
                ("tokens_predicted_seconds_total", "counter", "Predict process time", 0),
                ("n_decode_total", "counter", "Total number of llama_decode() calls", 0),
                ("requests_processing", "gauge", "Number of requests processing.", processing),
                ("requests_deferred", "gauge", "Number of requests deferred.", running - processing),
            )
        )

    def _slots(self) -> list[dict[str, Any]]:
        config = self.server.config
        with self.server.lock:
            running = self.server.in_flight
        return [
            {
                "id": slot,
                "id_task": slot if slot < running else -1,
                "n_ctx": 4096,
                "speculative": False,
                "is_processing": slot < running,
                "params": {"n_predict": -1, "seed": 4294967295, "temperature": 0.8, "top_k": 40, "top_p": 0.95},
                "next_token": {
                    "has_next_token": slot < running,
                    "has_new_line": False,
                    "n_remain": -1,
                    "n_decoded": 0,
                },
            }
            for slot in range(config.slots)
        ]

    def _completion(self, prompt_tokens: int) -> dict[str, Any]:
        completion_tokens = len(REPLY.split())
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.server.config.served_name,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"},
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # plumbing ----------------------------------------------------------------------------------------------

    def _json(self, status: int, body: object) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self._send(status, payload, "application/json; charset=utf-8")

    def _text(self, status: int, body: str) -> None:
        self._send(status, body.encode(), "text/plain; version=0.0.4; charset=utf-8")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Requests are logged when they arrive (see ``_gate``), so that a hung one shows too."""

    def log_message(self, format: str, *args: Any) -> None:
        _say(f"{self.client_address[0]} {format % args}")


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    _say(f"fake backend: received {signal.Signals(signum).name}, exiting")
    os._exit(0)


def _crash() -> None:
    _say("fake backend: crashing as FAKE_BACKEND_CRASH_AFTER_MS asked")
    os._exit(1)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    config = parse_argv(argv, os.environ.get("FAKE_BACKEND_KIND") or None)
    behaviour = Behaviour.from_environment(dict(os.environ))
    address_in_use = f"OSError: [Errno {errno.EADDRINUSE}] error while attempting to bind on address "
    address_in_use += f"({config.host!r}, {config.port}): address already in use"
    if behaviour.no_bind:
        _say(address_in_use)
        return 98
    try:
        server = Server(config, behaviour)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            _say(address_in_use)
            return 98
        raise
    if behaviour.crash_after_s is not None:
        timer = threading.Timer(max(0.0, behaviour.crash_after_s - (time.monotonic() - STARTED)), _crash)
        timer.daemon = True
        timer.start()
    _say(
        f"fake backend ({config.kind}) listening on http://{config.host}:{config.port} "
        f"model={config.model} served as {config.served_name}"
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
