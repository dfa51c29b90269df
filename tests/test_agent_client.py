"""One job protocol over every transport: the agent client on ``local`` and on ``ssh``.

The local device and the ssh device (a real sshd on 127.0.0.1) run the same
job through the same ``AgentClient``; both must send the same agent
commands and produce the same event sequence. A static check keeps the wire
constants (file names, exit statuses, error kinds) in ``agents/protocol.py``
alone.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from helpers import REPO, sleep_models, write_inventory, write_ssh_inventory

from agents import protocol
from orchestrator.agent_client import AgentClient
from orchestrator.bundle import build
from orchestrator.config.inventory import Inventory
from orchestrator.jobrunner import run_attempt
from orchestrator.transport import TransportSettings, make_transport
from orchestrator.transport.base import Stream, Transport


def _spec(model: dict[str, Any]) -> dict[str, Any]:
    return {"schema": 1, "job_key": "k1", "attempt": 1, "model": model, "backend": "sleep",
            "device": {}, "params": {"prompt_tokens": 1, "gen_tokens": 20, "threads": 1,
                                     "gpu_layers": 0, "repetitions": 3, "warmup": 1}}


def _recording(t: Transport) -> list[list[str]]:
    """Every argv the transport runs (still run)."""
    sent: list[list[str]] = []
    real = t.exec

    def exec_and_record(argv: list[str], stdin: bytes | None = None) -> Stream:
        sent.append(list(argv))
        return real(argv, stdin)

    t.exec = exec_and_record  # type: ignore[method-assign]
    return sent


def _run_one(device: Any, settings: TransportSettings, bundle: Any, model: dict[str, Any]
             ) -> tuple[list[dict[str, Any]], list[list[str]], str]:
    transport = make_transport(device, settings)
    transport.connect()
    sent = _recording(transport)
    try:
        client = AgentClient(transport, device.work_dir, bundle.path, bundle.sha256)
        job_dir = client.job_dir("s1", "k1", 1)
        events: list[dict[str, Any]] = []
        outcome = run_attempt(client, job_dir, _spec(model), 60, events.extend)
        assert outcome.state == "done", outcome
    finally:
        transport.close()
    return events, sent, client.agent_path


def _shape(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The event sequence without what depends on timing (samples, heartbeats)."""
    return [(e["kind"], e.get("phase") or e.get("status") or e.get("warmup"))
            for e in events if e["kind"] not in (protocol.EV_SAMPLE, protocol.EV_HEARTBEAT)]


def test_local_and_ssh_run_the_same_commands_and_events(tmp_path: Path,
                                                        sshd_devices: Any) -> None:
    bundle = build(tmp_path / "bundle")
    model = sleep_models(tmp_path, 1)[0]
    (tmp_path / "l").mkdir()
    (tmp_path / "s").mkdir()
    local_dev = Inventory.load(write_inventory(tmp_path / "l", ["here"])).devices[0]
    (sshd,) = sshd_devices("there")
    inv, known = write_ssh_inventory(tmp_path / "s", [sshd])
    ssh_dev = Inventory.load(inv).devices[0]

    local_events, local_sent, local_agent = _run_one(local_dev, TransportSettings(), bundle,
                                                     model)
    ssh_events, ssh_sent, ssh_agent = _run_one(ssh_dev, TransportSettings(str(known)), bundle,
                                               model)

    assert _shape(local_events) == _shape(ssh_events)
    assert _shape(local_events)[0] == (protocol.EV_HELLO, None)
    assert local_events[-1]["kind"] == protocol.EV_RESULT
    assert [e["seq"] for e in local_events] == list(range(len(local_events)))

    def agent_commands(sent: list[list[str]], agent: str) -> list[list[str]]:
        return [argv[argv.index(agent) + 1:] for argv in sent if agent in argv]

    # Both devices were bare: the start found no agent (exit 199), the client
    # uploaded it and ran the same start again, which streamed the whole job.
    for sent, agent, dev in ((local_sent, local_agent, local_dev),
                             (ssh_sent, ssh_agent, ssh_dev)):
        commands = agent_commands(sent, agent)
        job_dir = f"{dev.work_dir}/jobs/s1/k1-a1"
        assert commands[0] == ["start", job_dir, "--follow"], commands
        assert commands[-1] == ["start", job_dir, "--follow"], commands
        assert ["prepare"] in commands
    assert [c[:1] for c in agent_commands(local_sent, local_agent)] == \
        [c[:1] for c in agent_commands(ssh_sent, ssh_agent)]


