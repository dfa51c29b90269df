"""Published model shapes that edgefarm synthesizes as random-weight GGUF files.

Each preset is a :class:`ModelShape` holding the hyper-parameters of a real
model, taken from that model's Hugging Face ``config.json`` (see ``source``),
and named by the llama.cpp architecture that loads it. :func:`tensor_table`
turns a shape into the ordered list of tensors llama.cpp's loader for that
architecture requires, with shapes in GGUF/ggml order (``ne0`` first, i.e.
the reverse of the PyTorch shape), and :func:`param_counts` counts the
parameters.

Standard library only; Python 3.8+ (this runs on the devices).
"""

import math
from typing import Dict, List, NamedTuple, Optional, Tuple

# Tensor roles. The role decides how the writer fills a tensor and how it is
# counted by param_counts().
ROLE_EMBED = "embed"          # token_embd: [n_embd, vocab]
ROLE_OUTPUT = "output"        # untied lm head: [n_embd, vocab]
ROLE_NORM = "norm"            # RMS/layer-norm weight, 1-D, filled with 1.0
ROLE_ATTN = "attn"            # q/k/v/o projections
ROLE_BIAS = "bias"            # q/k/v biases (qwen2), 1-D
ROLE_FFN = "ffn"              # dense FFN gate/up/down
ROLE_ROUTER = "router"        # MoE router ffn_gate_inp: [n_embd, n_expert], kept F32
ROLE_EXPERT = "expert"        # stacked expert FFN weights: [.., .., n_expert]
ROLE_ROPE_FREQS = "rope_freqs"  # llama-3 rope scaling factors (not a parameter)

#: Roles whose tensors are matrices the preset's quantization applies to.
MATRIX_ROLES = (ROLE_EMBED, ROLE_OUTPUT, ROLE_ATTN, ROLE_FFN, ROLE_EXPERT)


class ModelShape(NamedTuple):
    """The published hyper-parameters of one model.

    ``n_ff`` is the dense FFN width; for a MoE model it is the width of one
    expert (llama.cpp's olmoe loader reads the expert width from
    ``feed_forward_length``), and ``n_ff_exp`` repeats it.
    ``norm`` is ``"rms"`` (RMSNorm with a weight), ``"nonparam"`` (OLMo's
    layer norm without any weight or bias). ``rope_llama3`` is
    ``(factor, low_freq_factor, high_freq_factor, original_context)`` for
    Llama-3.x rope scaling, written as a ``rope_freqs`` tensor like
    llama.cpp's converter does.
    """

    name: str
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    vocab: int
    ctx: int
    rope_theta: float
    norm_eps: float
    norm: str = "rms"
    tied_output: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    post_norms: bool = False
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    sliding_window: int = 0
    rope_llama3: Optional[Tuple[float, float, float, int]] = None
    source: str = ""
    published_params: str = ""
    notes: str = ""

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    def as_dict(self) -> Dict[str, object]:
        """Plain-JSON form (tuples become lists); used for the cache key."""
        d = dict(self._asdict())
        if d["rope_llama3"] is not None:
            d["rope_llama3"] = list(d["rope_llama3"])
        return d


class TensorSpec(NamedTuple):
    """One tensor of a preset: GGUF name, ggml shape (ne0 first), role."""

    name: str
    shape: Tuple[int, ...]
    role: str

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


PRESETS: Dict[str, ModelShape] = {}


def _add(shape: ModelShape) -> None:
    PRESETS[shape.name] = shape


_add(ModelShape(
    name="olmoe-1b-7b", arch="olmoe",
    n_layer=16, n_embd=2048, n_head=16, n_head_kv=16, head_dim=128,
    n_ff=1024, n_expert=64, n_expert_used=8, n_ff_exp=1024,
    vocab=50304, ctx=4096, rope_theta=10000.0, norm_eps=1e-5,
    tied_output=False, qk_norm=True,
    source="allenai/OLMoE-1B-7B-0924",
    published_params="6.9B total, 1.3B active",
    notes="QK-norm over the full q/k projections (attn_q_norm/attn_k_norm of n_embd).",
))

_add(ModelShape(
    name="olmo-1b", arch="olmo",
    n_layer=16, n_embd=2048, n_head=16, n_head_kv=16, head_dim=128,
    n_ff=8192, vocab=50304, ctx=4096, rope_theta=10000.0, norm_eps=1e-5,
    norm="nonparam", tied_output=True,
    source="allenai/OLMo-1B-0724-hf",
    published_params="1.18B",
    notes="Non-parametric layer norm (no norm tensors at all); tied embeddings: "
          "llama.cpp's olmo loader falls back to token_embd when output.weight is absent.",
))

_add(ModelShape(
    name="olmo-7b", arch="olmo",
    n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, head_dim=128,
    n_ff=11008, vocab=50304, ctx=4096, rope_theta=10000.0, norm_eps=1e-5,
    norm="nonparam", tied_output=False,
    source="allenai/OLMo-7B-0724-hf",
    published_params="6.89B",
    notes="OLMoE-1B-7B's total parameter count as a dense model (the study's other "
          "baseline); non-parametric layer norm like olmo-1b, untied output.",
))

