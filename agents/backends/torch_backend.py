"""PyTorch backend: transformers models on ``cpu``, ``cuda`` or ``mps`` (issue 14).

Why a second backend: many users run Hugging Face checkpoints in PyTorch on
CUDA (Jetson, desktop and datacenter GPUs) and MPS (Macs), and module hooks
let torch time a MoE's router and experts exactly (``torch_routing.py``).

Models. A ``{preset: NAME[, seed]}`` source is built from the preset's
published shape with seeded random weights (``torch_models.build_model``,
transformers' ``from_config``, nothing downloaded); the runner passes it as
the marker ``preset:NAME:SEED`` (``preset_marker``), since no file exists. A
``{hf_dir: DIR}`` source is loaded with ``from_pretrained(DIR,
local_files_only=True)``. Both run in the job's dtype on the job's device.

The job's ``params["torch"]`` (``JobParams.torch_options``) chooses:

* ``experts``: the MoE experts implementation (``eager``, ``grouped_mm``,
  ``batched_mm``, or edgefarm's ``gemv``, ``torch_experts.py``). It is set,
  then tried on a two-token and a one-token forward; one that cannot run
  here (a kernel the device lacks, say on MPS) falls back to transformers'
  default, and the result records both and why
  (``experts_asked``, ``experts``, ``experts_fallback``). Dense models have
  none (``experts`` None).
* ``prefill_experts``: another implementation for the prefill alone, tried
  and recorded the same way (``prefill_experts``, ``prefill_experts_fallback``);
  the decoders switch to it for each prefill and back before the decode
  (``torch_decode.prefill_forward``). transformers' ``generate`` does the same on GPUs
  (``grouped_mm`` prefill, ``batched_mm`` decode): ``batched_mm`` gathers the
  routed experts' weights per token, so a long prompt would need memory in
  proportion (about 340 GB for a 2048-token OLMoE-1B-7B prefill).
* ``decode``: ``eager`` (``torch_decode.EagerDecoder``: a dynamic KV cache, one
  Python forward per token) or ``compiled`` (``torch_decode.StaticDecoder``: a
  static KV cache; on cuda the step through ``torch.compile`` and captured as
  one CUDA graph at load time; on cpu and mps the static-cache step runs
  as it is, see ``COMPILED_ON_HOST``). ``decode`` in the result is what ran.

Timing. A repetition draws ``prompt_tokens`` seeded token ids (the same
sequence for every model of a job, as xllamacpp does), runs one explicit
prefill forward (its greedy pick is the first generated token), then
``gen_tokens - 1`` decode steps, greedy, every token on the device. On cuda
``prefill_s`` and ``decode_s`` come from CUDA events around the prefill and
around the decode loop, read after one synchronise at each phase's end; on
cpu (and mps, synchronised) they are ``time.monotonic`` spans. Either way
the phases' ``time.monotonic`` windows (``prefill_window_mono``,
``decode_window_mono``, taken after a synchronise) go to the job's
telemetry, which measures energy per phase over them (NVML on an NVIDIA
GPU), and ``decode_tps = (gen_tokens - 1) / decode_s``, the rate
llama.cpp reports. A warm-up runs the whole prompt and generates
``WARMUP_GEN_TOKENS`` tokens, as the other backends' warm-ups do.

Memory. ``peak_rss_bytes`` is this process's high-water mark
(``agents/peakmem.py``); on cuda ``peak_gpu_alloc_bytes`` is the caching
allocator's peak of the repetition (``torch.cuda.max_memory_allocated``,
reset before it). NVML's per-process GPU memory (which adds the allocator's
cache and the CUDA context) reaches the repetition through the telemetry
as for llama.cpp (``peak_gpu_mem_job_bytes``).

Only the cpu path is tested (tests/test_torch_backend.py: the test machines
have no GPU); the cuda path was run once on an H200, every experts x decode
variant of the tiny pair and OLMoE-1B-7B against OLMo-1B compiled, with NVML
telemetry (docs/backends.md); the mps path is untested.

torch and transformers are imported inside the methods: the agent's core
imports this module with the standard library only.
"""

