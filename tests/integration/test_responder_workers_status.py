"""`GET /v1/workers` and `ctl workers` show what lives beside the state in the responder's
memory (issue 18): a worker's suspect mark (while it lasts) and its clients' smoothed RTTs."""

from __future__ import annotations

import json
import time

from tests.helpers.ctl import run, token_file
from tests.helpers.wait import wait_until
from tests.integration.test_responder_placement import WINDOW, all_probe, on, report, start, switch
from wg_failover.responder.intake.suspect import SETTLE


def ctl(p, *args: str):
    """`wg-failover ctl` against this plain-HTTP test responder, with the read token."""
    return run("--responder", p.url, "--token-file", str(token_file(p, "read")), *args)


def workers(p) -> dict[str, dict]:
    with p.http("read") as h:
        r = h.get("/v1/workers")
    assert r.status_code == 200, r.text
    return {w["name"]: w for w in r.json()}


def test_workers_show_the_clients_rtt_figures(responder_factory):
    p = start(responder_factory, clients=4, placement="latency")
    before = workers(p)
    assert all(w["rtt_clients"] == 0 and w["rtt_ms_median"] is None and not w["suspect"]
               for w in before.values()), before
    rtts = {"c1": 10.0, "c2": 20.0, "c3": 30.0, "c4": 40.0}
    for c, ms in rtts.items():  # w1 at 1x, w2 at 2x, w3 not probed by c4
        for _ in range(3):  # a figure is the median of three reports first
            report(p, c, {"type": "probe", "workers": {
                "w1": {"up": True, "rtt_ms": ms}, "w2": {"up": True, "rtt_ms": 2 * ms},
                **({"w3": {"up": True, "rtt_ms": 5.0}} if c != "c4" else {})}})
    w = workers(p)
    assert (w["w1"]["rtt_clients"], w["w1"]["rtt_ms_median"], w["w1"]["rtt_ms_p90"]) == \
        (4, 25.0, 40.0)
    assert (w["w2"]["rtt_clients"], w["w2"]["rtt_ms_median"]) == (4, 50.0)
    assert (w["w3"]["rtt_clients"], w["w3"]["rtt_ms_median"]) == (3, 5.0)
    r = ctl(p, "workers")
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[1:]}
    assert rows["w1"][6] == "25(4)" and rows["w3"][6] == "5(3)", r.stdout
    j = ctl(p, "workers", "--json")
    assert j.returncode == 0 and {x["name"]: x for x in json.loads(j.stdout)} == workers(p)


def test_workers_show_a_suspect_mark_while_it_lasts(responder_factory):
    p = start(responder_factory)
    all_probe(p)
    time.sleep(WINDOW + 0.2)  # assignments older than the window: their clients may vote
    w1 = on(p, "w1")
    assert len(w1) == 3
    switch(p, w1[0], "w1", "w2")
    switch(p, w1[1], "w1", "w3")
    # The mark takes effect once it settled (SETTLE, 1 s: switch reports of the same death in
    # flight land first); from then on the answer shows it.
    w = wait_until("w1 suspect", lambda: (x := workers(p))["w1"]["suspect"] and x, SETTLE + 3)
    assert w["w1"]["suspect_until"] is not None, w["w1"]
    assert w["w1"]["state"] == "up"  # Prometheus's word is unchanged
    assert not w["w2"]["suspect"] and w["w2"]["suspect_until"] is None
    r = ctl(p, "workers")
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[1:]}
    assert rows["w1"][4] == "yes" and rows["w2"][4] == "no", r.stdout
    # The mark expires (no alert confirms it): the answer says so.
    wait_until("the suspect mark to end", lambda: not workers(p)["w1"]["suspect"], 15)
    assert workers(p)["w1"]["suspect_until"] is None
