"""Command line of the device agent: ``python3 agent.pyz probe|run|synth``.

Kept to argparse so it runs on any Python 3.8+ with nothing installed.
"""

import argparse
import json
import sys
from typing import List, Optional

from agents import __version__


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="edgefarm-agent",
                                     description="edgefarm device agent (standard library only)")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command")
    p_probe = sub.add_parser("probe", help="print device facts as JSON")
    p_probe.add_argument("--llama-bench", default=None, help="path of a llama-bench binary")
    p_run = sub.add_parser("run", help="run the job in JOB_DIR (reads JOB_DIR/job.json)")
    p_run.add_argument("job_dir")
    p_run.add_argument("--echo", action="store_true", help="also write events to stdout")
    p_synth = sub.add_parser("synth", help="write a random-weight GGUF with a preset's shapes")
    p_synth.add_argument("preset")
    p_synth.add_argument("--quant", default="Q4_0")
    p_synth.add_argument("--seed", type=int, default=0)
    p_synth.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.command == "probe":
        from agents.probe import facts

        json.dump(facts(args.llama_bench), sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    if args.command == "run":
        from agents.runner import run_job

        return run_job(args.job_dir, echo=args.echo)
    if args.command == "synth":
        from agents.models.synth import synthesize

        info = synthesize(args.preset, args.quant, args.out, seed=args.seed)
        json.dump(info, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    parser.print_help()
    return 2
