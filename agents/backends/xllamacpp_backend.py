"""llama.cpp in process, through the ``xllamacpp`` bindings.

The model is loaded once per job (``open`` gives a session; a job of several
models keeps each loaded and runs their repetitions in paired rounds); every
repetition is one completion request
with ``cache_prompt: false`` (no prompt-cache reuse between repetitions) and
``ignore_eos: true`` (generation runs to the requested length). The prompt is
a list of token ids, so its length is exact whatever the tokenizer.

Prefill and decode times come from llama.cpp's own timings; TTFT is measured
here, from sending the request to the first streamed token. Each repetition
also reports its monotonic windows for energy: ``prefill_window_mono`` (request
sent -> first streamed token, the TTFT span) and ``decode_window_mono`` (first
token -> last chunk), with ``decode_window_tokens`` = ``gen_tokens - 1`` tokens
decoded in it.

The first generated token is sampled from the prefill's logits, so llama.cpp's
``predicted_ms`` covers the ``predicted_n - 1`` decode steps after it (one
token gives ``predicted_ms`` of about 0). ``decode_tps`` is therefore
``(gen_tokens - 1) / decode_s``, the same rate llama.cpp reports as
``predicted_per_second`` and llama-bench's ``tg`` test measures; it is left
out for a single generated token.

A warm-up runs the whole prompt but generates only ``WARMUP_GEN_TOKENS``
tokens, as llama-bench's own warm-up does (the prompt, then one token): the
prompt's batch touches every weight (every expert of a MoE) and one decode
step runs the decode kernels, which is what a warm-up is for; the rest of a
full-length generation would only add time. With a fresh load per repetition
(paired rounds' default) warm-ups were half of every round's time.
"""

import functools
import json
import os
import random
import time
from typing import Any, Dict, List, Optional, Tuple

from agents import peakmem
from agents.backends.base import (
    Backend,
    BackendError,
    Emit,
    JobParams,
    Session,
    flash_attn_label,
    kv_type_label,
    make_provenance,
)
from agents.gguf_info import read_gguf_info
from agents.protocol import (
    ERR_BACKEND,
    ERR_BACKEND_MISSING,
    ERR_BAD_JOB,
    ERR_MODEL_MISSING,
    ERR_OUT_OF_MEMORY,
)

#: Tokens a warm-up generates: the first comes from the prompt's logits, the
#: second is one real decode step.
WARMUP_GEN_TOKENS = 2


@functools.lru_cache(maxsize=16)
def prompt_id_range(model_path: str) -> Tuple[int, int]:
    """Token ids to draw prompts from: ordinary tokens of this model's vocab.

    Past the control and byte tokens that come first in SentencePiece vocabs
    (edgefarm's synthetic ones included), and short of the control tokens
    some vocabs put at the end. Cached per file: a paired job loads each model
    afresh for every repetition, and reading the header of a 128k-token vocab
    takes ~0.1 s each time.
    """
    vocab = 0
    try:
        metadata = read_gguf_info(model_path)["metadata"]
        tokens = metadata.get("tokenizer.ggml.tokens") if isinstance(metadata, dict) else None
        if isinstance(tokens, dict):
            vocab = int(tokens.get("array_len", 0))
        elif isinstance(tokens, list):
            vocab = len(tokens)
    except (OSError, ValueError):
        pass
    if vocab <= 0:
        return 300, 1000
    low = 259 if vocab > 300 else min(3, vocab - 1)
    return low, min(vocab, low + 5000)


_OOM_WORDS = ("out of memory", "failed to allocate", "cannot allocate", "bad_alloc")


def decode_rate(predicted_n: int, decode_s: float) -> Optional[float]:
    """Decode steps per second: ``predicted_ms`` spans ``predicted_n - 1`` decodes."""
    if predicted_n < 2 or decode_s <= 0:
        return None
    return (predicted_n - 1) / decode_s


def _failure_kind(text: str) -> str:
    """``out-of-memory`` when llama.cpp's message says so, else ``backend-error``."""
    return ERR_OUT_OF_MEMORY if any(w in text.lower() for w in _OOM_WORDS) else ERR_BACKEND


