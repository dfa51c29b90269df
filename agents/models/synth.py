"""Synthesize random-weight GGUF models with published shapes, and cache them.

Model weights cannot be downloaded onto the farm, so the agent writes a GGUF
file with a real model's exact tensor shapes, metadata and a stand-in
vocabulary, filled with deterministic random weights. llama.cpp loads and
runs it like the real model: speed and memory are those of the real model;
the text it produces is meaningless.

Public API::

    synthesize(preset, quant, out_path, seed=0, progress=None) -> dict
    cached_model(models_dir, preset, quant, seed=0, progress=None) -> str
    cache_path(models_dir, preset, quant, seed=0) -> str
    KNOWN_PRESETS, QUANTS, WRITER_VERSION

Also a command line: ``python -m agents.models.synth PRESET QUANT OUT.gguf``.

Standard library only; Python 3.8+.
"""

import argparse
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from typing import Callable, List, Optional, Tuple, TypedDict

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows is not a supported device
    fcntl = None  # type: ignore[assignment]

from . import gguf_writer as gw
from .presets import (
    KNOWN_PRESETS,
    MATRIX_ROLES,
    ROLE_BIAS,
    ROLE_NORM,
    ROLE_ROPE_FREQS,
    ModelShape,
    TensorSpec,
    get_shape,
    param_counts,
    rope_llama3_factors,
    tensor_table,
)

#: Bump whenever the bytes written for a given (preset, quant, seed) change;
#: it is part of the cache key and is recorded in the file.
WRITER_VERSION = 1

#: Whole-file quantizations: matrices take this type (F16 where ne0 is not a
#: multiple of 32); 1-D tensors and the MoE router stay F32.
QUANTS = ("F16", "Q8_0", "Q4_0")

__all__ = ["synthesize", "cached_model", "cache_path", "build_writer", "spm_vocab",
           "tensor_type", "KNOWN_PRESETS", "QUANTS", "WRITER_VERSION"]

Progress = Optional[Callable[[int, int], None]]

# SentencePiece token types (llama.cpp's llama_token_type).
_TT_NORMAL, _TT_UNKNOWN, _TT_CONTROL, _TT_BYTE = 1, 2, 3, 6
_BIAS_STD = 0.02
_SPACE = u"\u2581"  # SentencePiece's word-boundary marker


def normalize_quant(quant: str) -> str:
    """``quant`` in canonical spelling; ``ValueError`` naming QUANTS otherwise."""
    q = quant.upper() if isinstance(quant, str) else quant
    if q not in QUANTS:
        raise ValueError("unknown quantization %r; known quantizations: %s"
                         % (quant, ", ".join(QUANTS)))
    return q


def tensor_type(spec: TensorSpec, quant: str) -> str:
    """The ggml type of ``spec`` in a file quantized as ``quant``."""
    if spec.role not in MATRIX_ROLES or len(spec.shape) < 2:
        return "F32"
    if quant != "F16" and spec.shape[0] % 32:
        return "F16"
    return quant


def spm_vocab(n: int) -> Tuple[List[str], List[float], List[int]]:
    """A SentencePiece-style vocabulary of exactly ``n`` tokens.

    ``<unk>`` (0), ``<s>`` (1), ``</s>`` (2), the 256 byte tokens
    ``<0x00>``..``<0xFF>`` (type BYTE, for byte fallback), then unique filler
    pieces (``\u2581``, ``a``, ``\u2581a``, ..., ``ab``, ``\u2581ab``, ...) with
    decreasing scores, so any text tokenizes (letters merge into pieces,
    everything else falls back to bytes).
    """
    if n < 260:
        raise ValueError("vocab must hold at least 260 tokens, got %d" % n)
    tokens = [u"<unk>", u"<s>", u"</s>"] + [u"<0x%02X>" % b for b in range(256)]
    types = [_TT_UNKNOWN, _TT_CONTROL, _TT_CONTROL] + [_TT_BYTE] * 256
    scores = [0.0] * len(tokens)
    fillers: List[str] = []
    need = n - len(tokens)
    fillers.append(_SPACE)
    letters = "abcdefghijklmnopqrstuvwxyz"
    length = 1
    while len(fillers) < need:
        for combo in itertools.product(letters, repeat=length):
            piece = "".join(combo)
            fillers.append(piece)
            fillers.append(_SPACE + piece)
            if len(fillers) >= need:
                break
        length += 1
    fillers = fillers[:need]
    tokens.extend(fillers)
    types.extend([_TT_NORMAL] * need)
    scores.extend(-float(i) for i in range(need))
    return tokens, scores, types


