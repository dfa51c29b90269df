"""Tests of the synthetic-model writer (agents/models).

The writer is stdlib-only; the ``gguf`` package is the reference reader and
xllamacpp (llama.cpp) the reference loader.
"""

import hashlib
import math
import os
import threading

import gguf
import numpy as np
import pytest

from agents.models import gguf_writer as gw
from agents.models import presets as pr
from agents.models import synth

TINY = ("tiny-moe", "tiny-dense")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _field(reader, key):
    return reader.fields[key].contents()


# -- presets ---------------------------------------------------------------

@pytest.mark.parametrize("preset", pr.KNOWN_PRESETS)
def test_tensor_names_are_known_to_gguf(preset):
    s = pr.PRESETS[preset]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == s.arch)
    allowed = set()
    for t in gguf.MODEL_TENSORS[arch]:
        for bid in range(s.n_layer):
            allowed.add(gguf.TENSOR_NAMES[t].format(bid=bid))
    table = pr.tensor_table(s)
    names = [t.name for t in table]
    assert len(names) == len(set(names))
    for t in table:
        base, suffix = t.name.rsplit(".", 1)
        assert suffix in ("weight", "bias")
        assert base in allowed, f"{t.name} is not a {s.arch} tensor"


@pytest.mark.parametrize("preset", pr.KNOWN_PRESETS)
def test_tensor_shapes_are_consistent(preset):
    s = pr.PRESETS[preset]
    by_name = {t.name: t for t in pr.tensor_table(s)}
    e, q, kv = s.n_embd, s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    assert by_name["token_embd.weight"].shape == (e, s.vocab)
    assert ("output.weight" in by_name) == (not s.tied_output)
    for i in range(s.n_layer):
        b = f"blk.{i}."
        assert by_name[b + "attn_q.weight"].shape == (e, q)
        assert by_name[b + "attn_k.weight"].shape == (e, kv)
        assert by_name[b + "attn_v.weight"].shape == (e, kv)
        assert by_name[b + "attn_output.weight"].shape == (q, e)
        if s.is_moe:
            assert by_name[b + "ffn_gate_inp.weight"].shape == (e, s.n_expert)
            assert by_name[b + "ffn_gate_exps.weight"].shape == (e, s.n_ff_exp, s.n_expert)
            assert by_name[b + "ffn_up_exps.weight"].shape == (e, s.n_ff_exp, s.n_expert)
            assert by_name[b + "ffn_down_exps.weight"].shape == (s.n_ff_exp, e, s.n_expert)
        else:
            assert by_name[b + "ffn_gate.weight"].shape == (e, s.n_ff)
            assert by_name[b + "ffn_up.weight"].shape == (e, s.n_ff)
            assert by_name[b + "ffn_down.weight"].shape == (s.n_ff, e)
        assert (b + "attn_q.bias" in by_name) == s.qkv_bias
        assert (b + "attn_q_norm.weight" in by_name) == s.qk_norm
        assert (b + "post_ffw_norm.weight" in by_name) == s.post_norms
        assert (b + "attn_norm.weight" in by_name) == (s.norm == "rms")
    for t in by_name.values():
        if t.role in pr.MATRIX_ROLES:
            assert t.shape[0] % 32 == 0  # every preset quantizes fully
        else:
            assert len(t.shape) == 1 or t.role == pr.ROLE_ROUTER


def test_published_parameter_counts():
    total, active = pr.param_counts("olmoe-1b-7b")
    assert 6.8e9 <= total <= 7.0e9 and 1.2e9 <= active <= 1.4e9
    assert (total, active) == (6919161856, 1282017280)
    assert round(pr.param_counts("olmo-1b")[0] / 1e9, 2) == 1.18
    assert pr.param_counts("llama-3.2-1b") == (1235814400, 1235814400)
    qwen = pr.param_counts("qwen2.5-1.5b")[0]
    assert round(qwen / 1e9, 2) == 1.54
    assert round((qwen - 151936 * 1536) / 1e9, 2) == 1.31  # published non-embedding
    assert round(pr.param_counts("gemma-2-2b")[0] / 1e9, 2) == 2.61


