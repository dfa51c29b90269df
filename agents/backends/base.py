"""The contract every inference backend follows.

A backend runs one job's repetitions against one model file and reports each
repetition through ``emit``. The runner (``agents/runner.py``) owns the job's
life cycle: it resolves the model, emits ``hello``/``result``/``error`` and
catches exceptions; a backend only measures.

Life cycle: ``available()`` -> ``run(...)`` (once per job).
"""

from typing import Callable, Dict, Optional, Tuple

#: ``emit(kind, fields)``: write one event of ``kind`` with ``fields``.
Emit = Callable[[str, Dict[str, object]], None]


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
                 seed: int = 0) -> None:
        self.prompt_tokens = prompt_tokens
        self.gen_tokens = gen_tokens
        self.threads = threads
        self.gpu_layers = gpu_layers
        self.repetitions = repetitions
        self.warmup = warmup
        self.ctx_size = ctx_size or (prompt_tokens + gen_tokens + 16)
        self.seed = seed


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
    # Monotonic [t0, t1] windows (time.monotonic(), the clock of events' "mono")
    # over which the runner measures energy; a backend reports what it knows.
    "prefill_window_mono",   # request sent -> first token (xllamacpp)
    "decode_window_mono",    # first token -> last chunk (xllamacpp)
    "decode_window_tokens",  # tokens decoded in decode_window_mono
    "process_window_mono",   # the whole child process (llama-bench)
)

#: Fields the runner adds to a ``repetition`` from the job's telemetry
#: (agents/telemetry/job.py); absent when not measured, with
#: ``energy_unmeasured_reason`` saying why.
TELEMETRY_FIELDS = (
    "energy_prefill_j", "energy_decode_j", "j_per_token", "avg_power_w", "peak_power_w",
    "idle_power_w", "energy_decode_net_j", "energy_source", "energy_method",
    "energy_process_j", "process_s", "energy_unmeasured_reason", "idle_unmeasured_reason",
    "peak_mem_bytes", "peak_mem_scope", "peak_ram_used_bytes", "max_temp_c",
    "max_temp_sensor", "warning", "cooldown_s", "cooldown_temp_c", "cooldown_sensor",
    "cooldown_timed_out", "cooldown_skipped",
)


class Backend(object):
    """Base class: subclasses set ``name`` and implement both methods."""

    name = "base"

    def available(self) -> Tuple[bool, str]:
        """Return ``(True, version)`` or ``(False, reason)`` without side effects."""
        raise NotImplementedError("%s does not implement available()" % type(self).__name__)

    def run(self, model_path: str, params: JobParams, emit: Emit) -> Dict[str, object]:
        """Run warm-ups and repetitions, emitting ``phase`` and ``repetition``.

        Returns facts about the run for the ``result`` event (backend version,
        build info, model load seconds). Raises ``BackendError`` on failure.
        """
        raise NotImplementedError("%s does not implement run()" % type(self).__name__)
