"""The planner: how many jobs, in which order, and keys that only change when the measurement does.

Job keys let a re-run skip stored results, so a key that changed for no
reason would silently re-measure, and one that did not change when a measured
parameter did would silently reuse the wrong result.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import textwrap
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Inventory, Sweep, load_sweep_with_inventory
from orchestrator.errors import ConfigError
from orchestrator.planner import (
    AGENT_SPEC_SCHEMA,
    PLAN_TABLE_COLUMNS,
    Job,
    canonical_json,
    plan,
    plan_table_rows,
)

REPO = Path(__file__).resolve().parent.parent

INVENTORY = """\
devices:
  - name: local
    transport: local
    platform: linux-cpu
  - name: mac
    transport: ssh
    platform: apple-silicon
    host: mac.lab
    user: bench
    labels: {ram: 16gb}
  - name: orin-a
    transport: ssh
    platform: jetson
    host: 10.0.0.1
    user: bench
    labels: {ram: 8gb, rack: a}
  - name: orin-b
    transport: ssh
    platform: jetson
    host: 10.0.0.2
    user: bench
    labels: {ram: 8gb, rack: b}
"""

SWEEP = """\
name: grid
models:
  - {id: moe, arch: moe, source: {preset: tiny-moe}}
  - {id: dense, arch: dense, source: {preset: tiny-dense, quant: Q8_0}}
  - {id: extra, arch: dense, source: {path: /models/extra.gguf}}
pairs:
  - {moe: moe, dense: [dense]}
matrix:
  prompt_tokens: [64, 256]
  gen_tokens: 32
  threads: [2, 4]
  gpu_layers: [0, 99]