def test_tiny_presets_compare_like_olmoe_and_olmo():
    moe_total, moe_active = pr.param_counts("tiny-moe")
    dense_total, dense_active = pr.param_counts("tiny-dense")
    assert dense_total == dense_active
    assert moe_total > 2.5 * moe_active
    assert abs(moe_active / dense_total - 1) < 0.02


def test_llama3_rope_factors():
    f = pr.rope_llama3_factors(pr.PRESETS["llama-3.2-1b"])
    assert len(f) == 32 and f[0] == 1.0 and f[-1] == 32.0
    assert all(a <= b for a, b in zip(f[:-1], f[1:], strict=True))


def test_unknown_names_raise_with_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="olmoe-1b-7b.*tiny-dense"):
        synth.synthesize("gpt-5", "Q4_0", str(tmp_path / "x.gguf"))
    with pytest.raises(ValueError, match="F16, Q8_0, Q4_0"):
        synth.synthesize("tiny-moe", "Q2_K", str(tmp_path / "x.gguf"))
    with pytest.raises(ValueError, match="known"):
        synth.cached_model(str(tmp_path), "nope", "F16")
    assert os.listdir(str(tmp_path)) == []


# -- file contents ---------------------------------------------------------

@pytest.mark.parametrize("quant", synth.QUANTS)
@pytest.mark.parametrize("preset", TINY)
def test_tiny_files_read_back(tmp_path, preset, quant):
    path = str(tmp_path / "m.gguf")
    info = synth.synthesize(preset, quant, path, seed=7)
    s = pr.PRESETS[preset]
    total, active = pr.param_counts(s)
    assert info["size_bytes"] == os.path.getsize(path)
    assert (info["params_total"], info["params_active"]) == (total, active)
    assert not os.path.exists(path + ".partial")

    r = gguf.GGUFReader(path)
    a = s.arch
    expect = {
        "general.architecture": a,
        "general.alignment": 32,
        "general.file_type": {"F16": 1, "Q8_0": 7, "Q4_0": 2}[quant],
        a + ".block_count": s.n_layer,
        a + ".context_length": s.ctx,
        a + ".embedding_length": s.n_embd,
        a + ".feed_forward_length": s.n_ff,
        a + ".attention.head_count": s.n_head,
        a + ".attention.head_count_kv": s.n_head_kv,
        a + ".attention.key_length": s.head_dim,
        a + ".attention.value_length": s.head_dim,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "edgefarm.preset": preset,
        "edgefarm.synthetic": True,
        "edgefarm.quant": quant,
        "edgefarm.seed": 7,
        "edgefarm.params.total": total,
        "edgefarm.params.active": active,
        "edgefarm.writer_version": synth.WRITER_VERSION,
    }
    if s.is_moe:
        expect[a + ".expert_count"] = s.n_expert
        expect[a + ".expert_used_count"] = s.n_expert_used
    for key, value in expect.items():
        assert _field(r, key) == value, key
    assert _field(r, a + ".rope.freq_base") == pytest.approx(s.rope_theta)
    assert _field(r, a + ".attention.layer_norm_rms_epsilon") == pytest.approx(s.norm_eps)
    assert r.fields["edgefarm.params.total"].types == [gguf.GGUFValueType.UINT64]
    assert r.fields["edgefarm.params.active"].types == [gguf.GGUFValueType.UINT64]

    tokens = _field(r, "tokenizer.ggml.tokens")
    types = _field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(set(tokens)) == s.vocab
    assert len(_field(r, "tokenizer.ggml.scores")) == s.vocab
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert set(types[3:259]) == {6} and set(types[259:]) == {1}

    table = pr.tensor_table(s)
    assert [t.name for t in r.tensors] == [t.name for t in table]
    for spec, t in zip(table, r.tensors, strict=True):
        assert tuple(int(d) for d in t.shape) == spec.shape
        assert t.tensor_type.name == synth.tensor_type(spec, quant)
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.isfinite(values).all(), spec.name
        if spec.role == pr.ROLE_NORM:
            assert (values == 1.0).all()
        elif spec.role in pr.MATRIX_ROLES:
            assert values.std() == pytest.approx(1 / math.sqrt(spec.shape[0]), rel=0.25)


