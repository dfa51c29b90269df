"""Is the verdict stable? The same MoE-vs-dense sweep three times, once under load.

Runs ``sweeps/verdict-stability.yaml`` (the seed shapes of
``sweeps/seed-shapes-local.yaml``: OLMoE-1B-7B against Llama-3.2-1B and
OLMo-1B, Q4_0, CPU, llama.cpp's defaults; with adaptive paired rounds) through
the real CLI on this machine, ``--runs`` times (``--sweep
sweeps/verdict-stability-norepack.yaml`` is the CPU-repacking-off variant of
benches 3-5). During the run numbered ``--loaded-run`` the bench itself starts
a bounded background CPU load: one busy process switched on and off in bursts
(``--burst ON:OFF`` seconds), stopped when the run ends or after ``--load-cap``
seconds, whichever comes first.

Per run and pair it prints the decode ratio, its 95% interval and half-width,
the verdict, and how many rounds were run, kept and excluded (and why). Then
the targets of issue 9:

* the verdicts agree (all the same direction, or all "no significant difference");
* the intervals overlap;
* every half-width is at most ``--max-half-width`` percent (3);
* the loaded run reports excluded rounds.

    .venv/bin/python bench/verdict_stability.py            # ~60-90 min on 2 cores
    .venv/bin/python bench/verdict_stability.py --runs 3 --loaded-run 2 --burst 8:90

The bursts are spaced so that clean rounds remain between them: a round is
three fresh model loads, a short warm-up and a counted repetition each (about
two minutes with repacking on, ~40 s with it off).

The models are synthesized once into the local device's models dir (~5 GB).
Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.report import build_report  # noqa: E402
from orchestrator.store import Store  # noqa: E402


class BurstLoad:
    """One busy process, running ``on`` seconds then paused ``off`` seconds, bounded."""

    def __init__(self, on_s: float, off_s: float, cap_s: float) -> None:
        self.on_s, self.off_s, self.cap_s = on_s, off_s, cap_s
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stop = threading.Event()
        self.busy_s = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set() and time.monotonic() - started < self.cap_s:
            os.kill(self.proc.pid, signal.SIGCONT)
            t0 = time.monotonic()
            self.stop.wait(self.on_s)
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.busy_s += time.monotonic() - t0
            self.stop.wait(self.off_s)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.proc.kill()
        self.proc.wait()


@dataclass
class PairResult:
    run: int
    loaded: bool
    pair: str
    ratio: float | None
    low: float | None
    high: float | None
    half_width_pct: float | None
    kind: str
    verdict: str
    significant: bool | None
    excluded: dict[str, int]
    rounds_run: int | None
    stop_reason: str | None


def run_once(run: int, sweep: Path, inventory: Path, results: Path, loaded: bool,
             burst: tuple[float, float], cap_s: float) -> list[PairResult]:
    load = BurstLoad(burst[0], burst[1], cap_s) if loaded else None
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli.main", "sweep", "run", str(sweep), "-i",
             str(inventory), "-r", str(results), "--metrics-addr", "off", "--no-report"],
            cwd=REPO, capture_output=True, text=True, check=False,
            env=dict(os.environ, COLUMNS="120"))
    finally:
        if load is not None:
            load.close()
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"run {run} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    sweep_id = proc.stdout.splitlines()[0].split()[1]
    store = Store(results)
    report = build_report(store, sweep_id)
    rounds: dict[str, Any] = {}
    for row in store.jobs(sweep_id):
        result = json.loads(row["result_json"] or "{}")
        rounds[row["key"]] = result.get("rounds", {})
    summary = next(iter(rounds.values()), {})
    out = []
    for comp in report["comparisons"]:
        est = comp.get("decode_estimate") or {}
        out.append(PairResult(
            run=run, loaded=loaded, pair=f"{comp['moe']['model_id']} vs "
                                         f"{comp['dense']['model_id']}",
            ratio=comp.get("decode_ratio"), low=est.get("low"), high=est.get("high"),
            half_width_pct=est.get("half_width_pct"), kind=est.get("kind", "none"),
            verdict=comp["verdict"], significant=comp.get("significant"),
            excluded=dict(comp.get("excluded") or {}), rounds_run=summary.get("rounds_run"),
            stop_reason=summary.get("stop_reason")))
    under = f" (background load: {load.busy_s:.0f} s busy)" if load else ""
    print(f"\nrun {run}{under}: sweep {sweep_id}, {wall:.0f} s; "
          f"rounds {summary.get('rounds_run')}, stop: {summary.get('stop_reason')}; "
          f"excluded rounds: {summary.get('excluded_rounds') or 'none'}")
    for r in out:
        interval = "n/a" if r.low is None else f"{r.low:.4f}-{r.high:.4f} ({r.kind})"
        hw = "n/a" if r.half_width_pct is None else f"±{r.half_width_pct:.2f}%"
        print(f"  {r.pair}: ratio {r.ratio:.4f}  interval {interval}  half-width {hw}"
              if r.ratio is not None else f"  {r.pair}: no ratio")
        print(f"    {r.verdict}; excluded {r.excluded or 'none'}")
    return out


def check(results: list[PairResult], max_half_width: float) -> bool:
    ok = True
    print("\ntargets")
    for pair in sorted({r.pair for r in results}):
        mine = [r for r in results if r.pair == pair]
        directions = {("behind" if "behind" in r.verdict else "ahead")
                      if r.significant else "no significant difference" for r in mine}
        agree = len(directions) == 1
        lows = [r.low for r in mine if r.low is not None]
        highs = [r.high for r in mine if r.high is not None]
        overlap = bool(lows) and len(lows) == len(mine) and max(lows) <= min(highs)
        widths = [r.half_width_pct for r in mine]
        narrow = all(w is not None and w <= max_half_width for w in widths)
        print(f"  {pair}: verdicts agree: {agree} {sorted(directions)}; intervals overlap: "
              f"{overlap}; half-widths <= {max_half_width:g}%: {narrow} "
              f"({', '.join('n/a' if w is None else f'{w:.2f}%' for w in widths)})")
        ok = ok and agree and overlap and narrow
    loaded = [r for r in results if r.loaded]
    reported = any(r.excluded for r in loaded)
    print(f"  loaded run reports excluded rounds: {reported} "
          f"({loaded[0].excluded if loaded else 'no loaded run'})")
    return ok and reported


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "verdict-stability.yaml")
    ap.add_argument("--inventory", type=Path, default=REPO / "inventory" / "local.yaml")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loaded-run", type=int, default=2, help="1-based; 0: none")
    ap.add_argument("--burst", default="8:90",
                    help="busy:idle seconds of the background load (one busy process)")
    ap.add_argument("--load-cap", type=float, default=1800.0,
                    help="stop the background load after this many seconds in any case")
    ap.add_argument("--max-half-width", type=float, default=3.0)
    ap.add_argument("--results", type=Path, default=None,
                    help="results dir (default: a new temporary one)")
    args = ap.parse_args()
    on, off = (float(x) for x in args.burst.split(":"))
    results = args.results or Path(tempfile.mkdtemp(prefix="edgefarm-verdict-"))
    print(f"sweep {args.sweep}, {args.runs} runs, background load in run {args.loaded_run} "
          f"({on:g} s busy / {off:g} s idle, one process), results {results}")
    all_results: list[PairResult] = []
    for run in range(1, args.runs + 1):
        all_results += run_once(run, args.sweep, args.inventory, results,
                                run == args.loaded_run, (on, off), args.load_cap)
    ok = check(all_results, args.max_half_width)
    print("\nall targets met" if ok else "\nsome targets NOT met")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
