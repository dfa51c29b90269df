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
