"""Smart placement on the real responder (issue 18): suspect workers from a quorum of clients'
fast-path switch reports, and latency placement from their probe reports."""

from __future__ import annotations

import time

from tests.helpers.responder import ResponderProc, make_fleet, unlimited_reports
from tests.helpers.wait import wait_until
from wg_failover.lab.gen import Generated
from wg_failover.responder.intake.suspect import SETTLE

WINDOW = 2.0
EXPIRE = 5.0


def start(factory, clients: int = 9, **settings) -> ResponderProc:
    gen = make_fleet(3, clients)
    rs = gen.fleet.responder.model_copy(update={
        "suspect_window_seconds": WINDOW, "suspect_expire_seconds": EXPIRE, **settings})
    gen = Generated(gen.fleet.model_copy(update={"responder": rs}), gen.private_keys, gen.tokens)
    return factory(gen, args=unlimited_reports())


def report(p: ResponderProc, client: str, body: dict) -> None:
    with p.http(client) as h:
        r = h.post(f"/v1/clients/{client}/events", json=body)
    assert r.status_code == 202, r.text


def assignments(p: ResponderProc) -> dict[str, dict]:
    out = {}
    for c in p.fleet.clients:
        with p.http(c.name) as h:
            out[c.name] = h.get(f"/v1/clients/{c.name}/assignment").json()
    return out


def events(p: ResponderProc, kind: str) -> list[dict]:
    with p.http("admin") as h:
        page = h.get("/v1/events", params={"limit": 10000}).json()["events"]
    return [e for e in page if e["kind"] == kind]


def on(p: ResponderProc, worker: str) -> list[str]:
    return sorted(c for c, a in assignments(p).items() if a["worker"] == worker)


def all_probe(p: ResponderProc) -> None:
    """Every client reports once (so each counts as a recently reporting client)."""
    for c in p.fleet.clients:
        report(p, c.name, {"type": "probe", "workers": {w.name: {"up": True, "rtt_ms": 5}
                                                         for w in p.fleet.workers}})


def switch(p: ResponderProc, client: str, frm: str, to: str) -> None:
    report(p, client, {"type": "switch", "from_worker": frm, "to_worker": to,
                       "reason": "3 probes lost", "elapsed_ms": 300})


def test_one_clients_reports_never_move_others(responder_factory):
    p = start(responder_factory)
    all_probe(p)
    time.sleep(WINDOW + 0.2)  # assignments older than the window: their clients may vote
    w1 = on(p, "w1")
    assert len(w1) >= 3, assignments(p)
    before = assignments(p)
    liar = w1[0]
    other = next(c for c, a in before.items() if a["worker"] != "w1")
    switch(p, other, "w1", "w3")  # not on w1: no vote
    for _ in range(5):  # however often it says so, one client is one vote
        switch(p, liar, "w1", "w2")
    after = assignments(p)
    for c in w1[1:]:
        assert after[c] == before[c], c  # nobody else moved, not even a new version
    assert events(p, "worker-suspect") == []
    assert p.metric('wgfo_worker_suspect_marks_total{outcome="marked"}') == 0


def test_quorum_marks_suspect_replans_its_clients_and_the_mark_expires(responder_factory):
    p = start(responder_factory)
    all_probe(p)
    time.sleep(WINDOW + 0.2)
    w1 = on(p, "w1")
    assert len(w1) == 3, assignments(p)  # quorum max(2, 30 % of 3) = 2
    switch(p, w1[0], "w1", "w2")
    assert events(p, "worker-suspect") == []
    switch(p, w1[1], "w1", "w3")
    (mark,) = events(p, "worker-suspect")
    assert mark["worker"] == "w1" and mark["data"]["count"] == 2
    # Its remaining client is re-planned by the responder, away from w1, once the mark settled
    # (SETTLE: switch reports of the same death still in flight land first).
    wait_until("the suspect re-plan", lambda: assignments(p)[w1[2]]["reason"] == "suspect",
               SETTLE + 3)
    now = assignments(p)  # all read after the re-plan
    assert now[w1[2]]["worker"] != "w1" and now[w1[2]]["reason"] == "suspect"
    assert all("w1" not in a["backups"] for a in now.values())
    assert p.metric('wgfo_worker_suspect{worker="w1"}') == 1
    # Prometheus never confirms it: the mark expires and w1 takes clients again.
    t0 = time.monotonic()
    (end,) = wait_until("the suspect mark to end", lambda: events(p, "worker-suspect-end"),
                        EXPIRE + 5)
    assert end["data"]["outcome"] == "expired" and time.monotonic() - t0 < EXPIRE + 2
    assert p.metric('wgfo_worker_suspect_marks_total{outcome="expired"}') == 1
    assert p.metric('wgfo_worker_suspect{worker="w1"}') == 0
    assert "w1" in assignments(p)[w1[2]]["backups"]
    # Sticky: nobody went back on its own.
    assert on(p, "w1") == []


