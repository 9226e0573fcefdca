"""The root namespace on a lab's bridge: for servers run here (Prometheus, the blackbox
exporter) that must reach the lab's hosts by their underlay addresses, as in a deployment.

    free_subnet(first, thirds, seed) -> the first `{first}.X.0/24` (X from `thirds`, starting at
        `seed`) that no route of the root namespace overlaps; unavailable (skip, fail in CI) when
        every one is taken
    add_root_link(lab, address, prefixlen) -> the name of a veth from the root namespace into the
        lab's bridge, with `address` on it; it dies with the lab's hub namespace
    del_link(name): remove it sooner (no error when it is gone already)
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess

from wg_failover.lab.netns import NetLab

from .tools import unavailable


def _root_routes() -> list[ipaddress.IPv4Network]:
    # Routes of every table: connected subnets, the local table's own addresses, policy routes.
    out = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"],
                         capture_output=True, text=True, timeout=10).stdout
    nets = []
    for line in out.splitlines():
        words = line.split()
        dest = "0.0.0.0/0" if words[0] == "default" else words[0]
        if dest in ("broadcast", "local", "unreachable", "blackhole", "prohibit", "throw"):
            dest = words[1]
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(dest, strict=False))
    return nets


def free_subnet(first: str, thirds: range, seed: int) -> ipaddress.IPv4Network:
    used = [n for n in _root_routes() if n.prefixlen]  # a default route overlaps everything
    for k in range(len(thirds)):
        net = ipaddress.ip_network(f"{first}.{thirds[(seed + k) % len(thirds)]}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    unavailable(f"no free {first}.X.0/24 (X in {thirds.start}..{thirds.stop - 1}) for the "
                "root namespace's link into the lab")


def add_root_link(lab: NetLab, address: str, prefixlen: int) -> str:
    name = f"{lab.prefix}-root"
    for argv in (["link", "add", name, "type", "veth", "peer", "name", "vroot", "netns", lab.hub],
                 ["-n", lab.hub, "link", "set", "vroot", "master", "br0", "up"],
                 ["addr", "add", f"{address}/{prefixlen}", "dev", name],
                 ["link", "set", name, "up"]):
        subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=20)
    return name


def del_link(name: str) -> None:
    # Normally gone with the hub namespace already (deleting one veth end deletes both).
    subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)