_add(ModelShape(
    name="llama-3.2-1b", arch="llama",
    n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, head_dim=64,
    n_ff=8192, vocab=128256, ctx=131072, rope_theta=500000.0, norm_eps=1e-5,
    tied_output=True, rope_llama3=(32.0, 1.0, 4.0, 8192),
    source="meta-llama/Llama-3.2-1B",
    published_params="1.24B",
    notes="Llama-3 rope scaling is written as the rope_freqs tensor (32 F32 factors).",
))

_add(ModelShape(
    name="qwen2.5-1.5b", arch="qwen2",
    n_layer=28, n_embd=1536, n_head=12, n_head_kv=2, head_dim=128,
    n_ff=8960, vocab=151936, ctx=32768, rope_theta=1000000.0, norm_eps=1e-6,
    tied_output=True, qkv_bias=True,
    source="Qwen/Qwen2.5-1.5B",
    published_params="1.54B (1.31B non-embedding)",
    notes="Q/K/V projections carry biases.",
))

_add(ModelShape(
    name="gemma-2-2b", arch="gemma2",
    n_layer=26, n_embd=2304, n_head=8, n_head_kv=4, head_dim=256,
    n_ff=9216, vocab=256000, ctx=8192, rope_theta=10000.0, norm_eps=1e-6,
    tied_output=True, post_norms=True,
    attn_softcap=50.0, final_softcap=30.0, sliding_window=4096,
    source="google/gemma-2-2b",
    published_params="2.61B",
    notes="head_dim 256 != n_embd/n_head: key_length/value_length are written. "
          "Post-attention and post-FFN norms; logit soft-capping 50/30; "
          "sliding window 4096 on every other layer (llama.cpp's default pattern).",
))

# Tiny presets for tests and demos. tiny-moe mirrors olmoe (untied, QK-norm,
# 8 experts top-2 whose active FFN width equals tiny-dense's FFN width), so
# its active parameter count is within ~1% of tiny-dense's total, like
# OLMoE-1B-7B's active count is close to OLMo-1B's total.
_add(ModelShape(
    name="tiny-moe", arch="olmoe",
    n_layer=4, n_embd=128, n_head=4, n_head_kv=4, head_dim=32,
    n_ff=256, n_expert=8, n_expert_used=2, n_ff_exp=256,
    vocab=512, ctx=2048, rope_theta=10000.0, norm_eps=1e-5,
    tied_output=False, qk_norm=True,
    source="edgefarm (synthetic)",
    notes="A few MB; 8 experts of 256, top-2 (active FFN width 512 = tiny-dense's n_ff).",
))

_add(ModelShape(
    name="tiny-dense", arch="llama",
    n_layer=4, n_embd=128, n_head=4, n_head_kv=4, head_dim=32,
    n_ff=512, vocab=512, ctx=2048, rope_theta=10000.0, norm_eps=1e-5,
    tied_output=False,
    source="edgefarm (synthetic)",
    notes="A few MB; the dense counterpart of tiny-moe (untied, like olmoe).",
))

#: Preset names, in documentation order.
KNOWN_PRESETS = tuple(PRESETS)


def get_shape(preset: str) -> ModelShape:
    """The shape of ``preset``; ``ValueError`` naming the known presets otherwise."""
    try:
        return PRESETS[preset]
    except (KeyError, TypeError):
        pass
    raise ValueError("unknown model preset %r; known presets: %s"
                     % (preset, ", ".join(KNOWN_PRESETS)))


def _layer_tensors(s: ModelShape, i: int) -> List[TensorSpec]:
    p = "blk.%d." % i
    e = s.n_embd
    q_dim = s.n_head * s.head_dim
    kv_dim = s.n_head_kv * s.head_dim
    out: List[TensorSpec] = []
    rms = s.norm != "nonparam"
    if rms:
        out.append(TensorSpec(p + "attn_norm.weight", (e,), ROLE_NORM))
    out.append(TensorSpec(p + "attn_q.weight", (e, q_dim), ROLE_ATTN))
    if s.qkv_bias:
        out.append(TensorSpec(p + "attn_q.bias", (q_dim,), ROLE_BIAS))
    out.append(TensorSpec(p + "attn_k.weight", (e, kv_dim), ROLE_ATTN))
    if s.qkv_bias:
        out.append(TensorSpec(p + "attn_k.bias", (kv_dim,), ROLE_BIAS))
    out.append(TensorSpec(p + "attn_v.weight", (e, kv_dim), ROLE_ATTN))
    if s.qkv_bias:
        out.append(TensorSpec(p + "attn_v.bias", (kv_dim,), ROLE_BIAS))
    out.append(TensorSpec(p + "attn_output.weight", (q_dim, e), ROLE_ATTN))
    if s.qk_norm:
        # olmoe normalises the whole q and k projections (size n_embd; the
        # loader insists on n_embd, so olmoe presets keep n_head_kv == n_head).
        out.append(TensorSpec(p + "attn_q_norm.weight", (q_dim,), ROLE_NORM))
        out.append(TensorSpec(p + "attn_k_norm.weight", (kv_dim,), ROLE_NORM))
    if s.post_norms:
        out.append(TensorSpec(p + "post_attention_norm.weight", (e,), ROLE_NORM))
    if rms:
        out.append(TensorSpec(p + "ffn_norm.weight", (e,), ROLE_NORM))
    if s.is_moe:
        f = s.n_ff_exp
        x = s.n_expert
        out.append(TensorSpec(p + "ffn_gate_inp.weight", (e, x), ROLE_ROUTER))
        out.append(TensorSpec(p + "ffn_gate_exps.weight", (e, f, x), ROLE_EXPERT))
        out.append(TensorSpec(p + "ffn_up_exps.weight", (e, f, x), ROLE_EXPERT))
        out.append(TensorSpec(p + "ffn_down_exps.weight", (f, e, x), ROLE_EXPERT))
    else:
        f = s.n_ff
        out.append(TensorSpec(p + "ffn_gate.weight", (e, f), ROLE_FFN))
        out.append(TensorSpec(p + "ffn_up.weight", (e, f), ROLE_FFN))
        out.append(TensorSpec(p + "ffn_down.weight", (f, e), ROLE_FFN))
    if s.post_norms:
        out.append(TensorSpec(p + "post_ffw_norm.weight", (e,), ROLE_NORM))
    return out


