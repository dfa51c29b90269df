"""sweeps/seed-study.yaml and `--synthetic`: one study file for real GGUF files and for stand-ins.

Planning only (no jobs run): the file validates against the local inventory,
its models are the study's, and the switch swaps every file for its preset,
or refuses with the file, line and model when one has no stand-in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO
from typer.testing import CliRunner

from orchestrator.cli.main import app
from orchestrator.errors import ConfigError
from orchestrator.sweeps import load_plan

STUDY = REPO / "sweeps" / "seed-study.yaml"
LOCAL = REPO / "inventory" / "local.yaml"


def test_the_study_pairs_olmoe_with_the_three_dense_baselines() -> None:
    planned = load_plan(STUDY, LOCAL)
    assert {j.model_id for j in planned.jobs} == {
        "olmoe-1b-7b vs llama-3.2-1b,qwen2.5-1.5b,gemma-2-2b"}
    assert sorted({j.prompt_tokens for j in planned.jobs}) == [64, 256]
    for job in planned.jobs:
        assert all(m.source.get("path", "").endswith(".gguf") for m in job.models)
        assert job.routing_profile


def test_synthetic_runs_the_presets_with_the_same_shapes() -> None:
    real = load_plan(STUDY, LOCAL)
    stand_in = load_plan(STUDY, LOCAL, synthetic=True)
    for job in stand_in.jobs:
        assert [m.source for m in job.models] == [
            {"preset": "olmoe-1b-7b", "quant": "Q4_0"},
            {"preset": "llama-3.2-1b", "quant": "Q4_0"},
            {"preset": "qwen2.5-1.5b", "quant": "Q4_0"},
            {"preset": "gemma-2-2b", "quant": "Q4_0"}]
    # Same matrix, different files: different keys, so results never mix.
    assert len(stand_in.jobs) == len(real.jobs)
    assert not {j.key for j in stand_in.jobs} & {j.key for j in real.jobs}


SWEEP = """\
name: s
models:
  - id: moe
    arch: moe
    source: {path: /models/moe.gguf}
    synthetic: {preset: tiny-moe}
  - id: dense
    arch: dense
    source: {path: /models/dense.gguf}
pairs:
  - {moe: moe, dense: dense}
devices: {names: [local]}
"""


def test_a_model_without_a_stand_in_is_refused_at_its_line(tmp_path: Path) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP)
    load_plan(sweep, LOCAL)  # fine without the switch
    with pytest.raises(ConfigError) as err:
        load_plan(sweep, LOCAL, synthetic=True)
    text = str(err.value)
    assert f"{sweep}:7" in text and "model 'dense' has no `synthetic` preset" in text
    result = CliRunner().invoke(app, ["sweep", "plan", str(sweep), "-i", str(LOCAL),
                                      "--synthetic"])
    assert result.exit_code == 2 and "has no `synthetic` preset" in result.output


@pytest.mark.parametrize("synthetic, message", [
    ("{path: /models/x.gguf}", "synthetic must name a preset"),
    ("{preset: tiny-dense}", "preset 'tiny-dense' is a dense model, but arch is 'moe'"),
])
def test_a_stand_in_must_be_a_preset_of_the_same_arch(tmp_path: Path, synthetic: str,
                                                      message: str) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP.replace("synthetic: {preset: tiny-moe}", f"synthetic: {synthetic}"))
    with pytest.raises(ConfigError, match=message):
        load_plan(sweep, LOCAL)
