"""Device operations through site gateways (``orchestrator/site_ops.py``), on a real Ray.

These run on the session's single-node Ray (sites ``local`` and ``lab``
declared on this machine) against real sshd devices on 127.0.0.1: the
gateway actors are real, the bundle and known_hosts reach them as content,
and the controller's known_hosts *file* is removed before they start, so a
gateway that read it instead of the lines it was sent fails. A multi-node
cluster with devices reachable only from their site's node is the last
test: two Ray worker nodes started in network namespaces the test creates,
each site's sshd device listening on its namespace's own loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from helpers import write_ssh_inventory

from orchestrator.config.inventory import Inventory
from orchestrator.transport import TransportSettings


def test_probe_and_trust_go_through_the_site_gateway(tmp_path: Path, sshd_devices: Any,
                                                     ray_cluster: Any) -> None:
    from orchestrator.site_ops import host_key_via_gateway, probe_via_gateways

    first, second = sshd_devices("lab-a", "lab-b")
    inv, known = write_ssh_inventory(tmp_path, [first, second], site="lab")
    devices = list(Inventory.load(inv).devices)
    settings = TransportSettings(known_hosts=str(known)).with_known_hosts_content()
    known.rename(tmp_path / "moved-away")  # the gateways must use the lines they were sent
    results = probe_via_gateways(devices, "cluster", settings, tmp_path / "agent")
    assert [r.device for r in results] == ["lab-a", "lab-b"]
    assert all(r.reachable and r.error is None for r in results), results
    assert all(r.facts.get("agent_version") for r in results)
    # The bundle was written to the gateway's node cache, checked by hash.
    assert list((Path("~/.cache/edgefarm/bundles").expanduser()).glob("agent-*.pyz"))

    server = host_key_via_gateway(devices[0], "cluster", settings, tmp_path / "agent")
    assert server.known_hosts_line() == first.known_hosts_line()


# -- two sites, each reachable from its own Ray node only ------------------------------


def _ray(*args: str, site: Any = None, log: Path) -> subprocess.Popen[bytes]:
    """``ray start ... --block`` (in ``site``'s namespace when given), its own process group.

    The head gets a temp dir of its own, so its ``ray_current_cluster`` file
    does not make other tests' ``ray.init()`` join this cluster.
    """
    ray = str(Path(sys.executable).with_name("ray"))
    argv = [ray, "start", *args, "--block", "--num-cpus", "1", "--disable-usage-stats"]
    env = dict(os.environ, RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper="false")
    with open(log, "ab") as out:
        return subprocess.Popen(site.argv(*argv) if site is not None else argv, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _wait_for_resources(address: str, wanted: set[str], deadline_s: float = 120) -> None:
    probe = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR');"
             " print(json.dumps(sorted(ray.cluster_resources())))")
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              timeout=120)
        last = done.stdout + done.stderr
        if done.returncode == 0 and wanted <= set(json.loads(done.stdout.splitlines()[-1])):
            return
        time.sleep(2)
    raise AssertionError(f"the cluster never offered {sorted(wanted)}: {last[-2000:]}")


def _health_through_gateways(tmp_path: Path, inventory: Path, known: Path,
                             address: str) -> None:
    """``edgefarm serve --ray-address``: each device's health read from its site's node."""
    from helpers import EDGEFARM, REPO
    from prometheus_fixture import free_port

    port = free_port()
    serve = subprocess.Popen(
        [*EDGEFARM, "serve", "-r", str(tmp_path / "results"), "-i", str(inventory),
         "--ray-address", address, "--addr", f"127.0.0.1:{port}", "--health-interval", "2"],
        cwd=REPO, env=dict(os.environ, EDGEFARM_KNOWN_HOSTS=str(known)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wanted = [f'edgefarm_device_up{{device="{name}",platform="linux-cpu"}} 1.0'
              for name in ("north-1", "south-1")]
    text = ""
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and serve.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=5) as answer:
                    text = answer.read().decode()
            except OSError:
                text = ""
            if all(line in text for line in wanted):
                break
            time.sleep(1)
    finally:
        serve.terminate()
        out, _ = serve.communicate(timeout=60)
    assert all(line in text for line in wanted), (text[-3000:], out[-3000:])


def test_two_sites_each_reached_only_from_its_own_ray_node(tmp_path: Path,
                                                           client_key: Any) -> None:
    """Site gateways on their own nodes, devices in network namespaces the controller
    cannot reach: probe and a sweep succeed through the sites' nodes, and the same
    probe from the controller fails (so no controller-side shortcut can pass)."""
    from helpers import edgefarm, sleep_models, write_sweep
    from netns_fixture import site_namespaces
    from sshd_fixture import make_device

    from orchestrator.scheduler import site_resource
    from orchestrator.store import Store

    key, pub = client_key
    nodes: list[subprocess.Popen[bytes]] = []
    devices = []
    with site_namespaces("t13", ["north", "south"]) as sites:
        try:
            port = 26379
            address = f"{sites[0].host_ip}:{port}"
            # A short path: Ray's socket names must fit in 107 bytes.
            temp = Path(tempfile.mkdtemp(prefix="efray-", dir="/tmp"))
            nodes.append(_ray("--head", "--node-ip-address", sites[0].host_ip, "--port",
                              str(port), "--include-dashboard=false", "--resources", "{}",
                              "--temp-dir", str(temp), log=tmp_path / "head.log"))
            _wait_for_resources(address, {"node:__internal_head__"})
            for site in sites:  # one at a time: two raylets starting at once time out on 2 cores
                nodes.append(_ray("--address", address, "--node-ip-address", site.ns_ip,
                                  "--resources", json.dumps({site_resource(site.name): 1000}),
                                  site=site, log=tmp_path / f"{site.name}.log"))
                _wait_for_resources(address, {site_resource(site.name)})
            for site in sites:
                devices.append((site, make_device(tmp_path, f"{site.name}-1", key, pub,
                                                  netns=site.netns)))
            inventory = tmp_path / "farm.yaml"
            inventory.write_text(yaml.safe_dump({"devices": [
                {"name": dev.name, "transport": "ssh", "site": site.name,
                 "platform": "linux-cpu", "host": "127.0.0.1", "port": dev.port,
                 "user": "root", "identity_file": str(key), "python": sys.executable,
                 "work_dir": str(dev.work_dir), "models_dir": str(tmp_path / "models")}
                for site, dev in devices]}, sort_keys=False))
            known = tmp_path / "known_hosts"
            known.write_text("".join(dev.known_hosts_line() + "\n" for _, dev in devices))

            direct = edgefarm("inventory", "probe", "-i", str(inventory), "-r",
                              str(tmp_path / "results"), "--known-hosts", str(known),
                              "--timeout", "3", tmp=tmp_path)
            assert direct.returncode == 1, "the controller must not reach the sites' devices"
            through = edgefarm("inventory", "probe", "-i", str(inventory), "-r",
                               str(tmp_path / "results"), "--known-hosts", str(known),
                               "--ray-address", address, tmp=tmp_path, timeout=300)
            assert through.returncode == 0, through.stdout + through.stderr
            assert "north-1" in through.stdout and "south-1" in through.stdout
            _health_through_gateways(tmp_path, inventory, known, address)

            sweep = write_sweep(tmp_path, devices=["north-1", "south-1"],
                                models=sleep_models(tmp_path, 2), backend="sleep",
                                repetitions=2, warmup=0, retries=0,
                                matrix={"prompt_tokens": 1, "gen_tokens": 50, "threads": 1,
                                        "gpu_layers": 0})
            run = edgefarm("sweep", "run", str(sweep), "-i", str(inventory), "-r",
                           str(tmp_path / "results"), "--known-hosts", str(known),
                           "--ray-address", address, "--metrics-addr", "off",
                           tmp=tmp_path, timeout=600)
            assert run.returncode == 0, run.stdout + run.stderr
            store = Store(tmp_path / "results", read_only=True)
            sweep_id = store.latest_sweep_id()
            assert sweep_id is not None
            rows = store.jobs(sweep_id)
            assert {r["device"]: r["state"] for r in rows} == {"north-1": "done",
                                                               "south-1": "done"}
            store.close()
        finally:
            for _, dev in devices:
                dev.stop()
            for node in reversed(nodes):
                try:
                    os.killpg(node.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            for node in reversed(nodes):
                try:
                    node.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(node.pid, signal.SIGKILL)
            if nodes:
                shutil.rmtree(temp, ignore_errors=True)
