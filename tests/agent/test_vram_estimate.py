"""``vram: auto`` estimates against numbers worked out by hand: the tiny GGUF, a Llama-2-7B-shaped GGUF header
(a sparse file: the 13 GB of declared weights take no disk), weight directories, and the startup timeout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from fleetd.agent.vram_estimate import (
    GGUF_OVERHEAD_BYTES,
    EstimateError,
    estimate_instance,
    estimate_vram,
)
from fleetd.core.desired import InstanceSpec, startup_timeout_ms
from fleetd.tools.tiny_gguf import TINY, tensors, write_tiny_model

MIB = 1024**2
GIB = 1024**3

TINY_WEIGHT_BYTES = 429_312
"""F32: token_embd + output 2 × 260×64 = 33,280; output_norm 64; per layer q 64×64 + k, v 2 × 32×64
+ o 64×64 + gate, up, down 3 × 128×64 + 2 norms × 64 = 36,992, × 2 layers = 73,984;
(33,280 + 64 + 73,984) = 107,328 floats × 4 bytes."""

LLAMA2_7B_F16_WEIGHT_BYTES = 13_476_831_232
"""Per layer 4 × 4096×4096 (q, k, v, o) + 3 × 4096×11008 (gate, up, down) + 2 × 4096 (norms) = 202,383,360;
× 32 layers = 6,476,267,520; + token_embd, output 2 × 32000×4096 = 262,144,000; + output_norm 4096
= 6,738,415,616 parameters × 2 bytes (F16)."""


def llama2_7b_shapes() -> dict[str, tuple[int, ...]]:
    """numpy shapes (GGUF dimensions reversed) of Llama-2-7B's tensors."""
    embd, ff, vocab = 4096, 11008, 32000
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, embd)}
    for layer in range(32):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            shapes[f"blk.{layer}.{name}.weight"] = (embd, embd)
        shapes[f"blk.{layer}.ffn_gate.weight"] = (ff, embd)
        shapes[f"blk.{layer}.ffn_up.weight"] = (ff, embd)
        shapes[f"blk.{layer}.ffn_down.weight"] = (embd, ff)
        shapes[f"blk.{layer}.attn_norm.weight"] = (embd,)
        shapes[f"blk.{layer}.ffn_norm.weight"] = (embd,)
    shapes["output_norm.weight"] = (embd,)
    shapes["output.weight"] = (vocab, embd)
    return shapes


def write_7b_header(path: Path) -> Path:
    """A GGUF with Llama-2-7B's metadata and F16 tensor infos whose data region is a hole in a sparse file:
    GGUFReader maps the file and needs it long enough, but never reads the (zero) weights."""
    writer = GGUFWriter(path, "llama")
    writer.add_context_length(4096)
    writer.add_embedding_length(4096)
    writer.add_block_count(32)
    writer.add_feed_forward_length(11008)
    writer.add_head_count(32)
    writer.add_head_count_kv(32)
    data_bytes = 0
    for name, shape in llama2_7b_shapes().items():
        nbytes = int(np.prod(shape)) * 2
        writer.add_tensor_info(name, shape, np.dtype(np.float16), nbytes)
        data_bytes += GGUFWriter.ggml_pad(nbytes, writer.data_alignment)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    assert writer.fout is not None
    out = writer.fout[0]
    writer.write_padding(out, out.tell())
    out.truncate(out.tell() + data_bytes)
    writer.close()
    return path


def write_tiny_shards(directory: Path) -> Path:
    """The tiny model's tensors split over two shards; returns the first."""
    writer = GGUFWriter(directory / "tiny.gguf", "llama", split_max_tensors=12)
    writer.add_context_length(TINY.context_length)
    writer.add_embedding_length(TINY.n_embd)
    writer.add_block_count(TINY.n_layers)
    writer.add_head_count(TINY.n_head)
    writer.add_head_count_kv(TINY.n_head_kv)
    for name, array in tensors().items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return directory / "tiny-00001-of-00002.gguf"


def test_the_tiny_model_is_its_tensor_bytes_plus_the_kv_cache_of_its_context(tmp_path: Path) -> None:
    estimate = estimate_vram(write_tiny_model(tmp_path / "tiny.gguf"))
    assert estimate.weights == TINY_WEIGHT_BYTES == sum(a.nbytes for a in tensors().values())
    assert estimate.kv_cache == 2 * 2 * 256 * 2 * 16 * 2  # K and V × layers × ctx × kv heads × head dim × f16
    assert estimate.overhead == GGUF_OVERHEAD_BYTES == 256 * MIB
    assert estimate.total == 429_312 + 65_536 + 268_435_456
    assert estimate.explain() == (
        "256.5 MiB = weights 419.2 KiB + KV cache 64.0 KiB + overhead 256.0 MiB"
        " (GGUF header: 2 layers, ctx 256, 2 KV heads × 16, 2-byte cache)"
    )


