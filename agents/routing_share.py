"""Routing share of MoE-block time, measured on unpatched llama.cpp.

The study behind edgefarm measured how much of a MoE block's time goes to
routing (the router projection, softmax and top-k, weight normalisation)
against the experts, by patching llama.cpp. This module measures the same
split on stock llama.cpp through the graph-evaluation callback its C API
offers every binding (``cb_eval`` in ``llama_context_params``):

* The scheduler asks the callback about every node of the graph
  (``ask=True``); for a node the callback wants, it computes the graph up to
  that node, synchronises the backend and calls back (``ask=False``). So
  wanting a node *cuts* the graph there, and the time between the last ask
  before a cut and the call after it is the compute time of one segment.
* For each decoded token one MoE layer ``L`` is cut, in rotation over the
  layers (token ``i`` cuts layer ``i mod n_layer``), at three nodes:
  ``ffn_norm-L`` (the MoE block's input is ready), the last routing tensor
  (``ffn_moe_weights`` and its ``_softmax``/``_norm``/``_scaled`` follow-ups,
  whichever the architecture's graph has last) and ``ffn_moe_out-L``. The
  segment ending at the routing tensor is *routing*, the one ending at
  ``ffn_moe_out`` is *experts*. Every other layer runs uncut.
* This is a separate profiling pass in its own process (``agent routing``):
  the cuts add a synchronisation and two callback crossings per segment, so
  throughput repetitions never run with them. The callback crossing is
  measured (``callback_overhead_s``) and reported beside the result; it is
  part of each segment's time.

The library is the one the job's backend uses: the llama.cpp that xllamacpp
links in (its extension module exports the C API), or a ``libllama`` built
from the same llama.cpp (a CUDA build on a GPU machine). Its structs are read
through ``ctypes`` with the layout of the ``llama.h`` written down below;
before anything is loaded the defaults the library returns are checked
against that header's defaults, so a library of another llama.cpp revision is
refused with a reason instead of being handed misplaced fields.

Standard library only (ctypes): it runs on the agent.
"""

import ctypes
import importlib.util
import json
import os
import random
import re
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from agents.backends.xllamacpp_backend import prompt_id_range
from agents.gguf_info import read_gguf_info

#: The llama.cpp revision whose ``llama.h`` the structs below copy: the one
#: vendored in xllamacpp 2026.10.11549 (``thirdparty/llama.cpp``).
LAYOUT = "llama.h of xllamacpp 2026.10.11549"

METHOD = ("llama.cpp graph-evaluation callback (cb_eval), unpatched: one MoE layer cut per "
          "decoded token, in rotation; routing = the segment from ffn_norm to the last "
          "routing tensor, experts = from there to ffn_moe_out; each segment ends with a "
          "backend synchronise and includes two callback crossings")

_ROUTING_END = re.compile(r"^ffn_moe_weights(_softmax|_norm|_scaled)?-(\d+)$")
_GGML_TYPE_F16 = 1
_FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
_KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
             "bf16": 30}


class RoutingError(Exception):
    """The routing share cannot be measured here; the message says why."""


# -- the C API, as in LAYOUT ------------------------------------------------------------------

_EVAL_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)
_LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class ModelParams(ctypes.Structure):
    _fields_ = [
        ("devices", ctypes.c_void_p),
        ("tensor_buft_overrides", ctypes.c_void_p),
        ("n_gpu_layers", ctypes.c_int32),
        ("split_mode", ctypes.c_int),
        ("load_mode", ctypes.c_int),
        ("lazy_mode", ctypes.c_int),
        ("main_gpu", ctypes.c_int32),
        ("tensor_split", ctypes.c_void_p),
        ("progress_callback", ctypes.c_void_p),
        ("progress_callback_user_data", ctypes.c_void_p),
        ("kv_overrides", ctypes.c_void_p),
        ("vocab_only", ctypes.c_bool),
        ("check_tensors", ctypes.c_bool),
        ("use_extra_bufts", ctypes.c_bool),
        ("no_host", ctypes.c_bool),
        ("no_alloc", ctypes.c_bool),
        ("load_mtp", ctypes.c_bool),
    ]


