"""The contract every inference backend follows.

A backend measures repetitions of one model file and reports each through
``emit``. The runner (``agents/runner.py``) owns the job's life cycle: it
resolves the models, orders the paired rounds, emits ``hello``/``result``/
``error`` and catches exceptions; a backend only measures.

Two shapes, by what the backend can do:

* **sessions** (``supports_sessions``; xllamacpp, the test-only sleep
  backend): ``open(model, params, emit)`` loads the model once and returns a
  ``Session`` whose ``repetition(index, warmup, emit)`` runs exactly one; the
  runner keeps every model of a job loaded and interleaves them round by
  round.
* **batches** (llama-bench, a process per invocation): ``run(model, params,
  emit)`` loads, warms up and runs ``params.repetitions`` repetitions; for a
  job of several models the runner calls it once per model per round.
"""

import copy
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

#: ``emit(kind, fields)``: write one event of ``kind`` with ``fields``; returns
#: the event's fields as written (the runner adds telemetry and round fields).
Emit = Callable[[str, Dict[str, object]], Optional[Dict[str, object]]]


class BackendError(Exception):
    """A backend could not run the job; ``kind`` classifies it for the store.

    Kinds the controller understands: ``model-missing``, ``backend-missing``,
    ``backend-error``, ``out-of-memory``, ``timeout``, ``bad-job``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class JobParams(object):
    """One job's configuration, as the controller planned it."""

    def __init__(self, prompt_tokens: int, gen_tokens: int, threads: int, gpu_layers: int,
                 repetitions: int, warmup: int, ctx_size: Optional[int] = None,
                 seed: int = 0, cpu_repack: bool = True,
                 torch_options: Optional[Dict[str, Any]] = None) -> None:
        self.prompt_tokens = prompt_tokens
        self.gen_tokens = gen_tokens
        self.threads = threads
        self.gpu_layers = gpu_layers
        self.repetitions = repetitions
        self.warmup = warmup
        self.ctx_size = ctx_size or (prompt_tokens + gen_tokens + 16)
        self.seed = seed
        # llama.cpp's CPU weight repacking (its default): faster kernels, but a
        # second anonymous copy of the weights and a slow load (~60 s for
        # OLMoE-1B-7B Q4_0 on a 2-core VM against 0.4 s without it).
        self.cpu_repack = cpu_repack
        # Backend torch: the job's ``params["torch"]`` ({device, dtype, decode,
        # experts}, agents/protocol.py TorchParamsSpec); None for other backends.
        self.torch_options = dict(torch_options) if torch_options else None

    def as_dict(self) -> Dict[str, object]:
        """Every field by name (the constructor's keywords): to send to a model worker."""
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "JobParams":
        return cls(**data)

    def with_repetitions(self, repetitions: int) -> "JobParams":
        """A copy with another repetition count, every other field kept."""
        params = copy.copy(self)
        params.repetitions = repetitions
        return params


#: Fields of a ``repetition`` event. Absent values are left out, never zero.
REPETITION_FIELDS = (
    "index",           # 0-based; warm-up runs count separately from counted ones
    "warmup",          # True for warm-up runs (stored, never counted)
    "prompt_tokens",
    "gen_tokens",
    "prefill_s",
    "decode_s",
    "ttft_s",          # request start -> first generated token, measured
    "prefill_tps",
    "decode_tps",
    "peak_rss_bytes",  # high-water mark of the process that ran the inference
    # Backend torch on cuda: the caching allocator's high-water mark of this
    # repetition (torch.cuda.max_memory_allocated, reset before it): the bytes
    # the tensors needed, less than NVML's per-process figure, which also holds
    # the allocator's cache and the CUDA context (peak_gpu_mem_job_bytes).
    "peak_gpu_alloc_bytes",
    # Monotonic [t0, t1] windows (time.monotonic(), the clock of events' "mono")
    # over which the runner measures energy; a backend reports what it knows.
    "prefill_window_mono",   # request sent -> first token (xllamacpp)
    "decode_window_mono",    # first token -> last chunk (xllamacpp)
    "decode_window_tokens",  # tokens decoded in decode_window_mono
    "process_window_mono",   # the whole child process (llama-bench)
    "phase_window_reason",   # why llama-bench's runs have no windows (then no energy per phase)
)

#: Fields the runner adds to a ``repetition`` from the job's telemetry
#: (agents/telemetry/job.py); absent when not measured, with
#: ``energy_unmeasured_reason`` saying why.
TELEMETRY_FIELDS = (
    "energy_prefill_j", "energy_decode_j", "j_per_token", "avg_power_w", "peak_power_w",
    "idle_power_w", "energy_decode_net_j", "energy_source", "energy_method",
    "energy_process_j", "process_s", "energy_unmeasured_reason", "idle_unmeasured_reason",
    "peak_mem_bytes", "peak_mem_scope", "peak_ram_used_bytes", "peak_gpu_mem_job_bytes",
    "max_temp_c",
    "max_temp_sensor", "warning", "cooldown_s", "cooldown_temp_c", "cooldown_sensor",
    "cooldown_timed_out", "cooldown_skipped",
)


class Session(object):
    """A model a backend has loaded, ready for repetitions one at a time."""

    def repetition(self, index: int, warmup: bool, emit: Emit) -> Dict[str, object]:
        """Run one repetition: emit its ``phase`` event(s), return the ``repetition`` fields.

        The runner emits the ``repetition`` event itself (adding the round,
        the model and the disturbance fields).
        """
        raise NotImplementedError("%s does not implement repetition()" % type(self).__name__)

    def info(self) -> Dict[str, object]:
        """Facts for the ``result`` event (backend version, load seconds, provenance)."""
        raise NotImplementedError("%s does not implement info()" % type(self).__name__)

    def close(self) -> None:
        """Unload the model."""


