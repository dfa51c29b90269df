"""Inference backends, found by name.

``auto`` picks the inventory's llama-bench binary when one is named, else the
in-process xllamacpp bindings. ``sleep`` is a test-only backend for scheduler
tests: it measures nothing and is never chosen by ``auto``.
"""

from typing import Optional

from agents.backends.base import Backend, BackendError
from agents.protocol import ERR_BACKEND_MISSING, ERR_BAD_JOB

KNOWN = ("auto", "xllamacpp", "llama-bench", "sleep")


def get_backend(name: str, llama_bench: Optional[str] = None) -> Backend:
    """Return the backend called ``name``; modules are imported only when chosen."""
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
    if name == "sleep":
        from agents.backends.sleep_backend import SleepBackend

        return SleepBackend()
    raise BackendError(ERR_BAD_JOB, "unknown backend %r (known: %s)" % (name, ", ".join(KNOWN)))
