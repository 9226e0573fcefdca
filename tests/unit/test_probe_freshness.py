"""responder/metrics.py: how long a client's probe report stays a data-plane vote. A report that
carries its heartbeat stays one for the heartbeat plus a grace; one without (older switchers,
`--once`) for PROBE_MAX_AGE, as before. Real prometheus_client collectors, explicit times."""

from __future__ import annotations

import time

import pytest

from responder.metrics import (
    HEARTBEAT_GRACE,
    PROBE_MAX_AGE,
    Metrics,
    Snapshot,
    probe_max_age,
)
from responder.planner import WorkerView
from wg_failover.wire import ProbeResult


def votes(probes: dict, max_age: dict) -> tuple[float | None, float | None]:
    """(wgfo_client_observed_up, wgfo_client_observed_reporters) for w1."""
    m = Metrics()
    m.probe_max_age.update(max_age)
    m.watch(lambda: Snapshot(workers={"w1": WorkerView("w1")}, assignments={}, streams_open=0,
                             unplaceable=0, probes=probes))
    reg = m.collector_registry
    return (reg.get_sample_value("wgfo_client_observed_up", {"worker": "w1"}),
            reg.get_sample_value("wgfo_client_observed_reporters", {"worker": "w1"}))


def test_the_window_comes_from_the_heartbeat():
    assert probe_max_age(None) == PROBE_MAX_AGE == 30.0
    assert probe_max_age(35.0) == 35.0 + HEARTBEAT_GRACE == 50.0
    assert probe_max_age(5.0) == PROBE_MAX_AGE  # never shorter than before
    assert probe_max_age(300.0) == 315.0


@pytest.mark.parametrize(("age", "heartbeat", "counted"), [
    (29.0, None, True), (31.0, None, False),  # an older switcher: 30 s, as always
    (31.0, 35.0, True), (49.0, 35.0, True),  # heartbeats every 35 s: its vote holds
    (51.0, 35.0, False),  # ...and goes once a heartbeat and the grace passed in silence
])
def test_a_vote_holds_for_its_window_and_not_longer(age, heartbeat, counted):
    now = time.time()
    down = {"w1": ProbeResult(up=False, loss=1.0)}
    max_age = {} if heartbeat is None else {"c1": probe_max_age(heartbeat)}
    share, n = votes({"c1": (now - age, down)}, max_age)
    assert n == (1.0 if counted else 0.0)
    assert share == (0.0 if counted else None)


def test_each_client_has_its_own_window():
    now = time.time()
    up = {"w1": ProbeResult(up=True, rtt_ms=3.0, loss=0.0)}
    down = {"w1": ProbeResult(up=False, loss=1.0)}
    probes = {"old": (now - 40, up), "hb": (now - 40, down), "fresh": (now - 1, up)}
    share, n = votes(probes, {"hb": probe_max_age(35.0), "gone": 99.0})
    assert (share, n) == (0.5, 2.0)  # "old" (no heartbeat, 40 s) is out; "hb" and "fresh" in


def test_the_rebuild_window_covers_the_longest_default_heartbeat():
    from responder.limits import REPORT_BUDGET
    from responder.metrics import rebuild_window

    # 30 s heartbeat + a 5 s check + the grace: every default switcher was heard by then.
    assert rebuild_window(1000, REPORT_BUDGET) == 50.0
    # 100,000 clients: the advice (50 s) + a check + the grace.
    assert rebuild_window(100_000, REPORT_BUDGET) == 70.0
    assert rebuild_window(10**7, REPORT_BUDGET) == 140.0  # the advice's cap, 120 s


@pytest.mark.parametrize("rebuilding", [True, False])
def test_the_gauge_says_whether_the_votes_are_being_rebuilt(rebuilding):
    m = Metrics()
    m.watch(lambda: Snapshot(workers={"w1": WorkerView("w1")}, assignments={}, streams_open=0,
                             unplaceable=0, probes={}, votes_rebuilding=rebuilding))
    value = m.collector_registry.get_sample_value("wgfo_responder_votes_rebuilding")
    assert value == (1.0 if rebuilding else 0.0)
