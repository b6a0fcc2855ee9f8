"""MLX's ``mlx_lm.server``: its options; it runs only on macOS on Apple silicon."""

from __future__ import annotations

from fleetd.core.desired import BackendType
from fleetd.runtimes.spec import OptionSpec, RuntimeSpec, ValueKind, flag_options, typed_options

_I, _F, _S = ValueKind.INT, ValueKind.FLOAT, ValueKind.STR

OPTIONS: dict[str, OptionSpec] = {
    **typed_options(
        _I,
        "max_tokens",
        "top_k",
        "num_draft_tokens",
        "decode_concurrency",
        "prompt_concurrency",
        "prefill_step_size",
        "prompt_cache_size",
        minimum=0,
    ),
    **typed_options(_F, "temp", "top_p", "min_p"),
    **typed_options(_S, "adapter_path", "draft_model", "chat_template", "chat_template_args"),
    "log_level": OptionSpec(
        "--log-level", frozenset({_S}), choices=frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
    ),
    **flag_options("trust_remote_code", "use_default_chat_template", "pipeline"),
}

RUNTIME = RuntimeSpec(
    type=BackendType.MLX_LM,
    executable="mlx_lm.server",
    options=OPTIONS,
    reserved_options={
        "port": "fleetd allocates a port per replica",
        "host": "fleetd binds replicas itself",
        "model": "use the instance's `model` field",
    },
    gpu_vendors=frozenset({"apple"}),
    platforms=frozenset({"darwin-arm64"}),
)
