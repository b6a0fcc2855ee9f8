"""How much accelerator memory a model will take, for ``vram: auto``, and how long it may take to start.

The scheduler needs a number before the model runs, so the agent estimates it from the model on disk:

- a GGUF file: its header says everything. Weights are the sum of the tensors' data sizes (read from the tensor
  infos, the weights are memory-mapped and never read); the KV cache for the configured context is
  ``ctx × n_layers × n_kv_heads × (key_length + value_length) × bytes per element`` (with
  ``key_length = value_length = embedding_length / head_count`` unless the header says otherwise, this is the
  familiar ``2 × n_layers × ctx × n_kv_heads × head_dim × bytes``); plus ``GGUF_OVERHEAD_BYTES`` for compute
  buffers and the CUDA context;
- anything else (a directory or file of safetensors / PyTorch / NumPy weights, as vLLM and MLX load): the weight
  files' sizes times ``WEIGHT_FILES_FACTOR``, since their KV cache is sized by the engine, not by the file.

An estimate is deliberately simple and explainable (``VramEstimate.explain``): an operator who disagrees sets
``vram:`` by hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFReader

from fleetd.core.desired import InstanceSpec

MIB = 1024**2
GIB = 1024**3

GGUF_OVERHEAD_BYTES = 256 * MIB
"""Fixed cost beside weights and KV cache: llama.cpp's compute buffers (a few tens of MiB at common batch sizes)
plus the CUDA context and cuBLAS workspace (about 200 MiB on recent drivers)."""
KV_F16_BYTES = 2
"""Bytes per KV cache element: llama.cpp's default cache type is f16."""
WEIGHT_FILES_FACTOR = 1.2
"""For non-GGUF models: 20 % above the weights for KV cache, activations and the runtime's own buffers."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".npz")
"""In order of preference: a directory holding several formats of the same weights counts only the first."""
CONTEXT_OPTION = "ctx_size"


_GGUF_MAGIC = b"GGUF"
_SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


class EstimateError(Exception):
    """The model could not be read well enough to estimate its memory; the message names the path."""


@dataclass(frozen=True, slots=True)
class VramEstimate:
    """Bytes of accelerator memory a model needs: ``total = weights + kv_cache + overhead``."""

    weights: int
    kv_cache: int
    overhead: int
    total: int
    source: str
    """How the numbers were found, for people (``GGUF header: ...`` or ``3 weight files ...``)."""

    def explain(self) -> str:
        return (
            f"{_human(self.total)} = weights {_human(self.weights)} + KV cache {_human(self.kv_cache)}"
            f" + overhead {_human(self.overhead)} ({self.source})"
        )


@dataclass(frozen=True, slots=True)
class _Attention:
    """What the KV cache size depends on, per layer."""

    n_layers: int
    context_length: int
    kv_heads: tuple[int, ...]
    key_length: int
    value_length: int

    def kv_bytes(self, ctx: int, bytes_per_element: int) -> int:
        return ctx * sum(self.kv_heads) * (self.key_length + self.value_length) * bytes_per_element


def estimate_instance(spec: InstanceSpec) -> VramEstimate:
    """The estimate for an instance's model, with the context its ``ctx_size`` option sets (0 or unset: the
    model's own context length)."""
    return estimate_vram(Path(spec.model), ctx_size=context_size(spec))


def context_size(spec: InstanceSpec) -> int | None:
    """The instance's ``ctx_size`` option when set to a positive integer, else ``None``."""
    value = dict(spec.options).get(CONTEXT_OPTION)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def estimate_vram(
    model: Path, *, ctx_size: int | None = None, kv_bytes_per_element: int = KV_F16_BYTES
) -> VramEstimate:
    """Estimate for a GGUF file (by suffix or magic bytes) or for weight files; see the module docstring."""
    if model.suffix.lower() == ".gguf" or (model.is_file() and _has_gguf_magic(model)):
        return estimate_gguf(model, ctx_size=ctx_size, kv_bytes_per_element=kv_bytes_per_element)
    return estimate_weight_files(model)


def estimate_gguf(
    path: Path, *, ctx_size: int | None = None, kv_bytes_per_element: int = KV_F16_BYTES
) -> VramEstimate:
    """Weights from the tensor infos of every shard, KV cache from the header, plus the fixed overhead."""
    first = _read_gguf(path)
    attention = _attention(first, path)
    weights = sum(_tensor_bytes(_read_gguf(shard)) for shard in _other_shards(path)) + _tensor_bytes(first)
    ctx = ctx_size if ctx_size is not None else attention.context_length
    kv_cache = attention.kv_bytes(ctx, kv_bytes_per_element)
    source = (
        f"GGUF header: {attention.n_layers} layers, ctx {ctx}, {max(attention.kv_heads)} KV heads"
        f" × {attention.key_length}, {kv_bytes_per_element}-byte cache"
    )
    return VramEstimate(weights, kv_cache, GGUF_OVERHEAD_BYTES, weights + kv_cache + GGUF_OVERHEAD_BYTES, source)