import gc
import os
import random
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from agents import peakmem
from agents.backends.base import (
    Backend,
    BackendError,
    Emit,
    JobParams,
    Session,
    make_provenance,
)
from agents.backends.xllamacpp_backend import WARMUP_GEN_TOKENS
from agents.protocol import (
    ERR_BACKEND,
    ERR_BACKEND_MISSING,
    ERR_BAD_JOB,
    ERR_MODEL_MISSING,
    ERR_OUT_OF_MEMORY,
)

DEVICES = ("cpu", "cuda", "mps")
DTYPES = ("float32", "float16", "bfloat16")
DECODE_MODES = ("eager", "compiled")
#: dtype per device when a job names none (the sweep's default, repeated).
DEFAULT_DTYPE = {"cpu": "float32", "cuda": "bfloat16", "mps": "float16"}
#: The decode loops as they ran (the result's ``decode``).
RAN_EAGER = "eager"                       # dynamic KV cache, one forward per token
RAN_STATIC = "static"                     # static KV cache, the step as it is
RAN_GRAPH = "static+compile+cuda-graph"   # torch.compile'd step captured as a CUDA graph
#: torch.compile's mode for ``compiled`` on cuda: "default" autotunes nothing,
#: so two compiles give the same kernels (max-autotune was up to 30% faster on
#: the H200 but varied that much from compile to compile:
#: docs/results/h200/torch-decode.md).
COMPILE_MODE = "default"
#: What ``compiled`` runs on cpu and mps, and why.
COMPILED_ON_HOST = ("a static KV cache with the step as it is: CUDA graphs exist on cuda only, "
                    "and torch.compile is not applied off cuda (inductor's C++ build took "
                    "17-32 s per model load on a 2-core VM, more than the jobs it serves)")
#: Reason for every llama.cpp-only provenance key.
NOT_LLAMA_CPP = "not a llama.cpp setting (torch backend)"
#: Prefix of a preset model's marker (``preset:NAME:SEED``): no file exists.
PRESET_PREFIX = "preset:"
#: Decode positions a static cache holds beyond prompt + generated tokens
#: (the warm-up steps of a capture run past the prompt).
STATIC_SLACK = 8

_OOM_WORDS = ("out of memory", "failed to allocate", "cannot allocate")

#: Bytes per element of each dtype, for sizing models before building them.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Memory a loaded model takes per byte of its weights, to decide whether all
#: models of a job fit at once (``keep_models_loaded``). On the H200 the
#: caching allocator's peak for OLMoE-1B-7B in bf16 with the compiled decode
#: was 27.2 GB for 13.8 GB of weights (compile and graph-capture workspace,
#: KV cache); the eager loop needs much less.
RESIDENT_FACTOR_COMPILED = 2.0
RESIDENT_FACTOR_EAGER = 1.3


def weights_bytes(model: str, dtype: str) -> Optional[int]:
    """Bytes of a model's weights before it is built: a preset's shape, or a checkpoint's files."""
    marker = parse_marker(model)
    if marker is not None:
        from agents.models.presets import get_shape, param_counts

        try:
            total, _ = param_counts(get_shape(marker[0]))
        except ValueError:
            return None
        return total * DTYPE_BYTES.get(dtype, 4)
    try:
        names = os.listdir(model)
    except OSError:
        return None
    files = [n for n in names if n.endswith((".safetensors", ".bin", ".pt"))]
    return sum(os.path.getsize(os.path.join(model, n)) for n in files) or None


def preset_marker(preset: str, seed: int) -> str:
    """The model "path" of a preset built in torch: ``preset:NAME:SEED``."""
    return "%s%s:%d" % (PRESET_PREFIX, preset, seed)


def parse_marker(model: str) -> Optional[Tuple[str, int]]:
    """``(preset, seed)`` of a ``preset:NAME:SEED`` marker, None for anything else."""
    if not model.startswith(PRESET_PREFIX):
        return None
    name, _, seed = model[len(PRESET_PREFIX):].rpartition(":")
    if not name or not seed.isdigit():
        raise BackendError(ERR_BAD_JOB, "malformed preset marker %r (preset:NAME:SEED)" % model)
    return name, int(seed)


