"""TEST-ONLY backend: sleeps instead of running a model.

Scheduler and fault tests use it to make jobs of a known length without
llama.cpp. ``auto`` never selects it and its repetitions are flagged
``synthetic: true`` so no report can mistake them for measurements.
The "model" file it is given must exist, like a real backend's.

Behaviour knobs come from the job's ``gen_tokens`` (milliseconds per
repetition = gen_tokens, times a ``sleep-scale=X`` the stand-in file may
name; ``sleep-load=S`` there makes every open take S seconds, a load) and
the environment variable
``EDGEFARM_SLEEP_FAIL`` (``crash`` exits the process, ``error`` raises a
backend error), which tests use to provoke failures.
"""

import os
import time
from typing import Dict, Tuple

from agents.backends.base import Backend, BackendError, Emit, JobParams, Session
from agents.protocol import ERR_BACKEND


class SleepSession(Session):
    """A "loaded model" that sleeps ``gen_tokens`` ms per repetition (test-only)."""

    def __init__(self, params: JobParams, scale: float) -> None:
        self.params = params
        self.scale = scale
        self.fail = os.environ.get("EDGEFARM_SLEEP_FAIL", "")

    def repetition(self, index: int, warmup: bool, emit: Emit) -> Dict[str, object]:
        emit("phase", {"phase": "warmup" if warmup else "decode"})
        start = time.monotonic()
        time.sleep(self.params.gen_tokens * self.scale / 1000.0)
        if self.fail == "crash" and not warmup:
            os._exit(3)
        seconds = time.monotonic() - start
        return {
            "index": index,
            "warmup": warmup,
            "synthetic": True,
            "prompt_tokens": self.params.prompt_tokens,
            "gen_tokens": self.params.gen_tokens,
            "decode_s": seconds,
            "decode_tps": self.params.gen_tokens / seconds if seconds > 0 else None,
        }

    def info(self) -> Dict[str, object]:
        return {"backend": "sleep", "synthetic": True}


class SleepBackend(Backend):
    """Sleeps ``gen_tokens`` milliseconds per repetition (test-only)."""

    name = "sleep"
    supports_sessions = True

    def available(self) -> Tuple[bool, str]:
        return True, "test-only"

    def open(self, model_path: str, params: JobParams, emit: Emit) -> Session:
        if os.environ.get("EDGEFARM_SLEEP_FAIL", "") == "error":
            raise BackendError(ERR_BACKEND, "sleep backend asked to fail (EDGEFARM_SLEEP_FAIL)")
        load_s = _knob(model_path, "sleep-load", 0.0)
        if load_s > 0:  # a stand-in's load cost (repetitions_per_round: auto tests)
            emit("phase", {"phase": "load"})
            time.sleep(load_s)
        return SleepSession(params, _scale(model_path))


def _scale(model_path: str) -> float:
    """The stand-in's ``sleep-scale`` (1.0 when it names none)."""
    return _knob(model_path, "sleep-scale", 1.0)


def _knob(model_path: str, name: str, default: float) -> float:
    """A number the stand-in file names in its first line, e.g. ``sleep-scale=1.3`` (tests).

    Lets a test give two "models" different, known speeds (and load costs),
    so paired rounds and ratios can be checked end to end without llama.cpp.
    """
    try:
        with open(model_path, "rb") as handle:
            head = handle.read(200).decode("ascii", "replace")
    except OSError:
        return default
    for word in head.split():
        if word.startswith(name + "="):
            try:
                return max(0.0, float(word.split("=", 1)[1]))
            except ValueError:
                return default
    return default
