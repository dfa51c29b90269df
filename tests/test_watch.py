"""`edgefarm watch` in a real terminal (tmux): it starts, updates while a sweep
runs in another process, and exits cleanly on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from helpers import EDGEFARM, REPO, sleep_models, write_inventory, write_sweep

TMUX = shutil.which("tmux")


def tmux(*args: str) -> str:
    return subprocess.run([TMUX or "tmux", *args], capture_output=True, text=True,
                          check=True).stdout


def wait_for_screen(session: str, predicate, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if predicate(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"screen never matched; last screen:\n{screen}")


def test_watch_follows_a_running_sweep_and_quits_on_ctrl_c(tmp_path: Path) -> None:
    assert TMUX, "tmux is not installed (make test installs it)"
    inv = write_inventory(tmp_path, ["dev-a"])
    sweep = write_sweep(tmp_path, devices=["dev-a"], models=sleep_models(tmp_path, 2),
                        backend="sleep", warmup=0, repetitions=6, pairs=[],  # two jobs
                        matrix={"prompt_tokens": 1, "gen_tokens": 600, "threads": 1,
                                "gpu_layers": 0})
    results = tmp_path / "results"
    run = subprocess.Popen([*EDGEFARM, "sweep", "run", str(sweep), "-i", str(inv), "-r",
                            str(results), "--metrics-addr", "off"], cwd=REPO,
                           env=dict(os.environ, COLUMNS="200"), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    assert run.stdout is not None
    sweep_id = run.stdout.readline().split()[1]
    session = f"edgefarm-watch-{uuid.uuid4().hex[:8]}"
    command = " ".join([sys.executable, "-m", "orchestrator.cli.main", "watch", sweep_id,
                        "-r", str(results), "--interval", "0.3"])
    tmux("new-session", "-d", "-s", session, "-x", "150", "-y", "30", "-c", str(REPO))
    try:
        tmux("set-option", "-t", session, "remain-on-exit", "on")
        tmux("send-keys", "-t", session, command, "Enter")
        first = wait_for_screen(session, lambda s: "m-moe" in s and "decode" in s)
        assert "dev-a" in first and "0/2" in first
        # It redraws: the first job finishes and the count moves on.
        later = wait_for_screen(session, lambda s: "1/2" in s and "m-dense1" in s)
        assert later != first
        tmux("send-keys", "-t", session, "C-c")
        wait_for_screen(session, lambda s: "stopped watching" in s, timeout=15)
        assert "Traceback" not in tmux("capture-pane", "-p", "-t", session)
    finally:
        subprocess.run([TMUX or "tmux", "kill-session", "-t", session], check=False)
        run.wait(timeout=120)
