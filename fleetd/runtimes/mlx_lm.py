"""MLX's ``mlx_lm.server``: its options, argv and probes; it runs only on macOS on Apple silicon.

``mlx_lm.server`` loads its model before it listens, so a successful ``GET /v1/models`` means ready. It has no
metrics endpoint: the number of requests in flight is unknown (``None``), and the gateway counts its own.
"""

from __future__ import annotations

from fleetd.core.desired import BackendType, InstanceSpec
from fleetd.runtimes.commands import model_server_argv
from fleetd.runtimes.probes import ProbeSpec
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


CONTAINER_EXECUTABLE = "mlx_lm.server"
"""MLX needs Metal, which containers do not offer; kept so that the dispatch table is total."""

PROBES = ProbeSpec(health_path="/v1/models", models_path="/v1/models", in_flight_path=None)


def argv(spec: InstanceSpec, *, executable: str, host: str, port: int) -> tuple[str, ...]:
    """``mlx_lm.server --model M --host H --port P`` then the options' flags by name."""
    return model_server_argv(spec, OPTIONS, executable=executable, host=host, port=port)


def parse_in_flight(body: str) -> int | None:
    """Never known: ``mlx_lm.server`` exposes no count of requests in flight."""
    del body
    return None
