"""Command line of the device agent: ``python3 agent.pyz probe|run|start|follow|...``.

Kept to argparse so it runs on any Python 3.8+ with nothing installed.
"""

import argparse
import json
import os
import sys
from typing import List, Optional

import agents
from agents import __version__
from agents.protocol import LEASE_ACTIONS

#: Suffix of the unpacked copy of a zipapp (``agent-<sha>.pyz`` -> ``agent-<sha>.pyz.d``).
UNPACKED_SUFFIX = ".d"


def _zipapp_path() -> Optional[str]:
    """The agent zipapp this process was started from, or None (run from a source tree)."""
    archive = getattr(getattr(agents, "__loader__", None), "archive", None)
    if isinstance(archive, str) and archive.endswith(".pyz"):
        return os.path.abspath(archive)
    return None


def use_unpacked_copy() -> Optional[str]:
    """Import the rest of the agent from an unpacked copy of its zipapp; return its path.

    Python compiles a module imported from a zip archive afresh on every start
    and never keeps the bytecode: for ``start`` that was most of the agent's
    start-up (about 70 ms of ~130 ms on a desktop core, more on a small
    board), paid by every job. So the package is unpacked once next to the
    zipapp, as ``agent-<sha>.pyz.d`` (the archive's name carries its content
    hash, so the copy never goes stale), built under a temporary name and
    renamed into place whole; imports after this one come from it and Python
    caches their ``.pyc`` files there. Where that cannot be done (a read-only
    directory) the agent simply keeps running from the zip.
    """
    archive = _zipapp_path()
    if archive is None:
        return None
    unpacked = archive + UNPACKED_SUFFIX
    package = os.path.join(unpacked, "agents")
    if not os.path.isdir(package):
        try:
            _unpack(archive, unpacked)
        except Exception:  # read-only, full, whatever: the zip still works
            pass
        if not os.path.isdir(package):  # (if another start won the race, its copy serves)
            return None
    agents.__path__ = [package]
    return unpacked


