"""Does the telemetry sampler cost decode speed? Decode tok/s with the sampler at 100 ms vs without.

Two modes, same model and settings on both sides, decode tokens/s from
llama.cpp's own timings:

* ``--mode pairs`` (default): one xllamacpp server in this process, as the
  agent runs it; completions alternate between "on" (the job's telemetry
  running: ``JobTelemetry`` with this machine's sources, sampler thread at
  100 ms, the runner's per-repetition hooks) and "off" (nothing), in pairs
  whose order alternates (off/on, on/off, ...). Bursts of other load on a
  shared machine last seconds, so the two completions of a pair see about the
  same machine: the pairs' ratios are the robust number.
* ``--mode jobs``: whole agent jobs (``python -m agents run JOB_DIR``) with
  ``telemetry: true`` against ``telemetry: false``, alternating rounds; each
  job loads the model, so other load can hit one side's whole job.

Printed: median(on) / median(off), the median of the pairs' ratios (pairs
mode), and the ratio of the fastest completion of each side (other load only
ever slows a side down). Target >= 0.99.

The sampler side reads what this machine offers (``select_sources()``), or a
TEST-ONLY power source with ``--test-source constant:10`` so that energy is
integrated per repetition as well. It also prints the cost of one sampler tick
(all polled sources read and merged), measured on its own.

    .venv/bin/python bench/sampler_overhead.py                       # llama-3.2-1b, Q4_0, pairs
    .venv/bin/python bench/sampler_overhead.py --mode jobs --rounds 4
    .venv/bin/python bench/sampler_overhead.py --preset tiny-dense --gen 512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_job(work: Path, name: str, model: str, args: argparse.Namespace,
            telemetry: bool) -> tuple[list[float], dict]:
    """Decode tok/s of the counted repetitions of one agent job, and the result info."""
    job = work / name
    job.mkdir()
    spec = {"job_key": name, "attempt": 1, "backend": "xllamacpp",
            "model": {"source": {"path": model}},
            "params": {"prompt_tokens": args.prompt, "gen_tokens": args.gen,
                       "threads": args.threads, "gpu_layers": 0, "repetitions": args.reps,
                       "warmup": args.warmup},
            "device": {}, "heartbeat_s": 5.0, "telemetry": telemetry,
            "telemetry_interval_s": args.interval, "idle_s": 1.0}
    if telemetry and args.test_source:
        spec["telemetry_test_source"] = args.test_source
    (job / "job.json").write_text(json.dumps(spec))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    run = subprocess.run([sys.executable, "-m", "agents", "run", "--quiet", str(job)],
                         cwd=REPO, env=env, capture_output=True, text=True, check=False)
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    if run.returncode != 0 or events[-1].get("status") != "ok":
        raise SystemExit(f"job {name} failed:\n{run.stderr[-3000:]}\n{events[-3:]}")
    reps = [e for e in events if e["kind"] == "repetition" and not e["warmup"]]
    info = dict(events[-1]["info"], job_s=events[-1]["mono"] - events[0]["mono"])
    return [r["decode_tps"] for r in reps], info


def pairs(model: str, args: argparse.Namespace) -> None:
    """Alternate completions with and without the job's telemetry in one process."""
    import random

    import xllamacpp

    from agents.backends.base import JobParams
    from agents.backends.xllamacpp_backend import XllamacppBackend, prompt_id_range
    from agents.telemetry.job import JobTelemetry
    from agents.telemetry.sources.fake import make_test_source
    from agents.telemetry.sources.selection import select_sources
    from agents.telemetry.sources.system import SystemSource

    params = JobParams(args.prompt, args.gen, args.threads, 0, 1, 0)
    cparams = xllamacpp.CommonParams()
    cparams.model.path = model
    cparams.n_ctx = params.ctx_size
    cparams.n_batch = max(params.prompt_tokens, 512)
    cparams.n_parallel = 1
    cparams.cpuparams.n_threads = params.threads
    cparams.cpuparams_batch.n_threads = params.threads
    cparams.cache_prompt = False
    cparams.warmup = False
    server = xllamacpp.Server(cparams)
    backend = XllamacppBackend()
    rng = random.Random(0)
    low, high = prompt_id_range(model)
    sink = open(os.devnull, "w")  # noqa: SIM115  (the sample events go nowhere)

    def emit(kind: str, fields: dict) -> None:
        sink.write(json.dumps(fields))

    def completion(telemetry: JobTelemetry | None) -> float:
        prompt = [rng.randrange(low, high) for _ in range(args.prompt)]
        if telemetry is not None:
            telemetry.before("phase", {"phase": "prefill"})
            telemetry.after("phase", {"phase": "prefill"})
        rep = backend._one_completion(server, prompt, params)
        if telemetry is not None:
            rep = telemetry.before("repetition", rep)
            assert "peak_mem_bytes" in rep, rep
        return float(rep["decode_tps"])

    for _ in range(args.warmup):
        completion(None)
    off: list[float] = []
    on: list[float] = []
    ratios: list[float] = []
    cpu = samples = 0.0
    for pair in range(args.pairs):
        got = {}
        for side in (("off", "on") if pair % 2 == 0 else ("on", "off")):
            telemetry = None
            if side == "on":
                if args.test_source:
                    sources = [make_test_source(args.test_source), SystemSource()]
                else:
                    sources = select_sources(interval=args.interval)[0]
                telemetry = JobTelemetry(emit, sources, interval=args.interval, idle_s=0.0,
                                         expected_repetitions=1)
                telemetry.start()
                time.sleep(args.interval)  # the sampler runs before the request, as in a job
            try:
                got[side] = completion(telemetry)
            finally:
                if telemetry is not None:
                    telemetry.stop()
                    cpu += telemetry.sampler.cpu_s or 0.0
                    samples += telemetry.sampler.count
        off.append(got["off"])
        on.append(got["on"])
        ratios.append(got["on"] / got["off"])
        print(f"pair {pair + 1:2d}: off {got['off']:7.2f}  on {got['on']:7.2f} tok/s  "
              f"on/off {ratios[-1]:.3f}")
    m_off, m_on = statistics.median(off), statistics.median(on)
    print(f"sampler thread: {samples:.0f} samples, {cpu * 1000:.1f} ms CPU in all "
          f"({cpu / samples * 1e6:.0f} us a sample)")
    print(f"decode tok/s  sampler off: {m_off:.2f} (n={len(off)})   "
          f"sampler on: {m_on:.2f} (n={len(on)})")
    print(f"ratio on/off = {m_on / m_off:.3f}   median of pair ratios = "
          f"{statistics.median(ratios):.3f}   (target >= 0.99)")
    print(f"ratio of the fastest completions on/off = {max(on) / max(off):.3f}   "
          f"(off {max(off):.2f}, on {max(on):.2f} tok/s)")


