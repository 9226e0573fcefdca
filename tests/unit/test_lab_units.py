"""The lab's pure parts: address plan, prefixes, the failover timeline, summaries."""

from __future__ import annotations

import os
import stat

import pytest

from wg_failover.lab import ops, state
from wg_failover.lab.cli import failover_ok
from wg_failover.lab.state import LabError, LabState, Proc, plan_addresses
from wg_failover.lab.timeline import FailoverWatch, event_type, parse_time


def test_address_plan():
    a = plan_addresses("198.18.7.0/24", 3, 2)
    assert a.master == "198.18.7.2" and a.root == "198.18.7.254"
    assert a.workers == ("198.18.7.10", "198.18.7.11", "198.18.7.12")
    assert a.clients == ("198.18.7.100", "198.18.7.101")


@pytest.mark.parametrize("subnet", ["198.18.0.1/24", "198.18.0.0/16", "fd00::/64", "nonsense"])
def test_address_plan_rejects_bad_subnets(subnet):
    with pytest.raises(LabError, match="--subnet"):
        plan_addresses(subnet, 3, 2)


def test_address_plan_bounds():
    with pytest.raises(LabError):
        plan_addresses("198.18.0.0/24", 0, 2)
    with pytest.raises(LabError):
        plan_addresses("198.18.0.0/24", 3, 151)


@pytest.mark.parametrize("prefix", ["wgl", "t123", "a"])
def test_good_prefixes(prefix):
    assert state.check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["", "WGL", "wg-l", "1ab", "toolong7", "a b"])
def test_bad_prefixes(prefix):
    # A '-' would let `cleanup_prefix("wg")` reach a lab named "wg-l"'s namespaces.
    with pytest.raises(LabError, match="--prefix"):
        state.check_prefix(prefix)


def test_state_round_trip_and_secret_mode(tmp_path):
    s = LabState(prefix="wgl", directory=str(tmp_path / "lab"), subnet="198.18.0.0/24",
                 master_address="198.18.0.2", root_address="198.18.0.254", root_ifname="wgl-root",
                 hub="wgl-hub", scrape_interval=1, eval_interval=1,
                 workers={"w1": {"netns": "wgl-w1", "address": "198.18.0.10", "ifname": "wglw1"}},
                 processes=[Proc("exporter", "w1", 123, 456, "/x.log")])
    s.save()
    back = LabState.load(tmp_path / "lab")
    assert back == s
    assert back.responder_url == "https://198.18.0.2:8080"
    assert back.ca_path == back.dir / "tls" / "ca.crt"
    state.write_secret(s.secret_path("admin.token"), "t0ken")
    mode = stat.S_IMODE(os.stat(s.secret_path("admin.token")).st_mode)
    assert mode == 0o600 and s.token("admin") == "t0ken"


def test_load_without_lab_is_a_clear_error(tmp_path):
    with pytest.raises(LabError, match="lab up"):
        LabState.load(tmp_path)


def test_proc_identity_uses_start_time():
    me = state.proc_start_time(os.getpid())
    assert me is not None
    assert Proc("x", "h", os.getpid(), me).alive()
    assert not Proc("x", "h", os.getpid(), me + 1).alive()  # a reused pid is not ours
    assert state.proc_start_time(2**22 + 12345) is None


def test_parse_time():
    assert parse_time("2026-11-26T10:00:00Z") == 1795687200.0
    assert parse_time("2026-11-26T10:00:00.123456789Z") == pytest.approx(1795687200.123457)
    assert parse_time("2026-11-26T10:00:00.5+00:00") == 1795687200.5
    assert parse_time(None) is None and parse_time("garbage") is None


def test_event_type_prefers_the_client_report_type():
    assert event_type({"kind": "client_event", "data": {"type": "applied"}}) == "applied"
    assert event_type({"kind": "client-applied", "data": {"version": 2}}) == "client-applied"


def watch() -> FailoverWatch:
    return FailoverWatch("w1", ["c1", "c2"], ["c3"], t0=1000.0,
                         before={"c1": "w1", "c2": "w1", "c3": "w2"})


