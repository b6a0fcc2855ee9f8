"""Write a tiny random-weight llama GGUF (about 0.5 MB) that a real ``llama-server`` loads in under a second.

Tests, the quickstart and demos need a model that llama.cpp really loads and that answers
``/v1/chat/completions``, without downloading weights (architecture.md §8). This module writes one with the
``gguf`` package: arch ``llama``, 2 layers, 64-dim embeddings, 4 heads of 16, 2 KV heads, a 260-token SPM
vocabulary (``<unk> <s> </s>``, the 256 byte tokens and ``▁``) and a ChatML chat template. Weights are small
F32 values drawn from a fixed seed, so the same call always writes the same bytes. The answers are gibberish;
that the server loads, tokenises, templates and generates is all it is for.

Run ``python -m fleetd.tools.tiny_gguf OUT.gguf`` to write one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGUFWriter, LlamaFileType, TokenType

F32Array = npt.NDArray[np.float32]

SEED = 20_261_123
WEIGHT_SCALE = 0.02
"""Standard deviation of the random weights: small enough that activations stay finite through 2 layers."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = (("<unk>", TokenType.UNKNOWN), ("<s>", TokenType.CONTROL), ("</s>", TokenType.CONTROL))
SPACE_TOKEN = "\u2581"
"""SentencePiece's word-boundary mark, the one NORMAL token."""


@dataclass(frozen=True, slots=True)
class TinyShape:
    """The hyperparameters of the tiny model."""

    n_layers: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    context_length: int = 256
    n_vocab: int = len(SPECIAL_TOKENS) + 256 + 1

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


TINY = TinyShape()


def vocabulary() -> tuple[tuple[str, ...], tuple[float, ...], tuple[int, ...]]:
    """Tokens, scores and token types of the SPM vocabulary, in id order (``<unk>``=0, ``<s>``=1, ``</s>``=2)."""
    tokens = [text for text, _ in SPECIAL_TOKENS] + [f"<0x{byte:02X}>" for byte in range(256)] + [SPACE_TOKEN]
    types = [int(kind) for _, kind in SPECIAL_TOKENS] + [int(TokenType.BYTE)] * 256 + [int(TokenType.NORMAL)]
    scores = [0.0] * len(tokens)
    scores[-1] = -1.0
    return tuple(tokens), tuple(scores), tuple(types)


def tensor_shapes(shape: TinyShape = TINY) -> dict[str, tuple[int, ...]]:
    """Every tensor's numpy shape, by the name llama.cpp looks up.

    numpy shapes are GGUF's dimensions reversed: llama.cpp's ``attn_q`` is ``{n_embd, n_head * head_dim}``
    (input dimension first), so its numpy array is ``(n_head * head_dim, n_embd)``, as in gguf's converters.
    """
    e, ff, q, kv = shape.n_embd, shape.n_ff, shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (shape.n_vocab, e)}
    for layer in range(shape.n_layers):
        blk = f"blk.{layer}"
        shapes |= {
            f"{blk}.attn_norm.weight": (e,),
            f"{blk}.attn_q.weight": (q, e),
            f"{blk}.attn_k.weight": (kv, e),
            f"{blk}.attn_v.weight": (kv, e),
            f"{blk}.attn_output.weight": (e, q),
            f"{blk}.ffn_norm.weight": (e,),
            f"{blk}.ffn_gate.weight": (ff, e),
            f"{blk}.ffn_up.weight": (ff, e),
            f"{blk}.ffn_down.weight": (e, ff),
        }
    shapes |= {"output_norm.weight": (e,), "output.weight": (shape.n_vocab, e)}
    return shapes


def tensors(shape: TinyShape = TINY, seed: int = SEED) -> dict[str, F32Array]:
    """The weights: norms are ones, matrices small normal values from ``seed`` (same seed, same values)."""
    rng = np.random.default_rng(seed)
    weights: dict[str, F32Array] = {}
    for name, dims in tensor_shapes(shape).items():
        if len(dims) == 1:
            weights[name] = np.ones(dims, dtype=np.float32)
        else:
            weights[name] = (rng.standard_normal(dims, dtype=np.float32) * np.float32(WEIGHT_SCALE)).astype(
                np.float32
            )
    return weights


def _add_metadata(writer: GGUFWriter, shape: TinyShape) -> None:
    writer.add_name("fleetd-tiny")
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layers)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(shape.n_vocab)


def _add_tokenizer(writer: GGUFWriter) -> None:
    tokens, scores, types = vocabulary()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHATML_TEMPLATE)


def write_tiny_model(path: Path) -> Path:
    """Write the tiny model to ``path`` (parents must exist) and return ``path``."""
    writer = GGUFWriter(path, "llama")
    try:
        _add_metadata(writer, TINY)
        _add_tokenizer(writer)
        for name, array in tensors().items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fleetd.tools.tiny_gguf", description="Write a tiny random-weight llama GGUF."
    )
    parser.add_argument("out", type=Path, help="where to write the .gguf file")
    args = parser.parse_args(argv)
    out: Path = args.out
    write_tiny_model(out)
    sys.stdout.write(f"wrote {out} ({out.stat().st_size} bytes)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
