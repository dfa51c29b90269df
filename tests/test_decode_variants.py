"""bench/decode_variants.py on the CPU: the rewrites change kernels, never answers.

Real torch and transformers on the tiny presets. What they are worth on a
GPU was measured on the H200 (docs/results/h200/torch-decode.md, runs 13 and
14); here: the same logits, the fused groups really are one matmul once
compiled, and no activation is kept between steps.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch._inductor.utils import run_and_get_code

from agents.backends.torch_models import build_model
from bench.decode_variants import FusedSlice, fuse_projections, gemv_linears


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("preset, groups_per_layer", [("tiny-dense", 2), ("tiny-moe", 1)])
def test_fused_projections_give_the_same_logits(preset: str, groups_per_layer: int) -> None:
    model, _, _ = build_model(preset, "cpu", "float32", None)
    ids = torch.randint(0, model.config.vocab_size, (1, 6),
                        generator=torch.Generator().manual_seed(1))
    before = _logits(model, ids)
    n_params = sum(p.numel() for p in model.parameters())
    layers = model.config.num_hidden_layers
    # a MoE layer's mlp is its router and experts: only its attention is fused
    assert fuse_projections(model) == groups_per_layer * layers
    assert sum(p.numel() for p in model.parameters()) == n_params  # moved, not copied
    assert isinstance(model.model.layers[0].self_attn.k_proj, FusedSlice)
    torch.testing.assert_close(_logits(model, ids), before, rtol=1e-5, atol=1e-5)


def test_a_slice_called_alone_or_out_of_order_computes_its_own_rows() -> None:
    model, _, _ = build_model("tiny-dense", "cpu", "float32", None)
    attn = model.model.layers[0].self_attn
    x = torch.randn(1, 3, attn.q_proj.in_features)
    with torch.no_grad():
        want = [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]
        fuse_projections(model)
        got_v, got_q, got_k = attn.v_proj(x), attn.q_proj(x), attn.k_proj(x)  # v "last" first
        other = torch.randn_like(x)
        got_q2 = attn.q_proj(other)  # a new input is never answered from the kept product
    for a, b in zip(want, [got_q, got_k, got_v], strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(got_q2, got_q)


def test_no_activation_is_kept_once_the_last_projection_ran() -> None:
    model, _, _ = build_model("tiny-dense", "cpu", "float32", None)
    fuse_projections(model)
    _logits(model, torch.tensor([[1, 2, 3]]))
    for layer in model.model.layers:
        for proj in (layer.self_attn.q_proj, layer.mlp.gate_proj):
            assert proj._product.input is None and proj._product.output is None


def test_compiled_each_fused_group_is_one_matmul() -> None:
    """tiny-dense: 7 Linears a layer and the LM head unfused; fused, q/k/v and gate/up one each."""
    model, _, _ = build_model("tiny-dense", "cpu", "float32", None)
    layers = model.config.num_hidden_layers
    fuse_projections(model)
    compiled = torch.compile(model, dynamic=False, fullgraph=True)  # no graph break either
    ids = torch.tensor([[5]])
    with torch.no_grad():
        _, codes = run_and_get_code(lambda: compiled(input_ids=ids).logits)
    matmuls = re.findall(r"extern_kernels\.(?:mm|addmm|bmm)\(", "\n".join(codes))
    assert len(matmuls) == (7 - 3) * layers + 1


def test_gemv_linear_gives_the_linear_product_for_one_token_and_many() -> None:
    lin = nn.Linear(24, 10)
    x1, x4 = torch.randn(1, 1, 24), torch.randn(1, 4, 24)
    with torch.no_grad():
        want1, want4 = lin(x1), lin(x4)
        model = nn.Sequential(lin)
        assert gemv_linears(model) == 1
        torch.testing.assert_close(lin(x1), want1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lin(x4), want4)
