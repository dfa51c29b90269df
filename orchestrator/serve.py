"""``edgefarm serve``: the always-on farm service, until stopped (``orchestrator/farm/``).

The loop lives in ``orchestrator.farm.service``; this module is the entry
point for two callers: the ``serve`` command, and ``edgefarm monitor up``,
which starts it detached as ``python -m orchestrator.serve --results-dir DIR
--addr HOST:PORT [--inventory FILE]`` so it does not depend on how (or
whether) the ``edgefarm`` script is installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.exporter import SERVE_ADDR
from orchestrator.farm.health import DEFAULT_INTERVAL_S
from orchestrator.farm.service import serve
from orchestrator.store import DB_NAME

__all__ = ["main", "serve"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m orchestrator.serve`` (what ``monitor up`` spawns)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.serve",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", "-r", type=Path, default=Path("edgefarm-results"))
    parser.add_argument("--addr", default=SERVE_ADDR)
    parser.add_argument("--inventory", "-i", type=Path, default=None)
    parser.add_argument("--health-interval", type=float, default=DEFAULT_INTERVAL_S,
                        help="seconds between two health readings of a device (0: none)")
    args = parser.parse_args(argv)
    serve(args.results_dir, args.addr, inventory=args.inventory,
          health_interval_s=args.health_interval,
          on_ready=lambda url: print(f"serving {args.results_dir / DB_NAME} at {url}",
                                     flush=True),
          on_warning=lambda text: print(f"warning: {text}", file=sys.stderr, flush=True))
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