class ContextParams(ctypes.Structure):
    _fields_ = [
        ("n_ctx", ctypes.c_uint32),
        ("n_batch", ctypes.c_uint32),
        ("n_ubatch", ctypes.c_uint32),
        ("n_seq_max", ctypes.c_uint32),
        ("n_rs_seq", ctypes.c_uint32),
        ("n_outputs_max", ctypes.c_uint32),
        ("n_outputs_max_per_seq", ctypes.c_uint32),
        ("n_threads", ctypes.c_int32),
        ("n_threads_batch", ctypes.c_int32),
        ("ctx_type", ctypes.c_int),
        ("rope_scaling_type", ctypes.c_int),
        ("pooling_type", ctypes.c_int),
        ("attention_type", ctypes.c_int),
        ("flash_attn_type", ctypes.c_int),
        ("rope_freq_base", ctypes.c_float),
        ("rope_freq_scale", ctypes.c_float),
        ("yarn_ext_factor", ctypes.c_float),
        ("yarn_attn_factor", ctypes.c_float),
        ("yarn_beta_fast", ctypes.c_float),
        ("yarn_beta_slow", ctypes.c_float),
        ("yarn_orig_ctx", ctypes.c_uint32),
        ("defrag_thold", ctypes.c_float),
        ("cb_eval", _EVAL_CB),
        ("cb_eval_user_data", ctypes.c_void_p),
        ("type_k", ctypes.c_int),
        ("type_v", ctypes.c_int),
        ("moe_cache_size", ctypes.c_size_t),
        ("abort_callback", ctypes.c_void_p),
        ("abort_callback_data", ctypes.c_void_p),
        ("embeddings", ctypes.c_bool),
        ("offload_kqv", ctypes.c_bool),
        ("no_perf", ctypes.c_bool),
        ("op_offload", ctypes.c_bool),
        ("swa_full", ctypes.c_bool),
        ("kv_unified", ctypes.c_bool),
        ("samplers", ctypes.c_void_p),
        ("n_samplers", ctypes.c_size_t),
        ("ctx_other", ctypes.c_void_p),
    ]


class Batch(ctypes.Structure):
    _fields_ = [
        ("n_tokens", ctypes.c_int32),
        ("token", ctypes.POINTER(ctypes.c_int32)),
        ("embd", ctypes.c_void_p),
        ("pos", ctypes.c_void_p),
        ("n_seq_id", ctypes.c_void_p),
        ("seq_id", ctypes.c_void_p),
        ("logits", ctypes.c_void_p),
    ]


#: Defaults of LAYOUT's llama_*_default_params(): read back through the structs
#: above, they must come out exactly so, or the library has another layout.
_CONTEXT_DEFAULTS = {"n_ctx": 512, "n_batch": 2048, "n_ubatch": 512, "n_seq_max": 1,
                     "n_outputs_max_per_seq": 1, "yarn_ext_factor": -1.0,
                     "yarn_attn_factor": -1.0, "defrag_thold": -1.0,
                     "type_k": _GGML_TYPE_F16, "type_v": _GGML_TYPE_F16, "moe_cache_size": 0,
                     "offload_kqv": True, "no_perf": True, "op_offload": True,
                     "swa_full": True, "kv_unified": False, "n_samplers": 0}
_MODEL_DEFAULTS = {"n_gpu_layers": -1, "main_gpu": 0, "vocab_only": False,
                   "use_extra_bufts": True, "no_alloc": False, "load_mtp": False}


def default_library() -> str:
    """The llama.cpp xllamacpp links in: its extension module exports the C API."""
    spec = importlib.util.find_spec("xllamacpp.xllamacpp")
    if spec is None or not spec.origin:
        raise RoutingError("no llama.cpp library to profile: xllamacpp is not installed and "
                           "no libllama path was given")
    return spec.origin


def _bind(lib: Any) -> None:
    sigs = {
        "llama_backend_init": (None, []),
        "llama_log_set": (None, [_LOG_CB, ctypes.c_void_p]),
        "llama_model_default_params": (ModelParams, []),
        "llama_context_default_params": (ContextParams, []),
        "llama_model_load_from_file": (ctypes.c_void_p, [ctypes.c_char_p, ModelParams]),
        "llama_init_from_model": (ctypes.c_void_p, [ctypes.c_void_p, ContextParams]),
        "llama_batch_get_one": (Batch, [ctypes.POINTER(ctypes.c_int32), ctypes.c_int32]),
        "llama_decode": (ctypes.c_int32, [ctypes.c_void_p, Batch]),
        "llama_get_memory": (ctypes.c_void_p, [ctypes.c_void_p]),
        "llama_memory_clear": (None, [ctypes.c_void_p, ctypes.c_bool]),
        "llama_synchronize": (None, [ctypes.c_void_p]),
        "llama_free": (None, [ctypes.c_void_p]),
        "llama_model_free": (None, [ctypes.c_void_p]),
        "llama_model_n_layer": (ctypes.c_int32, [ctypes.c_void_p]),
        "llama_print_system_info": (ctypes.c_char_p, []),
        "ggml_get_name": (ctypes.c_char_p, [ctypes.c_void_p]),
    }
    for name, (restype, argtypes) in sigs.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise RoutingError("the library does not export %s (not a llama.cpp build of "
                               "the %s revision)" % (name, LAYOUT)) from None
        fn.restype = restype
        fn.argtypes = argtypes