def verify_agent() -> Optional[str]:
    """Check the agent's own content before it does anything; return why it must not run.

    A zipapp's name carries the sha256 of its bytes (``agent-<sha256[:16]>.pyz``)
    and the controller checks that hash once, at upload: afterwards a changed
    byte in the zip, an edited module in its unpacked copy or another zip put
    under the same name would all run and store results. So every command
    from a zipapp first (a) hashes the zip's own bytes against its name — a
    mismatch is refused (``EXIT_AGENT_CORRUPT``: the controller removes the
    file and uploads it again) — and (b) hashes every file of the unpacked
    copy against the manifest inside the (now verified) zip; a copy that
    differs is discarded, and unpacked afresh from the zip. Measured cost of
    ``agent start`` on a tiny job (40 runs, a shared desktop core): fastest
    106.9 -> 111.8 ms, median 114 -> 118 ms; the hashing itself is under 1 ms,
    most of the rest is importing ``hashlib`` (~2.6 ms). None: run on.
    """
    archive = _zipapp_path()
    if archive is None:
        return None
    import hashlib

    name = os.path.basename(archive)
    want = name[len("agent-"):-len(".pyz")] if name.startswith("agent-") else ""
    with open(archive, "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    if not want or not got.startswith(want):
        return "%s: its bytes hash to sha256 %s, not to the %r its name says" % (
            archive, got[:16], want)
    unpacked = archive + UNPACKED_SUFFIX
    if os.path.isdir(unpacked):
        bad = _unpacked_mismatch(archive, unpacked)
        if bad is not None:
            sys.stderr.write("edgefarm-agent: the unpacked copy %s differs from the zipapp "
                             "(%s); discarded, unpacked again\n" % (unpacked, bad))
            _discard(unpacked)
    return None


def _unpacked_mismatch(archive: str, unpacked: str) -> Optional[str]:
    """The first file of ``unpacked`` that differs from the zipapp's manifest, or None."""
    import hashlib

    from agents.protocol import MANIFEST_FILE

    loader = getattr(agents, "__loader__", None)
    try:
        manifest = json.loads(loader.get_data("agents/" + MANIFEST_FILE))  # type: ignore
    except Exception:  # an older bundle without a manifest: nothing to compare
        return None
    seen = set()
    for root, dirs, names in os.walk(os.path.join(unpacked, "agents")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), unpacked).replace(os.sep, "/")
            seen.add(rel)
            if rel.endswith(".py") and rel not in manifest:
                return "%s is not part of the agent" % rel
    for rel, digest in manifest.items():
        if rel not in seen:
            return "%s is missing" % rel
        with open(os.path.join(unpacked, rel), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != digest:
                return "%s was changed" % rel
    return None


def _discard(unpacked: str) -> None:
    """Move the copy aside (atomic: no start imports half of it), then delete it."""
    import shutil

    stale = "%s.%d.stale" % (unpacked, os.getpid())
    try:
        os.rename(unpacked, stale)
    except OSError:
        return  # another start moved it first
    shutil.rmtree(stale, ignore_errors=True)


def _unpack(archive: str, unpacked: str) -> None:
    import shutil
    import zipfile

    part = "%s.%d.part" % (unpacked, os.getpid())
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(part, [n for n in zf.namelist() if n.startswith("agents/")])
        os.rename(part, unpacked)  # fails if another start renamed its copy first
    finally:
        shutil.rmtree(part, ignore_errors=True)


def _prepare() -> int:
    """Unpack the zipapp and compile every module, so that no job start compiles any."""
    import compileall

    unpacked = use_unpacked_copy()
    if unpacked is None:
        _print({"unpacked": None})
        return 0
    import py_compile

    # Hash-checked bytecode: a .pyc that no longer matches its (verified) source is
    # recompiled, so a swapped .pyc cannot bring in code the manifest does not cover.
    ok = compileall.compile_dir(unpacked, quiet=2,
                                invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    _print({"unpacked": unpacked, "compiled": bool(ok)})
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    corrupt = verify_agent()
    if corrupt is not None:
        from agents.protocol import EXIT_AGENT_CORRUPT

        sys.stderr.write("edgefarm-agent: refusing to run a corrupt agent: %s\n" % corrupt)
        return _exit_now(EXIT_AGENT_CORRUPT)
    use_unpacked_copy()
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["routing"]:  # its own parser: agents/routing_share.py
        from agents.routing_share import main as routing_main

        return routing_main(args_in[1:])
    parser = argparse.ArgumentParser(prog="edgefarm-agent",
                                     description="edgefarm device agent (standard library only)")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command")
    p_probe = sub.add_parser("probe", help="print device facts as JSON")
    p_probe.add_argument("--llama-bench", default=None, help="path of a llama-bench binary")
    p_probe.add_argument("--bandwidth", action="store_true",
                         help="also measure memory bandwidth (copies 2 x 256 MiB; ~1-3 s)")
    p_health = sub.add_parser("health", help="sample this device's telemetry for a moment and "
                                            "print the newest reading as JSON (farm service)")
    p_health.add_argument("--work-dir", default="~/.cache/edgefarm",
                          help="the agent's work dir (where the device lease lives)")
    p_health.add_argument("--seconds", type=float, default=2.0)
    p_health.add_argument("--platform", default=None, help="the inventory's platform hint")
    p_run = sub.add_parser("run", help="run the job in JOB_DIR (reads JOB_DIR/job.json)")
    p_run.add_argument("job_dir")
    p_run.add_argument("--quiet", action="store_true",
                       help="write events only to JOB_DIR/events.jsonl, not also to stdout")
    p_start = sub.add_parser("start", help="start the job in JOB_DIR detached (spec on stdin)")
    p_start.add_argument("job_dir")
    p_start.add_argument("--follow", action="store_true",
                         help="then stream the job's events to stdout until it ends")
    p_start.add_argument("--lease-owner", default=None,
                         help="first take the device lease for this owner (see lease); if "
                              "another controller holds it, start nothing and exit 4")
    p_start.add_argument("--lease-work-dir", default=None)
    p_start.add_argument("--lease-ttl", type=float, default=120.0)
    p_follow = sub.add_parser("follow", help="stream JOB_DIR's events from a byte offset")
    p_follow.add_argument("job_dir")
    p_follow.add_argument("--offset", type=int, default=0)
    p_status = sub.add_parser("status", help="print JOB_DIR's state as JSON")
    p_status.add_argument("job_dir")
    p_cancel = sub.add_parser("cancel", help="stop JOB_DIR's process group")
    p_cancel.add_argument("job_dir")
    p_lease = sub.add_parser("lease", help="acquire, refresh or release the device lease")
    p_lease.add_argument("action", choices=LEASE_ACTIONS)
    p_lease.add_argument("--work-dir", required=True)
    p_lease.add_argument("--owner", required=True)
    p_lease.add_argument("--ttl", type=float, default=120.0)
    sub.add_parser("version", help="print the agent and protocol versions as JSON")
    sub.add_parser("worker", help="hold one model for a job's paired rounds (JSON lines on "
                                  "stdin/stdout; started by the runner)")
    sub.add_parser("prepare", help="unpack this zipapp next to itself and compile it "
                                   "(later starts skip compiling the agent)")
    sub.add_parser("routing", add_help=False,
                               help="measure a MoE model's routing share of MoE-block time "
                                    "(agents/routing_share.py; `routing --help` for its options)")
    p_synth = sub.add_parser("synth", help="write a random-weight GGUF with a preset's shapes")
    p_synth.add_argument("preset")
    p_synth.add_argument("--quant", default="Q4_0")
    p_synth.add_argument("--seed", type=int, default=0)
    p_synth.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.command == "probe":
        from agents.probe import facts

        found = facts(args.llama_bench)
        if args.bandwidth:
            from agents.bandwidth import measure

            found["memory_bandwidth"] = measure()
        json.dump(found, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    if args.command == "health":
        from agents.health import health

        _print(health(args.work_dir, args.seconds, args.platform))
        return 0
    if args.command == "run":
        from agents.runner import run_job

        return run_job(args.job_dir, echo=not args.quiet)
    if args.command in ("start", "follow", "status", "cancel", "lease"):
        return _jobctl(args)
    if args.command == "worker":
        from agents.model_worker import main as worker_main

        return worker_main()
    if args.command == "version":
        from agents.protocol import PROTOCOL_VERSION

        _print({"agent": __version__, "protocol": PROTOCOL_VERSION})
        return 0
    if args.command == "prepare":
        return _prepare()
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


def _exit_now(code: int) -> int:
    """End a job-control command at once, without the interpreter's shutdown.

    Tearing down ~150 modules (``start`` has imported the runner) and a final
    garbage collection cost ~15 ms of CPU per job; the output is flushed and
    nothing else is left to do (the runner is detached, its own process). From
    a source tree (tests calling ``main``) it just returns.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if _zipapp_path() is not None:
        os._exit(code)
    return code


def _jobctl(args: argparse.Namespace) -> int:
    from agents import jobctl
    from agents.protocol import EXIT_LEASE_REFUSED

    if args.command == "start":
        spec = sys.stdin.read()
        answer: Optional[object] = None
        if args.lease_owner:
            if not args.lease_work_dir:
                sys.stderr.write("edgefarm-agent: --lease-owner needs --lease-work-dir\n")
                return 2
            code, answer = jobctl.lease("acquire", os.path.expanduser(args.lease_work_dir),
                                        args.lease_owner, args.lease_ttl)
            if code != 0:
                _print({"lease": answer})
                return _exit_now(EXIT_LEASE_REFUSED)
            if args.follow:  # the header line; the log's own bytes follow it
                _print({"lease": answer})
        pid = jobctl.start(os.path.expanduser(args.job_dir), spec)
        if not args.follow:
            _print({"started": pid} if answer is None else {"started": pid, "lease": answer})
            return _exit_now(0)
        return _exit_now(jobctl.follow(os.path.expanduser(args.job_dir), 0))
    if args.command == "follow":
        return _exit_now(jobctl.follow(os.path.expanduser(args.job_dir), args.offset))
    if args.command == "status":
        _print(jobctl.status(os.path.expanduser(args.job_dir)))
        return _exit_now(0)
    if args.command == "cancel":
        _print(jobctl.cancel(os.path.expanduser(args.job_dir)))
        return _exit_now(0)
    code, answer = jobctl.lease(args.action, os.path.expanduser(args.work_dir), args.owner,
                                args.ttl)
    _print(answer)
    return _exit_now(code)
