"""The Ray that edgefarm starts listens on loopback only (issue 10, item 10).

Real Ray, started by ``ensure_ray`` in a child process as ``sweep run`` does;
every TCP socket that the child or any process under it (GCS, raylet,
workers, agents) listens on is read from ``ss -ltnp`` and must be on
127.0.0.1 or ::1 (or 127.0.0.1 mapped into IPv6). Ray 2.60 otherwise binds them to every interface.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO

START = """
import sys
from orchestrator.scheduler import ensure_ray
ensure_ray(["local", "lab"], None)
import ray
@ray.remote(num_cpus=0)
def ping():
    return "pong"
assert ray.get(ping.remote()) == "pong"  # a worker process is up too
print("ready", flush=True)
sys.stdin.read()
"""

USERS = re.compile(r'\("([^"]*)",pid=(\d+),fd=\d+\)')


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def test_edgefarm_started_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", START], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", line + proc.stdout.read(4000)
        time.sleep(1.0)  # agents Ray starts after init get their ports too
        ours = descendants(proc.pid)
        listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True,
                                   check=True).stdout.splitlines()
        sockets = []
        for row in listening:
            owners = {(name, int(pid)) for name, pid in USERS.findall(row)}
            if any(pid in ours for _, pid in owners):
                sockets.append((row.split()[3], sorted(owners)))
        assert len(sockets) >= 3, sockets  # GCS, raylet and a worker at least
        loopback = ("127.0.0.1:", "[::1]:", "[::ffff:127.0.0.1]:")  # the last: v4 on a v6 socket
        exposed = [s for s in sockets if not s[0].startswith(loopback)]
        assert not exposed, f"Ray listens beyond loopback: {exposed}"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=60)