def estimate_weight_files(model: Path) -> VramEstimate:
    """The weight files' total size times ``WEIGHT_FILES_FACTOR`` (the difference is reported as overhead)."""
    files = _weight_files(model)
    weights = sum(_file_size(f) for f in files)
    total = int(weights * WEIGHT_FILES_FACTOR)
    source = f"{len(files)} weight file{'s' if len(files) != 1 else ''} × {WEIGHT_FILES_FACTOR:g}"
    return VramEstimate(weights, 0, total - weights, total, source)


def _has_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            return stream.read(4) == _GGUF_MAGIC
    except OSError as error:
        raise EstimateError(f"cannot read model file {path}: {error.strerror or error}") from error


def _read_gguf(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise EstimateError(f"cannot read the GGUF header of {path}: {error}") from error


def _tensor_bytes(reader: GGUFReader) -> int:
    return sum(int(tensor.n_bytes) for tensor in reader.tensors)


def _attention(reader: GGUFReader, path: Path) -> _Attention:
    arch = str(_field(reader, path, "general.architecture"))
    n_layers = int(_field(reader, path, f"{arch}.block_count"))
    embedding = int(_field(reader, path, f"{arch}.embedding_length"))
    heads = _per_layer(_field(reader, path, f"{arch}.attention.head_count"), n_layers)
    kv_field = _optional_field(reader, f"{arch}.attention.head_count_kv")
    kv_heads = heads if kv_field is None else _per_layer(kv_field, n_layers)
    if max(heads) <= 0:
        raise EstimateError(f"GGUF header of {path}: {arch}.attention.head_count is 0")
    key_length = _optional_field(reader, f"{arch}.attention.key_length")
    head_dim = int(key_length) if key_length is not None else embedding // max(heads)
    value_length = _optional_field(reader, f"{arch}.attention.value_length")
    context = int(_field(reader, path, f"{arch}.context_length"))
    value_dim = int(value_length) if value_length is not None else head_dim
    return _Attention(n_layers, context, kv_heads, head_dim, value_dim)


def _per_layer(value: Any, n_layers: int) -> tuple[int, ...]:
    """A per-layer count: GGUF stores one number for all layers, or an array with one per layer."""
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    return (int(value),) * n_layers


def _field(reader: GGUFReader, path: Path, key: str) -> Any:
    value = _optional_field(reader, key)
    if value is None:
        raise EstimateError(f"GGUF header of {path} has no {key!r}; set vram: by hand for this model")
    return value


def _optional_field(reader: GGUFReader, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _other_shards(path: Path) -> tuple[Path, ...]:
    """For ``name-00001-of-00003.gguf``, the other shards (llama.cpp loads them all); else nothing."""
    match = _SPLIT_NAME.match(path.name)
    if match is None:
        return ()
    count, index = int(match["count"]), int(match["index"])
    names = (f"{match['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1) if i != index)
    shards = tuple(path.with_name(name) for name in names)
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise EstimateError(
            f"GGUF shard{'s' if len(missing) > 1 else ''} missing beside {path}: {', '.join(missing)}"
        )
    return shards


def _weight_files(model: Path) -> Sequence[Path]:
    if model.is_file():
        return (model,)
    if not model.is_dir():
        raise EstimateError(
            f"model {model} not found: no such file or directory; set vram: by hand for a model "
            "the agent downloads itself"
        )
    try:
        entries = sorted(p for p in model.iterdir() if p.is_file())
    except OSError as error:
        raise EstimateError(f"cannot list model directory {model}: {error.strerror or error}") from error
    for suffix in WEIGHT_SUFFIXES:
        found = [p for p in entries if p.name.endswith(suffix)]
        if found:
            return found
    wanted = ", ".join(f"*{s}" for s in WEIGHT_SUFFIXES)
    raise EstimateError(f"no weight files ({wanted}) in model directory {model}")


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as error:
        raise EstimateError(f"cannot read weight file {path}: {error.strerror or error}") from error


def _human(size: int) -> str:
    if size >= GIB:
        return f"{size / GIB:.2f} GiB"
    if size >= MIB:
        return f"{size / MIB:.1f} MiB"
    return f"{size / 1024:.1f} KiB"
