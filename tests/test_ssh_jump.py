"""ProxyJump: a device reached through a bastion, both real sshd servers on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import edgefarm, write_ssh_inventory

from orchestrator.config.inventory import Inventory
from orchestrator.errors import HostKeyError
from orchestrator.transport.ssh import SshTransport


def jump_inventory(tmp: Path, bastion: Any, target: Any) -> tuple[Path, Path]:
    inv, known = write_ssh_inventory(tmp, [bastion, target])
    data = yaml.safe_load(inv.read_text())
    data["devices"][1]["proxy_jump"] = f"root@127.0.0.1:{bastion.port}"
    inv.write_text(yaml.safe_dump(data))
    return inv, known


def test_device_behind_a_bastion(tmp_path: Path, sshd_devices: Any) -> None:
    bastion, target = sshd_devices("bastion", "inner")
    inv, known = jump_inventory(tmp_path, bastion, target)
    device = Inventory.load(inv).device("inner")
    with SshTransport(device, known_hosts=str(known)) as t:
        result = t.run(["sh", "-c", "echo $SSH_CONNECTION"], timeout=20)
    # The inner sshd saw the connection come from the bastion's forwarding.
    assert result.exit_code == 0 and result.stdout.split()[2] == "127.0.0.1"
    assert result.stdout.split()[3] == str(target.port)


def test_the_bastion_key_is_checked_too(tmp_path: Path, sshd_devices: Any) -> None:
    bastion, target = sshd_devices("bastion", "inner")
    inv, known = jump_inventory(tmp_path, bastion, target)
    known.write_text(target.known_hosts_line() + "\n")  # the bastion is not trusted
    device = Inventory.load(inv).device("inner")
    with pytest.raises(HostKeyError):
        SshTransport(device, known_hosts=str(known)).connect()


def test_trust_through_the_bastion(tmp_path: Path, sshd_devices: Any) -> None:
    bastion, target = sshd_devices("bastion", "inner")
    inv, known = jump_inventory(tmp_path, bastion, target)
    known.write_text(bastion.known_hosts_line() + "\n")
    run = edgefarm("inventory", "trust", "inner", "-i", str(inv), "--known-hosts", str(known),
                   "--yes", tmp=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert target.known_hosts_line() in known.read_text()
