"""vLLM's ``vllm serve``: its options (a curated table of its engine and server flags).

vLLM runs on Linux with an NVIDIA or AMD GPU; it cannot run on this project's CI machines, so its probes are
tested against a fake server that speaks its endpoints.

``vllm serve`` answers ``/health`` with 200 once the engine runs, and exposes ``/metrics`` (always on) with the
gauges ``vllm:num_requests_running`` and ``vllm:num_requests_waiting``, one sample per model (and engine).
fleetd serves each model under its instance name (``--served-model-name``), so clients and the gateway
address replicas of one instance by one name whatever the model path.
"""

from __future__ import annotations

from fleetd.core.desired import BackendType, InstanceSpec
from fleetd.runtimes.commands import option_arguments
from fleetd.runtimes.probes import ProbeSpec, prometheus_gauge_sum
from fleetd.runtimes.spec import OptionSpec, RuntimeSpec, ValueKind, flag_options, typed_options

_I, _F, _S = ValueKind.INT, ValueKind.FLOAT, ValueKind.STR

OPTIONS: dict[str, OptionSpec] = {
    **typed_options(
        _I,
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "data_parallel_size",
        "max_model_len",
        "max_num_seqs",
        "max_num_batched_tokens",
        "max_lora_rank",
        "max_loras",
        "seed",
        "block_size",
        "max_logprobs",
        "max_parallel_loading_workers",
        minimum=0,
    ),
    "gpu_memory_utilization": OptionSpec("--gpu-memory-utilization", frozenset({_F}), minimum=0.0),
    **typed_options(_F, "swap_space", "cpu_offload_gb", minimum=0.0),
    **typed_options(
        _S,
        "tokenizer",
        "revision",
        "tokenizer_revision",
        "download_dir",
        "chat_template",
        "tool_call_parser",
        "reasoning_parser",
        "rope_scaling",
        "lora_modules",
        "hf_overrides",
        "speculative_config",
        "limit_mm_per_prompt",
        "generation_config",
        "override_generation_config",
    ),
    "dtype": OptionSpec(
        "--dtype",
        frozenset({_S}),
        choices=frozenset({"auto", "half", "float16", "bfloat16", "float", "float32"}),
    ),
    "kv_cache_dtype": OptionSpec(
        "--kv-cache-dtype", frozenset({_S}), choices=frozenset({"auto", "fp8", "fp8_e5m2", "fp8_e4m3"})
    ),
    "quantization": OptionSpec("--quantization", frozenset({_S})),
    "load_format": OptionSpec("--load-format", frozenset({_S})),
    "task": OptionSpec("--task", frozenset({_S})),
    **flag_options(
        "enforce_eager",
        "trust_remote_code",
        "enable_prefix_caching",
        "no_enable_prefix_caching",
        "enable_chunked_prefill",
        "enable_auto_tool_choice",
        "enable_lora",
        "disable_log_requests",
        "disable_custom_all_reduce",
        "enable_expert_parallel",
    ),
}

RUNTIME = RuntimeSpec(
    type=BackendType.VLLM,
    executable="vllm",
    options=OPTIONS,
    reserved_options={
        "port": "fleetd allocates a port per replica",
        "host": "fleetd binds replicas itself",
        "model": "use the instance's `model` field",
        "served_model_name": "fleetd serves each model under its instance name",
        "api_key": "put credentials in `environment` with ${env:...} so they stay secret",
    },
    gpu_vendors=frozenset({"nvidia", "amd"}),
    platforms=frozenset({"linux-x86_64", "linux-aarch64"}),
)


CONTAINER_EXECUTABLE = "vllm"
"""On the ``PATH`` of the ``vllm/vllm-openai`` images."""

PROBES = ProbeSpec(health_path="/health", models_path="/v1/models", in_flight_path="/metrics")


def argv(spec: InstanceSpec, *, executable: str, host: str, port: int) -> tuple[str, ...]:
    """``vllm serve MODEL --host H --port P --served-model-name INSTANCE`` then the options' flags by name."""
    return (
        executable,
        "serve",
        spec.model,
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        spec.name,
        *option_arguments(spec.options, OPTIONS),
    )


def parse_in_flight(body: str) -> int | None:
    """``vllm:num_requests_running`` summed over its label sets, from a ``/metrics`` body."""
    return prometheus_gauge_sum(body, "vllm:num_requests_running")
