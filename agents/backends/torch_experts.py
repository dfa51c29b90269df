"""``gemv``: a MoE experts forward whose one-token steps read the routed experts in place.

Why: transformers' ``batched_mm`` decodes a token by first gathering its
routed experts' weights into a new tensor (``gate_up_proj[ids]``, 8 x 8 MiB
per OLMoE layer), then running a batched GEMM over the copy: every routed
weight is read, written and read again, three times the bytes a decode
token needs. ``grouped_mm`` avoids the copy but runs a grouped GEMM built for
many tokens a group. On the H200 both left the compiled OLMoE decode at
0.23-0.37 of the bandwidth roofline; ``gemv`` reached 0.33-0.35 in every
build (docs/results/h200/torch-decode.md).

How: each routed expert's projection of the token is written as a
multiply-and-sum over the gathered rows, ``(W[ids] * x).sum(-1)``. Run
eagerly that still copies the rows; under ``torch.compile`` inductor turns
the gather into an indirect load inside one reduction kernel, so each
routed weight is read once, in place, and nothing is written but the
outputs: a GEMV per routed expert, the gather free. The arithmetic is the
same as ``batched_mm``'s (products summed in float32, the gated activation
taken in the weights' dtype).

Only a step of one token takes this path (batch-1 decode, what the torch
backend and ``bench/torch_decode.py`` measure); with more tokens (a prefill,
a batch) the multiply-and-sum would read each expert once per token it
serves, so those go to transformers' ``grouped_mm``. Layouts other than
transformers' default (gate and up concatenated, not transposed, no bias)
go there too.

``set_experts(model, name)`` is how edgefarm chooses any experts
implementation: it first adds ``gemv`` to transformers' experts registry
(idempotent), so ``gemv`` is accepted like the built-in names wherever a
model comes from (a preset, a checkpoint directory). torch and transformers are imported inside the
functions: the agent's core imports this package with the standard library
only.
"""

from typing import Any

__all__ = ["NAME", "gemv_experts_forward", "set_experts"]

#: The name this implementation is registered (and chosen in a sweep) under.
NAME = "gemv"


def gemv_experts_forward(self: Any, hidden_states: Any, top_k_index: Any,
                         top_k_weights: Any) -> Any:
    """The experts' output for ``hidden_states`` (``[tokens, hidden]``) and their routing.

    ``self`` is a transformers experts module (``gate_up_proj``
    ``[experts, 2 * intermediate, hidden]``, ``down_proj`` ``[experts, hidden,
    intermediate]``); ``top_k_index`` / ``top_k_weights`` are ``[tokens, k]``.
    """
    from transformers.integrations.moe import grouped_mm_experts_forward

    if (hidden_states.size(0) != 1 or getattr(self, "is_transposed", False)
            or getattr(self, "has_bias", False) or not getattr(self, "has_gate", True)):
        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    ids = top_k_index.clamp(0, self.num_experts - 1)  # [1, k]
    x = hidden_states.float()[:, None, None, :]  # [1, 1, 1, hidden]
    gate_up = (self.gate_up_proj[ids].float() * x).sum(-1)  # [1, k, 2 * intermediate]
    act = self._apply_gate(gate_up.to(hidden_states.dtype))  # [1, k, intermediate]
    out = (self.down_proj[ids].float() * act.float()[:, :, None, :]).sum(-1)  # [1, k, hidden]
    out = (out * top_k_weights.float()[:, :, None]).sum(1)  # [1, hidden]
    return out.to(hidden_states.dtype)


def _register() -> None:
    """Make ``gemv`` a name ``set_experts_implementation`` accepts (transformers' registry)."""
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(NAME, gemv_experts_forward)


def set_experts(model: Any, name: str) -> None:
    """``model.set_experts_implementation(name)``, with ``gemv`` registered first."""
    _register()
    model.set_experts_implementation(name)