def _check_layout(mparams: ModelParams, cparams: ContextParams) -> None:
    for struct, expected, what in ((cparams, _CONTEXT_DEFAULTS, "llama_context_params"),
                                   (mparams, _MODEL_DEFAULTS, "llama_model_params")):
        for field, want in expected.items():
            got = getattr(struct, field)
            if got != want:
                raise RoutingError(
                    "this library's %s is not laid out as in the %s the profiler was written "
                    "for (default %s read as %r, expected %r): another llama.cpp revision; "
                    "routing share not measured" % (what, LAYOUT, field, got, want))


def callback_overhead_s(repeats: int = 2000) -> float:
    """Median seconds of one C -> Python -> C callback crossing, through libc's qsort.

    A segment's time includes the end of one ask crossing and the start of one
    eval crossing; this bounds what the callback itself adds.
    """
    libc = ctypes.CDLL(None)
    cmp_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    cmp = cmp_type(lambda a, b: 0)
    libc.qsort.restype = None
    libc.qsort.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, cmp_type]
    pair = (ctypes.c_int * 2)(1, 2)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        libc.qsort(pair, 2, ctypes.sizeof(ctypes.c_int), cmp)  # one comparison: one crossing
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _Cuts(object):
    """The eval callback's state: which layer is cut now, and the segment times."""

    def __init__(self, get_name: Any) -> None:
        self.get_name = get_name  # ggml_get_name of the library being profiled
        self.layer = -1          # -1: cut nothing (prompt, warm-up)
        self.routing_end: Dict[int, str] = {}  # MoE layer -> its last routing node
        self.discover = False    # True: record the routing nodes, cut nothing
        self.start = 0.0
        self.segments: Dict[str, float] = {}  # cut node -> its segment's seconds

    def wanted(self, name: str) -> bool:
        L = self.layer
        return name in ("ffn_norm-%d" % L, "ffn_moe_out-%d" % L) or \
            name == self.routing_end.get(L)

    def callback(self, tensor: int, ask: bool, _data: int) -> bool:
        name = (self.get_name(tensor) or b"").decode("utf-8", "replace")
        if self.discover:
            match = _ROUTING_END.match(name)
            if ask and match:
                self.routing_end[int(match.group(2))] = name  # the last one in graph order wins
            return False if ask else True
        if self.layer < 0:
            return False if ask else True
        if ask:
            if self.wanted(name):
                self.start = time.perf_counter()
                return True
            return False
        self.segments[name] = time.perf_counter() - self.start
        return True