@pytest.mark.parametrize("ggml_type", ["Q4_0", "Q8_0", "F16", "F32"])
def test_random_data_has_the_expected_std(ggml_type):
    sigma = 1 / math.sqrt(2048)
    n = 1 << 20
    data = b"".join(gw.random_chunks(gw.tensor_rng(0, "t"), n, ggml_type, sigma,
                                     chunk_bytes=1 << 18))
    assert len(data) == gw.tensor_nbytes((n,), ggml_type)
    qtype = gguf.GGMLQuantizationType[ggml_type]
    values = gguf.quants.dequantize(np.frombuffer(data, dtype=np.uint8), qtype)
    assert values.shape == (n,) and np.isfinite(values).all()
    expected = gw.expected_std(ggml_type, sigma)
    assert expected == pytest.approx(sigma, rel=0.03)
    assert values.std() == pytest.approx(expected, rel=0.01)
    assert abs(values.mean()) < 0.1 * sigma


def test_q4_0_layout_matches_gguf_reference():
    # Blocks of 32 weights: fp16 scale of +-quant_scale, then 16 nibble bytes.
    sigma = 0.05
    data = next(gw.random_chunks(gw.tensor_rng(1, "q"), 32 * 64, "Q4_0", sigma))
    assert len(data) == 64 * 18
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(64, 18)
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32).ravel()
    d = gw.quant_scale("Q4_0", sigma)
    assert set(np.abs(scales).tolist()) == {d}
    assert (scales > 0).any() and (scales < 0).any()
    ref = gguf.quants.dequantize(blocks.ravel(), gguf.GGMLQuantizationType.Q4_0)
    q = blocks[:, 2:]
    nib = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.float32) - 8
    np.testing.assert_array_equal(ref.reshape(64, 32), nib * scales[:, None])


def test_deterministic_per_seed(tmp_path):
    a, b, c = (str(tmp_path / n) for n in ("a.gguf", "b.gguf", "c.gguf"))
    synth.synthesize("tiny-moe", "Q4_0", a, seed=1)
    synth.synthesize("tiny-moe", "Q4_0", b, seed=1)
    synth.synthesize("tiny-moe", "Q4_0", c, seed=2)
    assert _sha256(a) == _sha256(b)
    assert os.path.getsize(a) == os.path.getsize(c)
    assert _sha256(a) != _sha256(c)


def test_streaming_writes_in_bounded_chunks(tmp_path):
    sizes = []
    real_write = gw.GGUFWriter.write

    class Sink:
        def write(self, b):
            sizes.append(len(b))

    w = synth.build_writer("tiny-moe", "F16")
    assert real_write(w, Sink()) == w.total_size() == sum(sizes)
    assert max(sizes[1:]) <= gw.CHUNK_BYTES


def test_no_partial_file_left_on_failure(tmp_path):
    path = str(tmp_path / "m.gguf")

    def boom(done, total):
        if done > total // 2:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        synth.synthesize("tiny-moe", "F16", path, progress=boom)
    assert os.listdir(str(tmp_path)) == []


