"""Two rewrites of a dense decode step's projections, tried on the H200 and kept for re-running.

Why they exist: a batch-1 decode step of a dense 1B model is ~200 small
kernels; OLMo-1B compiled reached 0.46-0.52 of the bandwidth roofline
(``docs/results/h200/torch-decode.md``), and fewer, larger kernels looked
like the way past 0.5. Measured there (runs 13 and 14), neither is:

* :func:`fuse_projections` (``--fuse``): each layer's q/k/v, and its
  gate/up, as one matrix. OLMo-1B compiled with ``coordinate_descent_tuning``:
  0.498-0.512 over three builds, against 0.497-0.518 unfused; OLMoE-1B-7B
  (``gemv`` experts) 575 tok/s in one build, against 592-616 unfused.
* :class:`GemvLinear` (``--gemv-linear``): a one-token Linear as a
  multiply-and-sum, which inductor makes a reduction kernel (as the ``gemv``
  experts do for OLMoE): 0.400 alone, 0.437 with ``--fuse`` (one build each),
  slower than cuBLAS's GEMV.

Neither is used by the torch backend. How the fusion works without
rewriting each architecture's attention: ``q_proj``, ``k_proj`` and
``v_proj`` become :class:`FusedSlice` modules over one shared ``nn.Linear``.
The first called with an input computes the fused product and keeps it; the
others, called with the same input, take their slice; the last drops it, so
no activation outlives its layer. Called in another order or with another
input, a slice computes the product itself: slower, never wrong.
``torch.compile`` traces this as one matmul and slices (the identity check is
resolved at trace time).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor, nn

#: Groups of projections that read one input, by the attribute names the
#: Llama-family layers of transformers use (OLMo, OLMoE, Llama, Qwen2, Gemma-2).
GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")),
          ("mlp", ("gate_proj", "up_proj")))


class _Product:
    """The fused product for the input it was computed from (shared by one group's slices)."""

    def __init__(self) -> None:
        self.input: Optional[Tensor] = None
        self.output: Optional[Tensor] = None


class FusedSlice(nn.Module):
    """One projection of a fused group: rows ``start:stop`` of the shared ``fused`` product."""

    def __init__(self, fused: nn.Linear, start: int, stop: int, product: _Product,
                 last: bool) -> None:
        super().__init__()
        self.fused = fused
        self.start, self.stop = start, stop
        self.in_features, self.out_features = fused.in_features, stop - start
        self._product = product
        self._last = last

    def forward(self, x: Tensor) -> Tensor:
        product = self._product
        if product.input is not x:
            product.input, product.output = x, self.fused(x)
        out = product.output[..., self.start:self.stop]  # type: ignore[index]
        if self._last:
            product.input = product.output = None
        return out


def fuse_group(parent: nn.Module, names: Sequence[str]) -> bool:
    """Replace ``parent``'s Linear projections ``names`` by slices of one fused Linear.

    Returns False, changing nothing, unless all are plain ``nn.Linear`` with
    one input width and all or none with a bias.
    """
    mods: List[Any] = [getattr(parent, name, None) for name in names]
    if not all(type(m) is nn.Linear for m in mods):
        return False
    if len({m.in_features for m in mods}) != 1 or len({m.bias is None for m in mods}) != 1:
        return False
    weight = torch.cat([m.weight.detach() for m in mods], 0)
    has_bias = mods[0].bias is not None
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias,
                      device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        if has_bias:
            fused.bias.copy_(torch.cat([m.bias.detach() for m in mods], 0))
    fused.requires_grad_(False)
    product = _Product()
    start = 0
    for i, (name, mod) in enumerate(zip(names, mods, strict=True)):
        setattr(parent, name, FusedSlice(fused, start, start + mod.out_features, product,
                                         last=i == len(names) - 1))
        start += mod.out_features
    return True


def fuse_projections(model: nn.Module) -> int:
    """Fuse q/k/v and gate/up in every decoder layer of ``model``; the number of groups fused.

    A MoE block's ``mlp`` (its router and experts) has no gate/up Linears and
    is left alone; so is any layout this does not recognise (0 groups).
    """
    layers = getattr(getattr(model, "model", None), "layers", None) or []
    count = 0
    for layer in layers:
        for block_name, names in GROUPS:
            block = getattr(layer, block_name, None)
            if block is not None and fuse_group(block, names):
                count += 1
    return count


class GemvLinear(nn.Linear):
    """A Linear whose one-token product is a multiply-and-sum (an inductor reduction kernel).

    The dense counterpart of the ``gemv`` experts; more than one token goes to
    ``F.linear``. Only for a compiled step: run eagerly it materialises the
    float32 product.
    """

    def forward(self, x: Tensor) -> Tensor:

        if x.numel() != self.in_features:
            return super().forward(x)
        out = (self.weight.float() * x.reshape(1, -1).float()).sum(-1)
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def gemv_linears(model: nn.Module) -> int:
    """Make every plain ``nn.Linear`` of ``model`` a :class:`GemvLinear`; how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = GemvLinear
            count += 1
    return count