def profile_routing(model_path: str, prompt_tokens: int, gen_tokens: int, threads: int,
                    gpu_layers: int = 0, cpu_repack: bool = True, flash_attn: str = "auto",
                    kv_type: str = "f16", seed: int = 0,
                    library: Optional[str] = None) -> Dict[str, object]:
    """Decode ``gen_tokens`` after a ``prompt_tokens`` prompt, cutting one MoE layer per token.

    Returns the per-token samples ``[layer, routing_s, experts_s]`` and the
    facts a reader needs to judge them (method, library, overhead). Raises
    ``RoutingError`` when the model has no MoE layers or the library cannot be
    profiled.
    """
    info = read_gguf_info(model_path)
    meta = info.get("metadata")
    arch = str(info.get("architecture") or "")
    n_expert = meta.get("%s.expert_count" % arch) if isinstance(meta, dict) else None
    if not n_expert:
        raise RoutingError("%s has no experts (%s.expert_count absent): no routing to measure"
                           % (os.path.basename(model_path), arch))
    path = library or default_library()
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise RoutingError("cannot load llama.cpp library %s: %s" % (path, exc)) from exc
    _bind(lib)
    quiet = _LOG_CB(lambda level, text, data: None)
    lib.llama_log_set(quiet, None)
    lib.llama_backend_init()
    mparams = lib.llama_model_default_params()
    cparams = lib.llama_context_default_params()
    _check_layout(mparams, cparams)
    mparams.n_gpu_layers = gpu_layers
    mparams.use_extra_bufts = cpu_repack
    model = lib.llama_model_load_from_file(model_path.encode(), mparams)
    if not model:
        raise RoutingError("llama.cpp could not load %s" % model_path)
    cuts = _Cuts(lib.ggml_get_name)
    callback = _EVAL_CB(cuts.callback)  # kept referenced until the context is freed
    cparams.n_ctx = max(512, prompt_tokens + gen_tokens + 16)
    cparams.n_batch = max(prompt_tokens, 512)
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.flash_attn_type = _FLASH_ATTN.get(flash_attn, -1)
    cparams.type_k = cparams.type_v = _KV_TYPES.get(kv_type, _GGML_TYPE_F16)
    cparams.cb_eval = callback
    cparams.cb_eval_user_data = None
    ctx = lib.llama_init_from_model(model, cparams)
    if not ctx:
        lib.llama_model_free(model)
        raise RoutingError("llama.cpp could not create a context for %s" % model_path)
    try:
        n_layer = int(lib.llama_model_n_layer(model))
        rng = random.Random(seed)
        ids = prompt_id_range(model_path)  # the same kind of prompt the backend sends

        def decode(tokens: List[int]) -> None:
            arr = (ctypes.c_int32 * len(tokens))(*tokens)
            rc = lib.llama_decode(ctx, lib.llama_batch_get_one(arr, len(tokens)))
            if rc != 0:
                raise RoutingError("llama_decode returned %d" % rc)

        # Warm-up and discovery: the prompt, then one token, nothing cut.
        prompt = [rng.randrange(*ids) for _ in range(prompt_tokens)]
        cuts.discover = True
        decode(prompt)
        decode([rng.randrange(*ids)])
        cuts.discover = False
        moe_layers = sorted(L for L in cuts.routing_end if 0 <= L < n_layer)
        if not moe_layers:
            raise RoutingError("no ffn_moe_weights node in the graph of %s: its MoE blocks "
                               "are not built by llama.cpp's build_moe_ffn"
                               % os.path.basename(model_path))
        lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
        cuts.layer = -1
        decode([rng.randrange(*ids) for _ in range(prompt_tokens)])
        samples: List[List[float]] = []
        start = time.perf_counter()
        for i in range(gen_tokens):
            layer = moe_layers[i % len(moe_layers)]
            cuts.layer, cuts.segments = layer, {}
            decode([rng.randrange(*ids)])
            routing = cuts.segments.get(cuts.routing_end[layer])
            experts = cuts.segments.get("ffn_moe_out-%d" % layer)
            if routing is None or experts is None:
                raise RoutingError("layer %d: the graph had no %s/ffn_moe_out cut"
                                   % (layer, cuts.routing_end[layer]))
            samples.append([layer, routing, experts])
        wall = time.perf_counter() - start
        cuts.layer = -1
        system = lib.llama_print_system_info()
    finally:
        lib.llama_free(ctx)
        lib.llama_model_free(model)
    # The mean of per-token shares: the report's statistic (orchestrator/stats.py
    # routing_share), so the agent's own line and the report agree.
    shares = [s[1] / (s[1] + s[2]) for s in samples if s[1] + s[2] > 0]
    return {
        "method": METHOD,
        "layout": LAYOUT,
        "library": path,
        "llama_system_info": (system or b"").decode("utf-8", "replace").strip(),
        "routing_end": sorted(set(cuts.routing_end[L].rsplit("-", 1)[0] for L in moe_layers)),
        "moe_layers": len(moe_layers),
        "tokens": gen_tokens,
        "prompt_tokens": prompt_tokens,
        "threads": threads,
        "gpu_layers": gpu_layers,
        "cpu_repack": cpu_repack,
        "samples": samples,
        "share": sum(shares) / len(shares) if shares else None,
        "profiled_decode_tps": gen_tokens / wall if wall > 0 else None,
        "callback_overhead_s": callback_overhead_s(),
    }


