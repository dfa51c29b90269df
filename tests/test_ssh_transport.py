"""The ssh transport against real OpenSSH servers on 127.0.0.1 (tests/sshd_fixture.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import sleep_models, write_ssh_inventory

from orchestrator.bundle import build
from orchestrator.config.inventory import Inventory
from orchestrator.errors import HostKeyError, UnreachableError
from orchestrator.transport.ssh import SshTransport

HOSTILE = "we ird;'\"$(touch PWNED)`touch PWNED2`"


def transport_for(tmp: Path, device: Any, **kwargs: Any) -> SshTransport:
    inv, known = write_ssh_inventory(tmp, [device])
    return SshTransport(Inventory.load(inv).devices[0], known_hosts=str(known), **kwargs)


def test_commands_are_quoted_and_inject_nothing(tmp_path: Path, sshd_devices: Any) -> None:
    (dev,) = sshd_devices("quote")
    with transport_for(tmp_path, dev) as t:
        result = t.run(["printf", "%s|", HOSTILE, "a b", "$HOME"], timeout=20)
        assert result.exit_code == 0
        assert result.stdout == f"{HOSTILE}|a b|$HOME|"
        local = tmp_path / "payload.txt"
        local.write_text("data")
        remote = str(tmp_path / HOSTILE / "file.txt")
        t.put(str(local), remote)
        assert Path(remote).read_text() == "data"
    assert not list(Path(".").glob("PWNED*")) and not list(Path("/root").glob("PWNED*"))


def test_agent_is_uploaded_once_and_verified(tmp_path: Path, sshd_devices: Any) -> None:
    (dev,) = sshd_devices("deploy")
    bundle = build(tmp_path / "bundle")
    with transport_for(tmp_path, dev) as t:
        path = t.ensure_agent(str(bundle.path), bundle.sha256)
        first = os.stat(path)
    with transport_for(tmp_path, dev) as t:  # a new connection: checks, does not re-send
        assert t.ensure_agent(str(bundle.path), bundle.sha256) == path
    assert os.stat(path).st_mtime_ns == first.st_mtime_ns
    assert Path(path).read_bytes() == bundle.path.read_bytes()
    assert not list(Path(path).parent.glob("*.tmp*"))


def test_unknown_host_key_names_the_trust_command(tmp_path: Path, sshd_devices: Any) -> None:
    (dev,) = sshd_devices("stranger")
    inv, known = write_ssh_inventory(tmp_path, [dev], trust=False)
    t = SshTransport(Inventory.load(inv).devices[0], known_hosts=str(known))
    with pytest.raises(HostKeyError, match="edgefarm inventory trust stranger"):
        t.connect()


def test_changed_host_key_is_refused(tmp_path: Path, sshd_devices: Any) -> None:
    dev, other = sshd_devices("victim", "impostor")
    inv, known = write_ssh_inventory(tmp_path, [dev])
    # known_hosts holds another server's key for this host:port.
    known.write_text(f"[127.0.0.1]:{dev.port} " + " ".join(other.host_pub.split()[:2]) + "\n")
    t = SshTransport(Inventory.load(inv).devices[0], known_hosts=str(known))
    with pytest.raises(HostKeyError, match="CHANGED"):
        t.connect()


def test_unreachable_device_fails_after_its_deadline(tmp_path: Path, sshd_devices: Any) -> None:
    (dev,) = sshd_devices("gone")
    dev.stop()
    t = transport_for(tmp_path, dev, unreachable_after_s=2)
    started = time.monotonic()
    with pytest.raises(UnreachableError, match="cannot reach"):
        t.connect()
    assert 1.0 < time.monotonic() - started < 15


def test_job_follows_through_a_dropped_link(tmp_path: Path, sshd_devices: Any) -> None:
    (dev,) = sshd_devices("flaky")
    bundle = build(tmp_path / "bundle")
    t = transport_for(tmp_path, dev, unreachable_after_s=60)
    t.connect()
    agent = t.ensure_agent(str(bundle.path), bundle.sha256)
    model = sleep_models(tmp_path, 1)[0]
    spec = {"schema": 1, "job_key": "k1", "attempt": 1, "model": model, "backend": "sleep",
            "device": {}, "params": {"prompt_tokens": 1, "gen_tokens": 500, "threads": 1,
                                     "gpu_layers": 0, "repetitions": 8, "warmup": 0}}
    job_dir = t.job_dir("s1", "k1", 1)
    t.start_job(job_dir, spec, agent)
    events: list[dict[str, Any]] = []
    offset = 0
    dropped = restored = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        new, offset = t.read_events(job_dir, offset)
        events += new
        reps = sum(e["kind"] == "repetition" for e in events)
        if reps >= 2 and not dropped:
            dev.kill()
            dropped, down_at = True, time.monotonic()
        if dropped and not restored and time.monotonic() - down_at > 5:
            dev.start()
            restored = True
        if any(e["kind"] == "result" for e in new):
            break
        time.sleep(0.1)
    assert dropped and restored
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(len(seqs))), "every event exactly once, in order"
    assert sum(e["kind"] == "repetition" for e in events) == 8
    assert events[-1]["kind"] == "result" and events[-1]["status"] == "ok"
    log = Path(job_dir) / "events.jsonl"
    assert offset == log.stat().st_size
    assert [json.loads(line)["seq"] for line in log.read_text().splitlines()] == seqs
    t.close()
