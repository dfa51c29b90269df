"""``python -m orchestrator.dashboards --write | --check [--out DIR]``.

Kept free of typer and rich so regenerating the JSON needs nothing but the
package itself; ``edgefarm dashboards write`` does the same through the CLI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.dashboards import DEFAULT_OUT_DIR, check, write


def main(argv: list[str] | None = None) -> int:
    """Write or check the generated dashboards; exit 1 when ``--check`` finds drift."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.dashboards",
                                     description="Render edgefarm's Grafana dashboards.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write the JSON files")
    action.add_argument("--check", action="store_true",
                        help="exit 1 if the files differ from what the code generates")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR,
                        help=f"output directory (default: {DEFAULT_OUT_DIR})")
    args = parser.parse_args(argv)
    if args.write:
        for path in write(args.out):
            print(f"wrote {path}")
        return 0
    problems = check(args.out)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("run: python -m orchestrator.dashboards --write", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
