"""The routes of a worker's client addresses to its WireGuard interface, through `ip(8)`.

Added with the agent's own protocol number (PROTO), so listing and deleting only ever touch the
routes it made; many changes go in one `ip -batch` process. WG_FAILOVER_IP names another `ip`
(a wrapper that runs it elsewhere, as the tests do for a namespace), like WG_FAILOVER_WG for wg.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable

IP = os.environ.get("WG_FAILOVER_IP", "ip")
PROTO = "119"  # not among iproute2's named protocols (rt_protos)


class RouteError(RuntimeError):
    pass


def _run(args: list[str], stdin: str | None = None, timeout: float = 30.0,
         gone_ok: bool = False) -> str:
    try:
        proc = subprocess.run([IP, *args], input=stdin, capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        raise RouteError(f"`{IP}` not found: install iproute2") from None
    except subprocess.TimeoutExpired:
        raise RouteError(f"`ip {' '.join(args[:3])}` timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        # With -force every line runs; a deleted route that was already gone is no failure.
        errors = [line for line in proc.stderr.splitlines()
                  if line.strip() and not line.startswith("Command failed")]
        if gone_ok and errors and all("No such process" in e for e in errors):
            return proc.stdout
        raise RouteError(f"`ip {' '.join(args[:3])}` failed: "
                         f"{'; '.join(errors)[:300] or proc.returncode}")
    return proc.stdout


def list_routes(interface: str) -> list[str]:
    """The destinations of the agent's routes on `interface` (IPv4 and IPv6)."""
    out = []
    for family in ("-4", "-6"):
        for line in _run([family, "-o", "route", "show", "dev", interface, "proto",
                          PROTO]).splitlines():
            words = line.split()
            if words:
                out.append(words[0])
    return out


def apply_routes(interface: str, add: Iterable[str], delete: Iterable[str]) -> None:
    """Replace (add) and delete routes in one `ip -batch`; deleting one already gone is fine."""
    lines = [f"route del {net} dev {interface} proto {PROTO}" for net in sorted(delete)]
    lines += [f"route replace {net} dev {interface} proto {PROTO}" for net in sorted(add)]
    if lines:
        # -force: a route that is already gone must not stop the rest of the batch.
        _run(["-force", "-batch", "-"], stdin="\n".join(lines) + "\n", gone_ok=True)
