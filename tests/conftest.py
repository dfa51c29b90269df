"""Shared fixtures: a real Ray cluster on loopback, device inventories in tmp dirs.

Also the guard that fails a test reading ``../shared`` beside the checkout
(tests/outside_reads.py): a fresh clone has no such folder.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from outside_reads import READS, audit_hook

# Installed once, as this file is imported: before any test module is
# collected, so a read at import or collection time is caught too.
sys.addaudithook(audit_hook)


@pytest.fixture(autouse=True)
def _no_reads_outside_the_repository():
    """Fail the test that read outside the repository, even if it caught the error."""
    before = len(READS)
    yield
    made = READS[before:]
    if made:
        pytest.fail("read outside the repository (a fresh clone fails here): "
                    + "; ".join(made), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run for reads outside any test (collection, session fixtures)."""
    if READS and session.exitstatus == 0:
        session.exitstatus = 1
    if READS:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_sep("=", "reads outside the repository", red=True)
            for read in READS:
                reporter.write_line(read, red=True)


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


@pytest.fixture
def tmpfs(tmp_path):
    """A real 8 MiB filesystem (tmpfs), so that it can really be filled."""
    from helpers import mount

    where = tmp_path / "small-disk"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=8m", "edgefarm-test", str(where))
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)
