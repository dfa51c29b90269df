"""How much telemetry can the controller absorb, and how long does a scrape take?

Generates realistic ``sample`` events (the agent's JSON shape: rails in W,
total, RAM in MB, temperatures) for N devices of mixed platforms, in the
batches the driver receives them (one batch per device per gateway poll), and
feeds them through the driver's own code path, timed side by side in one run:

* store, generic path: ``Store.add_events`` + ``Store.add_samples``;
* store, batched path: ``Store.add_sample_events`` (one transaction,
  executemany into ``events`` and ``samples``);
* exporter: ``LiveMetrics.job_event`` behind a ``MultiProgress``, as the CLI
  wires it;
* together: batched store path + exporter, which is what a sweep does.

Target: >= 20,000 samples/s together. Then it fills a finished sweep with
100 devices' results and times ``GET /metrics`` on a real exporter (cold:
the report is built; warm: cached), with the live series of 100 devices.

    .venv/bin/python bench/ingest.py
    .venv/bin/python bench/ingest.py --devices 100 --rate-hz 10 --seconds 60
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prometheus_client import CollectorRegistry  # noqa: E402

from orchestrator.config.sweep import load_sweep_with_inventory  # noqa: E402
from orchestrator.exporter import start_exporter, stop_exporter  # noqa: E402
from orchestrator.metrics import LiveMetrics, MultiProgress, StoreCollector  # noqa: E402
from orchestrator.planner import plan  # noqa: E402
from orchestrator.scheduler import NullProgress  # noqa: E402
from orchestrator.store import Store  # noqa: E402
from orchestrator.sweeps import job_record  # noqa: E402

#: Rails, total rail and sensors per platform, as the devices' own tools name them.
PLATFORMS: dict[str, dict[str, Any]] = {
    "jetson": {"rails": {"VDD_GPU_SOC": 2.0, "VDD_CPU_CV": 1.2, "VIN_SYS_5V0": 4.8},
               "total": "VIN_SYS_5V0", "ram_total_mb": 7620,
               "temps": {"cpu": 45.0, "gpu": 44.0, "soc0": 43.0, "soc1": 42.5, "soc2": 42.0,
                         "tj": 46.0}},
    "apple-silicon": {"rails": {"cpu": 4.0, "gpu": 1.5, "ane": 0.0, "ram": 0.3, "sys": 9.0},
                      "total": "sys", "ram_total_mb": 16384,
                      "temps": {"cpu_avg": 48.0, "gpu_avg": 41.0}},
    "nvidia-gpu": {"rails": {"gpu": 180.0, "cpu_package": 35.0}, "total": None,
                   "ram_total_mb": 65536, "temps": {"gpu": 61.0, "cpu": 52.0}},
    "linux-cpu": {"rails": {"package-0": 28.0, "dram": 3.0}, "total": None,
                  "ram_total_mb": 23000, "temps": {"cpu": 55.0}},
}


def make_batches(devices: int, rate_hz: float, seconds: float, poll_s: float,
                 seed: int = 0) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """``(device, job, events)`` batches in arrival order: one per device per poll."""
    rng = random.Random(seed)
    names = [f"dev-{i:03d}" for i in range(devices)]
    kinds = list(PLATFORMS)
    platform = {n: kinds[i % len(kinds)] for i, n in enumerate(names)}
    per_batch = max(1, round(rate_hz * poll_s))
    seq = dict.fromkeys(names, 0)
    t0 = 1.79e9
    batches = []
    for poll in range(int(seconds / poll_s)):
        for name in names:
            p = PLATFORMS[platform[name]]
            job = {"device": name, "key": f"job-{name}", "model_id": "olmoe-1b-7b"}
            events = []
            for k in range(per_batch):
                t = t0 + poll * poll_s + k / rate_hz
                rails = {r: round(w * rng.uniform(0.8, 1.2), 3) for r, w in p["rails"].items()}
                ev: dict[str, Any] = {
                    "v": 1, "seq": seq[name], "kind": "sample", "job": job["key"],
                    "attempt": 1, "t": round(t, 6), "mono": round(t - t0 + 1000, 6),
                    "rails_w": rails,
                    "ram_used_mb": int(p["ram_total_mb"] * rng.uniform(0.3, 0.9)),
                    "ram_total_mb": p["ram_total_mb"],
                    "temps_c": {s: round(c + rng.uniform(-2, 8), 2)
                                for s, c in p["temps"].items()},
                    "cpu_freq_mhz": [rng.choice((729, 1510, 2201)) for _ in range(8)],
                }
                if p["total"]:
                    ev["total_w"] = rails[p["total"]]
                events.append(ev)
                seq[name] += 1
            batches.append((name, job, events))
    return batches


def timed(label: str, n: int, fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    rate = n / seconds
    print(f"  {label:<44} {n:>7,} samples in {seconds:6.2f} s = {rate:>9,.0f} samples/s")
    return rate


def ingest(results: Path, args: argparse.Namespace) -> dict[str, float]:
    n_batches = int(args.seconds / args.poll_s) * args.devices
    print(f"telemetry: {args.devices} devices x {args.rate_hz:g} Hz x {args.seconds:g} s, "
          f"one batch per device per {args.poll_s:g} s poll "
          f"({n_batches:,} batches of {max(1, round(args.rate_hz * args.poll_s))})")
    rates = {}
    for i, label in enumerate(("store: add_events + add_samples (generic)",
                               "store: add_sample_events (batched)",
                               "exporter: MultiProgress -> LiveMetrics",
                               "together: batched store + exporter")):
        # Fresh events for each path (new sequence numbers under a new sweep), so
        # nothing is skipped as a duplicate.
        batches = make_batches(args.devices, args.rate_hz, args.seconds, args.poll_s, seed=i)
        n = sum(len(b[2]) for b in batches)
        store = Store(results)
        sweep = f"ingest-{i}"
        live = LiveMetrics(CollectorRegistry())
        progress = MultiProgress(NullProgress(), live)

        def generic(store: Store = store, sweep: str = sweep, batches: list = batches) -> None:
            for device, _job, events in batches:
                store.add_events(sweep, device, events)
                store.add_samples(sweep, device, events)

        def batched(store: Store = store, sweep: str = sweep, batches: list = batches) -> None:
            for device, _job, events in batches:
                store.add_sample_events(sweep, device, events)

        def exporter(progress: MultiProgress = progress, batches: list = batches) -> None:
            for _device, job, events in batches:
                for ev in events:
                    progress.job_event(job, ev)

        def together(store: Store = store, sweep: str = sweep, batches: list = batches,
                     progress: MultiProgress = progress) -> None:
            for device, job, events in batches:
                store.add_sample_events(sweep, device, events)
                for ev in events:
                    progress.job_event(job, ev)

        rates[label] = timed(label, n, (generic, batched, exporter, together)[i])
        store.close()
    return rates


def results_store(results: Path, devices: int, reps: int) -> str:
    """A finished sweep: ``devices`` devices x 3 models x 2 configs, ``reps`` counted each."""
    tmp = results.parent
    inv = tmp / "inventory.yaml"
    inv.write_text(yaml.safe_dump({"devices": [
        {"name": f"dev-{i:03d}", "transport": "local", "platform": "linux-cpu",
         "work_dir": str(tmp / "devices"), "models_dir": str(tmp / "models")}
        for i in range(devices)]}))
    models = [{"id": "olmoe-1b-7b", "arch": "moe", "source": {"preset": "olmoe-1b-7b"}},
              {"id": "olmo-1b", "arch": "dense", "source": {"preset": "olmo-1b"}},
              {"id": "llama-3.2-1b", "arch": "dense", "source": {"preset": "llama-3.2-1b"}}]
    sweep_file = tmp / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "bench-results", "models": models,
        "pairs": [{"moe": "olmoe-1b-7b", "dense": ["olmo-1b", "llama-3.2-1b"]}],
        "matrix": {"prompt_tokens": [128], "gen_tokens": [64, 256], "threads": [2],
                   "gpu_layers": [0]},
        "repetitions": reps, "warmup": 1, "devices": {"platform": ["linux-cpu"]},
        "backend": "auto", "timeout_s": 600, "retries": 0}))
    sweep, inventory = load_sweep_with_inventory(sweep_file, inv)
    jobs = [job_record(j) for j in plan(sweep, inventory)]
    store = Store(results)
    store.create_sweep("bench-results", sweep.name, sweep.model_dump(mode="json"),
                       inventory.model_dump(mode="json", exclude_unset=True), jobs)
    rng = random.Random(1)
    for job in jobs:
        store.start_attempt("bench-results", job["key"], 1)
        base = 22.0 if job["arch"] == "moe" else 30.0
        events = [{"v": 1, "seq": 0, "kind": "hello", "job": job["key"], "attempt": 1,
                   "t": 1.79e9, "facts": {"ram_total_bytes": 8 << 30}}]
        for i in range(reps):
            rate = base * rng.uniform(0.9, 1.1)
            events.append({"v": 1, "seq": i + 1, "kind": "repetition", "job": job["key"],
                           "attempt": 1, "t": 1.79e9 + i, "index": i, "warmup": False,
                           "prompt_tokens": 128, "gen_tokens": job["gen_tokens"],
                           "decode_tps": rate, "prefill_tps": rate * 8,
                           "ttft_s": 128 / (rate * 8), "peak_rss_bytes": 4 << 30})
        store.add_events("bench-results", job["device"], events)
        store.end_attempt("bench-results", job["key"], 1, "done")
        store.finish_job("bench-results", job["key"], "done", 1, result={})
    store.set_sweep_state("bench-results", "finished")
    store.close()
    return f"{len(jobs)} jobs, {len(jobs) * reps:,} counted repetitions"


def scrape(results: Path, args: argparse.Namespace) -> None:
    what = results_store(results, args.devices, args.reps)
    registry = CollectorRegistry()
    live = LiveMetrics(registry)
    # Live series for every device: a job running, a phase, a full sample.
    for _device, job, events in make_batches(args.devices, 1, 1, 1, seed=9):
        live.job_started(job, 1)
        live.job_event(job, {"kind": "phase", "phase": "decode"})
        live.job_event(job, events[-1])
    StoreCollector(results, registry=registry, include_running=False)
    server, thread = start_exporter("127.0.0.1:0", registry=registry)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"

    def get() -> tuple[float, bytes]:
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as resp:
            body = resp.read()
        return time.perf_counter() - started, body

    try:
        cold, body = get()
        warm = [get()[0] for _ in range(args.scrapes)]
    finally:
        stop_exporter(server, thread)
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    print(f"scrape: GET /metrics with {args.devices} devices' live series and a finished "
          f"sweep of {what}")
    print(f"  {series:,} series, {len(body) / 1024:,.0f} KiB")
    print(f"  cold (builds the report):   {cold * 1000:8.1f} ms")
    print(f"  warm (cached), median of {args.scrapes}: {statistics.median(warm) * 1000:8.1f} ms "
          f"(max {max(warm) * 1000:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rate-hz", type=float, default=10.0, help="samples/s per device")
    parser.add_argument("--seconds", type=float, default=60.0, help="telemetry span to replay")
    parser.add_argument("--poll-s", type=float, default=1.0, help="driver poll interval")
    parser.add_argument("--reps", type=int, default=5, help="counted repetitions per job")
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        rates = ingest(results, args)
        together = rates["together: batched store + exporter"]
        print(f"store + exporter together: {together:,.0f} samples/s "
              f"({'meets' if together >= 20000 else 'MISSES'} the 20,000/s target)")
        scrape(results, args)


if __name__ == "__main__":
    main()