def _local_client(tmp_path: Path) -> tuple[AgentClient, Transport, dict[str, Any]]:
    bundle = build(tmp_path / "bundle")
    model = sleep_models(tmp_path, 1)[0]
    device = Inventory.load(write_inventory(tmp_path, ["here"])).devices[0]
    transport = make_transport(device, TransportSettings())
    transport.connect()
    client = AgentClient(transport, device.work_dir, bundle.path, bundle.sha256)
    client.ensure_agent()
    return client, transport, model


def test_a_warm_local_device_spends_one_exec_per_job(tmp_path: Path) -> None:
    client, transport, model = _local_client(tmp_path)
    sent = _recording(transport)
    outcome = run_attempt(client, client.job_dir("s1", "k1", 1), _spec(model), 60,
                          lambda events: None)
    transport.close()
    assert outcome.state == "done"
    (argv,) = sent
    assert argv[argv.index(client.agent_path) + 1:] == [
        "start", client.job_dir("s1", "k1", 1), "--follow"]


def _wire_literals() -> tuple[set[str], set[int]]:
    # "cancelled" and "timeout" are also job states and option names: not wire-only.
    strings = {protocol.JOB_FILE, protocol.PID_FILE, protocol.EVENTS_FILE,
               protocol.STDERR_FILE, protocol.EXIT_FILE, protocol.LEASE_FILE}
    strings |= set(protocol.ERROR_KINDS) - {protocol.ERR_CANCELLED, protocol.ERR_TIMEOUT}
    strings.add(protocol.MANIFEST_FILE)
    return strings, {protocol.EXIT_AGENT_MISSING, protocol.EXIT_AGENT_CORRUPT}


def test_wire_constants_are_written_once() -> None:
    """No module but agents/protocol.py spells a file name, an exit status or an error kind."""
    strings, ints = _wire_literals()
    found = []
    for package in ("agents", "orchestrator"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "protocol.py" and path.parent.name == "agents":
                continue
            tree = ast.parse(path.read_text())
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                          and node.body and isinstance(node.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if not isinstance(node, ast.Constant) or id(node) in docstrings:
                    continue
                value = node.value
                if (isinstance(value, str) and value in strings) or (
                        type(value) is int and value in ints):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {value!r}")
    assert not found, "wire constants outside agents/protocol.py:\n" + "\n".join(found)


def test_a_changed_byte_in_the_deployed_zipapp_is_refused_and_replaced(tmp_path: Path) -> None:
    client, transport, model = _local_client(tmp_path)
    agent = Path(client.agent_path)
    genuine = agent.read_bytes()
    data = bytearray(genuine)
    data[5] ^= 0x01  # in the shebang line: the zip itself still loads
    agent.write_bytes(bytes(data))
    refused = transport.run(client.argv("version"), timeout=30)
    assert refused.exit_code == protocol.EXIT_AGENT_CORRUPT
    assert str(agent) in refused.stderr
    sent = _recording(transport)
    outcome = run_attempt(client, client.job_dir("s1", "k1", 1), _spec(model), 60,
                          lambda events: None)
    transport.close()
    assert outcome.state == "done", outcome
    assert agent.read_bytes() == genuine  # removed and uploaded again
    assert any(argv[:2] == ["rm", "-rf"] for argv in sent)


def test_an_edited_unpacked_copy_is_discarded_and_the_genuine_code_runs(tmp_path: Path) -> None:
    client, transport, model = _local_client(tmp_path)
    runner = Path(client.agent_path + ".d") / "agents" / "runner.py"
    assert runner.is_file()  # deploy ran ``prepare``
    marker = tmp_path / "tampered-code-ran"
    runner.write_text(runner.read_text()
                      + f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    outcome = run_attempt(client, client.job_dir("s1", "k1", 1), _spec(model), 60,
                          lambda events: None)
    transport.close()
    assert outcome.state == "done", outcome
    assert not marker.exists()
    assert str(marker) not in runner.read_text()  # unpacked again from the zip