repetitions: 5
warmup: 2
devices: {platform: [jetson, apple-silicon]}
backend: sleep
timeout_s: 120
retries: 2
"""


def load(
    tmp_path: Path, sweep: str = SWEEP, inventory: str = INVENTORY, name: str = "sweep.yaml"
) -> tuple[Sweep, Inventory]:
    sweep_path = tmp_path / name
    sweep_path.write_text(textwrap.dedent(sweep), encoding="utf-8")
    inventory_path = tmp_path / "inventory.yaml"
    inventory_path.write_text(textwrap.dedent(inventory), encoding="utf-8")
    return load_sweep_with_inventory(sweep_path, inventory_path)


def jobs_for(tmp_path: Path, sweep: str = SWEEP, name: str = "sweep.yaml") -> list[Job]:
    return plan(*load(tmp_path, sweep, name=name))


def test_count_is_devices_times_groups_times_points(tmp_path: Path) -> None:
    jobs = jobs_for(tmp_path)
    # 3 devices (mac, orin-a, orin-b) x 2 groups (moe with dense; extra) x
    # (2 x 1 x 2 x 2) points.
    assert len(jobs) == 3 * 2 * 8
    assert len({job.key for job in jobs}) == len(jobs)


def test_order_device_then_point_then_group(tmp_path: Path) -> None:
    jobs = jobs_for(tmp_path)
    assert [j.device for j in jobs[::16]] == ["mac", "orin-a", "orin-b"]
    first_device = jobs[:16]
    assert [j.model_id for j in first_device[:4]] == ["moe vs dense", "extra"] * 2
    points = [(j.prompt_tokens, j.gen_tokens, j.threads, j.gpu_layers) for j in first_device[::2]]
    assert points == [
        (64, 32, 2, 0),
        (64, 32, 2, 99),
        (64, 32, 4, 0),
        (64, 32, 4, 99),
        (256, 32, 2, 0),
        (256, 32, 2, 99),
        (256, 32, 4, 0),
        (256, 32, 4, 99),
    ]
    # A MoE and its baseline are one job: the agent runs them in paired rounds.
    pair = jobs[0]
    assert pair.model_arch == "pair"
    assert [(m.id, m.arch) for m in pair.models] == [("moe", "moe"), ("dense", "dense")]
    assert [m["id"] for m in pair.to_agent_spec()["models"]] == ["moe", "dense"]


def test_device_order_follows_inventory_not_selector(tmp_path: Path) -> None:
    sweep = SWEEP.replace("{platform: [jetson, apple-silicon]}", "{names: [orin-b, local]}")
    assert [j.device for j in jobs_for(tmp_path, sweep)[::16]] == ["local", "orin-b"]


def test_unpaired_models_are_planned(tmp_path: Path) -> None:
    assert {j.model_id for j in jobs_for(tmp_path)} == {"moe vs dense", "extra"}
    sweep = SWEEP.replace("pairs:\n  - {moe: moe, dense: [dense]}\n", "")
    assert {j.model_id for j in jobs_for(tmp_path, sweep)} == {"moe", "dense", "extra"}
    assert len(jobs_for(tmp_path, sweep)) == 72


def test_job_fields_come_from_sweep(tmp_path: Path) -> None:
    job = jobs_for(tmp_path)[0]
    assert job.model_dump(exclude={"key"}) == {
        "device": "mac",
        "model_id": "moe vs dense",
        "model_arch": "pair",
        "models": (
            {"id": "moe", "arch": "moe", "source": {"preset": "tiny-moe", "quant": "Q4_0"}},
            {"id": "dense", "arch": "dense",
             "source": {"preset": "tiny-dense", "quant": "Q8_0"}}),
        "prompt_tokens": 64,
        "gen_tokens": 32,
        "threads": 2,
        "gpu_layers": 0,
        "repetitions": 5,
        "warmup": 2,
        "keep_loaded": False,
        "cpu_repack": True,
        "repetitions_per_round": 1,
        "routing_profile": True,
        "backend": "sleep",
        "timeout_s": 120,
        "retries": 2,
        "telemetry": {"telemetry": True, "telemetry_interval_s": 0.1, "idle_s": 2.0},
        "torch": None,
    }


@pytest.mark.parametrize(
    ("selector", "devices"),
    [
        ("{platform: jetson}", ["orin-a", "orin-b"]),
        ("{platform: [apple-silicon, linux-cpu]}", ["local", "mac"]),
        ("{labels: {ram: 8gb}}", ["orin-a", "orin-b"]),
        ("{labels: {ram: 8gb, rack: b}}", ["orin-b"]),
        ("{platform: jetson, labels: {rack: a}}", ["orin-a"]),
        ("{names: [mac], platform: apple-silicon}", ["mac"]),
    ],
)
def test_selection(tmp_path: Path, selector: str, devices: list[str]) -> None:
    sweep = SWEEP.replace("{platform: [jetson, apple-silicon]}", selector)
    jobs = jobs_for(tmp_path, sweep)
    assert sorted({j.device for j in jobs}) == devices
    assert len(jobs) == len(devices) * 16


def test_keys_are_stable_across_loads_and_sweep_names(tmp_path: Path) -> None:
    first = [j.key for j in jobs_for(tmp_path)]
    again = [j.key for j in jobs_for(tmp_path, name="copy.yaml")]
    renamed = [j.key for j in jobs_for(tmp_path, SWEEP.replace("name: grid", "name: other"))]
    assert first == again == renamed


def test_key_is_sha256_of_canonical_json(tmp_path: Path) -> None:
    job = jobs_for(tmp_path)[0]
    # model_id and model_arch are computed from models, so only models counts;
    # torch is left out while None (other backends' keys stay what they were).
    assert job.torch is None
    measured = job.model_dump(mode="json",
                              exclude={"key", "model_id", "model_arch", "timeout_s", "retries",
                                       "routing_profile", "torch"})
    text = json.dumps(measured, sort_keys=True, separators=(",", ":"))
    assert canonical_json(measured) == text
    assert job.key == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert len(job.key) == 16 and int(job.key, 16) >= 0


MOE = {"id": "moe", "arch": "moe", "source": {"preset": "tiny-moe", "quant": "Q4_0"}}
BASE: dict[str, Any] = {
    "device": "mac",
    "models": (MOE,),
    "prompt_tokens": 64,
    "gen_tokens": 32,
    "threads": 2,
    "gpu_layers": 0,
    "repetitions": 3,
    "warmup": 1,
    "backend": "auto",
    "timeout_s": 300,
    "retries": 1,
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device", "orin-a"),
        ("models", ({**MOE, "id": "moe2"},)),
        ("models", ({**MOE, "arch": "dense"},)),
        ("models", ({**MOE, "source": {"preset": "tiny-moe", "quant": "Q8_0"}},)),
        ("models", ({**MOE, "source": {"preset": "tiny-moe", "quant": "Q4_0", "seed": 7}},)),
        ("models", ({**MOE, "source": {"path": "/m.gguf"}},)),
        ("models", (MOE, {"id": "d", "arch": "dense", "source": {"path": "/d.gguf"}})),
        ("prompt_tokens", 65),
        ("gen_tokens", 33),
        ("threads", 3),
        ("gpu_layers", 99),
        ("repetitions", 4),
        ("repetitions", {"min": 3, "max": 9, "target_ci_pct": 2.0}),
        ("keep_loaded", True),
        ("cpu_repack", False),
        ("repetitions_per_round", 3),
        ("warmup", 0),
        ("backend", "xllamacpp"),
    ],
)
def test_changing_a_measured_field_changes_the_key(field: str, value: Any) -> None:
    assert Job(**{**BASE, field: value}).key != Job(**BASE).key


@pytest.mark.parametrize(("field", "value"), [("timeout_s", 9999), ("retries", 5),
                                              ("routing_profile", False)])
def test_timeout_retries_and_the_profiling_pass_do_not_change_the_key(field: str,
                                                                      value: Any) -> None:
    assert Job(**{**BASE, field: value}).key == Job(**BASE).key


def test_changing_a_sweep_param_changes_keys_but_timeout_does_not(tmp_path: Path) -> None:
    base = [j.key for j in jobs_for(tmp_path)]
    longer = [j.key for j in jobs_for(tmp_path, SWEEP.replace("timeout_s: 120", "timeout_s: 900"))]
    more = [j.key for j in jobs_for(tmp_path, SWEEP.replace("repetitions: 5", "repetitions: 6"))]
    assert longer == base
    assert not set(more) & set(base)


def test_same_job_in_a_smaller_matrix_keeps_its_key(tmp_path: Path) -> None:
    # Shrinking a matrix must not re-key the jobs that remain.
    full = {j.key for j in jobs_for(tmp_path)}
    smaller = jobs_for(tmp_path, SWEEP.replace("threads: [2, 4]", "threads: 4"))
    assert len(smaller) == 24 and {j.key for j in smaller} <= full


def test_agent_spec(tmp_path: Path) -> None:
    job = jobs_for(tmp_path)[0]
    spec = job.to_agent_spec()
    assert spec == {
        "schema": AGENT_SPEC_SCHEMA,
        "job_key": job.key,
        "model": {"id": "moe", "arch": "moe", "source": {"preset": "tiny-moe", "quant": "Q4_0"}},
        "models": [
            {"id": "moe", "arch": "moe", "source": {"preset": "tiny-moe", "quant": "Q4_0"}},
            {"id": "dense", "arch": "dense", "source": {"preset": "tiny-dense", "quant": "Q8_0"}},
        ],
        "params": {
            "prompt_tokens": 64,
            "gen_tokens": 32,
            "threads": 2,
            "gpu_layers": 0,
            "repetitions": 5,
            "warmup": 2,
            "keep_loaded": False,
            "cpu_repack": True,
            "repetitions_per_round": 1,
            "routing_profile": True,
        },
        "backend": "sleep",
        "timeout_s": 120,
        # telemetry defaults, in the keys agents/telemetry/job.py reads
        "telemetry": True,
        "telemetry_interval_s": 0.1,
        "idle_s": 2.0,
    }
    assert json.loads(json.dumps(spec)) == spec
    # The spec is a copy: editing it cannot change the (frozen) job.
    spec["model"]["source"]["quant"] = "F16"
    assert job.models[0].source["quant"] == "Q4_0"


def test_plan_table_rows(tmp_path: Path) -> None:
    jobs = jobs_for(tmp_path)
    rows = plan_table_rows(jobs)
    assert PLAN_TABLE_COLUMNS == (
        "device",
        "model",
        "arch",
        "prompt",
        "gen",
        "threads",
        "ngl",
        "reps",
        "key",
    )
    assert rows[0] == ("mac", "moe vs dense", "pair", "64", "32", "2", "0", "5", jobs[0].key)
    assert all(len(row) == len(PLAN_TABLE_COLUMNS) for row in rows)


def test_quickstart_plan() -> None:
    sweep, inventory = load_sweep_with_inventory(
        REPO / "sweeps" / "quickstart.yaml", REPO / "inventory" / "local.yaml"
    )
    jobs = plan(sweep, inventory)
    assert [(j.device, j.model_id) for j in jobs] == [("local", "tiny-moe vs tiny-dense")]
    assert all(j.timeout_s == 300 and j.repetitions == 8 and j.warmup == 1 for j in jobs)


def test_plan_rejects_unknown_device_without_files() -> None:
    # Objects built in code get the same checks, reported by key path.
    inventory = Inventory.model_validate(
        {"devices": [{"name": "local", "transport": "local", "platform": "linux-cpu"}]}
    )
    sweep = Sweep.model_validate(
        {
            "name": "s",
            "models": [{"id": "m", "arch": "moe", "source": {"preset": "tiny-moe"}}],
            "devices": {"names": ["ghost"]},
        }
    )
    with pytest.raises(ConfigError) as info:
        plan(sweep, inventory)
    assert str(info.value) == "devices.names[0]: unknown device 'ghost'; known devices: local"


def test_plan_rejects_empty_selection_at_sweep_line(tmp_path: Path) -> None:
    sweep_path = tmp_path / "s.yaml"
    sweep_path.write_text(SWEEP.replace("[jetson, apple-silicon]", "[nvidia-gpu]"))
    inventory_path = tmp_path / "i.yaml"
    inventory_path.write_text(INVENTORY)
    with pytest.raises(ConfigError) as info:
        plan(Sweep.load(sweep_path), Inventory.load(inventory_path))
    assert info.value.line == 15 and info.value.key_path == "devices"
    assert "selects no device" in str(info.value)


def test_jobs_round_trip_and_pickle(tmp_path: Path) -> None:
    # The store keeps model_dump() output; Ray pickles jobs to the gateways.
    for job in jobs_for(tmp_path)[:3]:
        again = Job.model_validate(job.model_dump(mode="json"))
        assert again == job and again.key == job.key
        copy = pickle.loads(pickle.dumps(job))
        assert copy == job and copy.key == job.key
    assert len(set(jobs_for(tmp_path))) == 48


def test_job_is_frozen(tmp_path: Path) -> None:
    job = jobs_for(tmp_path)[0]
    with pytest.raises(ValueError):
        job.threads = 8  # type: ignore[misc]


def test_telemetry_settings_reach_the_agent_and_the_key(tmp_path: Path) -> None:
    inv = tmp_path / "inv.yaml"
    inv.write_text("devices:\n  - {name: d, transport: local, platform: linux-cpu}\n")
    base = ("name: t\nmodels:\n  - {id: m, arch: dense, source: {preset: tiny-dense}}\n"
            "devices: {names: [d]}\n")
    plain, cooled = tmp_path / "plain.yaml", tmp_path / "cooled.yaml"
    plain.write_text(base)
    cooled.write_text(base + "telemetry: {interval_s: 0.5, idle_s: 0, cooldown: "
                             "{max_temp_c: 60, timeout_s: 30}}\n")
    (job_plain,) = plan(*load_sweep_with_inventory(plain, inv))
    (job_cooled,) = plan(*load_sweep_with_inventory(cooled, inv))
    spec = job_cooled.to_agent_spec()
    assert (spec["telemetry_interval_s"], spec["idle_s"]) == (0.5, 0)
    assert spec["cooldown"] == {"max_temp_c": 60, "timeout_s": 30}
    assert job_plain.key != job_cooled.key  # a cooldown changes what is measured
