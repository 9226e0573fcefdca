"""IPv6 tunnel addresses are probed with ICMPv6 like IPv4 ones (issue 18): a lab whose workers
have IPv6 tunnel addresses and whose client routes both an IPv4 and an IPv6 prefix fails over,
on the probes alone, for traffic to an IPv6-only service address.

This client's only tunnel address is IPv6 (fd66:1::2/128; tests/netns/test_dual_stack.py has
both) and its traffic to the IPv6 service is what is measured; the underlay stays IPv4.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wg_failover.lab import kit
from wg_failover.lab.gen import generate_fleet
from wg_failover.lab.netns import NetLab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

SERVICE6 = "fd99::1"
ROUTES = ("10.99.0.0/24", "fd99::/64")


def build_v6(lab: NetLab, workdir: Path) -> kit.SwitcherLab:
    """kit.build's lab with IPv6 tunnel addresses (fd66::N) and the service also on fd99::1."""
    gen = generate_fleet(3, 1, routes=ROUTES, responder_url="http://198.18.0.2:8080")
    f = gen.fleet
    workers = [w.model_copy(update={"tunnel_address": f"fd66::{i + 1}"})
               for i, w in enumerate(f.workers)]
    clients = [c.model_copy(update={"address": "fd66:1::2/128"}) for c in f.clients]
    gen.fleet = f.model_copy(update={"workers": workers, "clients": clients})
    return kit.build_from(lab, gen, workdir, service_addresses=(f"{SERVICE6}/128",))


def test_ipv6_tunnels_are_probed_and_fail_over_an_ipv6_only_service(netlab, tmp_path):
    sl = build_v6(netlab, tmp_path / "lab")
    assert sl.client_host is not None
    sw = sl.start_switcher(tmp_path / "state", "http://198.18.0.254:9")
    try:
        for w in sl.prefs():
            assert sw.wait_for(rf"probe: {w} is up", 20), sw.text()
        assert "IPv6 tunnel address" not in sw.text()
        assert sl.route_holder() == "w1"
        kit.kill_and_ping(sl, sw, SERVICE6, ipv6=True)
        peers = sl.client_peers()
        assert set(peers["w2"]) == {*ROUTES, "fd66::2/128"}
        assert peers["w1"] == ("fd66::1/128",)
        assert sw.stop() == 0
    finally:
        sw.stop()
