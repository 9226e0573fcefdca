"""A dual-stack lab fails over on an IPv6-only service address (issue 18).

The client has an IPv4 tunnel address and, through the fleet's `extra_addresses`, an IPv6 one;
the workers keep IPv4 tunnel addresses (probed with ICMP) and each serves 10.99.0.1 and the
IPv6-only fd99::1. The client routes both prefixes on its active worker. Its IPv6 traffic to
fd99::1 leaves from fd66:1::2, which each worker's peer entry for the client allows (the fleet's
rendering; without it the worker's cryptokey routing drops it). A killed worker is left on the
probes alone and the IPv6 traffic comes back through the backup.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.tools import require_netns
from wg_failover.lab import kit
from wg_failover.lab.gen import generate_fleet
from wg_failover.lab.netns import NetLab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

SERVICE6 = "fd99::1"
ROUTES = ("10.99.0.0/24", "fd99::/64")
CLIENT6 = "fd66:1::2/128"


def build_dual(lab: NetLab, workdir: Path) -> kit.SwitcherLab:
    gen = generate_fleet(3, 1, routes=ROUTES, responder_url="http://198.18.0.2:8080")
    f = gen.fleet
    gen.fleet = f.model_copy(update={"clients": [
        c.model_copy(update={"extra_addresses": [CLIENT6]}) for c in f.clients]})
    return kit.build_from(lab, gen, workdir, service_addresses=(f"{SERVICE6}/128",))


def test_a_dual_stack_client_fails_over_on_an_ipv6_only_service(tmp_path):
    require_netns()
    with NetLab(f"wfpld{os.getpid() % 100:02d}") as lab:
        sl = build_dual(lab, tmp_path / "lab")
        assert sl.client_host is not None
        # Every worker allows both of the client's addresses.
        for node in sl.workers.values():
            (peer,) = node.iface.dump().peers
            assert set(peer.allowed_ips) == {sl.client.host_cidr, CLIENT6}
        sw = sl.start_switcher(tmp_path / "state", "http://198.18.0.254:9")
        try:
            for w in sl.prefs():
                assert sw.wait_for(rf"probe: {w} is up", 20), sw.text()
            assert sl.route_holder() == "w1"
            gap = kit.kill_and_ping(sl, sw, SERVICE6, ipv6=True)
            peers = sl.client_peers()
            assert set(peers["w2"]) == {*ROUTES, "10.66.0.2/32"}
            assert gap < 2.0, gap
            print(f"dual-stack: IPv6-only service gap {gap * 1000:.0f} ms over the failover")
        finally:
            sw.stop()
