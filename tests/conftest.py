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
