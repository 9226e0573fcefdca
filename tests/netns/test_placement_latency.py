"""Latency placement on real parts (issue 18): three workers behind userspace UDP relays
(lab/relay.py; no `tc netem` here) with 80, 60 and 20 ms of round trip and some jitter, the real
responder with `placement: latency`, and a real switcher reporting its probes. The responder
moves the client to the fastest worker once the gain has lasted the sustain time, and not
before; jitter then moves nothing.

The switcher runs with --no-gray: its own gray-RTT rule (leave a worker 5x slower than a backup)
is the fast path's business, and this test is about the responder's placement.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers.tools import require_netns
from wg_failover.fleet import dump_fleet
from wg_failover.lab import kit, placement_lab
from wg_failover.lab.netns import NetLab
from wg_failover.lab.procs import poll_until
from wg_failover.lab.relay import front_wireguard

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

PORT = 51820  # the lab fleet's worker endpoint port
SUSTAIN = 10.0
DELAYS = {"w1": 0.040, "w2": 0.030, "w3": 0.010}  # each way: RTT 80, 60, 20 ms


def test_the_responder_moves_the_client_to_its_fastest_worker_after_the_sustain_time(
        netlab, tmp_path):
    sl = kit.build(netlab, tmp_path / "lab")
    rs = sl.gen.fleet.responder.model_copy(update={
        "placement": "latency", "latency_sustain_seconds": SUSTAIN})
    assert sl.fleet_file is not None
    sl.fleet_file.write_text(dump_fleet(sl.gen.fleet.model_copy(update={"responder": rs})))
    relays = [front_wireguard(sl.workers[w].host, sl.workers[w].iface.name, PORT, seed=i,
                              delay=d, jitter=0.004)
              for i, (w, d) in enumerate(DELAYS.items())]
    sw = None
    try:
        sl.start_responder()
        assert sl.responder_url is not None
        # A report every second (heartbeat 1 s): the figures come within the sustain time.
        sw = sl.start_switcher(tmp_path / "state", sl.responder_url, "--no-gray",
                               "--report-every", "1", "--report-heartbeat", "1")
        for w in DELAYS:
            assert sw.wait_for(rf"probe: {w} is up", 30), sw.text()
        t_up = time.monotonic()
        assert sl.route_holder() == "w1"  # preference order until the figures say otherwise

        def assignment() -> dict:
            status, body = sl.http("GET", "/v1/clients/c1/assignment", "c1")
            assert status == 200, body
            assert isinstance(body, dict)
            return body

        assert poll_until(lambda: assignment()["worker"] == "w3", 60, 0.5), assignment()
        waited = time.monotonic() - t_up
        a = assignment()
        assert a["reason"] == "latency", a
        assert waited >= SUSTAIN - 1, waited  # the gain had to last, not just appear
        assert poll_until(lambda: sl.route_holder() == "w3", 10), sw.text()
        # Jitter moves nothing afterwards.
        time.sleep(8)
        assert assignment()["version"] == a["version"] and sl.route_holder() == "w3"
        assert relays[2].stats()["forwarded"]["to"] > 0, "w3's relay carried nothing"
    finally:
        if sw is not None:
            sw.stop()
        for r in relays:
            r.stop()


def test_the_fleet_fills_the_fast_worker_ignores_jitter_and_leaves_it_when_it_slows(tmp_path):
    """The scenario of issue 18, shortened (bench/placement_wg.py runs it at full length): three
    workers at 80, 40 and 5 ms RTT, the 5 ms one with room for two; four clients with real
    switchers land two on the 5 ms worker and two on the 40 ms one; +/-15 ms of jitter (on from
    the start) moves nobody once they are placed; the 5 ms worker at 150 ms loses its clients
    (latency), each once its own hold time since its last latency move is over, and they do not
    come back within the hold time when it is fast again."""
    require_netns()
    sustain, hold = 10.0, 60.0
    with NetLab(f"wfplt{os.getpid() % 100:02d}") as lab:
        pl = placement_lab.build(lab, tmp_path / "lab", {"w1": 80.0, "w2": 40.0, "w3": 5.0}, 4,
                                 capacity={"w3": 2}, jitter_ms=15,
                                 responder={"latency_sustain_seconds": sustain,
                                            "latency_move_interval_seconds": hold})
        try:
            pl.start_responder()
            pl.start_switchers("--no-gray", "--probe-timeout", "400", "--report-every", "1",
                               "--report-heartbeat", "1")
            reached, a, took = placement_lab.wait_for_placement(pl, {"w3": 2, "w2": 2}, 50, 1)
            assert reached, (a, pl.moves())
            assert took >= sustain - 1  # the gains had to last
            assert poll_until(lambda: pl.route_holders() == pl.assignments(), 10), \
                (pl.route_holders(), pl.assignments())
            # Jitter: nobody moves once placed.
            mark = pl.last_event_id()
            time.sleep(8)
            assert pl.moves(mark) == []
            # The fast worker slows down for good: its clients leave it, for latency, each once
            # its hold since its last latency move (if it came by one) is over.
            fast = sorted(c for c, w in pl.assignments().items() if w == "w3")
            came = {m["client"]: m["ts"] for m in pl.moves()
                    if m["data"]["reason"] == "latency" and m["client"] in fast}
            mark = pl.last_event_id()
            t_raise = time.time()
            pl.set_path("w3", rtt_ms=150)
            free = max([t_raise, *(t + hold for t in came.values())])
            assert poll_until(lambda: all(pl.assignments()[c] != "w3" for c in fast),
                              free - time.time() + 30, 1), pl.moves(mark)
            left = {m["client"]: m for m in pl.moves(mark)}
            assert set(left) == set(fast), left
            for c, m in left.items():
                assert m["data"]["reason"] == "latency", m
                assert m["ts"] - t_raise >= sustain - 1, m
                assert m["ts"] >= came.get(c, 0) + hold - 1, (m, came)
            # Fast again: within the hold time none of them comes back.
            mark = pl.last_event_id()
            pl.set_path("w3", rtt_ms=5)
            time.sleep(5)
            back = [m for m in pl.moves(mark) if m["client"] in fast]
            assert back == [], back
            assert time.time() - min(m["ts"] for m in left.values()) < hold  # inside it
            assert poll_until(lambda: pl.route_holders() == pl.assignments(), 10)
        finally:
            pl.stop()