def _metadata(w: gw.GGUFWriter, s: ModelShape, quant: str, seed: int) -> None:
    a = s.arch
    total, active = param_counts(s)
    w.add_string("general.architecture", a)
    w.add_string("general.type", "model")
    w.add_string("general.name", "%s (synthetic random weights)" % s.name)
    w.add_uint32("general.file_type", gw.FILE_TYPES[quant])
    if quant != "F16":
        w.add_uint32("general.quantization_version", 2)

    w.add_uint32(a + ".vocab_size", s.vocab)
    w.add_uint32(a + ".context_length", s.ctx)
    w.add_uint32(a + ".embedding_length", s.n_embd)
    w.add_uint32(a + ".block_count", s.n_layer)
    w.add_uint32(a + ".feed_forward_length", s.n_ff)
    w.add_uint32(a + ".attention.head_count", s.n_head)
    w.add_uint32(a + ".attention.head_count_kv", s.n_head_kv)
    w.add_uint32(a + ".attention.key_length", s.head_dim)
    w.add_uint32(a + ".attention.value_length", s.head_dim)
    w.add_uint32(a + ".rope.dimension_count", s.head_dim)
    w.add_float32(a + ".rope.freq_base", s.rope_theta)
    if s.norm == "nonparam":
        w.add_float32(a + ".attention.layer_norm_epsilon", s.norm_eps)
    else:
        w.add_float32(a + ".attention.layer_norm_rms_epsilon", s.norm_eps)
    if s.is_moe:
        w.add_uint32(a + ".expert_count", s.n_expert)
        w.add_uint32(a + ".expert_used_count", s.n_expert_used)
        w.add_uint32(a + ".expert_feed_forward_length", s.n_ff_exp)
    if s.attn_softcap:
        w.add_float32(a + ".attn_logit_softcapping", s.attn_softcap)
    if s.final_softcap:
        w.add_float32(a + ".final_logit_softcapping", s.final_softcap)
    if s.sliding_window:
        w.add_uint32(a + ".attention.sliding_window", s.sliding_window)

    tokens, scores, types = spm_vocab(s.vocab)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", gw.T_STRING, tokens)
    w.add_array("tokenizer.ggml.scores", gw.T_FLOAT32, scores)
    w.add_array("tokenizer.ggml.token_type", gw.T_INT32, types)
    w.add_uint32("tokenizer.ggml.unknown_token_id", 0)
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)

    w.add_string("edgefarm.preset", s.name)
    w.add_bool("edgefarm.synthetic", True)
    w.add_string("edgefarm.source", s.source)
    w.add_string("edgefarm.quant", quant)
    w.add_uint64("edgefarm.seed", seed)
    w.add_uint64("edgefarm.params.total", total)
    w.add_uint64("edgefarm.params.active", active)
    w.add_uint32("edgefarm.writer_version", WRITER_VERSION)


def _chunks(spec: TensorSpec, ggml_type: str, shape: ModelShape, seed: int) -> gw.Chunks:
    n = spec.n_elements
    if spec.role == ROLE_NORM:
        return lambda: gw.const_f32_chunks(1.0, n)
    if spec.role == ROLE_ROPE_FREQS:
        return lambda: [gw.f32_bytes(rope_llama3_factors(shape))]
    sigma = _BIAS_STD if spec.role == ROLE_BIAS else 1.0 / math.sqrt(spec.shape[0])
    return lambda: gw.random_chunks(gw.tensor_rng(seed, spec.name), n, ggml_type, sigma)


def build_writer(preset: str, quant: str, seed: int = 0) -> gw.GGUFWriter:
    """A :class:`GGUFWriter` with all metadata and tensors of the model declared.

    Weights of a matrix with input width ``ne0`` have std ~``1/sqrt(ne0)``
    (so activations keep unit scale), norm weights are 1.0, biases have std
    0.02, and llama-3 rope factors are the published ones.
    """
    shape = get_shape(preset)
    quant = normalize_quant(quant)
    seed = _check_seed(seed)
    w = gw.GGUFWriter()
    _metadata(w, shape, quant, seed)
    for spec in tensor_table(shape):
        t = tensor_type(spec, quant)
        w.add_tensor(spec.name, spec.shape, t, _chunks(spec, t, shape, seed))
    return w


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
        raise ValueError("seed must be an integer in [0, 2**64), got %r" % (seed,))
    return seed


