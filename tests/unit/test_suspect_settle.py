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
