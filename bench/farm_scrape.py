"""How long does the farm service take to answer a scrape of 1,000 devices?

Builds a results store holding a running sweep with one job on each of N
devices (default 1,000), each with a ``hello``, a ``decode`` phase event and a
telemetry sample (5 rails, 4 temperatures, memory), plus a health reading per
device, as the farm service keeps them. Then, side by side in one run:

* **farm**: what a scrape of the farm service returns
  (``FarmService.exposition``: the device collector over the store and the
  health readings, writing its text itself, then the sweep/result
  collector through client_python);
* **bare**: ``generate_latest`` of a plain prometheus_client registry holding
  Gauges and Counters with exactly the same series and values, the cheapest
  way client_python can export them.

Both are timed warm (after one scrape: the store's events have been read,
reports cached), median of ``--repeat`` scrapes each, interleaved. Target:
the farm scrape under 100 ms; the ratio farm/bare is printed beside it.

    .venv/bin/python bench/farm_scrape.py
    .venv/bin/python bench/farm_scrape.py --devices 2000 --repeat 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from orchestrator.farm.health import Reading  # noqa: E402
from orchestrator.farm.service import FarmService  # noqa: E402
from orchestrator.store import Store  # noqa: E402

RAILS = ("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC", "VDD_DDR", "VDD_GPU")
SENSORS = ("cpu", "gpu", "soc0", "tj")


def build_store(results: Path, devices: int) -> None:
    """A running sweep with one job per device, each with fresh live events."""
    store = Store(results)
    names = [f"dev-{i:04d}" for i in range(devices)]
    inventory = {"devices": [{"name": n, "transport": "local", "platform": "jetson"}
                             for n in names]}
    jobs = [{"key": f"k{i:04d}", "device": n, "model_id": "olmoe", "arch": "moe",
             "prompt_tokens": 128, "gen_tokens": 64, "threads": 6, "gpu_layers": 99,
             "agent_spec": {"models": [{"id": "olmoe"}]}, "timeout_s": 600}
            for i, n in enumerate(names)]
    sweep = {"name": "farm-scale", "models": [{"id": "olmoe", "arch": "moe"}], "pairs": []}
    store.create_sweep("20261202-030000-farm", "farm-scale", sweep, inventory, jobs)
    for i, name in enumerate(names):
        key = f"k{i:04d}"
        store.start_attempt("20261202-030000-farm", key, 1)
        base = {"v": 1, "job": key, "attempt": 1, "t": time.time()}
        store.add_events("20261202-030000-farm", name, [
            {**base, "seq": 0, "kind": "hello", "facts": {"ram_total_bytes": 8 << 30}},
            {**base, "seq": 1, "kind": "phase", "phase": "decode"}])
        store.add_sample_events("20261202-030000-farm", name, [{
            **base, "seq": 2, "kind": "sample",
            "rails_w": {r: 1.0 + j + i % 7 for j, r in enumerate(RAILS)},
            "total_w": 9.5 + i % 5, "temps_c": {s: 40.0 + j for j, s in enumerate(SENSORS)},
            "ram_used_mb": 3000.0 + i, "ram_total_mb": 7620.0}])
    store.close()


def health_readings(devices: int, now: float) -> dict[str, Reading]:
    return {f"dev-{i:04d}": Reading(now, True, health={
        "sample": {"ram_used_mb": 1000.0, "ram_total_mb": 7620.0}, "measures_power": True,
        "throttled": [], "lease": {"owner": "ctl", "age_s": 1.0, "fresh": True}})
        for i in range(devices)}


def bare_registry(samples: list[tuple[str, str, str, tuple[tuple[str, str], ...], float]]
                  ) -> CollectorRegistry:
    """Gauges and Counters (through their public API) holding exactly ``samples``."""
    from prometheus_client import Counter, Gauge

    registry = CollectorRegistry()
    by_family: dict[tuple[str, str, str], list[tuple[tuple[tuple[str, str], ...], float]]] = \
        defaultdict(list)
    for family, kind, doc, labels, value in samples:
        by_family[(family, kind, doc)].append((labels, value))
    for (family, kind, doc), rows in by_family.items():
        label_names = [k for k, _ in rows[0][0]]
        if kind == "counter":
            counter = Counter(family, doc or family, label_names, registry=registry)
            for labels, value in rows:
                counter.labels(*[v for _, v in labels]).inc(value)
        else:
            gauge = Gauge(family, doc or family, label_names, registry=registry)
            for labels, value in rows:
                gauge.labels(*[v for _, v in labels]).set(value)
    return registry


def flatten(registry: CollectorRegistry) -> list[tuple[str, str, str, tuple[tuple[str, str],
                                                                                ...], float]]:
    out = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out.append((family.name, family.type, family.documentation,
                        tuple(sample.labels.items()), sample.value))
    return out


def timed(render: Callable[[], bytes]) -> float:
    started = time.perf_counter()
    render()
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        started = time.perf_counter()
        build_store(results, args.devices)
        print(f"store with {args.devices} devices' live events built in "
              f"{time.perf_counter() - started:.1f} s")
        service = FarmService(results, health_interval_s=60)
        assert service.health is not None
        service.health.readings.update(health_readings(args.devices, time.time()))
        cold = timed(service.exposition)
        samples = flatten(service.registry)
        bare = bare_registry(samples)
        assert len(flatten(bare)) == len(samples), "the bare registry must hold the same series"
        farm_s, bare_s = [], []
        assert service.exposition().count(b"\n") > len(samples), "the scrape holds every series"
        for _ in range(args.repeat):
            farm_s.append(timed(service.exposition))
            bare_s.append(timed(lambda: generate_latest(bare)))
        service.stop()
    farm_ms, bare_ms = statistics.median(farm_s) * 1e3, statistics.median(bare_s) * 1e3
    print(f"series exported: {len(samples)} ({len(samples) / args.devices:.0f} per device)")
    print(f"farm service scrape: cold {cold * 1e3:.1f} ms, warm median {farm_ms:.1f} ms "
          f"(min {min(farm_s) * 1e3:.1f}, max {max(farm_s) * 1e3:.1f}) over {args.repeat}")
    print(f"bare prometheus_client registry, same series: warm median {bare_ms:.1f} ms")
    print(f"ratio farm / bare: {farm_ms / bare_ms:.2f}")
    met = farm_ms < 100.0
    print(f"target: warm scrape < 100 ms with {args.devices} devices: "
          f"{'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
