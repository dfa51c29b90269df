"""Network namespaces the test creates itself: one per site, joined to this host by a veth pair.

Site ``i`` gets namespace ``ef-<tag>-<i>`` with address ``10.231.<i>.2``; the
host side of its veth is ``10.231.<i>.1``, and the namespace routes
everything else through it (the host forwards between sites while the test
runs, and puts ``net.ipv4.ip_forward`` back afterwards). A server that
listens on 127.0.0.1 *inside* a namespace (the sites' sshd devices) is
reachable from that namespace only: the host's loopback is another one. So
a controller that tried to reach such a device itself, instead of through
the site's Ray node, fails.

Needs root and iproute2 (as CI has); a refusal fails the test, it is never a
skip. Everything is removed on exit, also after a failure.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} refused (needs root and iproute2): "
                             f"{done.stderr.strip()}")


@dataclass(frozen=True)
class Site:
    """One site's namespace: its name and the two ends of its link to the host."""

    name: str
    netns: str
    host_ip: str
    ns_ip: str

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]


@contextmanager
def site_namespaces(tag: str, names: list[str]) -> Iterator[list[Site]]:
    sites = [Site(name, f"ef-{tag}-{i}", f"10.231.{i + 1}.1", f"10.231.{i + 1}.2")
             for i, name in enumerate(names)]
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    saved = forward.read_text().strip()
    made: list[Site] = []
    try:
        for i, site in enumerate(sites):
            host_if, ns_if = f"ef{tag[:6]}{i}h", f"ef{tag[:6]}{i}n"
            ip("netns", "add", site.netns)
            made.append(site)
            ip("-n", site.netns, "link", "set", "lo", "up")
            ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            ip("link", "set", ns_if, "netns", site.netns)
            ip("addr", "add", f"{site.host_ip}/24", "dev", host_if)
            ip("link", "set", host_if, "up")
            ip("-n", site.netns, "addr", "add", f"{site.ns_ip}/24", "dev", ns_if)
            ip("-n", site.netns, "link", "set", ns_if, "up")
            ip("-n", site.netns, "route", "add", "default", "via", site.host_ip)
        forward.write_text("1\n")
        yield sites
    finally:
        forward.write_text(saved + "\n")
        for i, site in enumerate(made):
            for pid in subprocess.run(["ip", "netns", "pids", site.netns], capture_output=True,
                                      text=True).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", site.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", f"ef{tag[:6]}{i}h"], capture_output=True)