class SynthInfo(TypedDict):
    """What ``synthesize`` wrote (printed as JSON by ``agent synth``)."""

    path: str
    size_bytes: int
    params_total: int
    params_active: int
    preset: str
    quant: str
    seed: int
    writer_version: int
    seconds: float


def synthesize(preset: str, quant: str, out_path: str, seed: int = 0,
               progress: Progress = None) -> SynthInfo:
    """Write the random-weight model ``preset`` quantized as ``quant`` to ``out_path``.

    The file is written to ``out_path + ".partial"`` and renamed into place
    only once complete (after fsync), so a crash never leaves a half file
    under the final name; on any error the partial file is removed.
    ``progress(done_bytes, total_bytes)`` is called as data is written.
    Raises ``ValueError`` for an unknown preset or quantization and
    ``OSError`` when the disk lacks room for the file.

    Returns ``{path, size_bytes, params_total, params_active, preset,
    quant, seed, writer_version, seconds}``.
    """
    t0 = time.monotonic()
    shape = get_shape(preset)
    quant = normalize_quant(quant)
    w = build_writer(preset, quant, seed)
    size = w.total_size()
    out_dir = os.path.dirname(os.path.abspath(out_path))
    free = shutil.disk_usage(out_dir).free
    if free < size + (64 << 20):
        raise OSError(28, "not enough disk space for %s %s: need %.2f GB, %.2f GB free in %s"
                      % (preset, quant, size / 1e9, free / 1e9, out_dir))
    partial = out_path + ".partial"
    try:
        with open(partial, "wb") as f:
            written = w.write(f, progress)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, out_path)
    except BaseException:
        try:
            os.remove(partial)
        except OSError:
            pass
        raise
    total, active = param_counts(shape)
    return {
        "path": out_path,
        "size_bytes": written,
        "params_total": total,
        "params_active": active,
        "preset": shape.name,
        "quant": quant,
        "seed": seed,
        "writer_version": WRITER_VERSION,
        "seconds": round(time.monotonic() - t0, 3),
    }


def cache_key(preset: str, quant: str, seed: int = 0) -> str:
    """First 12 hex chars of SHA-256 over the canonical JSON of what makes the file."""
    shape = get_shape(preset).as_dict()
    for doc_only in ("notes", "published_params"):
        shape.pop(doc_only, None)
    blob = json.dumps({"shape": shape, "quant": normalize_quant(quant),
                       "seed": _check_seed(seed), "writer_version": WRITER_VERSION},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def cache_path(models_dir: str, preset: str, quant: str, seed: int = 0) -> str:
    """``models_dir/synth/<preset>-<quant>-s<seed>-<key12>.gguf``."""
    quant = normalize_quant(quant)
    name = "%s-%s-s%d-%s.gguf" % (get_shape(preset).name, quant, seed,
                                  cache_key(preset, quant, seed))
    return os.path.join(models_dir, "synth", name)


def cached_model(models_dir: str, preset: str, quant: str, seed: int = 0,
                 progress: Progress = None) -> str:
    """The path of the cached synthetic model, writing it first if missing.

    Writing happens under an exclusive ``fcntl.flock`` on ``<path>.lock``,
    so concurrent agents on one device never write the same file twice; a
    waiter finds the file present once the lock is released. A cached file
    whose size is not the expected one is rewritten.
    """
    path = cache_path(models_dir, preset, quant, seed)
    if _complete(path, preset, quant, seed):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a+b") as lock:
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if not _complete(path, preset, quant, seed):
                synthesize(preset, quant, path, seed=seed, progress=progress)
        finally:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return path


def _complete(path: str, preset: str, quant: str, seed: int) -> bool:
    try:
        size = os.path.getsize(path)
    except OSError:
        return False
    return size == build_writer(preset, quant, seed).total_size()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agents.models.synth",
                                 description="Write a random-weight GGUF model.")
    ap.add_argument("preset", help="one of: " + ", ".join(KNOWN_PRESETS))
    ap.add_argument("quant", help="one of: " + ", ".join(QUANTS))
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 2.0 or done == total:
            last[0] = now
            sys.stderr.write("\r%5.1f%% of %.2f GB" % (100.0 * done / total, total / 1e9))
            sys.stderr.flush()

    info = synthesize(args.preset, args.quant, args.out, seed=args.seed, progress=report)
    sys.stderr.write("\n")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