def provenance(module: object, cparams: object, version: str) -> Dict[str, object]:
    """The job's ``provenance`` (see ``base.PROVENANCE_KEYS``), read back from the bindings.

    Settings are read from ``cparams`` after edgefarm set them, so a default
    that changes between wheels is recorded as it was. The llama.cpp build
    comes from the wheel's ``BUILD_INFO``; a wheel built outside a llama.cpp
    git checkout says build 0 and commit "unknown", llama.cpp's own markers
    for "not known", which are recorded as None with that reason rather than
    as a build number. The wheel's version then is what pins the build.
    """
    values: Dict[str, object] = {"backend": "xllamacpp", "backend_version": version}
    unknown: Dict[str, str] = {}
    build = getattr(module, "BUILD_INFO", None)
    if isinstance(build, dict):
        number, commit = build.get("build_number"), build.get("commit")
        said = ("llama.cpp in xllamacpp %s reports build_number %r, commit %r (built without "
                "git metadata; the wheel version identifies it)" % (version, number, commit))
        if isinstance(number, int) and not isinstance(number, bool) and number > 0:
            values["build_number"] = number
        else:
            unknown["build_number"] = said
        if isinstance(commit, str) and commit.strip() and commit.strip() != "unknown":
            values["build_commit"] = commit.strip()
        else:
            unknown["build_commit"] = said
    else:
        unknown["build_number"] = unknown["build_commit"] = (
            "xllamacpp %s has no BUILD_INFO" % version)
    cpu = getattr(cparams, "cpuparams", None)
    threads = getattr(cpu, "n_threads", None)
    if isinstance(threads, int) and threads > 0:
        values["threads"] = threads
    else:
        unknown["threads"] = ("threads %r: llama.cpp picks its default, which the bindings "
                              "do not report" % (threads,))
    for key in ("n_batch", "n_ubatch"):
        value = getattr(cparams, key, None)
        if isinstance(value, int) and value > 0:
            values[key] = value
    flash = getattr(cparams, "flash_attn_type", None)
    values["flash_attn"] = flash_attn_label(flash)
    if values["flash_attn"] is None:
        unknown["flash_attn"] = "unrecognised flash_attn_type %r" % (flash,)
    for key, attr in (("type_k", "cache_type_k"), ("type_v", "cache_type_v")):
        values[key] = kv_type_label(getattr(cparams, attr, None))
    mode = getattr(cparams, "load_mode", None)
    mode_name = str(getattr(mode, "name", mode))
    if mode_name.endswith(("_MMAP", "_MMAP_MLOCK")):
        values["use_mmap"] = True
    elif mode_name.endswith(("_NONE", "_DIRECT_IO", "_MLOCK")):
        values["use_mmap"] = False
    elif mode is not None:
        unknown["use_mmap"] = ("load_mode %s: llama.cpp chooses whether to mmap the model "
                               "and the bindings do not report its choice" % mode_name)
    else:
        use_mmap = getattr(cparams, "use_mmap", None)  # bindings before load_mode
        if isinstance(use_mmap, bool):
            values["use_mmap"] = use_mmap
    no_repack = getattr(cparams, "no_extra_bufts", None)
    if isinstance(no_repack, bool):
        values["cpu_repack"] = not no_repack
    else:
        unknown["cpu_repack"] = "xllamacpp %s has no no_extra_bufts setting" % version
    gpu = getattr(cparams, "n_gpu_layers", None)
    if isinstance(gpu, int):
        values["gpu_layers"] = gpu
    return make_provenance("xllamacpp", values, unknown)


class XllamacppSession(Session):
    """One model loaded in this process; each ``repetition`` is one completion."""

    def __init__(self, backend: "XllamacppBackend", server: object, model_path: str,
                 params: JobParams, info: Dict[str, object]) -> None:
        self.backend = backend
        self.server: Optional[object] = server
        self.params = params
        self._info = info
        # The same seeded prompt sequence for every model of a job (within
        # each model's own vocabulary), so paired repetitions see alike prompts.
        self.rng = random.Random(params.seed)
        self.id_range = prompt_id_range(model_path)

    def repetition(self, index: int, warmup: bool, emit: Emit) -> Dict[str, object]:
        if self.server is None:
            raise BackendError(ERR_BACKEND, "repetition on a closed xllamacpp session")
        emit("phase", {"phase": "warmup" if warmup else "prefill"})
        prompt = [self.rng.randrange(*self.id_range) for _ in range(self.params.prompt_tokens)]
        peakmem.reset_peak()
        gen = min(self.params.gen_tokens, WARMUP_GEN_TOKENS) if warmup else self.params.gen_tokens
        rep = self.backend._one_completion(self.server, prompt, self.params, gen)
        rss, scope = peakmem.peak_rss_bytes()
        rep.update({"index": index, "warmup": warmup, "peak_rss_bytes": rss,
                    "peak_rss_scope": scope})
        return rep

    def info(self) -> Dict[str, object]:
        return dict(self._info)

    def close(self) -> None:
        self.server = None  # the bindings free the model with the last reference