def library_for(backend: str, llama_bench: Optional[str]) -> Tuple[Optional[str], str]:
    """The llama.cpp library the job's backend runs, or ``(None, why there is none)``.

    xllamacpp: its own extension module. llama-bench: a ``libllama`` beside the
    binary (a CMake build puts both in ``build/bin``), or in ``../lib``.
    """
    if backend == "xllamacpp":
        try:
            return default_library(), ""
        except RoutingError as exc:
            return None, str(exc)
    if backend == "llama-bench" and llama_bench:
        here = os.path.dirname(os.path.realpath(llama_bench))
        for folder in (here, os.path.join(os.path.dirname(here), "lib")):
            for name in ("libllama.so", "libllama.dylib"):
                candidate = os.path.join(folder, name)
                if os.path.isfile(candidate):
                    return candidate, ""
        return None, ("llama-bench backend: no libllama.so/.dylib beside %s or in ../lib to "
                      "profile (build llama.cpp with BUILD_SHARED_LIBS=ON)" % llama_bench)
    return None, "backend %s runs no llama.cpp library that can be profiled" % backend


def profile_argv() -> List[str]:
    """How to start the profiling pass: the zipapp this agent runs from, else the package."""
    from agents.cli import _zipapp_path

    archive = _zipapp_path()
    if archive is not None:
        return [sys.executable, archive, "routing"]
    return [sys.executable, "-m", "agents", "routing"]


def profile_in_subprocess(model_path: str, prompt_tokens: int, gen_tokens: int, threads: int,
                          gpu_layers: int, cpu_repack: bool, seed: int, library: str,
                          timeout_s: float) -> Dict[str, object]:
    """Run ``profile_routing`` in a process of its own; ``{"unmeasured": why}`` on failure.

    Its own process, so the throughput repetitions' processes never carry the
    callback, and a crash in the profiler costs the job nothing but this result.
    """
    import subprocess

    argv = profile_argv() + [model_path, "--prompt", str(prompt_tokens), "--gen",
                             str(gen_tokens), "--threads", str(threads), "--gpu-layers",
                             str(gpu_layers), "--seed", str(seed), "--library", library]
    if not cpu_repack:
        argv.append("--no-repack")
    env = dict(os.environ)
    if argv[1] == "-m":  # from a source tree (tests): make the package importable
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                              timeout=timeout_s, universal_newlines=True)
    except subprocess.TimeoutExpired:
        return {"unmeasured": "the profiling pass took longer than %.0f s" % timeout_s}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"unmeasured": "the profiling pass exited with status %d and no result: %s"
                              % (proc.returncode, proc.stderr.strip()[-500:])}
    try:
        out = json.loads(lines[-1])
    except ValueError:
        return {"unmeasured": "the profiling pass printed no JSON result"}
    return out if isinstance(out, dict) else {"unmeasured": "unexpected profiling result"}


def profile_job_models(models: List[Dict[str, Any]], paths: List[str], params: Any,
                       backend: str, llama_bench: Optional[str], timeout_s: float,
                       emit: Any) -> Dict[str, Dict[str, object]]:
    """The profiling pass of a job: every MoE model, after all counted repetitions.

    Emits a ``profile`` phase and one ``routing`` event per MoE model and
    returns ``{model id: result}``; a result is the profile or
    ``{"unmeasured": why}``, never an error of the job.
    """
    out: Dict[str, Dict[str, object]] = {}
    library, why = library_for(backend, llama_bench)
    for model, path in zip(models, paths):
        if model.get("arch") != "moe":
            continue
        emit("phase", {"phase": "profile", "model": model.get("id")})
        if library is None:
            result: Dict[str, object] = {"unmeasured": why}
        else:
            result = profile_in_subprocess(path, params.prompt_tokens, params.gen_tokens,
                                           params.threads, params.gpu_layers,
                                           params.cpu_repack, params.seed, library, timeout_s)
        body = dict(result)
        body["model"] = model.get("id")
        emit("routing", body)
        out[str(model.get("id"))] = result
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """``agent routing MODEL --prompt N --gen N ...``: print the profile as one JSON line."""
    import argparse

    ap = argparse.ArgumentParser(prog="edgefarm-agent routing",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--no-repack", action="store_true")
    ap.add_argument("--flash-attn", default="auto", choices=sorted(_FLASH_ATTN))
    ap.add_argument("--kv-type", default="f16", choices=sorted(_KV_TYPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--library", default=None, help="a libllama of the same llama.cpp revision")
    args = ap.parse_args(argv)
    try:
        out = profile_routing(args.model, args.prompt, args.gen, args.threads,
                              args.gpu_layers, not args.no_repack, args.flash_attn,
                              args.kv_type, args.seed, args.library)
    except (RoutingError, OSError, ValueError) as exc:
        print(json.dumps({"unmeasured": str(exc)}))
        return 3
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
