"""``edgefarm monitor up|status|down`` against the real prometheus binary, on random ports."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from prometheus_fixture import free_port, prometheus_binary
from typer.testing import CliRunner

from orchestrator.cli.monitor_cmd import monitor_app
from orchestrator.monitor import (
    MonitorPaths,
    MonitorSettings,
    PrometheusMissing,
    down,
    find_prometheus,
    render_config,
    status,
    up,
)

runner = CliRunner()


def write_farm(tmp: Path) -> Path:
    """An inventory with the controller, a Mac and a Jetson (ssh), like a real farm."""
    path = tmp / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": [
        {"name": "local", "transport": "local", "platform": "linux-cpu"},
        {"name": "m2pro", "transport": "ssh", "platform": "apple-silicon",
         "host": "127.0.0.1", "user": "bench"},
        {"name": "orin-nano", "transport": "ssh", "platform": "jetson", "host": "127.0.0.1",
         "user": "bench"},
    ]}, sort_keys=False))
    return path


def test_missing_binary_fails_with_the_install_command(tmp_path: Path) -> None:
    try:
        find_prometheus(str(tmp_path / "no-prometheus"))
    except PrometheusMissing as exc:
        assert "sudo apt-get install prometheus" in str(exc)
        assert "brew install prometheus" in str(exc)
    else:
        raise AssertionError("no error for a missing binary")
    result = runner.invoke(monitor_app, ["up", "-r", str(tmp_path),
                                         "--prometheus", str(tmp_path / "no-prometheus")])
    assert result.exit_code == 2, result.output
    assert "apt-get install prometheus" in result.output
    assert not (tmp_path / "prometheus" / "prometheus.pid").exists()


def test_config_scrapes_the_controller_and_the_devices(tmp_path: Path) -> None:
    assert MonitorSettings(results_dir=tmp_path).controller_targets == ("127.0.0.1:9465",), \
        "by default the farm service is the one controller target"
    text = render_config(scrape_interval_s=5, controller_targets=["127.0.0.1:9465"],
                         targets_file=tmp_path / "devices.json",
                         rules_file=tmp_path / "edgefarm.rules.yml")
    config = yaml.safe_load(text)
    assert config["global"]["scrape_interval"] == "5s"
    assert config["rule_files"] == [str(tmp_path / "edgefarm.rules.yml")]
    edgefarm, devices = config["scrape_configs"]
    assert edgefarm["static_configs"][0]["targets"] == ["127.0.0.1:9465"]
    assert devices["file_sd_configs"][0]["files"] == [str(tmp_path / "devices.json")]
    assert yaml.safe_load(render_config(scrape_interval_s=0.5, controller_targets=[],
                                        targets_file=tmp_path))["global"][
        "scrape_interval"] == "500ms"


def wait_targets(results: Path, deadline_s: float = 30) -> dict[str, dict]:
    """Poll status until every target has been scraped once (health not 'unknown')."""
    deadline = time.monotonic() + deadline_s
    while True:
        info = status(results)
        targets = {t["url"]: t for t in info["targets"]}
        if targets and all(t["health"] != "unknown" for t in targets.values()):
            return targets
        assert time.monotonic() < deadline, f"targets never scraped: {info}"
        time.sleep(0.3)


def test_up_status_down_with_the_real_binary(tmp_path: Path) -> None:
    prometheus_binary()  # fails the test, with the install hint, when missing
    results = tmp_path / "results"
    listen, sweep_port, serve_port = free_port(), free_port(), free_port()
    mac_port, node_port = free_port(), free_port()
    settings = MonitorSettings(
        results_dir=results, listen=f"127.0.0.1:{listen}", scrape_interval_s=1,
        controller_targets=(f"127.0.0.1:{sweep_port}", f"127.0.0.1:{serve_port}"),
        inventory=write_farm(tmp_path), macmon_port=mac_port, node_exporter_port=node_port,
        serve_addr=f"127.0.0.1:{serve_port}",
        health_interval_s=0)  # health readings: tests/test_farm_service.py
    paths = MonitorPaths.under(results)
    try:
        info = up(settings)
        assert info["running"] and info["url"] == f"http://127.0.0.1:{listen}"
        assert info["serve"]["running"]
        assert paths.rules.read_text().startswith("# Written by `python -m orchestrator.alerts")
        assert paths.data.is_dir() and paths.pid.exists()
        device_targets = json.loads(paths.targets.read_text())
        assert device_targets == [
            {"targets": [f"127.0.0.1:{mac_port}"], "labels": {
                "device": "m2pro", "platform": "apple-silicon", "exporter": "macmon"}},
            {"targets": [f"127.0.0.1:{node_port}"], "labels": {
                "device": "orin-nano", "platform": "jetson", "exporter": "node_exporter"}}]

        targets = wait_targets(results)
        serve = targets[f"http://127.0.0.1:{serve_port}/metrics"]
        assert serve["job"] == "edgefarm" and serve["health"] == "up"
        # No sweep runs and the devices run no exporter here: down, with a reason.
        assert targets[f"http://127.0.0.1:{sweep_port}/metrics"]["health"] == "down"
        mac = targets[f"http://127.0.0.1:{mac_port}/metrics"]
        assert (mac["job"], mac["device"], mac["health"]) == ("devices", "m2pro", "down")
        assert mac["last_error"]

        # Up again is harmless: the same Prometheus keeps running.
        pid = info["pid"]
        assert up(settings)["pid"] == pid

        result = runner.invoke(monitor_app, ["status", "-r", str(results)],
                               env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert f"running (pid {pid}) at http://127.0.0.1:{listen}" in result.output
        assert "orin-nano" in result.output and "down" in result.output
    finally:
        stopped = down(results)
    assert len(stopped) == 2, stopped
    assert not status(results)["running"]
    for pid_file in (paths.pid, paths.serve_pid):
        assert not pid_file.exists()
    assert not _alive(info["pid"]) and not _alive(info["serve"]["pid"])
    result = runner.invoke(monitor_app, ["status", "-r", str(results)])
    assert result.exit_code == 1 and "not running" in result.output
    assert "nothing was running" in runner.invoke(monitor_app,
                                                  ["down", "-r", str(results)]).output


def test_cli_up_prints_the_url_and_a_bad_port_is_reported(tmp_path: Path) -> None:
    results = tmp_path / "results"
    listen = free_port()
    args = ["-r", str(results), "--listen", f"127.0.0.1:{listen}", "--no-serve",
            "--scrape-interval", "1", "--sweep-exporter", f"127.0.0.1:{free_port()}"]
    try:
        result = runner.invoke(monitor_app, ["up", *args])
        assert result.exit_code == 0, result.output
        assert f"prometheus: http://127.0.0.1:{listen}" in result.output
        assert not status(results)["serve"]["running"]
        # A second Prometheus on the same port (another results dir) fails with the
        # reason from its log, not a hang.
        other = runner.invoke(monitor_app, ["up", "-r", str(tmp_path / "other"), "--listen",
                                            f"127.0.0.1:{listen}", "--no-serve"])
        assert other.exit_code == 1
        assert "address already in use" in other.output
        assert not (tmp_path / "other" / "prometheus" / "prometheus.pid").exists()
    finally:
        assert "prometheus" in runner.invoke(monitor_app, ["down", "-r", str(results)]).output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"


def test_device_exporters_listed_in_the_inventory_become_file_sd_targets(tmp_path: Path) -> None:
    from orchestrator.config.inventory import Inventory
    from orchestrator.errors import ConfigError
    from orchestrator.monitor import device_targets

    path = tmp_path / "farm.yaml"
    path.write_text(yaml.safe_dump({"devices": [
        {"name": "orin", "transport": "ssh", "platform": "jetson", "host": "10.0.0.5",
         "user": "bench", "exporters": [{"name": "jtop", "port": 9017},
                                        {"name": "node_exporter", "port": 9100,
                                         "path": "/probe/metrics"}]},
        {"name": "m2", "transport": "ssh", "platform": "apple-silicon", "host": "10.0.0.6",
         "user": "bench", "exporters": []},
        {"name": "box", "transport": "ssh", "platform": "nvidia-gpu", "host": "10.0.0.7",
         "user": "bench"},
    ]}, sort_keys=False))
    assert device_targets(Inventory.load(path).devices) == [
        {"targets": ["10.0.0.5:9017"],
         "labels": {"device": "orin", "platform": "jetson", "exporter": "jtop"}},
        {"targets": ["10.0.0.5:9100"],
         "labels": {"device": "orin", "platform": "jetson", "exporter": "node_exporter",
                    "__metrics_path__": "/probe/metrics"}},
        {"targets": ["10.0.0.7:9100"],  # none listed: the platform's usual one
         "labels": {"device": "box", "platform": "nvidia-gpu", "exporter": "node_exporter"}},
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"devices": [
        {"name": "orin", "transport": "ssh", "platform": "jetson", "host": "10.0.0.5",
         "user": "bench", "exporters": [{"name": "jtop", "port": 9017,
                                         "path": "metrics; rm -rf /"}]}]}))
    with pytest.raises(ConfigError) as info:
        Inventory.load(bad)
    assert "exporters" in str(info.value) and "path" in str(info.value)