def test_the_context_option_sizes_the_kv_cache(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.gguf")
    spec = InstanceSpec(name="tiny", backend="llama-cpp", model=str(model), options=(("ctx_size", 128),))
    assert estimate_instance(spec).kv_cache == 2 * 2 * 128 * 2 * 16 * 2
    unset = InstanceSpec(name="tiny", backend="llama-cpp", model=str(model), options=(("ctx_size", 0),))
    assert estimate_instance(unset).kv_cache == 2 * 2 * 256 * 2 * 16 * 2
    assert estimate_vram(model, ctx_size=256, kv_bytes_per_element=1).kv_cache == 2 * 2 * 256 * 2 * 16 * 1


def test_a_7b_header_gives_its_weights_and_2_gib_of_kv_at_4096(tmp_path: Path) -> None:
    path = write_7b_header(tmp_path / "llama-2-7b.f16.gguf")
    assert path.stat().st_size > LLAMA2_7B_F16_WEIGHT_BYTES
    estimate = estimate_vram(path)
    assert estimate.weights == LLAMA2_7B_F16_WEIGHT_BYTES
    assert estimate.kv_cache == 2 * 32 * 4096 * 32 * 128 * 2 == 2 * GIB
    assert estimate.total == 13_476_831_232 + 2_147_483_648 + 268_435_456
    assert estimate.explain().startswith("14.80 GiB = weights 12.55 GiB + KV cache 2.00 GiB + overhead 256.0 MiB")


def test_the_shards_of_a_split_gguf_are_all_counted(tmp_path: Path) -> None:
    first = write_tiny_shards(tmp_path)
    assert (tmp_path / "tiny-00002-of-00002.gguf").is_file()
    assert estimate_vram(first).weights == TINY_WEIGHT_BYTES
    (tmp_path / "tiny-00002-of-00002.gguf").unlink()
    with pytest.raises(EstimateError, match=r"missing beside .*tiny-00002-of-00002\.gguf"):
        estimate_vram(first)


def test_weight_files_count_with_a_factor_and_one_format_only(tmp_path: Path) -> None:
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 3000)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 2000)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 4000)  # the same weights in another format
    (tmp_path / "config.json").write_text("{}")
    estimate = estimate_vram(tmp_path)
    assert (estimate.weights, estimate.kv_cache, estimate.overhead, estimate.total) == (5000, 0, 1000, 6000)
    assert estimate.source == "2 weight files × 1.2"
    assert estimate_vram(tmp_path / "pytorch_model.bin").total == 4800


def test_a_missing_model_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(EstimateError, match=r"model .*absent not found"):
        estimate_vram(tmp_path / "absent")
    with pytest.raises(EstimateError, match=r"absent\.gguf"):
        estimate_vram(tmp_path / "absent.gguf")


def test_a_directory_without_weights_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EstimateError, match=r"no weight files .*\*\.safetensors"):
        estimate_vram(tmp_path)


def test_a_corrupt_gguf_names_its_path(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(write_tiny_model(tmp_path / "tiny.gguf").read_bytes()[:5000])
    with pytest.raises(EstimateError, match=r"cannot read the GGUF header of .*broken\.gguf"):
        estimate_vram(broken)


def test_a_header_without_the_layer_count_is_an_error(tmp_path: Path) -> None:
    writer = GGUFWriter(tmp_path / "odd.gguf", "llama")
    writer.add_context_length(256)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(EstimateError, match=r"odd\.gguf has no 'llama\.block_count'"):
        estimate_vram(tmp_path / "odd.gguf")


@pytest.mark.parametrize(
    ("base_ms", "model_bytes", "expected_ms"),
    [
        (600_000, 0, 600_000),  # base above 5 min
        (60_000, 0, 300_000),  # never below 5 min for any model
        (600_000, 30 * GIB, 900_000),  # 5 min + 30 × 20 s
        (60_000, 13_476_831_232, 551_025),  # 5 min + 12.551 GiB × 20 s = 300 s + 251.025 s
        (1_000_000, GIB, 1_000_000),
    ],
)
def test_the_startup_timeout_grows_with_the_model(base_ms: int, model_bytes: int, expected_ms: int) -> None:
    assert startup_timeout_ms(base_ms, model_bytes) == expected_ms
