"""The ssh transport and the agent client over it, against real OpenSSH servers on
127.0.0.1 (tests/sshd_fixture.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import edgefarm, sleep_models, write_ssh_inventory

from orchestrator.agent_client import AgentClient, LeaseRefused, LeaseRequest
from orchestrator.bundle import AgentBundle, build
from orchestrator.config.inventory import Inventory
from orchestrator.errors import HostKeyError, UnreachableError
from orchestrator.jobrunner import run_attempt
from orchestrator.transport.base import Stream
from orchestrator.transport.ssh import SshTransport

HOSTILE = "we ird;'\"$(touch PWNED)`touch PWNED2`"


def transport_for(tmp: Path, device: Any, **kwargs: Any) -> SshTransport:
    inv, known = write_ssh_inventory(tmp, [device])
    return SshTransport(Inventory.load(inv).devices[0], known_hosts=str(known), **kwargs)


def client_for(t: SshTransport, dev: Any, bundle: AgentBundle) -> AgentClient:
    return AgentClient(t, str(dev.work_dir), bundle.path, bundle.sha256)


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
        path = client_for(t, dev, bundle).ensure_agent()
        first = os.stat(path)
    with transport_for(tmp_path, dev) as t:  # a new connection: checks, does not re-send
        assert client_for(t, dev, bundle).ensure_agent() == path
    assert os.stat(path).st_mtime_ns == first.st_mtime_ns
    assert Path(path).read_bytes() == bundle.path.read_bytes()
    assert not list(Path(path).parent.glob("*.tmp*"))


def test_unknown_host_key_names_the_trust_command(tmp_path: Path, sshd_devices: Any) -> None:
    (dev,) = sshd_devices("stranger")
    inv, known = write_ssh_inventory(tmp_path, [dev], trust=False)
    t = SshTransport(Inventory.load(inv).devices[0], known_hosts=str(known))
    with pytest.raises(HostKeyError, match="edgefarm inventory trust stranger"):
        t.connect()
    # The advice names the files this run used, so it can be pasted as is.
    t = SshTransport(Inventory.load(inv).devices[0], known_hosts=str(known),
                     inventory_path=str(inv))
    with pytest.raises(HostKeyError) as info:
        t.connect()
    assert str(info.value).endswith(
        f"trust it with: edgefarm inventory trust stranger -i {inv} --known-hosts {known}")
    done = edgefarm("inventory", "trust", "stranger", "-i", str(inv), "--known-hosts",
                    str(known), "--yes", tmp=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    t.connect()  # trusted now, by the very command the error gave
    t.close()


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
    client = client_for(t, dev, bundle)
    client.ensure_agent()
    model = sleep_models(tmp_path, 1)[0]
    spec = {"schema": 1, "job_key": "k1", "attempt": 1, "model": model, "backend": "sleep",
            "device": {}, "params": {"prompt_tokens": 1, "gen_tokens": 500, "threads": 1,
                                     "gpu_layers": 0, "repetitions": 8, "warmup": 0}}
    job_dir = client.job_dir("s1", "k1", 1)
    client.start(job_dir, spec)
    events: list[dict[str, Any]] = []
    dropped = restored = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        new = client.read_events(job_dir)
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
    assert client.offset(job_dir) == log.stat().st_size
    assert [json.loads(line)["seq"] for line in log.read_text().splitlines()] == seqs
    t.close()


# -- one exec per cold device: lazy agent, lease folded into the start -------------

def _noop_spec(model: dict[str, Any], key: str, gen_tokens: int = 0) -> dict[str, Any]:
    return {"schema": 1, "job_key": key, "attempt": 1, "model": model, "backend": "sleep",
            "device": {}, "params": {"prompt_tokens": 1, "gen_tokens": gen_tokens,
                                     "threads": 1, "gpu_layers": 0, "repetitions": 1,
                                     "warmup": 0}}


def _count_execs(t: SshTransport) -> list[list[str]]:
    """Record every command the transport runs (and still run it)."""
    sent: list[list[str]] = []
    real = t.exec

    def counting(argv: list[str], stdin: bytes | None = None) -> Stream:
        sent.append(argv)
        return real(argv, stdin)

    t.exec = counting  # type: ignore[method-assign]
    return sent


def test_a_warm_device_first_job_is_one_exec_with_the_lease(tmp_path: Path,
                                                            sshd_devices: Any) -> None:
    (dev,) = sshd_devices("onexec")
    bundle = build(tmp_path / "bundle")
    with transport_for(tmp_path, dev) as t:  # an earlier controller left the agent there
        client_for(t, dev, bundle).ensure_agent()
    model = sleep_models(tmp_path, 1)[0]
    answers: list[dict[str, Any]] = []
    with transport_for(tmp_path, dev) as t:
        sent = _count_execs(t)
        client = client_for(t, dev, bundle)
        job_dir = client.job_dir("s1", "k1", 1)
        lease = LeaseRequest(str(dev.work_dir), "me:1:s1", 60)
        outcome = run_attempt(client, job_dir, _noop_spec(model, "k1"), 60,
                              lambda events: None, lease=lease, on_lease=answers.append)
        assert outcome.state == "done", outcome
        assert len(sent) == 1 and "start" in sent[0] and "--lease-owner" in sent[0]
        assert t._sftp is None, "no SFTP session on the hot path"
    assert answers == [{"ok": True}]
    assert json.loads((dev.work_dir / "lease.json").read_text())["owner"] == "me:1:s1"


def test_a_held_lease_refuses_the_start_and_starts_nothing(tmp_path: Path,
                                                           sshd_devices: Any) -> None:
    (dev,) = sshd_devices("held")
    dev.work_dir.mkdir(parents=True)
    (dev.work_dir / "lease.json").write_text(json.dumps(
        {"owner": "other:42:x", "heartbeat": time.time(), "ttl": 120, "host": "elsewhere"}))
    bundle = build(tmp_path / "bundle")
    model = sleep_models(tmp_path, 1)[0]
    with transport_for(tmp_path, dev) as t:
        client = client_for(t, dev, bundle)
        job_dir = client.job_dir("s1", "k1", 1)
        with pytest.raises(LeaseRefused) as refused:
            run_attempt(client, job_dir, _noop_spec(model, "k1"), 60, lambda events: None,
                        lease=LeaseRequest(str(dev.work_dir), "me:1:s1", 60))
    assert refused.value.kind == "device-leased"
    assert refused.value.answer["holder"] == "other:42:x"
    assert not Path(job_dir).exists(), "a refused start writes no job"
    assert "other:42:x" in (dev.work_dir / "lease.json").read_text()


def test_a_missing_agent_is_uploaded_by_the_start_that_finds_it_missing(
        tmp_path: Path, sshd_devices: Any) -> None:
    (dev,) = sshd_devices("bare")
    bundle = build(tmp_path / "bundle")
    model = sleep_models(tmp_path, 1)[0]
    with transport_for(tmp_path, dev) as t:
        client = client_for(t, dev, bundle)
        agent = client.agent_path
        assert not Path(agent).exists()
        events: list[dict[str, Any]] = []
        job_dir = client.job_dir("s1", "k1", 1)
        outcome = run_attempt(client, job_dir, _noop_spec(model, "k1"), 60, events.extend)
        assert outcome.state == "done", outcome
        assert [e["seq"] for e in events] == list(range(len(events)))
        # the other agent commands deploy it as well (here: it is there now)
        assert client.call("status", job_dir)["state"] == "exited"
    assert Path(agent).read_bytes() == bundle.path.read_bytes()
    unpacked = Path(agent + ".d")  # unpacked and compiled at deploy: no start compiles it
    assert list((unpacked / "agents" / "__pycache__").glob("runner.*.pyc"))
    assert not list(Path(agent).parent.glob("*.tmp*")) and not list(
        Path(agent).parent.glob("*.part"))


def test_home_relative_paths_are_expanded_by_the_remote_shell_only(
        tmp_path: Path, sshd_devices: Any) -> None:
    (dev,) = sshd_devices("home")
    with transport_for(tmp_path, dev) as t:
        home = t.run(["sh", "-c", 'printf %s "$HOME"'], timeout=20).stdout
        out = t.run(["printf", "%s|", "~", f"~/{HOSTILE}", "/abs/~/x", "~user/x"],
                    timeout=20).stdout
    assert out == f"{home}|{home}/{HOSTILE}|/abs/~/x|~user/x|"
    assert not list(Path(".").glob("PWNED*")) and not list(Path("/root").glob("PWNED*"))


def test_a_start_sent_again_starts_nothing_twice(tmp_path: Path, sshd_devices: Any) -> None:
    (dev,) = sshd_devices("again")
    bundle = build(tmp_path / "bundle")
    model = sleep_models(tmp_path, 1)[0]
    spec = json.dumps(_noop_spec(model, "k1", gen_tokens=200)).encode()
    with transport_for(tmp_path, dev) as t:
        client = client_for(t, dev, bundle)
        job_dir = client.job_dir("s1", "k1", 1)
        first = client.call("start", job_dir, stdin=spec)["started"]
        again = client.call("start", job_dir, stdin=spec)["started"]
        assert again in (first, 0)
        client.cancel(job_dir)
    assert int((Path(job_dir) / "agent.pid").read_text()) == first


def test_wrong_passphrase_fails_at_once_naming_the_key_file(
        tmp_path: Path, sshd_devices: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key problem known only at connect time is an AuthError, not a retried unreachable."""
    from sshd_fixture import keygen

    from orchestrator.errors import AuthError

    (dev,) = sshd_devices("locked")
    key = tmp_path / "id_locked"
    pub = keygen(key, passphrase="right-one")
    with open(dev.root / "authorized_keys", "a") as handle:
        handle.write(pub + "\n")
    inv, known = write_ssh_inventory(tmp_path, [dev])
    device = Inventory.load(inv).devices[0].model_copy(
        update={"identity_file": str(key), "passphrase_env": "EDGEFARM_TEST_KEY_PASS"})

    monkeypatch.setenv("EDGEFARM_TEST_KEY_PASS", "right-one")
    with SshTransport(device, known_hosts=str(known)) as t:  # the key itself is good
        assert t.run(["true"], timeout=20).exit_code == 0

    monkeypatch.setenv("EDGEFARM_TEST_KEY_PASS", "wrong")
    started = time.monotonic()
    with pytest.raises(AuthError, match=f"{key}: the passphrase in EDGEFARM_TEST_KEY_PASS"):
        SshTransport(device, known_hosts=str(known)).connect()
    key.unlink()
    with pytest.raises(AuthError, match=f"identity file {key} does not exist"):
        SshTransport(device, known_hosts=str(known)).connect()
    assert time.monotonic() - started < 10  # not the 120 s an unreachable device gets


