"""Shared fixtures: a real Ray cluster on loopback, device inventories in tmp dirs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray instance for the whole session (start-up costs seconds)."""
    import ray

    from orchestrator.scheduler import ensure_ray

    ensure_ray(["local", "lab"], None)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def client_key(tmp_path_factory):
    """The controller's ssh key pair (private key path, public key line)."""
    from sshd_fixture import keygen

    path = tmp_path_factory.mktemp("client") / "id_ed25519"
    return path, keygen(path)


@pytest.fixture
def sshd_devices(tmp_path, client_key):
    """A factory of running sshd devices; all are stopped after the test."""
    from sshd_fixture import make_device

    started = []

    def factory(*names):
        for name in names:
            started.append(make_device(tmp_path, name, client_key[0], client_key[1]))
        return started[-len(names):]

    yield factory
    for device in started:
        device.stop()
