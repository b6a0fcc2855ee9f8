"""Per-backend knowledge, one module per backend type (DESIGN.md section 2).

Each module exposes a ``RUNTIME: RuntimeSpec`` value: the options the backend accepts (with their flags and
value kinds), the options fleetd sets itself, and the platforms it runs on. This layer is pure data and pure
functions; the agent does the I/O with what it says. Nothing outside ``runtimes`` branches on backend type.
"""

from __future__ import annotations

from fleetd.core.desired import BackendType
from fleetd.runtimes import llama_cpp, mlx_lm, vllm
from fleetd.runtimes.spec import RuntimeSpec

RUNTIMES: dict[BackendType, RuntimeSpec] = {
    BackendType.LLAMA_CPP: llama_cpp.RUNTIME,
    BackendType.MLX_LM: mlx_lm.RUNTIME,
    BackendType.VLLM: vllm.RUNTIME,
}


def runtime_for(backend_type: BackendType) -> RuntimeSpec:
    return RUNTIMES[backend_type]
