"""What ships to devices: the zipapp, and the agent's stdlib-only, Python 3.8 core.

The bundle is built by the controller's real bundler and run by a real,
isolated interpreter (``python -I``: no PYTHONPATH, no user site, no current
directory on sys.path), the way a device runs it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from agent_fixtures import (  # noqa: F401  (*_fixture: the fixtures agent_bundle, stand_in_model)
    AGENTS_DIR,
    REPO,
    agent_bundle_fixture,
    agent_env,
    find_python38,
    find_tool,
    load_events,
    run_agent,
    stand_in_model_fixture,
    write_job,
)

from agents.protocol import MANIFEST_FILE
from orchestrator.bundle import build

PY38 = find_python38()


def _probe(python: list[str], bundle: Path, cwd: Path, *extra: str) -> dict:
    proc = subprocess.run(python + [str(bundle), "probe", *extra], cwd=str(cwd), env=agent_env(),
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


# -- the zipapp ----------------------------------------------------------------

def test_bundle_is_reproducible(tmp_path, agent_bundle):
    one = build(tmp_path / "a")
    two = build(tmp_path / "b")
    again = build(tmp_path / "a")
    assert one.sha256 == two.sha256 == again.sha256 == agent_bundle.sha256
    assert one.path.read_bytes() == two.path.read_bytes()
    assert one.filename == two.filename == f"agent-{one.sha256[:16]}.pyz"
    assert again.path == one.path
    assert hashlib.sha256(one.path.read_bytes()).hexdigest() == one.sha256
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [one.filename]  # no tmp left


def test_bundle_holds_the_agent_sources_and_no_bytecode(agent_bundle):
    with zipfile.ZipFile(agent_bundle.path) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
        manifest = json.loads(zf.read("agents/" + MANIFEST_FILE))
        for name in names:  # the bytes shipped are the sources in the repo
            if name.startswith("agents/") and name != "agents/" + MANIFEST_FILE:
                data = (AGENTS_DIR.parent / name).read_bytes()
                assert zf.read(name) == data, name
                assert manifest.pop(name) == hashlib.sha256(data).hexdigest(), name
        assert manifest == {}  # the manifest covers every packaged file, and no other
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert "__main__.py" in names
    sources = sorted("agents/" + p.relative_to(AGENTS_DIR).as_posix()
                     for p in AGENTS_DIR.rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(n for n in names if n.endswith(".py") and n != "__main__.py") == sources
    assert agent_bundle.path.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_bundle_probe_runs_isolated(tmp_path, agent_bundle):
    facts = _probe([sys.executable, "-I"], agent_bundle.path, tmp_path)
    assert facts["agent_version"]
    assert facts["python_executable"] == sys.executable
    # -S as well: without site-packages the agent still runs and says so.
    bare = _probe([sys.executable, "-I", "-S"], agent_bundle.path, tmp_path,
                  "--llama-bench", "/nonexistent")
    assert bare["backends"]["xllamacpp"]["present"] is False
    assert bare["backends"]["llama-bench"]["present"] is False


def test_bundle_runs_a_sleep_job_isolated(tmp_path, agent_bundle, stand_in_model):
    job = write_job(tmp_path / "job", {"path": str(stand_in_model)}, gen_tokens=2,
                    repetitions=2, warmup=1)
    proc = run_agent(job, agent=[str(agent_bundle.path)], isolated=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    events = load_events(job)
    assert events[0]["kind"] == "hello" and events[-1]["status"] == "ok"
    assert len([e for e in events if e["kind"] == "repetition"]) == 3


# -- standard library only, Python 3.8 -----------------------------------------

def _agent_modules() -> list[str]:
    modules = []
    for path in sorted(AGENTS_DIR.rglob("*.py")):
        parts = list(path.relative_to(AGENTS_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules.append(".".join(parts))
    return modules


def test_every_agent_module_imports_with_the_standard_library_only():
    # Every module, the optional backends included: xllamacpp_backend imports
    # xllamacpp only inside its methods and llama_bench runs a binary, so at
    # import time all of agents/ (agents/models too) is standard library.
    modules = _agent_modules()
    assert "agents.backends.xllamacpp_backend" in modules and "agents.models.synth" in modules
    code = "\n".join([
        "import json, sys",
        f"sys.path.insert(0, {str(REPO)!r})",
        "before = set(sys.modules)",
        "import importlib",
        f"for name in {modules!r}:",
        "    importlib.import_module(name)",
        "new = sorted(set(sys.modules) - before)",
        "agents_file = sys.modules['agents'].__file__",
        f"assert agents_file.startswith({str(AGENTS_DIR)!r}), agents_file",
        "third = sorted({m.split('.')[0] for m in new} - set(sys.stdlib_module_names)"
        " - {'agents'})",
        "print(json.dumps({'new': new, 'third_party': third}))",
    ])
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd="/", env=agent_env(),
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    report = json.loads(proc.stdout)
    assert "agents.runner" in report["new"]
    assert report["third_party"] == []


def test_vermin_finds_nothing_newer_than_python_3_8():
    vermin = find_tool("vermin")
    assert vermin, "vermin is not installed (pip install -e '.[test]')"  # never skipped
    base = [vermin, "-q", "--no-tips", "--violations", "-t=3.8-"]
    # As `make lint` runs it, then with annotations checked too (list[int] and
    # friends are evaluated at import time on 3.8).
    for extra in ([], ["--eval-annotations"]):
        proc = subprocess.run(base + extra + [str(AGENTS_DIR)], capture_output=True,
                              timeout=120, check=False)
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        assert proc.returncode == 0 and out.strip() == "", out


def test_agent_sources_use_real_annotations():
    """ruff cannot see ``# type:`` signature comments; the agent uses annotations."""
    offenders = []
    for path in sorted(AGENTS_DIR.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            comment = line.partition("# type:")[2].strip()
            if comment and not comment.startswith("ignore"):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


needs_py38 = pytest.mark.skipif(PY38 is None,
                                reason="no Python 3.8 interpreter here; vermin checks 3.8")


@needs_py38
def test_every_agent_module_imports_on_python_3_8():
    """Annotations such as ``int | None`` fail only when 3.8 evaluates them."""
    code = "\n".join([
        "import importlib, sys",
        f"sys.path.insert(0, {str(REPO)!r})",
        f"for name in {_agent_modules()!r}:",
        "    importlib.import_module(name)",
        "print(sys.version_info[:2])",
    ])
    proc = subprocess.run([PY38, "-I", "-B", "-c", code], cwd="/", env=agent_env(),
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout.strip() == b"(3, 8)"


@needs_py38
def test_bundle_runs_on_python_3_8(tmp_path, agent_bundle, stand_in_model):
    facts = _probe([PY38, "-I"], agent_bundle.path, tmp_path, "--llama-bench", "/nonexistent")
    assert facts["python"].startswith("3.8.")
    assert facts["backends"]["llama-bench"]["present"] is False

    job = write_job(tmp_path / "job", {"path": str(stand_in_model)}, gen_tokens=1)
    proc = run_agent(job, python=PY38, agent=[str(agent_bundle.path)], isolated=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert load_events(job)[-1]["status"] == "ok"

    # A preset source: the stdlib synthesizer, the cache and gguf_info, on 3.8.
    job = write_job(tmp_path / "preset", {"preset": "tiny-moe", "quant": "Q4_0"},
                    models_dir=tmp_path / "models", gen_tokens=1, repetitions=1, warmup=0)
    proc = run_agent(job, python=PY38, agent=[str(agent_bundle.path)], isolated=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    info = load_events(job)[-1]["info"]
    assert info["architecture"] == "olmoe" and info["preset"] == "tiny-moe"
    assert 0 < info["params_active"] < info["params_total"]


def test_a_corrupt_cached_bundle_is_rebuilt(tmp_path: Path) -> None:
    import hashlib

    from orchestrator.bundle import build as build_bundle
    first = build_bundle(tmp_path)
    first.path.write_bytes(first.path.read_bytes()[:-1] + b"X")
    again = build_bundle(tmp_path)
    assert again.path == first.path
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == again.sha256
