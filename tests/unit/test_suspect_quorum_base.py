"""Who counts in a suspect quorum's base (responder/intake/suspect.py): a client whose latest
probe report is still within its own freshness (the heartbeat it promised + grace, as the
data-plane vote uses) counts as reporting, so switchers that report only on a change and a
30 s heartbeat do not shrink the base and let fewer voters mark a worker."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from wg_failover.responder.draft import ProbeRecord
from wg_failover.responder.intake.suspect import RECENT, Suspects
from wg_failover.responder.metrics import probe_max_age


class Reads:
    """The three reads `Suspects._reporting` makes of a Draft, on plain data."""

    def __init__(self, now: float, on: dict[str, str], reported: dict[str, float]):
        self.now = now
        self._on = on
        self._reported = reported

    def current_workers(self) -> dict[str, str]:
        return self._on

    def last_probe(self, client: str) -> ProbeRecord | None:
        t = self._reported.get(client)
        return None if t is None else ProbeRecord(t, {})


def base(max_age: dict[str, float] | None, age: float) -> set[str]:
    s = Suspects(CollectorRegistry())
    if max_age is not None:
        s.max_age = lambda c: max_age.get(c, RECENT)
    clients = {f"c{i}": "w1" for i in range(6)}
    d = Reads(1000.0, clients, {c: 1000.0 - age for c in clients})
    return s._reporting(d, "w1", {})  # type: ignore[arg-type]


def test_heartbeating_clients_stay_in_the_base_between_heartbeats() -> None:
    hb = probe_max_age(35.0)  # the switcher's default: heartbeat 30 s + a 5 s check
    assert hb > RECENT
    ages = {f"c{i}": hb for i in range(6)}
    assert len(base(ages, 40.0)) == 6
    assert base(ages, hb + 1) == set()  # silent past its own freshness: out


def test_clients_without_a_heartbeat_keep_the_old_bound() -> None:
    assert len(base(None, RECENT - 1)) == 6
    assert base(None, RECENT + 1) == set()
    assert base({}, 40.0) == set()


def test_suspects_of_a_state_reads_the_votes_freshness() -> None:
    from wg_failover.responder.intake.suspect import suspects_of

    class State:  # weakly referenced, as a ResponderState is
        metrics = SimpleNamespace(collector_registry=CollectorRegistry(),
                                  probe_max_age={"c1": 50.0})

    state = State()
    s = suspects_of(state)
    assert s.max_age("c1") == 50.0 and s.max_age("c2") == RECENT