def tensor_table(shape: ModelShape) -> List[TensorSpec]:
    """The ordered tensors of ``shape`` (a ModelShape or a preset name).

    Shapes are in GGUF/ggml order: ``ne0`` (the contiguous, input dimension
    of a matrix) first. The order follows llama.cpp's converter: rope_freqs
    (if any), token_embd, the blocks, output_norm, output.
    """
    s = get_shape(shape) if isinstance(shape, str) else shape
    _check(s)
    out: List[TensorSpec] = []
    if s.rope_llama3 is not None:
        out.append(TensorSpec("rope_freqs.weight", (s.head_dim // 2,), ROLE_ROPE_FREQS))
    out.append(TensorSpec("token_embd.weight", (s.n_embd, s.vocab), ROLE_EMBED))
    for i in range(s.n_layer):
        out.extend(_layer_tensors(s, i))
    if s.norm != "nonparam":
        out.append(TensorSpec("output_norm.weight", (s.n_embd,), ROLE_NORM))
    if not s.tied_output:
        out.append(TensorSpec("output.weight", (s.n_embd, s.vocab), ROLE_OUTPUT))
    return out


def _check(s: ModelShape) -> None:
    if s.norm not in ("rms", "nonparam"):
        raise ValueError("%s: unsupported norm %r" % (s.name, s.norm))
    if s.n_head % s.n_head_kv:
        raise ValueError("%s: n_head must be a multiple of n_head_kv" % s.name)
    if s.is_moe and not (0 < s.n_expert_used <= s.n_expert and s.n_ff_exp > 0):
        raise ValueError("%s: bad expert configuration" % s.name)
    if s.qk_norm and s.n_head_kv != s.n_head:
        raise ValueError("%s: qk_norm (olmoe-style) needs n_head_kv == n_head" % s.name)


def param_counts(shape: ModelShape) -> Tuple[int, int]:
    """``(total, active)`` parameter counts of ``shape`` (a ModelShape or name).

    ``total`` counts every weight in the file (tied embeddings once; the
    rope_freqs scaling factors are not parameters and are left out), which
    reproduces the published figures. ``active`` is what one token touches:
    all non-expert parameters plus ``n_expert_used / n_expert`` of the expert
    parameters (the router counts as non-expert). The token embedding (and
    an untied output matrix) are counted in both figures, as the OLMoE paper
    does; for a dense model ``active == total``.
    """
    s = get_shape(shape) if isinstance(shape, str) else shape
    total = 0
    expert = 0
    for t in tensor_table(s):
        if t.role == ROLE_ROPE_FREQS:
            continue
        total += t.n_elements
        if t.role == ROLE_EXPERT:
            expert += t.n_elements
    active = total - expert
    if expert:
        active += expert * s.n_expert_used // s.n_expert
    return total, active


def rope_llama3_factors(shape: ModelShape) -> List[float]:
    """Per-frequency rope scaling factors of Llama-3.x (head_dim/2 values).

    The published Llama-3 rule: wavelengths shorter than
    ``orig_ctx / high_freq_factor`` keep factor 1, longer than
    ``orig_ctx / low_freq_factor`` get ``factor``, and the band between is
    interpolated smoothly. llama.cpp divides each frequency by its factor.
    """
    if shape.rope_llama3 is None:
        raise ValueError("%s has no llama-3 rope scaling" % shape.name)
    factor, low, high, orig = shape.rope_llama3
    low_wavelen = orig / low
    high_wavelen = orig / high
    dim = shape.head_dim
    out: List[float] = []
    for i in range(0, dim, 2):
        freq = 1.0 / (shape.rope_theta ** (float(i) / dim))
        wavelen = 2.0 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out.append(1.0 / ((1.0 - smooth) / factor + smooth))
    return out
