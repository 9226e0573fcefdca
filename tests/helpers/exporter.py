"""The exporter for tests: a `wg show all dump` to read, and the exporter as a process.

    DUMP       wg0 with fra-1's key (tests.helpers.fleets.VALID) and two peers: alice-laptop
               (ALICE; handshake 30 s before NOW, rx 1000, tx 2000) and a STRANGER no fleet
               names that never made a handshake; PRIV is the device's private key
    reading(dump=DUMP, failed=(), up=True) -> the collector's Reading of `dump` at NOW, with the
               `failed` interfaces unreadable and every interface's up flag `up`
    EXPORTER   argv that runs `wg-failover exporter` from the venv under test
    start_worker(host, gen, worker, ifname, listen=..., fleet_path=..., log=None)
               -> (WgInterface, exporter Popen): a lab host as the fleet's `worker`, wireguard-go
               with its rendered config and the exporter reading that interface (output to
               `log`, else discarded); the lab stops both when it closes
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from wg_failover.exporter import system
from wg_failover.exporter.collector import Reading
from wg_failover.exporter.dump import parse_rows
from wg_failover.fleet import Worker
from wg_failover.lab.gen import Generated
from wg_failover.lab.netns import Host, WgInterface
from wg_failover.wgquick import render_worker, strip

from .tools import WG_FAILOVER

EXPORTER = [WG_FAILOVER, "exporter"]

FRA = "DLc1tACgDb/MvA/rVSiiYn85E3jLXHBZ8X1e3wyKyS8="
ALICE = "9DyEKmVoQ1sUfgoBXzhONr0RB6MkVAfGUj9Ajr8WgVM="
STRANGER = base64.b64encode(bytes(range(32))).decode()
PRIV = base64.b64encode(b"\x07" * 32).decode()
NOW = 1_800_000_000

DUMP = (
    f"wg0\t{PRIV}\t{FRA}\t51820\toff\n"
    f"wg0\t{ALICE}\t(none)\t198.51.100.7:40000\t10.66.1.2/32\t{NOW - 30}\t1000\t2000\t25\n"
    f"wg0\t{STRANGER}\t(none)\t(none)\t10.66.1.9/32,fd00::9/128\t0\t0\t0\toff\n"
)


def reading(dump: str = DUMP, failed: tuple[str, ...] | list[str] = (),
            up: bool | None = True) -> Reading:
    d = parse_rows(dump)
    ifaces = {dev: system.IfaceStats(up, 111, 222) for dev in set(d.devices) | set(failed)}
    return Reading(d, list(failed), ifaces, 0.25, (0.5, 0.25, 0.125), NOW)


def start_worker(host: Host, gen: Generated, worker: Worker, ifname: str, *, listen: str,
                 fleet_path: Path, log: Path | None = None
                 ) -> tuple[WgInterface, subprocess.Popen[bytes]]:
    conf = strip(render_worker(gen.fleet, worker, gen.private_keys[worker.name]))
    iface = host.wireguard(ifname, conf, [worker.tunnel_host_cidr])
    argv = [*EXPORTER, "--listen", listen, "--interface", iface.name, "--fleet", str(fleet_path),
            "--worker", worker.name]
    if log is None:
        return iface, host.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with log.open("wb") as out:  # the child keeps its own descriptor
        return iface, host.popen(argv, stdout=out, stderr=subprocess.STDOUT)