def tick_cost(n: int = 2000) -> tuple[float, list[str]]:
    """Seconds of one sampler tick over the sources this machine offers."""
    from agents.telemetry.sampler import Sampler
    from agents.telemetry.sources.selection import select_sources

    sources, _missing = select_sources()
    sampler = Sampler(sources, interval=0.1)
    for source in sources:
        source.start()
    try:
        sampler.sample_now()
        start = time.perf_counter()
        for _ in range(n):
            sampler.sample_now()
        return (time.perf_counter() - start) / n, [s.name for s in sources]
    finally:
        for source in sources:
            source.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--quant", default="Q4_0")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--mode", choices=("pairs", "jobs"), default="pairs")
    ap.add_argument("--pairs", type=int, default=30, help="pairs mode: on/off pairs")
    ap.add_argument("--rounds", type=int, default=3, help="jobs mode: rounds")
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--test-source", help="TEST-ONLY power source for the sampler side, "
                    "e.g. constant:10 (default: this machine's real sources)")
    args = ap.parse_args()

    from agents.models.synth import cached_model

    per_tick, names = tick_cost()
    print(f"sampler sources here: {', '.join(names)}; one tick costs {per_tick * 1e6:.1f} us "
          f"({per_tick / args.interval * 100:.3f}% of one core at {args.interval * 1000:.0f} ms)")
    with tempfile.TemporaryDirectory(prefix="edgefarm-sampler-bench-") as tmp:
        work = Path(tmp)
        model = cached_model(str(work / "models"), args.preset, args.quant)
        size = os.path.getsize(model) / 2**20
        shape = (f"{args.pairs} pairs" if args.mode == "pairs"
                 else f"{args.reps} reps x {args.rounds} rounds")
        print(f"model: {args.preset} {args.quant} ({size:,.0f} MiB), prompt {args.prompt}, "
              f"gen {args.gen}, threads {args.threads}, {args.mode}: {shape}, "
              f"sampler every {args.interval * 1000:.0f} ms"
              + (f", test source {args.test_source}" if args.test_source else ""))
        if args.mode == "pairs":
            pairs(model, args)
            return
        off: list[float] = []
        on: list[float] = []
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            got: dict[bool, list[float]] = {}
            for telemetry in order:
                tps, info = run_job(work, f"r{r}-{'on' if telemetry else 'off'}", model, args,
                                    telemetry)
                got[telemetry] = tps
                if telemetry:
                    t = info["telemetry"]
                    energy = info["energy"]
                    how = ("measured: " + energy["source"]) if energy["measured"] \
                        else "not measured"
                    note = (f"samples {t['samples']}, sample events {t['sample_events']}, "
                            f"sampler thread CPU {t['sampler_cpu_s'] * 1000:.1f} ms in "
                            f"{info['job_s']:.1f} s = "
                            f"{t['sampler_cpu_s'] / info['job_s'] * 100:.3f}%, "
                            f"energy {how}")
            print(f"round {r + 1} ({'off, on' if order[0] is False else 'on, off'}): "
                  f"off median {statistics.median(got[False]):8.2f} tok/s   "
                  f"on median {statistics.median(got[True]):8.2f} tok/s   ({note})")
            off += got[False]
            on += got[True]
        m_off, m_on = statistics.median(off), statistics.median(on)
        print(f"decode tok/s  sampler off: {m_off:.2f} (n={len(off)})   "
              f"sampler on: {m_on:.2f} (n={len(on)})")
        print(f"ratio on/off = {m_on / m_off:.3f}   (target >= 0.99)")
        # Other processes on a shared machine only ever slow a job down, so the
        # fastest repetition of each side is the least disturbed estimate.
        print(f"ratio of the fastest repetitions on/off = {max(on) / max(off):.3f}   "
              f"(off {max(off):.2f}, on {max(on):.2f} tok/s)")


if __name__ == "__main__":
    main()