class Backend(object):
    """Base class: subclasses set ``name`` and implement ``available`` and ``run`` or ``open``."""

    name = "base"
    #: True when ``open`` gives sessions (repetitions one at a time).
    supports_sessions = False
    #: True when the model runs on the CPU in this process (its CPU share is
    #: recorded by agents/disturbance.py).
    cpu_in_process = False
    #: True when two models must not share a process (agents/model_worker.py).
    isolate_models = False

    def resident_need(self, paths: Sequence[str], params: "JobParams"
                      ) -> Optional[Tuple[int, Optional[int], str]]:
        """``(bytes, available, where)`` to hold every model of a job loaded at once.

        None (the default): the runner's rule for GGUF files (file sizes x
        ``RESIDENT_FACTOR`` against the host's available memory). A backend
        whose models are not files (torch presets) says it here; ``available``
        None means unknown, and the models are then loaded one at a time.
        """
        return None

    def open(self, model_path: str, params: "JobParams", emit: Emit) -> Session:
        """Load ``model_path`` and return a session (backends with ``supports_sessions``)."""
        raise NotImplementedError("%s runs batches, not sessions" % type(self).__name__)

    def available(self) -> Tuple[bool, str]:
        """Return ``(True, version)`` or ``(False, reason)`` without side effects."""
        raise NotImplementedError("%s does not implement available()" % type(self).__name__)

    def run(self, model_path: str, params: JobParams, emit: Emit) -> Dict[str, object]:
        """Run warm-ups and repetitions, emitting ``phase`` and ``repetition``.

        Returns facts about the run for the ``result`` event (backend version,
        build info, model load seconds). Raises ``BackendError`` on failure.
        A session backend gets this from ``open`` for free.
        """
        if not self.supports_sessions:
            raise NotImplementedError("%s does not implement run()" % type(self).__name__)
        session = self.open(model_path, params, emit)
        try:
            total = params.warmup + params.repetitions
            for i in range(total):
                warm = i < params.warmup
                emit("repetition", session.repetition(i if warm else i - params.warmup, warm,
                                                      emit))
            return session.info()
        finally:
            session.close()


#: Keys of a result's ``provenance`` dict, the same for every backend: what
#: built llama.cpp and the settings that decide speed. Two results can only be
#: compared when all of them agree (the report refuses a pair otherwise), so a
#: backend reports every key; one it cannot know is ``None`` with the reason
#: under ``provenance["unknown"][key]``, never a guess. Settings are the values
#: passed to llama.cpp (llama.cpp may cap ``n_batch``/``n_ubatch`` at the
#: context size, the same way for both sides of a pair).
PROVENANCE_KEYS = (
    "backend",          # "xllamacpp" or "llama-bench"
    "backend_version",  # the wheel's version, or llama-bench's "build (commit)"
    "build_number",     # llama.cpp's build number (git commit count)
    "build_commit",     # llama.cpp's short commit hash
    "threads",          # threads for prompt processing and generation
    "n_batch",          # logical batch size
    "n_ubatch",         # physical (micro-)batch size
    "flash_attn",       # "on", "off" or "auto" (llama.cpp decides per model)
    "type_k",           # KV cache types, llama.cpp's names ("f16", "q8_0")
    "type_v",
    "use_mmap",         # True/False
    "cpu_repack",       # True/False: llama.cpp repacks CPU weights into its faster layouts
    "gpu_layers",       # layers offloaded to the GPU
)


def make_provenance(backend: str, values: Dict[str, object],
                    unknown: Dict[str, str]) -> Dict[str, object]:
    """A ``provenance`` dict with every key of ``PROVENANCE_KEYS``.

    ``values`` holds what the backend knows; any key missing from it or None
    becomes None with its reason from ``unknown`` (or "not reported by
    <backend>"), so a reader always learns why a value is absent.
    """
    out: Dict[str, object] = {}
    reasons: Dict[str, str] = {}
    for key in PROVENANCE_KEYS:
        value = values.get(key)
        out[key] = value
        if value is None:
            reasons[key] = unknown.get(key) or "not reported by %s" % backend
    out["unknown"] = reasons
    return out


def flash_attn_label(value: object) -> Optional[str]:
    """llama.cpp's flash-attention setting as "on", "off" or "auto"; None if unrecognised.

    llama-bench printed a boolean before flash attention got an "auto" mode
    and may print an int (-1 auto, 0 off, 1 on) or a word since; the bindings
    give an enum whose name ends in AUTO/ENABLED/DISABLED. One spelling lets
    the two backends' results be compared and shown alike.
    """
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return {-1: "auto", 0: "off", 1: "on"}.get(value)
    name = getattr(value, "name", value)
    if not isinstance(name, str):
        return None
    word = name.strip().lower().rsplit("_", 1)[-1]
    return {"auto": "auto", "on": "on", "enabled": "on", "true": "on", "1": "on",
            "off": "off", "disabled": "off", "false": "off", "0": "off"}.get(word)


def kv_type_label(value: object) -> Optional[str]:
    """A KV cache type as llama-bench prints it ("f16", "q8_0"); None if unrecognised.

    The bindings give ``ggml_type.GGML_TYPE_F16``; llama-bench prints "f16".
    """
    name = getattr(value, "name", value)
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip()
    if name.upper().startswith("GGML_TYPE_"):
        name = name[len("GGML_TYPE_"):]
    return name.lower()
