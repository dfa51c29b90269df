"""``edgefarm serve``: the last finished sweep's metrics from the results store, until stopped.

The loop lives here, not in the CLI, for two callers: the ``serve`` command,
and ``edgefarm monitor up``, which starts it detached as
``python -m orchestrator.serve --results-dir DIR --addr HOST:PORT`` so it
does not depend on how (or whether) the ``edgefarm`` script is installed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from orchestrator.exporter import (
    SERVE_ADDR,
    exporter_url,
    parse_addr,
    serve_registry,
    start_exporter,
    stop_exporter,
)
from orchestrator.store import DB_NAME

__all__ = ["main", "serve"]


def serve(results_dir: Path, addr: str = SERVE_ADDR, *,
          on_ready: Callable[[str], None] | None = None,
          on_warning: Callable[[str], None] | None = None,
          stop: threading.Event | None = None) -> None:
    """Serve ``results_dir``'s store at ``addr`` until SIGTERM, Ctrl-C or ``stop`` is set.

    A missing store is a warning, not an error: ``monitor up`` may start this
    before the first sweep, and the collector reads the store at each scrape,
    so metrics appear once a sweep has finished there. Raises ExporterError
    (AddressError for a malformed address) before serving anything.
    """
    parse_addr(addr)  # a malformed address is refused before anything else is said
    if on_warning is not None and not (Path(results_dir) / DB_NAME).exists():
        on_warning(f"no results store in {results_dir} yet; metrics appear once a sweep has "
                   "finished there")
    server, thread = start_exporter(addr, registry=serve_registry(results_dir))
    if on_ready is not None:
        on_ready(exporter_url(server))
    done = stop or threading.Event()
    # ``monitor down`` sends SIGTERM: stop as cleanly as on Ctrl-C. Signals
    # can only be set from the main thread; elsewhere ``stop`` is the way.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: done.set()) if main_thread else None
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        stop_exporter(server, thread)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m orchestrator.serve`` (what ``monitor up`` spawns)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.serve",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", "-r", type=Path, default=Path("edgefarm-results"))
    parser.add_argument("--addr", default=SERVE_ADDR)
    args = parser.parse_args(argv)
    serve(args.results_dir, args.addr,
          on_ready=lambda url: print(f"serving {args.results_dir / DB_NAME} at {url}",
                                     flush=True),
          on_warning=lambda text: print(f"warning: {text}", file=sys.stderr, flush=True))
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