def test_timeline_follows_a_failover_in_order():
    w = watch()
    e = w.routes(1000.4, {"c1": "w2", "c2": "w1", "c3": "w2"})
    assert [x.text.split(":")[0] for x in e] == ["c1"] and e[0].t == pytest.approx(0.4)
    assert w.routes(1000.5, {"c1": "w2", "c2": "w1", "c3": "w2"}) == []  # once per client
    e = w.events(1000.5, [{"id": 1, "ts": 1000.45, "kind": "client-switch", "client": "c1",
                           "worker": "w2", "data": {"from_worker": "w1", "to_worker": "w2",
                                                    "elapsed_ms": 380}}])
    assert "380 ms" in e[0].text
    alert = {"labels": {"alertname": "WgWorkerDown", "worker": "w1", "action": "failover"},
             "state": "pending", "activeAt": "1970-01-01T00:16:42Z"}
    e = w.prometheus(1003.0, [alert, {"labels": {"worker": "w2", "action": "failover"}}])
    assert len(e) == 1 and e[0].t == pytest.approx(2.0) and "pending" in e[0].text
    e = w.prometheus(1009.0, [dict(alert, state="firing")])
    assert e[0].t == pytest.approx(9.0) and "firing" in e[0].text
    e = w.alertmanager(1009.5, [{"labels": alert["labels"]}])
    assert "alertmanager" in e[0].text
    assert w.alertmanager(1009.6, [{"labels": alert["labels"]}]) == []
    events = [
        # The responder accepts c1's own switch, then the alert marks w1 down and moves c2.
        {"id": 2, "ts": 1000.5, "kind": "move", "client": "c1", "worker": "w2",
         "data": {"from_worker": "w1", "to_worker": "w2", "version": 2, "reason": "switch"}},
        {"id": 3, "ts": 1000.6, "kind": "client-applied", "client": "c1", "worker": "w2",
         "data": {"version": 2}},
        {"id": 4, "ts": 1010.5, "kind": "alert", "worker": "w1",
         "data": {"status": "firing", "action": "failover", "alertname": "WgWorkerDown"}},
        {"id": 5, "ts": 1010.5, "kind": "worker-state", "worker": "w1",
         "data": {"from": "up", "to": "down"}},
        {"id": 6, "ts": 1010.5, "kind": "move", "client": "c2", "worker": "w3",
         "data": {"from_worker": "w1", "to_worker": "w3", "version": 2, "reason": "failover"}},
        {"id": 7, "ts": 1010.6, "kind": "client-applied", "client": "c2", "worker": "w2",
         "data": {"version": 1}},  # an old version: not a confirmation
    ]
    e = w.events(1010.7, events)
    assert {"webhook", "worker_down"} <= set(w.marks)
    assert w.planned["c2"][1] == "w3" and not w.done
    assert any("c1: confirmed" in x.text for x in e)
    e = w.events(1011.0, [{"id": 8, "ts": 1011.0, "kind": "client-applied", "client": "c2",
                           "worker": "w3", "data": {"version": 2}}])
    assert w.done and any("control path complete" in x.text for x in e)
    s = w.summary()
    assert s["control_path_s"] == pytest.approx(11.0)
    assert s["final"] == {"c1": "w2", "c2": "w3"}
    assert s["fast_path_reported_ms"] == {"c1": 380, "c2": None}
    assert w.others_moved({"c3": "w2"}) == [] and w.others_moved({"c3": "w3"}) == ["c3"]


def test_control_path_waits_for_the_worker_down_and_a_later_move():
    w = watch()
    w.events(1001, [
        {"id": 1, "ts": 1001, "kind": "move", "client": c, "worker": "w2",
         "data": {"to_worker": "w2", "version": 2}} for c in ("c1", "c2")] + [
        {"id": 2, "ts": 1001.1, "kind": "client-applied", "client": c, "worker": "w2",
         "data": {"version": 2}} for c in ("c1", "c2")])
    assert not w.done  # the responder has not marked w1 down yet
    w.events(1009, [{"id": 3, "ts": 1009, "kind": "worker-state", "worker": "w1",
                     "data": {"to": "down"}},
                    {"id": 4, "ts": 1009, "kind": "move", "client": "c2", "worker": "w3",
                     "data": {"to_worker": "w3", "version": 3}}])
    assert not w.done  # c2 was moved again: it must confirm v3
    w.events(1009.2, [{"id": 5, "ts": 1009.2, "kind": "client-applied", "client": "c2",
                       "worker": "w3", "data": {"version": 3}}])
    assert w.done and w.summary()["control_path_s"] == pytest.approx(9.2)


def test_timeline_ignores_applied_before_the_plan_and_old_events():
    w = watch()
    w.events(1001, [{"id": 1, "ts": 1001, "client": "c1", "kind": "client-applied",
                     "worker": "w2", "data": {"version": 1}}])
    assert not w.confirmed
    w.events(1001, [{"id": 2, "ts": 990, "worker": "w1", "kind": "alert",
                     "data": {"action": "failover", "status": "firing"}}])
    assert "webhook" not in w.marks
    w.events(1001, [{"id": 3, "ts": 1001, "worker": "w1", "kind": "alert",
                     "data": {"action": "notify", "status": "firing"}}])
    assert "webhook" not in w.marks


def test_pick_worker_takes_the_busiest_live_one():
    from wg_failover.lab.gen import generate_fleet

    fleet = generate_fleet(3, 1).fleet
    active = {"c1": "w2", "c2": "w2", "c3": "w1"}
    assert ops.pick_worker(active, fleet, []) == "w2"
    assert ops.pick_worker(active, fleet, ["w2"]) == "w1"
    with pytest.raises(LabError):
        ops.pick_worker(active, fleet, ["w1", "w2", "w3"])


def test_worker_states_accepts_list_or_mapping():
    assert ops.worker_states([{"name": "w1", "state": "down"}]) == {"w1": "down"}
    assert ops.worker_states({"workers": [{"name": "w1", "state": "up"}]}) == {"w1": "up"}
    assert ops.worker_states({"w1": {"state": "up"}}) == {"w1": "up"}


def test_failover_ok():
    s = {"worker": "w1", "affected": ["c1"], "routes_now": {"c1": "w2"}, "others_moved": [],
         "timed_out": False}
    assert failover_ok(s)
    assert not failover_ok(dict(s, routes_now={"c1": "w1"}))
    assert not failover_ok(dict(s, others_moved=["c3"]))
    assert not failover_ok(dict(s, timed_out=True))


def test_demo_recap():
    from wg_failover.lab.cli import recap

    lines = recap({"worker": "w1", "fast_path_reported_ms": {"c1": 398, "c4": None},
                   "control_path_s": 8.9, "others_moved": []},
                  {"worker": "w2", "moved": {"c1": "w3"}, "affected": ["c1"], "lost": {"c1": 0}})
    text = "\n".join(lines)
    assert "c1 398 ms" in text and "8.9 s" in text and "lost pings: 0" in text
    assert recap({}, {}) == ["", "recap:"]
