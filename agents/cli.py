"""Command line of the device agent: ``python3 agent.pyz probe|run|start|follow|...``.

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
    p_run.add_argument("--quiet", action="store_true",
                       help="write events only to JOB_DIR/events.jsonl, not also to stdout")
    p_start = sub.add_parser("start", help="start the job in JOB_DIR detached (spec on stdin)")
    p_start.add_argument("job_dir")
    p_start.add_argument("--follow", action="store_true",
                         help="then stream the job's events to stdout until it ends")
    p_follow = sub.add_parser("follow", help="stream JOB_DIR's events from a byte offset")
    p_follow.add_argument("job_dir")
    p_follow.add_argument("--offset", type=int, default=0)
    p_status = sub.add_parser("status", help="print JOB_DIR's state as JSON")
    p_status.add_argument("job_dir")
    p_cancel = sub.add_parser("cancel", help="stop JOB_DIR's process group")
    p_cancel.add_argument("job_dir")
    p_lease = sub.add_parser("lease", help="acquire, refresh or release the device lease")
    p_lease.add_argument("action", choices=("acquire", "refresh", "release", "takeover"))
    p_lease.add_argument("--work-dir", required=True)
    p_lease.add_argument("--owner", required=True)
    p_lease.add_argument("--ttl", type=float, default=120.0)
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

        return run_job(args.job_dir, echo=not args.quiet)
    if args.command in ("start", "follow", "status", "cancel", "lease"):
        return _jobctl(args)
    if args.command == "synth":
        from agents.models.synth import synthesize

        info = synthesize(args.preset, args.quant, args.out, seed=args.seed)
        json.dump(info, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    parser.print_help()
    return 2


def _print(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def _jobctl(args: argparse.Namespace) -> int:
    import os

    from agents import jobctl

    if args.command == "start":
        pid = jobctl.start(os.path.expanduser(args.job_dir), sys.stdin.read())
        if not args.follow:
            _print({"started": pid})
            return 0
        return jobctl.follow(os.path.expanduser(args.job_dir), 0)
    if args.command == "follow":
        return jobctl.follow(os.path.expanduser(args.job_dir), args.offset)
    if args.command == "status":
        _print(jobctl.status(os.path.expanduser(args.job_dir)))
        return 0
    if args.command == "cancel":
        _print(jobctl.cancel(os.path.expanduser(args.job_dir)))
        return 0
    code, answer = jobctl.lease(args.action, os.path.expanduser(args.work_dir), args.owner,
                                args.ttl)
    _print(answer)
    return code