def test_a_switch_reported_while_the_mark_settles_is_not_moved_again(responder_factory):
    """The campaign's race (issue 17, docs/chaos.md): three clients leave a dead w1 by their
    fast path at the same moment; the first two reports make the quorum, the third arrives a
    moment later. The re-plan must not move that third client a second time (to another
    worker than the one it chose), nor anyone twice."""
    p = start(responder_factory)
    all_probe(p)
    time.sleep(WINDOW + 0.2)
    w1 = on(p, "w1")
    assert len(w1) == 3, assignments(p)
    before = assignments(p)
    switch(p, w1[0], "w1", "w2")
    switch(p, w1[1], "w1", "w3")
    assert len(events(p, "worker-suspect")) == 1
    switch(p, w1[2], "w1", "w2")  # in flight when the quorum formed
    time.sleep(SETTLE + 1)  # the re-plan ran
    after = assignments(p)
    assert after[w1[2]]["worker"] == "w2" and after[w1[2]]["reason"] != "suspect", after
    # Each client moved once, by its own switch (later versions only drop w1 from the backups).
    moves = [e for e in events(p, "move")
             if e["client"] in w1 and e["data"]["reason"] != "initial"]
    assert sorted((e["client"], e["data"]["reason"]) for e in moves) == [
        (c, "client-switch") for c in w1], moves
    assert all(after[c]["version"] > before[c]["version"] for c in w1)


def test_a_mark_whose_voters_reach_the_worker_again_is_withdrawn(responder_factory):
    """The campaign under CPU starvation (docs/chaos.md): two clients' tunnels stalled for
    ~200 ms at once and they left w1, which answered them again 100 ms later. Their next probe
    reports say so before the mark settles: nobody else is moved for it."""
    p = start(responder_factory)
    all_probe(p)
    time.sleep(WINDOW + 0.2)
    w1 = on(p, "w1")
    assert len(w1) == 3, assignments(p)
    switch(p, w1[0], "w1", "w2")
    switch(p, w1[1], "w1", "w3")
    assert len(events(p, "worker-suspect")) == 1
    for c in w1[:2]:
        report(p, c, {"type": "probe", "workers": {w.name: {"up": True, "rtt_ms": 5}
                                                   for w in p.fleet.workers}})
    (end,) = wait_until("the mark withdrawn", lambda: events(p, "worker-suspect-end"),
                        SETTLE + 3)
    assert end["data"]["outcome"] == "withdrawn" and sorted(end["data"]["clients"]) == w1[:2]
    time.sleep(0.5)
    assert assignments(p)[w1[2]]["worker"] == "w1"  # not moved
    assert [e for e in events(p, "move") if e["data"]["reason"] == "suspect"] == []
    assert p.metric('wgfo_worker_suspect_marks_total{outcome="withdrawn"}') == 1
    assert p.metric('wgfo_worker_suspect{worker="w1"}') == 0


def test_a_confirmed_mark_ends_confirmed(responder_factory):
    p = start(responder_factory)
    all_probe(p)
    time.sleep(WINDOW + 0.2)
    w1 = on(p, "w1")
    switch(p, w1[0], "w1", "w2")
    switch(p, w1[1], "w1", "w3")
    assert len(events(p, "worker-suspect")) == 1
    assert p.alert("w1").status_code == 200
    (end,) = wait_until("the suspect mark to end", lambda: events(p, "worker-suspect-end"),
                        EXPIRE + 5)
    assert end["data"]["outcome"] == "confirmed"
    assert p.metric('wgfo_worker_suspect_marks_total{outcome="confirmed"}') == 1
    with p.http("read") as h:
        states = {w["name"]: w["state"] for w in h.get("/v1/workers").json()}
    assert states["w1"] == "down"  # Prometheus's word stands


def test_latency_placement_moves_a_client_after_a_lasting_gain(responder_factory):
    p = start(responder_factory, clients=3, placement="latency", latency_sustain_seconds=10)
    client = "c1"
    home = assignments(p)[client]["worker"]
    fast = next(w.name for w in p.fleet.workers if w.name != home)

    def probe(fast_ms: float) -> None:
        report(p, client, {"type": "probe", "workers": {
            w.name: {"up": True, "rtt_ms": fast_ms if w.name == fast else 100.0}
            for w in p.fleet.workers}})

    # Jitter: a worker that looks faster now and then is no reason to move.
    t_end = time.monotonic() + 6
    i = 0
    while time.monotonic() < t_end:
        probe(30.0 if i % 3 == 2 else 100.0)
        i += 1
        time.sleep(0.5)
    assert assignments(p)[client]["worker"] == home
    # A lasting gain: the move comes once the sustain time has passed, not before.
    t0 = time.monotonic()

    def moved() -> dict | None:
        probe(30.0)
        a = assignments(p)[client]
        return a if a["worker"] != home else None

    a = wait_until("the latency move", moved, 25, every=0.5)
    assert time.monotonic() - t0 >= 9.5
    assert a["worker"] == fast and a["reason"] == "latency"
    assert p.metric('wgfo_client_moves_total{reason="latency"}') == 1
