"""TEST-ONLY backend: sleeps instead of running a model.

Scheduler and fault tests use it to make jobs of a known length without
llama.cpp. ``auto`` never selects it and its repetitions are flagged
``synthetic: true`` so no report can mistake them for measurements.
The "model" file it is given must exist, like a real backend's.

Behaviour knobs come from the job's ``gen_tokens`` (milliseconds per
repetition = gen_tokens) and the environment variable
``EDGEFARM_SLEEP_FAIL`` (``crash`` exits the process, ``error`` raises a
backend error), which tests use to provoke failures.
"""

import os
import time
from typing import Dict, Tuple

from agents.backends.base import Backend, BackendError, Emit, JobParams
from agents.protocol import ERR_BACKEND


class SleepBackend(Backend):
    """Sleeps ``gen_tokens`` milliseconds per repetition (test-only)."""

    name = "sleep"

    def available(self) -> Tuple[bool, str]:
        return True, "test-only"

    def run(self, model_path: str, params: JobParams, emit: Emit) -> Dict[str, object]:
        fail = os.environ.get("EDGEFARM_SLEEP_FAIL", "")
        if fail == "error":
            raise BackendError(ERR_BACKEND, "sleep backend asked to fail (EDGEFARM_SLEEP_FAIL)")
        total = params.warmup + params.repetitions
        for i in range(total):
            warm = i < params.warmup
            emit("phase", {"phase": "warmup" if warm else "decode"})
            start = time.monotonic()
            time.sleep(params.gen_tokens / 1000.0)
            if fail == "crash" and not warm:
                os._exit(3)
            seconds = time.monotonic() - start
            emit("repetition", {
                "index": i if warm else i - params.warmup,
                "warmup": warm,
                "synthetic": True,
                "prompt_tokens": params.prompt_tokens,
                "gen_tokens": params.gen_tokens,
                "decode_s": seconds,
                "decode_tps": params.gen_tokens / seconds if seconds > 0 else None,
            })
        return {"backend": "sleep", "synthetic": True}