class XllamacppBackend(Backend):
    """Runs llama.cpp in this process through xllamacpp."""

    name = "xllamacpp"
    supports_sessions = True
    cpu_in_process = True  # with gpu_layers 0 the model runs on this process's threads
    #: Two llama.cpp contexts in one process slow each other down (see
    #: agents/model_worker.py): a job's models each get a worker process.
    isolate_models = True

    def available(self) -> Tuple[bool, str]:
        try:
            import xllamacpp
        except ImportError as exc:
            return False, "python package xllamacpp not importable: %s" % exc
        return True, getattr(xllamacpp, "__version__", "unknown")

    def open(self, model_path: str, params: JobParams, emit: Emit) -> "XllamacppSession":
        """Load the model (a ``load`` phase); repetitions then run one at a time."""
        ok, version = self.available()
        if not ok:
            raise BackendError(ERR_BACKEND_MISSING, version)
        if not os.path.isfile(model_path):
            raise BackendError(ERR_MODEL_MISSING, "model file not found: %s" % model_path)
        import xllamacpp

        emit("phase", {"phase": "load"})
        cparams = xllamacpp.CommonParams()
        cparams.model.path = model_path
        cparams.n_ctx = params.ctx_size
        cparams.n_batch = max(params.prompt_tokens, 512)
        cparams.n_parallel = 1
        cparams.n_gpu_layers = params.gpu_layers
        cparams.cpuparams.n_threads = params.threads
        cparams.cpuparams_batch.n_threads = params.threads
        cparams.cache_prompt = False
        cparams.warmup = False  # warm-up runs are ours, explicit and stored
        if hasattr(cparams, "no_extra_bufts"):
            cparams.no_extra_bufts = not params.cpu_repack
        elif not params.cpu_repack:
            raise BackendError(ERR_BAD_JOB, "cpu_repack: false needs an xllamacpp with the "
                               "no_extra_bufts setting; %s has none" % version)
        rss_before, _ = peakmem.current_rss_bytes()
        start = time.monotonic()
        try:
            server = xllamacpp.Server(cparams)
        except Exception as exc:  # the bindings raise plain RuntimeError
            text = str(exc)
            raise BackendError(_failure_kind(text),
                               "llama.cpp could not load %s: %s" % (model_path, text)) from exc
        load_s = time.monotonic() - start
        rss_after, _ = peakmem.current_rss_bytes()
        info: Dict[str, object] = {"backend": "xllamacpp", "backend_version": version,
                                   "load_s": load_s,
                                   "provenance": provenance(xllamacpp, cparams, version)}
        if rss_before is not None and rss_after is not None:
            # What loading this model added to the process: with several models
            # resident (paired rounds) the process peak covers all of them.
            info["load_rss_bytes"] = max(0, rss_after - rss_before)
        system_info = getattr(xllamacpp, "get_system_info", None)
        if callable(system_info):
            info["llama_system_info"] = str(system_info()).strip()
        return XllamacppSession(self, server, model_path, params, info)

    def _one_completion(self, server: Any, prompt: List[int],
                        params: JobParams, gen_tokens: int) -> Dict[str, object]:
        request = {
            "prompt": prompt,
            "n_predict": gen_tokens,
            "ignore_eos": True,
            "cache_prompt": False,
            "stream": True,
            "seed": params.seed,
        }
        state: Dict[str, Optional[object]] = {"first": None, "last": None, "final": None,
                                              "error": None}

        def on_chunk(chunk: object) -> None:
            now = time.monotonic()
            data = json.loads(chunk) if isinstance(chunk, (str, bytes)) else chunk
            if isinstance(data, dict) and "error" in data:
                state["error"] = data["error"]
                return
            if state["first"] is None:
                state["first"] = now
            state["last"] = now
            if isinstance(data, dict) and "timings" in data:
                state["final"] = data

        sent = time.monotonic()
        # Streaming, so the first chunk marks the first generated token (TTFT);
        # the last chunk carries llama.cpp's own prefill and decode timings.
        server.handle_completions(request, on_chunk)
        if state["error"] is not None:
            text = json.dumps(state["error"]) if not isinstance(state["error"], str) \
                else state["error"]
            raise BackendError(_failure_kind(text),
                               "llama.cpp completion failed: %s" % text[-2000:])
        final = state["final"]
        if not isinstance(final, dict):
            raise BackendError(ERR_BACKEND, "llama.cpp returned no timings for a completion")
        timings = final["timings"]
        prompt_n = int(timings["prompt_n"])
        predicted_n = int(timings["predicted_n"])
        prefill_s = float(timings["prompt_ms"]) / 1000.0
        decode_s = float(timings["predicted_ms"]) / 1000.0
        if predicted_n != gen_tokens:
            raise BackendError(ERR_BACKEND, "asked for %d tokens, llama.cpp generated %d"
                               % (gen_tokens, predicted_n))
        rates = {
            "prefill_tps": prompt_n / prefill_s if prefill_s > 0 else None,
            "decode_tps": decode_rate(predicted_n, decode_s),
        }
        rep: Dict[str, object] = {
            "prompt_tokens": prompt_n,
            "gen_tokens": predicted_n,
            "prefill_s": prefill_s,
            "decode_s": decode_s,
        }
        # Absent values are left out, never zero or null (see REPETITION_FIELDS).
        rep.update((key, value) for key, value in rates.items() if value is not None)
        first = state["first"]
        last = state["last"]
        if isinstance(first, float):
            rep["ttft_s"] = first - sent
            # Monotonic windows for the runner's energy accounting: prefill is
            # the TTFT span, decode runs from the first token to the last chunk
            # and covers the predicted_n - 1 decode steps after the first token.
            rep["prefill_window_mono"] = [round(sent, 6), round(first, 6)]
            if isinstance(last, float):
                rep["decode_window_mono"] = [round(first, 6), round(last, 6)]
                rep["decode_window_tokens"] = predicted_n - 1
        return rep
