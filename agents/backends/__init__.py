"""Inference backends, found by name.

``auto`` picks the inventory's llama-bench binary when one is named, else the
in-process xllamacpp bindings. ``torch`` runs the model in PyTorch through
transformers (cpu, cuda or mps); it is never chosen by ``auto``, and torch is
imported only when a job names it. ``sleep`` is a test-only backend for
scheduler tests: it measures nothing and is never chosen by ``auto``.
"""

from typing import Optional

from agents.backends.base import Backend, BackendError
from agents.protocol import ERR_BACKEND_MISSING, ERR_BAD_JOB

KNOWN = ("auto", "xllamacpp", "llama-bench", "torch", "sleep")


def get_backend(name: str, llama_bench: Optional[str] = None,
                torch_device: str = "cpu") -> Backend:
    """Return the backend called ``name``; modules are imported only when chosen.

    ``torch_device``: where backend torch runs the model (its ``cpu_in_process``
    follows: only a cpu model's threads are this process's inference).
    """
    if name == "auto":
        name = "llama-bench" if llama_bench else "xllamacpp"
    if name == "xllamacpp":
        from agents.backends.xllamacpp_backend import XllamacppBackend

        return XllamacppBackend()
    if name == "llama-bench":
        if not llama_bench:
            raise BackendError(ERR_BACKEND_MISSING,
                               "backend llama-bench needs the device's llama_bench path "
                               "in the inventory")
        from agents.backends.llama_bench import LlamaBenchBackend

        return LlamaBenchBackend(llama_bench)
    if name == "torch":
        from agents.backends.torch_backend import TorchBackend

        return TorchBackend(torch_device)
    if name == "sleep":
        from agents.backends.sleep_backend import SleepBackend

        return SleepBackend()
    raise BackendError(ERR_BAD_JOB, "unknown backend %r (known: %s)" % (name, ", ".join(KNOWN)))
