"""Bytes per decoded token and KV bytes per position, against hand-computed answers.

The tensor tables are those of the published shapes, at Q4_0 for the 2-D
weights and f32 for norms and the MoE router (as llama.cpp quantizes them):

* Llama-3.2-1B: 16 layers, d_model 2048, 32 heads, 8 KV heads of 64, FFN
  8192, vocab 128256, output tied to the embedding;
* OLMoE-1B-7B: 16 layers, d_model 2048, 16 heads = 16 KV heads of 128,
  q/k norms, 64 experts of FFN 1024 with 8 used per token, vocab 50304, its
  own output matrix.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from agent_fixtures import tiny_models_fixture  # noqa: F401  (the fixture tiny_models)

from agents.decode_traffic import (
    Tensor,
    decode_bytes_per_token,
    kv_bytes_per_position,
    tensors_of,
    weight_bytes_per_token,
)
from agents.gguf_info import read_gguf_info


def q4_0(*shape: int) -> int:
    return math.prod(shape) // 32 * 18  # 32 weights in an 18-byte block


def f32(*shape: int) -> int:
    return 4 * math.prod(shape)


def llama_3_2_1b() -> tuple[list[Tensor], dict[str, object]]:
    t = [Tensor("token_embd.weight", [2048, 128256], q4_0(2048, 128256)),
         Tensor("output_norm.weight", [2048], f32(2048)),
         Tensor("rope_freqs.weight", [32], f32(32))]
    for i in range(16):
        p = f"blk.{i}."
        t += [Tensor(p + "attn_norm.weight", [2048], f32(2048)),
              Tensor(p + "attn_q.weight", [2048, 2048], q4_0(2048, 2048)),
              Tensor(p + "attn_k.weight", [2048, 512], q4_0(2048, 512)),
              Tensor(p + "attn_v.weight", [2048, 512], q4_0(2048, 512)),
              Tensor(p + "attn_output.weight", [2048, 2048], q4_0(2048, 2048)),
              Tensor(p + "ffn_norm.weight", [2048], f32(2048)),
              Tensor(p + "ffn_gate.weight", [2048, 8192], q4_0(2048, 8192)),
              Tensor(p + "ffn_up.weight", [2048, 8192], q4_0(2048, 8192)),
              Tensor(p + "ffn_down.weight", [8192, 2048], q4_0(8192, 2048))]
    meta = {"general.architecture": "llama", "llama.block_count": 16,
            "llama.embedding_length": 2048, "llama.attention.head_count": 32,
            "llama.attention.head_count_kv": 8}
    return t, meta


def olmoe_1b_7b() -> tuple[list[Tensor], dict[str, object]]:
    t = [Tensor("token_embd.weight", [2048, 50304], q4_0(2048, 50304)),
         Tensor("output_norm.weight", [2048], f32(2048)),
         Tensor("output.weight", [2048, 50304], q4_0(2048, 50304))]
    for i in range(16):
        p = f"blk.{i}."
        t += [Tensor(p + "attn_norm.weight", [2048], f32(2048)),
              Tensor(p + "attn_q.weight", [2048, 2048], q4_0(2048, 2048)),
              Tensor(p + "attn_k.weight", [2048, 2048], q4_0(2048, 2048)),
              Tensor(p + "attn_v.weight", [2048, 2048], q4_0(2048, 2048)),
              Tensor(p + "attn_output.weight", [2048, 2048], q4_0(2048, 2048)),
              Tensor(p + "attn_q_norm.weight", [2048], f32(2048)),
              Tensor(p + "attn_k_norm.weight", [2048], f32(2048)),
              Tensor(p + "ffn_norm.weight", [2048], f32(2048)),
              Tensor(p + "ffn_gate_inp.weight", [2048, 64], f32(2048, 64)),
              Tensor(p + "ffn_gate_exps.weight", [2048, 1024, 64], q4_0(2048, 1024, 64)),
              Tensor(p + "ffn_up_exps.weight", [2048, 1024, 64], q4_0(2048, 1024, 64)),
              Tensor(p + "ffn_down_exps.weight", [1024, 2048, 64], q4_0(1024, 2048, 64))]
    meta = {"general.architecture": "olmoe", "olmoe.block_count": 16,
            "olmoe.embedding_length": 2048, "olmoe.attention.head_count": 16,
            "olmoe.attention.head_count_kv": 16, "olmoe.expert_count": 64,
            "olmoe.expert_used_count": 8}
    return t, meta


def test_llama_3_2_1b_reads_its_whole_tied_embedding_every_token() -> None:
    # Per layer: (2*2048*2048 + 2*2048*512 + 3*2048*8192) weights at 18/32 byte
    # = 34,209,792, plus two f32 norms of 2048 (16,384): 34,226,176; x16 layers
    # = 547,618,816. The embedding, 2048 x 128256 at 18/32, is the output
    # projection too: 147,750,912. output_norm 8,192. rope_freqs not counted.
    weights = weight_bytes_per_token(*llama_3_2_1b())
    assert weights == {"bytes": 695_377_920, "expert_bytes": 0, "dense_bytes": 695_377_920,
                       "reason": "tied embeddings read whole as the output projection"}
    # KV: 16 layers x 8 heads x (64 + 64) values x 2 bytes = 32,768 per position.
    assert kv_bytes_per_position(llama_3_2_1b()[1]) == 32_768
    assert kv_bytes_per_position(llama_3_2_1b()[1], "q8_0", "q8_0") == 16 * 8 * 128 * 34 / 32


def test_olmoe_1b_7b_reads_8_of_64_experts_and_one_embedding_row() -> None:
    # Per layer: attention 4 x 2048^2 at 18/32 = 9,437,184; four f32 norms
    # 32,768; router 2048 x 64 f32 = 524,288; experts 3 x 2048 x 1024 x 64 at
    # 18/32 = 226,492,416 of which 8/64 = 28,311,552 are read. x16 layers =
    # 612,892,672. One embedding row 2048 x 18/32 = 1,152; output 2048 x 50304
    # at 18/32 = 57,950,208; output_norm 8,192. Total 670,852,224 (~0.67 GB,
    # about Llama-3.2-1B's 0.70 GB although OLMoE holds 5x the parameters).
    weights = weight_bytes_per_token(*olmoe_1b_7b())
    assert weights == {"bytes": 670_852_224, "expert_bytes": 16 * 28_311_552,
                       "dense_bytes": 670_852_224 - 16 * 28_311_552, "reason": ""}
    # KV: 16 layers x 16 heads x (128 + 128) x 2 bytes = 131,072 per position,
    # four times Llama-3.2-1B's (no grouped-query attention).
    kv = kv_bytes_per_position(olmoe_1b_7b()[1])
    assert kv == 131_072
    assert decode_bytes_per_token(670_852_224, kv, 4096) == 670_852_224 + 4096 * 131_072


@pytest.mark.parametrize("broken, reason", [
    ({"olmoe.expert_count": None}, "no olmoe.expert_count/expert_used_count"),
    ({}, "has a type whose size is not known here"),
])
def test_what_cannot_be_counted_says_why(broken: dict[str, object], reason: str) -> None:
    tensors, meta = olmoe_1b_7b()
    if broken:
        meta = {**meta, **broken}
    else:
        tensors = [*tensors[:-1], tensors[-1]._replace(nbytes=None)]
    got = weight_bytes_per_token(tensors, meta)
    assert got["bytes"] is None and reason in str(got["reason"])


def test_kv_needs_the_shape() -> None:
    assert kv_bytes_per_position({"general.architecture": "x"}) is None
    assert kv_bytes_per_position(llama_3_2_1b()[1], "f16", "q3_k") is None  # not a cache type


def test_the_table_read_from_a_real_file_accounts_for_its_bytes(tiny_models: dict[str, Path]
                                                                 ) -> None:
    """``read_gguf_info``'s table (what the agent reports from) sizes every tensor of a file.

    The tensor data is the file minus its header, so the table's sizes must
    add up to the file's size within the header (metadata and vocabulary).
    """
    path = tiny_models["tiny-moe"]
    info = read_gguf_info(str(path))
    meta = info["metadata"]
    assert isinstance(meta, dict) and isinstance(info["tensors"], list)
    tensors = tensors_of(info["tensors"])
    stored = sum(t.nbytes or 0 for t in tensors)
    assert all(t.nbytes for t in tensors)
    assert 0 < path.stat().st_size - stored < 2 * 2**20
    got = weight_bytes_per_token(tensors, meta)
    assert got["bytes"] is not None and 0 < got["expert_bytes"] < got["bytes"] < stored
