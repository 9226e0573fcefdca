"""client/report_policy.py: probe reports on a change that matters plus a heartbeat; jitter never
sends one. Plain data, time an argument: no I/O."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.health import WorkerHealth
from client.report_policy import (
    MAX_HEARTBEAT,
    ReportPolicy,
    Sent,
    Summary,
    Tracker,
    decide,
    heartbeat_to_send,
    loss_step,
    rtt_moved,
)
from wg_failover.wire import ClientEvent, ProbeEvent, ProbeResult

P = ReportPolicy()


def r(up: bool = True, rtt: float | None = 10.0, loss: float = 0.0) -> ProbeResult:
    return ProbeResult(up=up, rtt_ms=rtt if up else None, loss=loss)


def sent(at: float = 0.0, active: str | None = "w1", **workers: ProbeResult) -> Sent:
    return Sent(at, Summary(active, workers or {"w1": r(), "w2": r()}))


def cur(active: str | None = "w1", **workers: ProbeResult) -> Summary:
    return Summary(active, workers or {"w1": r(), "w2": r()})


def test_the_first_summary_is_always_sent():
    assert decide(None, cur(), 0.0).send


def test_nothing_changed_nothing_sent_until_the_heartbeat():
    last = sent(at=100.0)
    assert not decide(last, cur(), 100.0 + P.heartbeat - 0.01).send
    d = decide(last, cur(), 100.0 + P.heartbeat)
    assert d.send and d.why == "heartbeat"
    assert decide(last, cur(), 100.0 + 7, ReportPolicy(heartbeat=5)).why == "heartbeat"


def test_up_down_active_and_worker_set_changes_are_sent_at_once():
    last = sent()
    assert decide(last, cur(w1=r(), w2=r(up=False)), 0.1).why == "w2 down"
    assert decide(sent(w1=r(), w2=r(up=False)), cur(), 0.1).why == "w2 up"
    assert decide(last, cur(active="w2"), 0.1).why == "active w1 -> w2"
    assert decide(last, cur(w1=r()), 0.1).why == "workers changed"
    assert decide(last, cur(w1=r(), w2=r(), w3=r()), 0.1).why == "workers changed"


@pytest.mark.parametrize(("before", "after", "moved"), [
    (10.0, 29.9, False), (10.0, 30.0, True),  # small RTTs: 20 ms is the bound
    (100.0, 149.0, False), (100.0, 150.0, True), (100.0, 51.0, False), (100.0, 50.0, True),
    (0.3, 3.0, False),  # a LAN going 0.3 -> 3 ms is jitter, not news
])
def test_rtt_change_must_be_large(before, after, moved):
    assert rtt_moved(before, after, P) is moved
    d = decide(sent(w1=r(rtt=before)), cur(w1=r(rtt=after)), 1.0)
    assert d.send is moved
    if moved:
        assert d.why.startswith("w1 rtt ")


def test_slow_rtt_drift_adds_up_against_the_last_sent_figure():
    t = Tracker()
    t.record(cur(w1=r(rtt=10.0)), 0.0)
    sends = []
    for i in range(1, 40):  # +1 ms a check: never 20 ms between two checks, but 20 in all
        s = cur(w1=r(rtt=10.0 + i))
        if t.due(s, i).send:
            sends.append(i)
            t.record(s, i)
    assert sends == [20]  # 30 ms is 20 more than the 10 last sent; then 30 + 20 is not reached


def test_an_rtt_appearing_is_news_a_down_worker_has_none():
    assert decide(sent(w1=r(rtt=None)), cur(w1=r(rtt=4.0)), 1.0).why == "w1 rtt known"
    assert not decide(sent(w1=r(rtt=4.0)), cur(w1=r(rtt=None)), 1.0).send
    assert not decide(sent(w1=r(up=False)), cur(w1=r(up=False, loss=1.0)), 1.0).send


def test_loss_crossing_a_step_with_hysteresis():
    assert loss_step(0.0, P.loss_steps) == 0 and loss_step(0.2, P.loss_steps) == 1
    assert loss_step(0.6, P.loss_steps) == 2
    low = sent(w1=r(loss=0.02))
    assert not decide(low, cur(w1=r(loss=0.18)), 1.0).send
    assert decide(low, cur(w1=r(loss=0.20)), 1.0).why == "w1 loss 0.02 -> 0.20"
    high = sent(w1=r(loss=0.24))
    assert not decide(high, cur(w1=r(loss=0.12)), 1.0).send  # above half the step: stays
    assert decide(high, cur(w1=r(loss=0.08)), 1.0).send  # under half of 0.2: back down
    assert decide(high, cur(w1=r(loss=0.5)), 1.0).send  # the next step


@settings(max_examples=300, deadline=None)
@given(rtt=st.floats(0.05, 2000.0), factor=st.floats(0.0, 0.999),
       sign=st.sampled_from([-1, 1]), loss=st.floats(0.0, 0.099),
       loss_now=st.floats(0.0, 0.199), age=st.floats(0.0, P.heartbeat - 1e-6))
def test_jitter_alone_never_sends(rtt, factor, sign, loss, loss_now, age):
    bound = max(P.rtt_abs_ms, P.rtt_ratio * rtt)
    now_rtt = max(0.0, rtt + sign * factor * bound)
    last = sent(at=1000.0, w1=r(rtt=rtt, loss=loss), w2=r(up=False))
    d = decide(last, cur(w1=r(rtt=now_rtt, loss=loss_now), w2=r(up=False)), 1000.0 + age)
    assert not d.send, d.why


@settings(max_examples=200, deadline=None)
@given(a=st.booleans(), b=st.booleans(), age=st.floats(0.0, 1e6))
def test_an_up_down_change_is_sent_whatever_else(a, b, age):
    d = decide(sent(w1=r(up=a), w2=r()), cur(w1=r(up=b), w2=r()), age)
    assert d.send is (a != b or age >= P.heartbeat)


def test_real_health_under_jitter_and_light_loss_sends_heartbeats_only():
    """An hour of 100 ms probes through client.health (its smoothed RTT and loss window), RTT
    jittering +-40 % around 30 ms with 2 % loss, checked every 5 s: heartbeats only."""
    rng = random.Random(7)
    hs = {w: WorkerHealth(w) for w in ("w1", "w2")}
    t = Tracker()
    whys = []
    now = 0.0
    for step in range(36_000):
        now = step * 0.1
        for h in hs.values():
            if rng.random() < 0.02:
                h.record_miss(now, k=3)
            else:
                h.record_reply(0.030 * rng.uniform(0.6, 1.4), now)
        if step % 50 == 0:
            s = Summary("w1", {w: h.summary() for w, h in hs.items()})
            d = t.due(s, now)
            if d.send:
                whys.append(d.why)
                t.record(s, now)
    # The first summary has no RTT yet (the first answer is not a sample): then it is news.
    assert whys[:2] == ["first", "w1 rtt known"], whys
    rest = whys[2:]
    assert set(rest) == {"heartbeat"}, whys
    assert len(rest) == pytest.approx(3600 / 30, abs=2)


def test_a_dead_worker_is_sent_once_then_heartbeats():
    h = WorkerHealth("w1")
    t = Tracker()
    for i in range(20):
        h.record_reply(0.01, i * 0.1)
    t.record(Summary("w1", {"w1": h.summary()}), 2.0)
    for i in range(3):
        h.record_miss(2.1 + i * 0.1, k=3)
    whys = []
    for now in (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0):
        h.record_miss(now, k=3)
        s = Summary("w1", {"w1": h.summary()})
        if (d := t.due(s, now)).send:
            whys.append(d.why)
            t.record(s, now)
    assert whys == ["w1 down", "heartbeat"]  # down at 5 s, then the heartbeat at 35 s


def test_heartbeat_to_send_covers_a_report_off_the_check_grid():
    assert heartbeat_to_send(30, 5) == 35  # last report just after a check: up to 35 s
    assert heartbeat_to_send(30, 60) == 90
    assert heartbeat_to_send(290, 20) == MAX_HEARTBEAT
    with pytest.raises(ValueError):
        ReportPolicy(heartbeat=0)


def test_the_heartbeat_field_is_optional_and_bounded_on_the_wire():
    old = {"type": "probe", "workers": {"w1": {"up": True, "rtt_ms": 1.0, "loss": 0.0}}}
    assert ClientEvent.validate_python(old, strict=True).heartbeat_s is None
    assert ProbeEvent(workers={}).model_dump(mode="json") == {"type": "probe", "workers": {}}
    new = ClientEvent.validate_python({**old, "heartbeat_s": 35}, strict=True)
    assert new.heartbeat_s == 35.0
    assert new.model_dump(mode="json")["heartbeat_s"] == 35.0
    for bad in (0, -1, 301, "30", True, None.__class__):
        with pytest.raises(ValueError):
            ClientEvent.validate_python({**old, "heartbeat_s": bad}, strict=True)


# --------------------------------------------------------------------------- the switcher's use


def test_tracker_for_a_switcher_says_its_heartbeat():
    t = Tracker.for_switcher(30.0, 5.0)
    assert (t.policy.heartbeat, t.heartbeat_s) == (30.0, 35.0)


def _switcher(report_every: float, heartbeat: float):
    from client.decisions import Decider, Settings
    from client.reporter import Reporter
    from client.switcher import Options, Switcher
    from tests.helpers.responder import make_fleet

    fleet = make_fleet(2, 1).fleet
    client = fleet.clients[0]
    sw = Switcher(fleet, client, Options(interface="wfrp0", report_every=report_every,
                                         report_heartbeat=heartbeat), Path("/nonexistent"),
                  reporter=Reporter("http://127.0.0.1:9", client.name, None))
    sw.decider = Decider(sw.prefs, Settings(k=2), active=sw.prefs[0])
    return sw


def test_the_switcher_reports_up_down_at_once_with_its_heartbeat():
    sw = _switcher(5.0, 30.0)
    sw.handle(sw.decider.on_reply("w1", 0.002, 0.0))  # w1 comes up: reported at once
    [ev] = list(sw.reporter.queue)
    assert ev["type"] == "probe" and ev["heartbeat_s"] == 35.0 and ev["workers"]["w1"]["up"]
    assert ClientEvent.validate_python(ev, strict=True).heartbeat_s == 35.0
    # ...and is the last one sent: the next check has nothing new to say.
    assert not sw.reports.due(sw.probe_summary(), time.monotonic()).send


def test_the_switcher_loop_sends_heartbeats_not_a_report_per_check():
    sw = _switcher(0.01, 0.1)  # checks every 10 ms, heartbeat 100 ms
    for w in sw.prefs:
        sw.handle(sw.decider.on_reply(w, 0.002, 0.0))
    first = sw.reports.sent

    async def run() -> None:
        task = asyncio.create_task(sw._report_probes())
        await asyncio.sleep(0.55)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    # About 50 checks: 5 heartbeats (scheduling noise: 3 to 6), nothing else changed.
    assert 3 <= sw.reports.sent - first <= 6, sw.reports.sent
    assert sw.reports.skipped >= 30
    assert all(e["heartbeat_s"] == pytest.approx(0.11) for e in sw.reporter.queue)


def test_a_long_heartbeat_is_taken_as_the_longest():
    sw = _switcher(5.0, 1000.0)
    assert sw.reports.policy.heartbeat == 120.0 and sw.reports.heartbeat_s == 125.0


def test_reaching_the_responder_again_sends_the_summary_at_the_next_check():
    t = Tracker()
    seen = []
    hook = t.on_connected(seen.append)
    s = cur()
    t.record(s, 0.0)
    hook(True)  # connected (at the start, or one more long-poll answer): nothing to resend
    assert not t.due(s, 1.0).send
    hook(False)
    assert not t.due(s, 2.0).send  # while away, nothing new either (the reporter retries)
    hook(True)  # back: it may have restarted and forgotten every report
    assert t.due(s, 3.0).why == "first"
    assert seen == [True, False, True]  # the source's own callback still runs


def test_the_responders_advice_lengthens_the_heartbeat_never_shortens_it():
    t = Tracker.for_switcher(30.0, 5.0)
    s = cur()
    t.record(s, 0.0)
    assert not t.advise(None)  # an older responder: the switcher's own stands
    assert not t.advise(0.5)  # a small fleet: shorter than its own, which stands
    assert (t.policy.heartbeat, t.heartbeat_s) == (30.0, 35.0)
    assert t.due(s, 31.0).send  # its own heartbeat is due at 30 s
    assert t.advise(50.0)  # 100,000 clients at the default budget
    assert (t.policy.heartbeat, t.heartbeat_s) == (50.0, 55.0)
    # The last report promised 35 s: the next check says the new heartbeat at once, so the
    # vote does not lapse in between; then 50 s of quiet.
    assert t.due(s, 1.0).why == "first"
    t.record(s, 1.0)
    assert not t.due(s, 40.0).send and t.due(s, 51.0).send
    assert not t.advise(50.0)  # the same advice changes nothing (no extra report)
    assert t.advise(1000.0) and t.policy.heartbeat == 120.0  # at most the longest
    assert t.advise(10.0) and t.policy.heartbeat == 30.0  # back to its own, not below


def test_the_switcher_takes_the_advice_from_its_reporter():
    sw = _switcher(5.0, 30.0)
    assert sw.reporter.on_advice == sw.reports.take_advice
    sw.reporter.on_advice(75.0)
    assert sw.reports.policy.heartbeat == 75.0 and sw.reports.heartbeat_s == 80.0
    sw.handle(sw.decider.on_reply("w1", 0.002, 0.0))
    assert list(sw.reporter.queue)[-1]["heartbeat_s"] == 80.0


def test_advice_is_read_from_the_answer_or_left_out():
    from client.reporter import advice_of

    assert advice_of(b'{"accepted": true, "heartbeat_s": 50}') == 50.0
    assert advice_of(b'{"accepted": true}') is None  # an older responder
    for bad in (b"", b"<html>proxy</html>", b'{"heartbeat_s": -1}', b'{"heartbeat_s": 1e9}',
                b'{"heartbeat_s": "50"}x', b"[1]"):
        assert advice_of(bad) is None, bad
