"""The monitoring stack files: provisioning, Prometheus configs, docker-compose.

No Docker engine runs here, but compose's own validation needs none:
``docker compose config`` (the plugin) where it is installed, else Debian's
``docker-compose`` 1.29, which ``make test`` installs. Neither present is a
failure, not a skip. The PyYAML structure check below adds what compose does
not enforce (pinned images, loopback ports).
The Prometheus configs are checked by the real ``promtool``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO

from orchestrator.dashboards import DATASOURCE_UID
from orchestrator.grafana_push import DATASOURCE_FIELDS, DEFAULT_FOLDER

STACK = REPO / "dashboards"
COMPOSE = STACK / "docker-compose.yml"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose_command() -> list[str] | None:
    """The compose CLI to validate with: the docker plugin, else docker-compose 1.x."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True,
                               text=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_datasource_provisioning_matches_the_push() -> None:
    doc = load(STACK / "provisioning" / "datasources" / "edgefarm.yaml")
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["uid"] == DATASOURCE_UID
    assert {k: ds[k] for k in DATASOURCE_FIELDS} == DATASOURCE_FIELDS
    assert ds["url"] == "http://prometheus:9090"  # the compose service name


def test_dashboard_provider_points_at_the_mounted_json() -> None:
    doc = load(STACK / "provisioning" / "dashboards" / "edgefarm.yaml")
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["folderUid"] == DEFAULT_FOLDER
    grafana = load(COMPOSE)["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"]
                  if v.startswith("./"))
    assert mounts["./grafana"] == provider["options"]["path"]
    assert mounts["./provisioning"] == "/etc/grafana/provisioning"
    assert sorted(p.name for p in (STACK / "grafana").glob("*.json")) == [
        "farm-overview.json", "moe-vs-dense.json", "sweep-progress.json"]


@pytest.mark.parametrize(("name", "host"), [("prometheus.yml", "127.0.0.1"),
                                            ("prometheus-compose.yml", "host.docker.internal")])
def test_prometheus_configs(name: str, host: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package 'prometheus')")
    path = STACK / name
    doc = load(path)
    # promtool reads the rule files too: lay them out as Prometheus sees them (the
    # compose container mounts the rules at /etc/prometheus/).
    (tmp_path / "prometheus").mkdir()
    rules = (STACK / "prometheus" / "edgefarm.rules.yml").read_text()
    (tmp_path / "prometheus" / "edgefarm.rules.yml").write_text(rules)
    checked_path = tmp_path / name
    checked_path.write_text(path.read_text().replace(
        "/etc/prometheus/edgefarm.rules.yml", "prometheus/edgefarm.rules.yml"))
    checked = subprocess.run([promtool, "check", "config", str(checked_path)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout + checked.stderr
    (job,) = doc["scrape_configs"]
    # The farm service alone: devices, the running sweep and the last finished one.
    assert job["static_configs"] == [{"targets": [f"{host}:9465"]}]
    # $__rate_interval is computed from the datasource's timeInterval: keep them equal.
    assert doc["global"]["scrape_interval"] == DATASOURCE_FIELDS["jsonData"]["timeInterval"]


def test_compose_file_structure() -> None:
    """What PyYAML can check: services, pinned images, loopback ports, mounts that exist."""
    doc = load(COMPOSE)
    services = doc["services"]
    assert set(services) == {"prometheus", "grafana"}
    for name, service in services.items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and tag[0] in "v0123456789", (name, image)
        for port in service["ports"]:
            assert port.startswith("127.0.0.1:"), (name, port)
        for volume in service["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (STACK / source).exists(), (name, source)
            else:
                assert source in doc["volumes"], (name, source)
    prom = services["prometheus"]
    assert "host.docker.internal:host-gateway" in prom["extra_hosts"]
    assert "./prometheus-compose.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    assert "./prometheus/edgefarm.rules.yml:/etc/prometheus/edgefarm.rules.yml:ro" in \
        prom["volumes"]
    assert prom["image"] == "prom/prometheus:v3.14.0"
    assert services["grafana"]["image"] == "grafana/grafana:13.2.0"
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]


def test_compose_config_by_docker_compose() -> None:
    """Compose itself validates the file (no engine needed for ``config``)."""
    command = compose_command()
    if command is None:
        pytest.fail("neither `docker compose` nor `docker-compose` is installed "
                    "(make test installs Debian's docker-compose)")
    checked = subprocess.run([*command, "-f", str(COMPOSE), "config", "--quiet"],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
