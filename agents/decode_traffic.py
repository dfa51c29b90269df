"""Bytes one decode step reads, from a GGUF's tensor table (standard library only).

At batch 1 every generated token streams the weights it uses through memory
once, so ``bandwidth / bytes per token`` bounds decode speed from above: the
roofline that says how close a run came to what the memory allows, and why a
MoE that reads more than its active parameters pays for it. Counted per
tensor, at the file's own quantisation:

* ``token_embd``: one row per token (a lookup), unless there is no
  ``output`` tensor: then the embedding is also the output projection (tied
  weights, as in Llama-3.2-1B) and is read whole;
* expert tensors (``*_exps``, stacked ``[.., n_expert]``): ``expert_used_count``
  of ``expert_count`` experts per layer, exactly what a token routes to;
* every other tensor (attention, norms, router, shared experts, output): whole.

The KV cache adds, per position of context, ``layers x (K + V) x KV heads x
head dim x element size``; at context length L a step reads L positions of
it. Element sizes are those of llama.cpp's cache types (f16 2 bytes, q8_0
34/32, q4_0 18/32...).
"""

from typing import Dict, List, NamedTuple, Optional, Sequence

#: KV cache types llama.cpp names, in bytes per element (block size / bytes).
KV_ELEMENT_BYTES: Dict[str, float] = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
    "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32,
}


class Tensor(NamedTuple):
    """One entry of a GGUF tensor table; ``nbytes`` None for a type not sized here."""

    name: str
    shape: Sequence[int]  # GGUF order: the first dimension is the contiguous one
    nbytes: Optional[int]


def _meta_int(meta: Dict[str, object], key: str) -> Optional[int]:
    value = meta.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def weight_bytes_per_token(tensors: Sequence[Tensor], meta: Dict[str, object]
                           ) -> Dict[str, object]:
    """``{"bytes": int | None, "expert_bytes": int, "dense_bytes": int, "reason": str}``.

    ``bytes`` is None, with the reason, when a tensor's size is unknown or
    the file has expert tensors but no ``expert_count``/``expert_used_count``.
    """
    arch = meta.get("general.architecture")
    n_expert = _meta_int(meta, "%s.expert_count" % arch)
    n_used = _meta_int(meta, "%s.expert_used_count" % arch)
    tied = not any(t.name.startswith("output.") for t in tensors)
    dense = 0
    experts = 0
    for t in tensors:
        if t.nbytes is None:
            return {"bytes": None, "expert_bytes": 0, "dense_bytes": 0,
                    "reason": "tensor %s has a type whose size is not known here" % t.name}
        if t.name.startswith("rope_freqs"):
            continue  # rope scaling factors: read once per step, a few hundred bytes
        if t.name.startswith("token_embd.") and not tied:
            rows = t.shape[-1] if t.shape else 1
            dense += t.nbytes // max(1, rows)  # one row: the token's embedding
        elif "_exps" in t.name:
            if not n_expert or n_used is None:
                return {"bytes": None, "expert_bytes": 0, "dense_bytes": 0,
                        "reason": "expert tensor %s but no %s.expert_count/expert_used_count"
                                  % (t.name, arch)}
            experts += t.nbytes * n_used // n_expert
        else:
            dense += t.nbytes
    return {"bytes": dense + experts, "expert_bytes": experts, "dense_bytes": dense,
            "reason": "tied embeddings read whole as the output projection" if tied else ""}


def kv_bytes_per_position(meta: Dict[str, object], type_k: str = "f16",
                          type_v: str = "f16") -> Optional[float]:
    """KV cache bytes one position of context takes (all layers, K and V); None if unknown."""
    arch = meta.get("general.architecture")
    layers = _meta_int(meta, "%s.block_count" % arch)
    heads = _meta_int(meta, "%s.attention.head_count" % arch)
    kv_heads = _meta_int(meta, "%s.attention.head_count_kv" % arch) or heads
    embd = _meta_int(meta, "%s.embedding_length" % arch)
    key_len = _meta_int(meta, "%s.attention.key_length" % arch)
    value_len = _meta_int(meta, "%s.attention.value_length" % arch)
    if not layers or not kv_heads or type_k not in KV_ELEMENT_BYTES \
            or type_v not in KV_ELEMENT_BYTES:
        return None
    if key_len is None or value_len is None:
        if not embd or not heads:
            return None
        key_len = key_len or embd // heads
        value_len = value_len or embd // heads
    return layers * kv_heads * (key_len * KV_ELEMENT_BYTES[type_k]
                                + value_len * KV_ELEMENT_BYTES[type_v])


def decode_bytes_per_token(weights: int, kv_per_position: float, context: int) -> float:
    """What one decode step reads with ``context`` positions already in the cache."""
    return weights + kv_per_position * context


def tensors_of(table: List[List[object]]) -> List[Tensor]:
    """``Tensor``s from ``gguf_info``'s ``tensors`` rows ``[name, shape, nbytes]``."""
    out = []
    for row in table:
        name, shape, nbytes = row
        dims = [int(d) for d in shape] if isinstance(shape, (list, tuple)) else []
        out.append(Tensor(str(name), dims, nbytes if isinstance(nbytes, int) else None))
    return out
