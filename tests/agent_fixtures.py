"""Fixtures and helpers for the device-agent tests (tests/test_agent_*.py).

tests/conftest.py belongs to the controller tests, so these live here. A test
module imports the fixtures it uses (they register under the names without
``_fixture``) along with the helpers::

    from agent_fixtures import tiny_models_fixture  # noqa: F401  (fixture tiny_models)

Everything is real: synthetic GGUF files written by ``agents.models.synth``,
the agent run in this process or as a subprocess, the zipapp built by
``orchestrator.bundle``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
AGENTS_DIR = REPO / "agents"


def find_python38() -> str | None:
    """A working Python 3.8 interpreter (pyenv's, or one on PATH), or None.

    Each candidate is run once: a pyenv shim on PATH may exist yet refuse to run.
    """
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.8*/bin/python3.8"))
    on_path = shutil.which("python3.8")
    if on_path:
        candidates.append(on_path)
    for path in candidates:
        try:
            proc = subprocess.run([path, "-I", "-c", "import sys; print(sys.version_info[:2])"],
                                  capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0 and proc.stdout.strip() == b"(3, 8)":
            return path
    return None


def find_tool(name: str) -> str | None:
    """A console script of this venv (next to sys.executable) or on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def agent_env(**extra: str) -> dict[str, str]:
    """The environment a device agent gets: no PYTHONPATH, no failure knobs."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("EDGEFARM_SLEEP_FAIL", None)
    env.update(extra)
    return env


def write_job(job_dir: Path, model_source: dict[str, Any], *, backend: str = "sleep",
              models_dir: Path | None = None, job_key: str = "job-1", attempt: int = 1,
              heartbeat_s: float = 5.0, **params: int | bool) -> Path:
    """Write ``job_dir/job.json`` as the controller does; return job_dir."""
    job_dir.mkdir(parents=True, exist_ok=True)
    p = {"prompt_tokens": 16, "gen_tokens": 8, "threads": 2, "gpu_layers": 0,
         "repetitions": 2, "warmup": 1}
    p.update(params)
    device: dict[str, Any] = {}
    if models_dir is not None:
        device["models_dir"] = str(models_dir)
    spec = {"job_key": job_key, "attempt": attempt, "backend": backend,
            "model": {"source": model_source}, "params": p, "device": device,
            "heartbeat_s": heartbeat_s}
    (job_dir / "job.json").write_text(json.dumps(spec, sort_keys=True))
    return job_dir


def load_events(job_dir: Path) -> list[dict[str, Any]]:
    """Every event of ``job_dir/events.jsonl`` (all lines must be complete JSON)."""
    text = (job_dir / "events.jsonl").read_text()
    assert text.endswith("\n"), "event log ends in a partial line"
    return [json.loads(line) for line in text.splitlines()]


def run_agent(job_dir: Path, *, python: str | None = None, agent: list[str] | None = None,
              isolated: bool = False, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``agent run job_dir`` as a separate process, as a device would."""
    argv = [python or sys.executable]
    if isolated:
        argv.append("-I")
    argv += agent or ["-m", "agents"]
    argv += ["run", str(job_dir)]
    return subprocess.run(argv, cwd=str(REPO), env=env or agent_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout, check=False)


@pytest.fixture(scope="session", name="tiny_models")
def tiny_models_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny-moe and tiny-dense, Q4_0, written once per session by the real synthesizer."""
    from agents.models.synth import synthesize

    out = tmp_path_factory.mktemp("tiny-models")
    paths = {}
    for preset in ("tiny-moe", "tiny-dense"):
        path = out / f"{preset}-Q4_0.gguf"
        synthesize(preset, "Q4_0", str(path))
        paths[preset] = path
    return paths


@pytest.fixture(scope="session", name="stand_in_model")
def stand_in_model_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Any existing file: the sleep backend only checks that its model exists."""
    path = tmp_path_factory.mktemp("stand-in") / "stand-in.gguf"
    path.write_bytes(b"not a model: the sleep backend never reads it")
    return path


@pytest.fixture(scope="session", name="agent_bundle")
def agent_bundle_fixture(tmp_path_factory: pytest.TempPathFactory):
    """The agent zipapp, built by the controller's real bundler."""
    from orchestrator.bundle import build

    return build(tmp_path_factory.mktemp("bundle-cache"))