def test_a_device_without_sftp_gets_the_agent_and_runs_a_job_over_exec(
        tmp_path: Path, client_key: Any, caplog: Any) -> None:
    from sshd_fixture import make_device

    dev = make_device(tmp_path, "minimal", client_key[0], client_key[1], sftp=False)
    try:
        bundle = build(tmp_path / "bundle")
        model = sleep_models(tmp_path, 1)[0]
        with transport_for(tmp_path, dev) as t:
            client = client_for(t, dev, bundle)
            job_dir = client.job_dir("s1", "k1", 1)
            spec = {"schema": 1, "job_key": "k1", "attempt": 1, "model": model,
                    "backend": "sleep", "device": {},
                    "params": {"prompt_tokens": 1, "gen_tokens": 5, "threads": 1,
                               "gpu_layers": 0, "repetitions": 1, "warmup": 0}}
            outcome = run_attempt(client, job_dir, spec, 60, lambda events: None)
            assert outcome.state == "done", outcome
            Path(f"{job_dir}/agent.stderr").write_text("from the device\n")
            assert "from the device" in client.fetch_log(job_dir)  # ``get`` over exec
        assert Path(client.agent_path).read_bytes() == bundle.path.read_bytes()
        assert not list(Path(client.agent_path).parent.glob("*.tmp*"))
        assert [r for r in caplog.records if "no SFTP subsystem" in r.getMessage()]
    finally:
        dev.stop()