def test_progress_reaches_total(tmp_path):
    seen = []
    info = synth.synthesize("tiny-dense", "Q8_0", str(tmp_path / "m.gguf"),
                            progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (info["size_bytes"], info["size_bytes"])
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


# -- cache -----------------------------------------------------------------

def test_cached_model_writes_once(tmp_path, monkeypatch):
    models = str(tmp_path)
    path = synth.cached_model(models, "tiny-dense", "q4_0", seed=3)
    name = os.path.basename(path)
    assert os.path.dirname(path) == os.path.join(models, "synth")
    assert name.startswith("tiny-dense-Q4_0-s3-") and name.endswith(".gguf")
    assert len(name.rsplit("-", 1)[1]) == len("0123456789ab.gguf")
    assert gguf.GGUFReader(path).fields["edgefarm.seed"].contents() == 3

    calls = []
    monkeypatch.setattr(synth, "synthesize", lambda *a, **k: calls.append(a))
    assert synth.cached_model(models, "tiny-dense", "Q4_0", seed=3) == path
    assert calls == []
    # Everything that changes the bytes changes the key.
    others = {synth.cache_path(models, "tiny-dense", "Q4_0", seed=4),
              synth.cache_path(models, "tiny-dense", "Q8_0", seed=3),
              synth.cache_path(models, "tiny-moe", "Q4_0", seed=3)}
    assert len(others) == 3 and path not in others
    monkeypatch.setattr(synth, "WRITER_VERSION", synth.WRITER_VERSION + 1)
    assert synth.cache_path(models, "tiny-dense", "Q4_0", seed=3) != path


def test_cached_model_rewrites_a_damaged_file(tmp_path):
    path = synth.cached_model(str(tmp_path), "tiny-dense", "Q4_0")
    good = _sha256(path)
    with open(path, "r+b") as f:
        f.truncate(1000)
    assert synth.cached_model(str(tmp_path), "tiny-dense", "Q4_0") == path
    assert _sha256(path) == good


def test_cached_model_concurrent_callers_write_once(tmp_path, monkeypatch):
    real = synth.synthesize
    calls = []

    def slow_synthesize(*args, **kwargs):
        calls.append(args)
        threading.Event().wait(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "synthesize", slow_synthesize)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        synth.cached_model(str(tmp_path), "tiny-moe", "Q8_0"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and len(results) == 3
    assert os.path.exists(results[0])


# -- llama.cpp loads and runs them -------------------------------------------

@pytest.fixture(scope="module")
def xllamacpp():
    import xllamacpp  # a pinned dependency: missing is a failure, not a skip

    return xllamacpp


def _serve(xllamacpp, path, n_ctx=256):
    p = xllamacpp.CommonParams()
    p.model.path = path
    p.n_ctx = n_ctx
    p.cpuparams.n_threads = 2
    p.cpuparams_batch.n_threads = 2
    p.warmup = False
    return xllamacpp.Server(p)


@pytest.mark.parametrize("quant", synth.QUANTS)
@pytest.mark.parametrize("preset", TINY)
def test_llama_cpp_decodes_tiny_models(tmp_path, xllamacpp, preset, quant):
    path = synth.cached_model(str(tmp_path), preset, quant)
    server = _serve(xllamacpp, path)
    try:
        n_gen = 24
        # A list of token ids is taken as the exact prompt (no BOS added).
        prompt = [1] + [300 + (7 * i) % 200 for i in range(47)]
        r = server.handle_completions({"prompt": prompt, "n_predict": n_gen,
                                       "ignore_eos": True, "cache_prompt": False})
        assert r["timings"]["prompt_n"] == len(prompt)
        assert r["timings"]["predicted_n"] == n_gen
        assert r["timings"]["predicted_per_second"] > 0
        # Text prompts go through the stand-in SentencePiece vocabulary.
        r = server.handle_completions({"prompt": "the quick brown fox", "n_predict": 8,
                                       "ignore_eos": True, "cache_prompt": False})
        assert r["timings"]["predicted_n"] == 8
        assert r["timings"]["prompt_n"] > 1
    finally:
        del server
