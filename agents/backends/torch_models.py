"""Hugging Face models with the presets' published shapes and random weights (torch backend).

No checkpoint can be downloaded here, so a model is built from its config
(``transformers``' ``from_config``), with the same shapes the GGUF presets
of ``agents/models/presets.py`` write for llama.cpp: the same architecture
on both backends, so their speeds can be compared. Random weights decode at
the speed of real ones (the arithmetic and the bytes read are the same);
only the tokens they produce are meaningless.

Imported only when a job uses the torch backend (and by
``bench/torch_decode.py``): torch and transformers are not part of the
agent's standard-library core.
"""

from typing import Any, Dict, Optional

from agents.models.presets import ModelShape, get_shape

__all__ = ["EXPERTS_IMPLEMENTATIONS", "build_model", "hf_config"]

#: What transformers (5.x) offers for the MoE experts' matmuls: a loop over the
#: experts hit (``eager``), one grouped GEMM over all routed tokens
#: (``grouped_mm``), or a batched GEMM over gathered expert weights
#: (``batched_mm``); and edgefarm's ``gemv`` (``torch_experts.py``: a one-token
#: step reads each routed expert in place).
EXPERTS_IMPLEMENTATIONS = ("eager", "grouped_mm", "batched_mm", "gemv")


def _rope(shape: ModelShape) -> Dict[str, Any]:
    params: Dict[str, Any] = {"rope_type": "default", "rope_theta": shape.rope_theta}
    if shape.rope_llama3 is not None:
        factor, low, high, original = shape.rope_llama3
        params = {"rope_type": "llama3", "rope_theta": shape.rope_theta, "factor": factor,
                  "low_freq_factor": low, "high_freq_factor": high,
                  "original_max_position_embeddings": int(original)}
    return params


def hf_config(preset: str) -> Any:
    """The transformers config of ``preset`` (its architecture's own config class)."""
    import transformers

    shape = get_shape(preset)
    common: Dict[str, Any] = {
        "vocab_size": shape.vocab, "hidden_size": shape.n_embd,
        "num_hidden_layers": shape.n_layer, "num_attention_heads": shape.n_head,
        "num_key_value_heads": shape.n_head_kv, "max_position_embeddings": shape.ctx,
        "tie_word_embeddings": shape.tied_output, "rope_parameters": _rope(shape),
    }
    arch = shape.arch
    if arch == "olmoe":
        return transformers.OlmoeConfig(intermediate_size=shape.n_ff_exp or shape.n_ff,
                                        num_experts=shape.n_expert,
                                        num_experts_per_tok=shape.n_expert_used,
                                        rms_norm_eps=shape.norm_eps, **common)
    if arch == "olmo":
        # OLMo-1B-0724's layer norm has no parameters: OlmoLayerNorm is exactly that.
        return transformers.OlmoConfig(intermediate_size=shape.n_ff, **common)
    if arch == "llama":
        return transformers.LlamaConfig(intermediate_size=shape.n_ff, head_dim=shape.head_dim,
                                        rms_norm_eps=shape.norm_eps, **common)
    if arch == "qwen2":
        return transformers.Qwen2Config(intermediate_size=shape.n_ff,
                                        rms_norm_eps=shape.norm_eps, **common)
    if arch == "gemma2":
        return transformers.Gemma2Config(
            intermediate_size=shape.n_ff, head_dim=shape.head_dim, rms_norm_eps=shape.norm_eps,
            attn_logit_softcapping=shape.attn_softcap,
            final_logit_softcapping=shape.final_softcap,
            sliding_window=shape.sliding_window, **common)
    raise ValueError("preset %s: architecture %s has no torch model here (known: olmoe, olmo, "
                     "llama, qwen2, gemma2)" % (preset, arch))


def build_model(preset: str, device: str = "cpu", dtype: str = "bfloat16",
                experts: Optional[str] = None, seed: int = 0) -> Any:
    """A random-weight model of ``preset`` on ``device``, in eval mode.

    ``experts`` selects the MoE experts implementation (None: transformers'
    default). Returns ``(model, experts_used, reason)``: the implementation in
    force and, when it is not the one asked for, why.
    """
    import torch
    import transformers

    from agents.backends.torch_experts import set_experts

    torch.manual_seed(seed)
    config = hf_config(preset)
    torch_dtype = getattr(torch, dtype)
    with torch.device(device):
        try:
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        except TypeError:  # transformers before 4.56 names it torch_dtype
            model = transformers.AutoModelForCausalLM.from_config(config,
                                                                  torch_dtype=torch_dtype)
    model.eval()
    used, reason = None, None
    if experts is not None and hasattr(model, "set_experts_implementation"):
        try:
            set_experts(model, experts)
            used = experts
        except (ValueError, RuntimeError, NotImplementedError) as exc:
            used = getattr(model.config, "_experts_implementation", None)
            reason = "%s unavailable here: %s" % (experts, exc)
    return model, used, reason