def test_known_hosts_travel_as_lines_to_a_node_without_the_file(tmp_path: Path,
                                                               sshd_devices: Any) -> None:
    """A gateway on a site's Ray node gets the controller's known_hosts as content.

    The file is read on the controller (``with_known_hosts_content``) and then
    removed: the transport must trust the device from the lines alone, and
    still refuse a device whose key is not among them.
    """
    from orchestrator.transport import TransportSettings, make_transport

    dev, stranger = sshd_devices("trusted", "untrusted")
    inv, known = write_ssh_inventory(tmp_path, [dev])
    settings = TransportSettings(known_hosts=str(known)).with_known_hosts_content()
    assert settings.known_hosts_lines == (dev.known_hosts_line(),)
    known.unlink()  # as on another node: no such file there
    device = Inventory.load(inv).devices[0]
    with make_transport(device, settings) as t:
        assert t.run(["true"], timeout=20).exit_code == 0
    (tmp_path / "other").mkdir()
    inv2, _ = write_ssh_inventory(tmp_path / "other", [stranger], trust=False)
    with pytest.raises(HostKeyError, match="edgefarm inventory trust untrusted"):
        make_transport(Inventory.load(inv2).devices[0], settings).connect()


def test_bundle_bytes_are_materialized_on_the_node_checked_by_hash(tmp_path: Path) -> None:
    from orchestrator.bundle import BundleMismatch, build_bytes, materialize

    data = build_bytes()
    bundle = build(tmp_path / "controller")
    placed = materialize(data, bundle.sha256, tmp_path / "node")
    assert placed.path.read_bytes() == data and placed.path.parent == tmp_path / "node"
    assert placed.path.name == bundle.path.name
    with pytest.raises(BundleMismatch, match="hash to"):
        materialize(data + b"x", bundle.sha256, tmp_path / "node2")
    assert not (tmp_path / "node2").exists()
