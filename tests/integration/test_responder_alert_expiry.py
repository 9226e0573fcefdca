"""A firing alert that Alertmanager stops repeating (its resolve was lost: an Alertmanager that
lost its notification log never sends it) is taken as resolved after `alert_expire_seconds`, and
a later repeat of the same alert, if it still fires, holds the worker down again (issue 17's
campaign: a worker stayed down for good)."""

from __future__ import annotations

import time

from tests.helpers.responder import ResponderProc, make_fleet
from tests.helpers.wait import wait_until


def state_of(p: ResponderProc, worker: str) -> str:
    workers = p.http("read").get("/v1/workers").json()
    return next(w["state"] for w in workers if w["name"] == worker)


def test_an_alert_not_repeated_expires_and_a_repeat_applies_again(responder_factory):
    gen = make_fleet(workers=3, clients=4)
    rs = gen.fleet.responder.model_copy(update={"alert_expire_seconds": 10,
                                                "hold_down_seconds": 0})
    gen = type(gen)(gen.fleet.model_copy(update={"responder": rs}), gen.private_keys,
                    gen.tokens)
    p = responder_factory(gen)
    starts = "2026-12-01T10:00:00Z"
    # Repeated every 3 s (as Alertmanager's repeat_interval does): held down all along.
    t0 = time.monotonic()
    while time.monotonic() - t0 < 14:
        r = p.alert("w1", starts_at=starts, fingerprint="fp-w1")
        assert r.status_code == 200, r.text
        assert state_of(p, "w1") == "down"
        time.sleep(3)
    # No more repeats: expired, as if resolved (hold-down 0: straight back up).
    wait_until("the alert expired", lambda: state_of(p, "w1") == "up", 20)
    kinds = [e["kind"] for e in p.http("admin").get("/v1/events",
                                                    params={"limit": 1000}).json()["events"]]
    assert "alert-expired" in kinds
    # Alertmanager's next repeat of the same alert (same fingerprint and startsAt): the worker
    # still fails, so it is down again, not dropped as a duplicate.
    assert p.alert("w1", starts_at=starts, fingerprint="fp-w1").status_code == 200
    assert state_of(p, "w1") == "down"
    # ... and after a restart the stored alert holds until it expires again.
    p.restart()
    assert state_of(p, "w1") == "down"