class TorchOptions(object):
    """A job's ``params["torch"]``, checked: what the agent is asked to run."""

    def __init__(self, options: Optional[Dict[str, Any]]) -> None:
        raw = dict(options or {})
        self.device = str(raw.get("device", "cpu"))
        if self.device not in DEVICES:
            raise BackendError(ERR_BAD_JOB, "torch device %r (known: %s)"
                               % (self.device, ", ".join(DEVICES)))
        self.dtype = str(raw.get("dtype", DEFAULT_DTYPE[self.device]))
        if self.dtype not in DTYPES:
            raise BackendError(ERR_BAD_JOB, "torch dtype %r (known: %s)"
                               % (self.dtype, ", ".join(DTYPES)))
        experts = raw.get("experts")
        self.experts = str(experts) if experts else None
        prefill = raw.get("prefill_experts")
        self.prefill_experts = str(prefill) if prefill else None
        self.decode = str(raw.get("decode", "eager"))
        if self.decode not in DECODE_MODES:
            raise BackendError(ERR_BAD_JOB, "torch decode %r (known: %s)"
                               % (self.decode, ", ".join(DECODE_MODES)))


# -- the model -------------------------------------------------------------------------------


def moe_blocks(model: Any) -> List[Tuple[int, str, Any, Any]]:
    """``(layer, module name, router, experts)`` of every MoE block, in layer order.

    A MoE block is a module with a ``gate`` (the router) and an ``experts``
    module, as transformers writes OLMoE, Mixtral, Qwen-MoE and their kin
    (``model.layers.N.mlp.gate`` / ``.experts``). Dense MLPs have neither.
    """
    import torch

    found: List[Tuple[int, str, Any, Any]] = []
    for name, module in model.named_modules():
        gate, experts = getattr(module, "gate", None), getattr(module, "experts", None)
        if isinstance(gate, torch.nn.Module) and isinstance(experts, torch.nn.Module):
            digits = re.findall(r"\.(\d+)(?:\.|$)", name)
            found.append((int(digits[-1]) if digits else len(found), name, gate, experts))
    return sorted(found, key=lambda block: block[0])


