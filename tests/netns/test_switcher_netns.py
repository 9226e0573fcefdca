"""The switcher as a real process on real wireguard-go in network namespaces.

One client, three workers each holding the service address 10.99.0.1 behind its tunnel. The
responder is cut off here (its address answers nothing), so everything below is the fast path
and the on-disk cache; the follow path is in test_switcher_follow.py.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from wg_failover.client import cache
from wg_failover.client.cache import cache_path
from wg_failover.lab import kit
from wg_failover.lab.procs import poll_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

CUT_OFF = "http://198.18.0.254:9"  # on the lab's underlay, but no host: the responder is away


def test_fast_path_fails_over_without_responder_and_restart_resumes(netlab, tmp_path):
    sl = kit.build(netlab, tmp_path / "lab")
    state = tmp_path / "state"
    sw = sl.start_switcher(state, CUT_OFF, "--metrics-listen", "127.0.0.1:9587")
    for w in sl.prefs():
        assert sw.wait_for(rf"probe: {w} is up", 15), sw.text()
    assert sl.route_holder() == "w1"

    ping = sl.start_ping(0.01)
    try:
        assert poll_until(lambda: len(ping.snapshot()) > 20, 10), "no ping replies"
        rx_w2 = sl.worker_rx_from_client("w2")
        killed_at = time.time()
        sl.kill_worker("w1")
        m = sw.wait_for(r"switch w1 -> (w\d) \(failover\) after \d+ ms: w1 missed \d probes", 10)
        assert m, sw.text()
        assert m.group(1) == "w2"
        # Traffic to the service flows again, through the backup's peer.
        assert poll_until(lambda: len(ping.replies_after(killed_at)) > 20, 10)
        assert sl.route_holder() == "w2"
        assert sl.worker_rx_from_client("w2") > rx_w2
        peers = sl.client_peers()
        assert set(peers["w2"]) == {"10.99.0.0/24", "10.66.0.2/32"}
        assert peers["w1"] == ("10.66.0.1/32",)  # w1 stays a peer, with its tunnel /32 only

        # The switcher's own metrics (namespace-local port, read from inside the namespace).
        status, text = kit.ns_request(sl.client_host, "GET", "http://127.0.0.1:9587/metrics")
        assert status == 200
        assert 'wgfo_switcher_active_worker{worker="w2"} 1.0' in text
        assert 'wgfo_switcher_switches_total{kind="failover"} 1.0' in text
        assert 'wgfo_switcher_worker_up{worker="w1"} 0.0' in text
        assert re.search(r'wgfo_switcher_probe_rtt_seconds\{worker="w3"\} [0-9.e-]+', text)
        assert sl.gen.tokens["c1"] not in text

        assert sw.stop() == 0
        cached = json.loads(cache_path(state, "c1").read_text())
        assert cached["active"] == "w2"

        # Restart: resume from the interface and the cache, without touching the active peer.
        before = sl.client_peers()
        n_before = len(ping.snapshot())
        sw2 = sl.start_switcher(state, CUT_OFF)
        assert sw2.wait_for(r"resume: routes are on w2; keeping it", 15), sw2.text()
        assert sw2.wait_for(r"probe: w2 is up", 15), sw2.text()
        assert sw2.wait_for(r"probe: w1 is down", 15), sw2.text()
        assert poll_until(lambda: len(ping.snapshot()) > n_before + 50, 10)
        text = sw2.text()
        assert "switch " not in text and "reconcile: peer" not in text, text
        assert sl.client_peers() == before
        assert sw2.stop() == 0
    finally:
        ping.stop()


def test_once_reconciles_missing_peers_and_keepalives(netlab, tmp_path):
    sl = kit.build(netlab, tmp_path / "lab")
    assert sl.client_iface is not None
    iface = sl.client_iface.name
    w2, w3 = sl.fleet.worker("w2"), sl.fleet.worker("w3")
    sl.client_host.run(["wg", "set", iface, "peer", w3.public_key, "remove"])
    sl.client_host.run(["wg", "set", iface, "peer", w2.public_key, "persistent-keepalive", "0"])
    active_before = sl.client_peers()["w1"]
    # A cache that disagrees with the interface (as after a reboot: wg-quick put the routes back
    # on the config's first worker): the interface wins, the responder is asked again.
    state = tmp_path / "state"
    cache.save(cache_path(state, "c1"), cache.CachedState("c1", "w2", 5))

    sw = sl.start_switcher(state, "http://127.0.0.1:9", "--once")
    assert sw.proc.wait(30) == 0, sw.text()
    text = sw.text()
    assert "reconcile: peer w3: missing peer" in text
    assert "reconcile: peer w2: no keepalive" in text
    assert "reconcile: peer w1" not in text
    dump = {p.public_key: p for p in sl.client_iface.dump().peers}
    assert dump[w3.public_key].allowed_ips == (w3.tunnel_host_cidr,)
    assert dump[w3.public_key].persistent_keepalive == 25
    assert dump[w2.public_key].persistent_keepalive == 25
    assert sl.client_peers()["w1"] == active_before
    assert "responder unreachable" in text
    assert "routes are on w1; keeping it (the cache said w2; the interface wins" in text
    assert cache.load(cache_path(state, "c1"), "c1") == cache.CachedState("c1", "w1", 0)



def test_recreated_interface_gets_its_routes_back(netlab, tmp_path):
    sl = kit.build(netlab, tmp_path / "lab")
    sw = sl.start_switcher(tmp_path / "state", CUT_OFF)
    for w in sl.prefs():
        assert sw.wait_for(rf"probe: {w} is up", 15), sw.text()
    sl.kill_worker("w1")
    assert sw.wait_for(r"switch w1 -> w2 \(failover\)", 10), sw.text()

    # wg-quick down/up: a new interface, routes back on w1 (its config's first worker), dead.
    offset = len(sw.text())
    sl.restart_client_interface()
    assert sl.route_holder() == "w1"
    assert sw.wait_for(r"drift: routes on w1, expected on w2; restoring", 15, offset), sw.text()
    assert poll_until(lambda: sl.route_holder() == "w2", 10)
    assert sw.wait_for(r"probe: socket bound to \S+ again", 5, offset), sw.text()
    ping = sl.start_ping(0.05)
    try:
        assert poll_until(lambda: len(ping.snapshot()) > 5, 15)
    finally:
        ping.stop()
    assert sw.stop() == 0
