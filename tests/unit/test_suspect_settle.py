"""The suspect mark's settle time (responder/intake/suspect.py; chaos campaign, issue 17): the
planner treats a marked worker as unavailable only SETTLE seconds after the quorum, so a switch
report of the same death still in flight lands before the re-plan, and that client is not moved
a second (and, with its report, a third) time for one fault."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from wg_failover.responder.intake.suspect import SETTLE, Mark, Suspects


def up(_worker: str) -> str:
    return "up"


def test_a_settling_mark_is_not_in_force_until_it_settles() -> None:
    s = Suspects(CollectorRegistry())
    s.marks["w1"] = Mark(100.0, 130.0, ("c1", "c2"), settle=100.0 + SETTLE)
    assert s.active(100.0, up) == frozenset()  # the quorum's own change: no re-plan yet
    assert s.active(100.0 + SETTLE / 2, up) == frozenset()
    assert s.active(100.0 + SETTLE, up) == {"w1"}
    assert s.active(129.9, up) == {"w1"}
    assert s.active(130.0, up) == frozenset()  # expired


def test_settle_is_short_against_the_alert_and_long_against_a_report_in_flight() -> None:
    # The campaign saw the third client's report 25 ms after the quorum; an alert takes 8-13 s.
    assert 0.5 <= SETTLE <= 2.0


def test_a_mark_confirmed_while_settling_never_comes_into_force() -> None:
    s = Suspects(CollectorRegistry())
    s.marks["w1"] = Mark(100.0, 130.0, ("c1", "c2"), settle=100.0 + SETTLE)
    assert s.active(100.2, lambda _w: "down") == frozenset()
    assert s.marks["w1"].confirmed
    assert s.active(100.0 + SETTLE, up) == frozenset()  # Prometheus's word took over


def test_voters_answering_again_after_their_vote_are_counted() -> None:
    """A starved machine stalls every tunnel at once: its clients switch away from a worker
    that answers again 100 ms later, and say so in their next probe report. Those reports,
    not older ones, withdraw the mark."""
    from wg_failover.responder.draft import ProbeRecord
    from wg_failover.responder.intake.suspect import answering_again
    from wg_failover.wire import ProbeResult

    mark = Mark(100.0, 130.0, ("c1", "c2", "c3"), settle=101.0,
                voted={"c1": 99.5, "c2": 100.0, "c3": 100.0})
    up, down = ProbeResult(up=True, rtt_ms=3.0), ProbeResult(up=False, rtt_ms=None)
    probes = {"c1": ProbeRecord(99.6, {"w1": up}),  # after its vote, before the mark: counts
              "c2": ProbeRecord(99.9, {"w1": up}),  # before its vote: says nothing
              "c3": ProbeRecord(100.4, {"w1": down})}
    assert answering_again(mark, "w1", probes.get) == ["c1"]
    probes["c3"] = ProbeRecord(100.5, {"w1": up})
    assert answering_again(mark, "w1", probes.get) == ["c1", "c3"]
    assert answering_again(mark, "w2", probes.get) == []  # no result for that worker