def _config_int(config: Any, *names: str) -> Optional[int]:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def model_facts(model: Any, blocks: List[Tuple[int, str, Any, Any]]) -> Dict[str, object]:
    """Parameter counts and what one decode step reads, from the model in memory.

    The same rules as the GGUF facts (``agents/decode_traffic.py``): an
    untied input embedding is read one row per token, the experts
    ``n_used / n_experts`` of their weights, everything else whole; bytes at
    the model's dtype. ``model_size_bytes`` is the weights' size in memory
    (there is no file).
    """
    config = model.config
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    expert_ids: Set[int] = set()
    for _, _, _, experts in blocks:
        expert_ids.update(id(p) for p in experts.parameters())
    n_expert = _config_int(config, "num_experts", "num_local_experts", "n_routed_experts")
    n_used = _config_int(config, "num_experts_per_tok", "moe_topk")
    total = expert_params = 0
    dense_bytes = expert_bytes = size = 0
    seen: Set[int] = set()
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        count, nbytes = param.numel(), param.numel() * param.element_size()
        total += count
        size += nbytes
        if id(param) in expert_ids:
            expert_params += count
            expert_bytes += nbytes
        elif param is embed and param is not head_weight:
            dense_bytes += embed.shape[-1] * param.element_size()  # one row looked up
        else:
            dense_bytes += nbytes
    facts: Dict[str, object] = {"params_total": total, "model_size_bytes": size,
                                "architecture": getattr(config, "model_type", None)}
    if blocks and n_expert and n_used:
        facts["params_active"] = total - expert_params + expert_params * n_used // n_expert
        used_bytes = expert_bytes * n_used // n_expert
        facts.update(expert_count=n_expert, expert_used_count=n_used,
                     expert_bytes_per_token=used_bytes,
                     weight_bytes_per_token=dense_bytes + used_bytes)
    elif blocks:
        facts["params_active"] = None
        facts["weight_bytes_note"] = ("MoE blocks but no num_experts/num_experts_per_tok in "
                                      "the config: bytes per token unknown")
    else:
        facts.update(params_active=total, expert_bytes_per_token=0,
                     weight_bytes_per_token=dense_bytes)
    if head_weight is not None and head_weight is embed:
        facts["weight_bytes_note"] = "tied embeddings read whole as the output projection"
    layers = _config_int(config, "num_hidden_layers")
    heads = _config_int(config, "num_attention_heads")
    kv_heads = _config_int(config, "num_key_value_heads") or heads
    head_dim = _config_int(config, "head_dim") or (
        config.hidden_size // heads if heads and getattr(config, "hidden_size", None) else None)
    if layers and kv_heads and head_dim:
        # K and V of every layer at f16; the report scales by the provenance's KV type.
        facts["kv_bytes_per_position_f16"] = 2 * layers * kv_heads * head_dim * 2
    return facts


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def _failure(exc: BaseException, what: str) -> BackendError:
    """An out-of-memory when torch says so, else a backend error, naming ``what`` failed."""
    text = "%s: %s" % (type(exc).__name__, str(exc).strip().splitlines()[0][:500]
                       if str(exc).strip() else "")
    oom = type(exc).__name__ == "OutOfMemoryError" or any(w in text.lower() for w in _OOM_WORDS)
    return BackendError(ERR_OUT_OF_MEMORY if oom else ERR_BACKEND, "%s: %s" % (what, text))


class TorchSession(Session):
    """One model loaded on the job's device; each ``repetition`` is one prefill + decode."""

    def __init__(self, backend: "TorchBackend", model: Any, params: JobParams,
                 options: TorchOptions, info: Dict[str, object], decoder: Any,
                 blocks: List[Tuple[int, str, Any, Any]]) -> None:
        self.backend = backend
        self.model: Any = model
        self.params = params
        self.options = options
        self.decoder = decoder
        self.blocks = blocks
        self._info = info
        vocab = int(getattr(model.config, "vocab_size", 0) or 0)
        # Past the control and byte tokens SentencePiece vocabs start with, as
        # xllamacpp's prompts (agents/backends/xllamacpp_backend.py).
        low = 259 if vocab > 300 else min(3, max(vocab - 1, 0))
        self.id_range = (low, max(low + 1, min(vocab, low + 5000)))
        self.rng = random.Random(params.seed)

    def prompt(self) -> Any:
        """The next seeded prompt, ``[1, prompt_tokens]`` token ids on the device."""
        import torch

        ids = [self.rng.randrange(*self.id_range) for _ in range(self.params.prompt_tokens)]
        return torch.tensor([ids], dtype=torch.long, device=self.options.device)

    def repetition(self, index: int, warmup: bool, emit: Emit) -> Dict[str, object]:
        if self.model is None:
            raise BackendError(ERR_BACKEND, "repetition on a closed torch session")
        emit("phase", {"phase": "warmup" if warmup else "prefill"})
        gen = min(self.params.gen_tokens, WARMUP_GEN_TOKENS) if warmup else \
            self.params.gen_tokens
        try:
            rep = self._timed(self.prompt(), gen)
        except BackendError:
            raise
        except (RuntimeError, ValueError) as exc:
            raise _failure(exc, "torch repetition failed") from exc
        rss, scope = peakmem.peak_rss_bytes()
        rep.update({"index": index, "warmup": warmup, "peak_rss_bytes": rss,
                    "peak_rss_scope": scope})
        return rep

    def _timed(self, prompt: Any, gen: int) -> Dict[str, object]:
        """One prefill and ``gen - 1`` decode steps, timed (see the module docstring)."""
        import torch

        device = self.options.device
        cuda = device == "cuda"
        peakmem.reset_peak()
        events: List[Any] = []
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        _sync(device)
        t0 = time.monotonic()
        if cuda:
            events[0].record()
        token = self.decoder.prefill(prompt)
        if cuda:
            events[1].record()
        _sync(device)
        t1 = time.monotonic()
        if cuda:
            events[2].record()
        for _ in range(gen - 1):
            token = self.decoder.step(token)
        if cuda:
            events[3].record()
        _sync(device)
        t2 = time.monotonic()
        if cuda:
            prefill_s = events[0].elapsed_time(events[1]) / 1000.0
            decode_s = events[2].elapsed_time(events[3]) / 1000.0
        else:
            prefill_s, decode_s = t1 - t0, t2 - t1
        n = int(prompt.shape[1])
        rep: Dict[str, object] = {
            "prompt_tokens": n, "gen_tokens": gen, "prefill_s": prefill_s,
            "decode_s": decode_s if gen > 1 else 0.0, "ttft_s": t1 - t0,
            "prefill_window_mono": [round(t0, 6), round(t1, 6)],
        }
        if prefill_s > 0:
            rep["prefill_tps"] = n / prefill_s
        if gen > 1 and decode_s > 0:  # absent values are left out (REPETITION_FIELDS)
            rep["decode_tps"] = (gen - 1) / decode_s
            rep["decode_window_mono"] = [round(t1, 6), round(t2, 6)]
            rep["decode_window_tokens"] = gen - 1
        if cuda:
            rep["peak_gpu_alloc_bytes"] = int(torch.cuda.max_memory_allocated())
        return rep

    def info(self) -> Dict[str, object]:
        return dict(self._info)

    def close(self) -> None:
        self.model = None
        self.decoder = None
        self.blocks = []
        gc.collect()
        if self.options.device == "cuda":
            import torch

            torch.cuda.empty_cache()


class TorchBackend(Backend):
    """Runs transformers models in this process through PyTorch (see the module docstring)."""

    name = "torch"
    supports_sessions = True
    #: torch's threads share one pool per process: two models in it do not
    #: slow each other the way two llama.cpp contexts do (agents/model_worker.py).
    isolate_models = False

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        # Only a cpu model's threads are this process's inference (the
        # disturbance record counts other CPU use against it).
        self.cpu_in_process = device == "cpu"

    def resident_need(self, paths: Sequence[str], params: JobParams
                      ) -> Optional[Tuple[int, Optional[int], str]]:
        """Every model's weights x a working-space factor, against free memory where they run.

        On cuda the free GPU memory (``torch.cuda.mem_get_info``), on cpu the
        host's ``MemAvailable``; on mps unknown (one model at a time).
        """
        options = TorchOptions(params.torch_options)
        sizes = [weights_bytes(p, options.dtype) for p in paths]
        if any(size is None for size in sizes):
            return 0, None, "available"
        factor = (RESIDENT_FACTOR_COMPILED if options.decode == "compiled"
                  else RESIDENT_FACTOR_EAGER)
        need = int(sum(size for size in sizes if size) * factor)
        if options.device == "cuda":
            try:
                import torch

                return need, int(torch.cuda.mem_get_info()[0]), "free on the GPU"
            except (ImportError, RuntimeError):
                return need, None, "free on the GPU"
        if options.device == "cpu":
            from agents.round_runner import mem_available_bytes

            return need, mem_available_bytes(), "available"
        return need, None, "available"

    def available(self) -> Tuple[bool, str]:
        try:
            import torch
            import transformers
        except ImportError as exc:
            return False, ("backend torch needs the python packages torch and transformers: "
                           "%s" % exc)
        return True, "torch %s / transformers %s" % (torch.__version__,
                                                     transformers.__version__)

    def open(self, model_path: str, params: JobParams, emit: Emit) -> TorchSession:
        """Build or load the model, choose the experts and the decode loop (a ``load`` phase)."""
        ok, versions = self.available()
        if not ok:
            raise BackendError(ERR_BACKEND_MISSING, versions)
        import torch
        import transformers

        options = TorchOptions(params.torch_options)
        self._check_device(options.device, torch)
        if options.device == "cpu":
            torch.set_num_threads(max(1, params.threads))
        emit("phase", {"phase": "load"})
        rss_before, _ = peakmem.current_rss_bytes()
        start = time.monotonic()
        model, source = self._load(model_path, options, params, torch, transformers)
        blocks = moe_blocks(model)
        try:
            default = getattr(model.config, "_experts_implementation", None) or "eager"
            prefill, prefill_fallback = (
                self._experts(model, blocks, options.prefill_experts, default, options.device,
                              torch)
                if options.prefill_experts else (None, None))
            experts, fallback = self._experts(model, blocks, options.experts, default,
                                              options.device, torch)
            phases = (prefill, experts) if prefill and experts and prefill != experts else None
            load_s = time.monotonic() - start
            started = time.monotonic()
            decoder, ran, why = self._decoder(model, blocks, experts, phases, options, params,
                                              torch)
            prepare_s = time.monotonic() - started
        except (RuntimeError, ValueError) as exc:  # out of memory, most likely
            raise _failure(exc, "preparing %s" % model_path) from exc
        rss_after, _ = peakmem.current_rss_bytes()
        torch_facts: Dict[str, object] = {
            "device": options.device, "dtype": options.dtype,
            "experts_asked": options.experts if blocks else None,
            "experts": experts, "experts_fallback": fallback,
            "prefill_experts": prefill or experts, "prefill_experts_fallback": prefill_fallback,
            "decode_asked": options.decode, "decode": ran, "decode_note": why,
            "decode_prepare_s": prepare_s,
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "threads": torch.get_num_threads(),
            "gpu_name": torch.cuda.get_device_name() if options.device == "cuda" else None,
        }
        info: Dict[str, object] = {"backend": "torch", "backend_version": torch.__version__,
                                   "load_s": load_s, "torch": torch_facts,
                                   "provenance": self._provenance(torch_facts)}
        info.update(source)
        info.update(model_facts(model, blocks))
        if rss_before is not None and rss_after is not None:
            info["load_rss_bytes"] = max(0, rss_after - rss_before)
        return TorchSession(self, model, params, options, info, decoder, blocks)

    # -- the parts of open ---------------------------------------------------------------------
    @staticmethod
    def _check_device(device: str, torch: Any) -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError(ERR_BACKEND_MISSING, "torch device cuda: torch %s sees no CUDA "
                               "device" % torch.__version__)
        if device == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                    and torch.backends.mps.is_available()):
            raise BackendError(ERR_BACKEND_MISSING, "torch device mps: torch %s has no MPS "
                               "device here (not an Apple-silicon Mac?)" % torch.__version__)

    @staticmethod
    def _load(model_path: str, options: TorchOptions, params: JobParams, torch: Any,
              transformers: Any) -> Tuple[Any, Dict[str, object]]:
        """The model in eval mode on the device, and where it came from (result facts)."""
        marker = parse_marker(model_path)
        try:
            if marker is not None:
                from agents.backends.torch_models import build_model

                preset, seed = marker
                try:
                    model, _, _ = build_model(preset, options.device, options.dtype, None,
                                              seed)
                except ValueError as exc:  # an unknown preset or an architecture without one
                    raise BackendError(ERR_BAD_JOB, str(exc)) from exc
                return model, {"preset": preset, "synthetic": True, "weights_seed": seed}
            model = transformers.AutoModelForCausalLM.from_pretrained(
                model_path, local_files_only=True, dtype=getattr(torch, options.dtype))
            model.to(options.device)
            model.eval()
            return model, {"preset": None, "synthetic": False, "hf_dir": model_path}
        except BackendError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise BackendError(ERR_MODEL_MISSING, "transformers could not load %s: %s"
                               % (model_path, exc)) from exc
        except RuntimeError as exc:
            raise _failure(exc, "loading %s" % model_path) from exc

    @staticmethod
    def _experts(model: Any, blocks: List[Tuple[int, str, Any, Any]], asked_for: Optional[str],
                 default: str, device: str, torch: Any) -> Tuple[Optional[str], Optional[str]]:
        """The experts implementation in force, and why it is not the one asked for.

        Setting an implementation succeeds for any registered name; whether its
        kernel runs on this device shows only in a forward, so a two-token and
        a one-token forward try it (``gemv`` runs its own path only for one).
        One that fails falls back to transformers' default, and that to
        ``eager`` (a plain loop every device runs), each failure recorded.
        """
        if not blocks:
            return None, None
        from agents.backends.torch_experts import set_experts

        asked = asked_for or default
        reasons: List[str] = []
        for impl in dict.fromkeys((asked, default, "eager")):
            try:
                set_experts(model, impl)
                for length in (2, 1):
                    ids = torch.zeros((1, length), dtype=torch.long, device=device)
                    with torch.no_grad():
                        model(input_ids=ids)
                _sync(device)
            except Exception as exc:  # any refusal or kernel failure: the next candidate
                text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                reasons.append("%s could not run on %s (%s: %s)"
                               % (impl, device, type(exc).__name__, text))
                continue
            if impl != asked:
                reasons.append("fell back to %s" % impl)
            return impl, "; ".join(reasons) or None
        raise BackendError(ERR_BACKEND, "no experts implementation runs here: "
                           + "; ".join(reasons))

    @staticmethod
    def _decoder(model: Any, blocks: List[Tuple[int, str, Any, Any]], experts: Optional[str],
                 phases: Optional[Tuple[str, str]], options: TorchOptions, params: JobParams,
                 torch: Any) -> Tuple[Any, str, Optional[str]]:
        """``(decoder, what runs, why it is not what was asked)`` for the job's decode mode.

        ``compiled`` prepares its static step here, at load time, so no counted
        repetition carries a compile or a capture. ``phases``: the prefill's and
        the decode's experts implementations when they differ.
        """
        from agents.backends.torch_decode import EagerDecoder, StaticDecoder

        if options.decode == "eager":
            return EagerDecoder(model, phases), RAN_EAGER, None
        max_len = params.prompt_tokens + params.gen_tokens + STATIC_SLACK
        example = torch.zeros((1, params.prompt_tokens), dtype=torch.long,
                              device=options.device)

        def static(why: str) -> Tuple[Any, str, Optional[str]]:
            """A static KV cache with the step as it is (no compile, no graph)."""
            plain = StaticDecoder(model, max_len, experts=phases)
            plain.capture(example)
            return plain, RAN_STATIC, why

        if options.device != "cuda":
            return static(COMPILED_ON_HOST)
        if blocks and experts == "eager":
            return static("the eager experts loop picks experts with data-dependent shapes "
                          "and syncs with the host, which a CUDA graph cannot capture: a "
                          "static KV cache with the step as it is")
        try:
            compiled = torch.compile(model, mode=COMPILE_MODE, dynamic=False)
            decoder = StaticDecoder(model, max_len, graph=True, compiled=compiled,
                                    experts=phases)
            decoder.capture(example)
            return decoder, RAN_GRAPH, None
        except Exception as exc:  # inductor or the capture failed: run the static step
            torch.cuda.synchronize()
            return static("torch.compile + CUDA graph failed (%s: %s): a static KV cache with "
                          "the step as it is" % (type(exc).__name__,
                                                 str(exc).splitlines()[0][:300]
                                                 if str(exc) else ""))

    @staticmethod
    def _provenance(facts: Dict[str, object]) -> Dict[str, object]:
        """The ``provenance`` of a torch result (``base.PROVENANCE_KEYS`` plus torch's own).

        llama.cpp's settings are None with ``NOT_LLAMA_CPP``; the KV types are
        the model's dtype (a torch KV cache holds it), so the report sizes the
        KV cache right. The torch keys a pair must agree on are added: device,
        dtype, the decode loop that ran and transformers' version. The experts
        implementation is not among them (a dense model has none); it is part
        of the job's configuration and the report's title instead.
        """
        kv = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(str(facts["dtype"]))
        values: Dict[str, object] = {"backend": "torch", "backend_version": facts["torch_version"],
                                     "threads": facts["threads"], "type_k": kv, "type_v": kv}
        unknown = {key: NOT_LLAMA_CPP for key in ("build_number", "build_commit", "n_batch",
                                                   "n_ubatch", "flash_attn", "use_mmap",
                                                   "cpu_repack", "gpu_layers")}
        out = make_provenance("torch", values, unknown)
        out.update(torch_device=facts["device"], torch_dtype=facts["dtype"],
                   torch_decode=facts["decode"],
                   transformers_version=facts["transformers_version"])
        return out
