"""The switcher's decisions and parsers, as plain logic: no sockets, no clock, no `wg`."""

from __future__ import annotations

import json
import random

import pytest
from wg_failover.client import cache
from wg_failover.client.decisions import (
    DOWN,
    UP,
    Decider,
    Note,
    Report,
    Settings,
    Switch,
    WorkerHealth,
)
from wg_failover.client.probe import checksum, echo_request, parse_echo_reply
from wg_failover.client.sources import SseParser
from wg_failover.client.wgctl import plan_reconcile

from wg_failover.backoff import Backoff
from wg_failover.wg import Peer, find_active
from wg_failover.wire import (
    Assignment,
    AssignmentError,
    ClientEvent,
    ProbeResult,
    parse_assignment,
)

W = ["w1", "w2", "w3"]


def up_all(decider: Decider, now: float, workers=W) -> None:
    for w in workers:
        decider.on_reply(w, 0.001, now)
        decider.on_reply(w, 0.001, now)


def miss(decider: Decider, worker: str, n: int, now: float) -> list:
    out = []
    for _ in range(n):
        out += decider.on_miss(worker, now)
    return out


def switches(actions) -> list[Switch]:
    return [a for a in actions if isinstance(a, Switch)]


def reports(actions, kind: str) -> list[dict]:
    return [a.event for a in actions if isinstance(a, Report) and a.event["type"] == kind]


# --------------------------------------------------------------------------- fast path


def test_k_misses_on_active_switch_to_first_answering_backup():
    decider = Decider(W, Settings(k=3), active="w1")
    up_all(decider, 0.0)
    assert switches(miss(decider, "w1", 2, 0.3)) == []
    acts = decider.on_miss("w1", 0.4)
    [sw] = switches(acts)
    assert (sw.from_, sw.to, sw.kind) == ("w1", "w2", "failover")
    assert decider.active == "w2"
    [ev] = reports(acts, "switch")
    assert ev["from_worker"] == "w1" and ev["to_worker"] == "w2" and ev["elapsed_ms"] == 400
    assert "w1 missed 3 probes" in ev["reason"]


def test_a_reply_resets_the_miss_count():
    decider = Decider(W, Settings(k=3), active="w1")
    up_all(decider, 0.0)
    miss(decider, "w1", 2, 0.2)
    decider.on_reply("w1", 0.001, 0.25)
    assert switches(miss(decider, "w1", 2, 0.5)) == []
    assert decider.active == "w1"


def test_no_switch_without_an_answering_backup():
    decider = Decider(W, Settings(k=3), active="w1")
    up_all(decider, 0.0, ["w1"])
    acts = miss(decider, "w1", 5, 1.0)
    assert switches(acts) == [] and decider.active == "w1"
    assert any(isinstance(a, Note) and "no backup answers" in a.message for a in acts)
    # As soon as a backup answers, the switch happens.
    [sw] = switches(decider.on_reply("w3", 0.001, 1.1))
    assert sw.to == "w3"


def test_backups_that_miss_are_skipped_in_preference_order():
    decider = Decider(W, Settings(k=3), active="w1")
    up_all(decider, 0.0)
    miss(decider, "w2", 3, 0.3)  # w2 is down
    [sw] = switches(miss(decider, "w1", 3, 0.4))
    assert sw.to == "w3"


def test_hold_down_keeps_the_fast_path_off_a_worker_that_flapped():
    decider = Decider(W, Settings(k=3, hold_down=10), active="w1")
    up_all(decider, 0.0)
    [sw] = switches(miss(decider, "w1", 3, 1.0))
    assert sw.to == "w2"
    decider.on_reply("w1", 0.001, 2.0)  # w1 is back, but only since t=2
    assert decider.health["w1"].held_down(5.0, 10)
    [sw] = switches(miss(decider, "w2", 3, 5.0))
    assert sw.to == "w3", "w1 flapped: w3 is preferred while w1 is held down"
    # When nothing else answers, a held-down worker is still better than none.
    [sw] = switches(miss(decider, "w3", 3, 6.0) + miss(decider, "w2", 0, 6.0))
    assert sw.to == "w1"
    assert not decider.health["w1"].held_down(12.5, 10)


def test_probe_state_changes_are_reported_at_once():
    decider = Decider(W, Settings(k=2), active="w1")
    acts = decider.on_reply("w2", 0.002, 0.0)
    [ev] = reports(acts, "probe")
    assert ev["workers"]["w2"]["up"] is True
    assert ev["workers"]["w1"] == {"up": False, "rtt_ms": None, "loss": 0.0}
    assert reports(decider.on_reply("w2", 0.002, 0.1), "probe") == []


def test_reports_are_the_wire_schema_with_the_keys_the_responder_always_got():
    decider = Decider(W, Settings(k=3), active="w1")
    acts = []
    for w in W:
        acts += decider.on_reply(w, 0.001, 0.0) + decider.on_reply(w, 0.001, 0.0)
    acts += miss(decider, "w1", 3, 0.4)  # probe (w1 down) and switch
    acts += decider.on_assignment(a(1, "w3"), 0.5)  # applied
    acts += miss(decider, "w2", 3, 0.6) + decider.on_assignment(a(2, "w2"), 0.7)  # rejected
    acts += decider.on_assignment(a(3, "nope"), 0.8)  # rejected: not a worker of this client
    keys = {"probe": {"type", "workers"},
            "switch": {"type", "from_worker", "to_worker", "reason", "elapsed_ms"},
            "applied": {"type", "version", "worker"},
            "rejected": {"type", "version", "worker", "reason"}}
    events = [act.event for act in acts if isinstance(act, Report)]
    assert {ev["type"] for ev in events} == set(keys)
    for ev in events:
        assert set(ev) == keys[ev["type"]], ev
        assert ClientEvent.validate_python(ev).model_dump(mode="json") == ev
        json.dumps(ev, allow_nan=False)  # plain JSON, as the reporter posts it


def test_health_rtt_loss_and_timeout():
    h = WorkerHealth("w1", window=10)
    h.record_reply(0.150, 0.0)  # the first answer may include a handshake: not an RTT sample
    assert h.srtt is None and h.state == UP
    for i in range(5):
        h.record_reply(0.002, i)
    assert h.srtt == pytest.approx(0.002)
    assert h.timeout(0.1) == 0.1  # a fast path: one interval
    for _ in range(4):
        h.record_miss(10.0, k=3)
    assert h.state == DOWN and h.flapped
    assert h.loss == pytest.approx(4 / 10)
    slow = WorkerHealth("w2")
    for i in range(6):
        slow.record_reply(0.3, i)
    assert 0.3 < slow.timeout(0.1) <= 2.0


# --------------------------------------------------------------------------- assignments


def a(version: int, worker: str, backups=("w2", "w3"), reason="planned") -> Assignment:
    return Assignment(client="c1", worker=worker, version=version, backups=tuple(backups),
                      reason=reason)


def test_assignment_applied_once_and_in_order():
    decider = Decider(W, active="w1")
    up_all(decider, 0.0)
    acts = decider.on_assignment(a(5, "w2"), 1.0)
    [sw] = switches(acts)
    assert sw.to == "w2" and sw.kind == "assignment" and sw.version == 5
    assert reports(acts, "applied") == [{"type": "applied", "version": 5, "worker": "w2"}]
    assert decider.on_assignment(a(5, "w3"), 1.1) == []
    assert decider.on_assignment(a(4, "w3"), 1.2) == []
    assert decider.active == "w2"


def test_assignment_to_the_active_worker_is_acknowledged_without_wg_set():
    decider = Decider(W, active="w1")
    up_all(decider, 0.0)
    acts = decider.on_assignment(a(1, "w1"), 1.0)
    assert switches(acts) == []
    assert reports(acts, "applied") == [{"type": "applied", "version": 1, "worker": "w1"}]


def test_assignment_to_a_dead_worker_is_rejected_then_applied_when_it_is_back():
    decider = Decider(W, Settings(k=3, hold_down=5), active="w1")
    up_all(decider, 0.0)
    miss(decider, "w3", 3, 1.0)
    acts = decider.on_assignment(a(7, "w3", backups=("w1",)), 1.5)
    assert switches(acts) == []
    [rej] = reports(acts, "rejected")
    assert rej["version"] == 7 and rej["worker"] == "w3" and "dead" in rej["reason"]
    assert decider.pending is not None and decider.version == 7
    assert switches(decider.on_reply("w3", 0.001, 2.0)) == []  # back, but inside its hold-down
    acts = decider.on_reply("w3", 0.001, 7.5)
    [sw] = switches(acts)
    assert sw.to == "w3" and reports(acts, "applied")[0]["version"] == 7
    assert decider.pending is None


def test_assignment_waits_for_the_first_probe_answer():
    decider = Decider(W, active="w1")
    up_all(decider, 0.0, ["w1"])
    assert switches(decider.on_assignment(a(2, "w2"), 0.1)) == []
    [sw] = switches(decider.on_reply("w2", 0.001, 0.2))
    assert sw.to == "w2"


def test_assignment_to_an_unknown_worker_is_rejected():
    decider = Decider(W, active="w1")
    acts = decider.on_assignment(a(3, "nope"), 0.0)
    assert reports(acts, "rejected")[0]["worker"] == "nope" and decider.active == "w1"


def test_assignment_backups_set_the_fast_path_order():
    decider = Decider(W, active="w1")
    up_all(decider, 0.0)
    decider.on_assignment(a(1, "w1", backups=("w3", "w2")), 0.1)
    [sw] = switches(miss(decider, "w1", 3, 0.5))
    assert sw.to == "w3"


def test_routes_on_no_peer_go_to_the_first_answering_worker():
    decider = Decider(W, active=None)
    [sw] = switches(decider.on_reply("w2", 0.001, 0.0))
    assert sw.to == "w2" and sw.kind == "initial"


@pytest.mark.parametrize("data, message", [
    ([], "not a JSON object"),
    ({"version": 1}, "worker: Field required"),
    ({"worker": "", "version": 1}, "worker: String should match pattern"),
    # Names are checked before anything logs them: no newlines, no terminal escapes.
    ({"worker": "w1\nERROR forged line", "version": 1}, "worker: String should match pattern"),
    ({"worker": "\x1b[31mw1", "version": 1}, "worker: String should match pattern"),
    ({"worker": "w1", "version": 1, "backups": ["w2\r"]}, "backups.0: String should match"),
    # A version no store can reach would outrank every real one after it (hardening finding 3).
    ({"worker": "w1", "version": 10**30}, "version: Input should be less than or equal to"),
    ({"worker": "w1", "version": 2**53}, "version: Input should be less than or equal to"),
    ({"worker": "w1", "version": 1, "epoch": "not hex"}, "epoch: String should match pattern"),
    ({"worker": "w1", "version": "1"}, "version: Input should be a valid integer"),
    ({"worker": "w1", "version": True}, "version: Input should be a valid integer"),
    ({"worker": "w1", "version": -1}, "version: Input should be greater than or equal to 0"),
    ({"worker": "w1", "version": 1, "client": "c9"}, "for client 'c9'"),
    ({"worker": "w1", "version": 1, "backups": "w2"}, "backups: Input should be a valid tuple"),
])
def test_bad_assignments_are_refused(data, message):
    with pytest.raises(AssignmentError, match=message):
        parse_assignment(data, "c1")


def test_odd_descriptive_fields_are_dropped_not_logged():
    a = parse_assignment({"worker": "w1", "version": 2**53 - 1, "reason": "\x1b]0;owned\x07",
                          "since": "x" * 500, "epoch": "0123abcd"}, "c1")
    assert (a.version, a.reason, a.since, a.epoch) == (2**53 - 1, "", None, "0123abcd")


def test_assignment_json_round_trip():
    src = {"client": "c1", "worker": "w2", "backups": ["w3"], "version": 9, "reason": "drain",
           "since": "2026-01-01T00:00:00Z"}
    assert parse_assignment(src, "c1").to_json() == src


# --------------------------------------------------------------------------- wire formats


def test_sse_parser():
    p = SseParser()
    lines = [": keep-alive", "id: 7", "event: assignment", 'data: {"worker":', 'data: "w2"}', "",
             "", "data: plain", ""]
    events = [e for e in (p.feed(line) for line in lines) if e]
    assert [(e.event, e.id, e.data) for e in events] == [
        ("assignment", "7", '{"worker":\n"w2"}'), ("message", None, "plain")]
    assert p.last_id == "7"


def test_echo_request_round_trip():
    pkt = echo_request(0x1234, 0xFFFF)
    assert checksum(pkt) == 0  # a valid packet sums to zero
    reply = bytes([0]) + pkt[1:]
    assert parse_echo_reply(reply, has_ip_header=False) == (0x1234, 0xFFFF)
    ip = bytes([0x45]) + bytes(19)
    assert parse_echo_reply(ip + reply, has_ip_header=True) == (0x1234, 0xFFFF)
    assert parse_echo_reply(pkt, has_ip_header=False) is None  # a request, not a reply
    assert parse_echo_reply(b"\0\0", has_ip_header=False) is None


def test_backoff_is_bounded_and_jittered():
    b = Backoff(base=0.5, cap=8, rng=random.Random(1))
    delays = [b.next() for _ in range(40)]
    assert all(0.25 <= d <= 8 for d in delays)
    assert max(delays[-10:]) > 4 and len(set(delays)) > 30
    b.reset()
    assert b.next() <= 0.5


# --------------------------------------------------------------------------- cache


def test_cache_round_trip_and_atomic_write(tmp_path):
    path = cache.cache_path(tmp_path / "state", "c1")
    st = cache.CachedState("c1", "w2", 7, a(8, "w3"))
    cache.save(path, st)
    assert cache.load(path, "c1") == st
    assert cache.load(path, "other") is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left
    path.write_text("{broken")
    assert cache.load(path, "c1") is None
    path.write_text(json.dumps({"client": "c1", "active": 3, "version": "x"}))
    assert cache.load(path, "c1") == cache.CachedState("c1", None, 0, None)


# --------------------------------------------------------------------------- reconcile


def _peer(key, ips, endpoint="198.18.0.10:51820", ka=25):
    return Peer("wg0", key, endpoint, tuple(ips), 0, 0, 0, ka)


def test_reconcile_leaves_a_healthy_interface_alone(small_fleet):
    fleet = small_fleet.fleet
    c = fleet.clients[0]
    ws = fleet.preferences(c)
    peers = [_peer(w.public_key, [*(c.routes if i == 0 else []), w.tunnel_host_cidr],
                   w.endpoint) for i, w in enumerate(ws)]
    assert find_active(fleet, c, peers) == ws[0].name
    assert plan_reconcile(fleet, c, peers, ws[0].name, 25) == []


def test_reconcile_fixes_missing_peers_endpoints_keepalives_and_stray_routes(small_fleet):
    fleet = small_fleet.fleet
    c = fleet.clients[0]
    w1, w2, w3 = fleet.preferences(c)
    peers = [
        _peer(w1.public_key, [*c.routes, w1.tunnel_host_cidr], w1.endpoint),  # healthy active
        _peer(w2.public_key, [*c.routes, w2.tunnel_host_cidr], "192.0.2.1:1", ka=None),
    ]
    # w2 holds the routes too? WireGuard cannot: find_active picks the first in preference.
    assert find_active(fleet, c, peers) == w1.name
    changes = {ch.worker: ch for ch in plan_reconcile(fleet, c, peers, w1.name, 25)}
    assert set(changes) == {w2.name, w3.name}  # the active peer is not touched
    assert changes[w2.name].allowed_ips == (w2.tunnel_host_cidr,)
    assert changes[w2.name].endpoint == w2.endpoint
    assert changes[w2.name].persistent_keepalive == 25
    assert changes[w3.name].why == "missing peer"
    assert changes[w3.name].allowed_ips == (w3.tunnel_host_cidr,)


# --------------------------------------------------------------------------- command line


def test_bad_arguments_are_clean_errors(tmp_path, capsys):
    from tests.helpers.fleets import VALID
    from wg_failover.cli import main

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(VALID)
    base = ["switcher", "--fleet", str(fleet), "--interface", "wgfo-none0"]
    assert main([*base, "--client", "nobody"]) == 2
    assert "no client named 'nobody'" in capsys.readouterr().err
    assert main([*base, "--client", "bob-phone", "--token-file", str(tmp_path / "nope")]) == 2
    assert "--token-file" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    assert main([*base, "--client", "bob-phone", "--token-file", str(token)]) == 2
    err = capsys.readouterr().err
    assert "interface wgfo-none0" in err and "s3cret" not in err


# --------------------------------------------------------------------------- reporter queue


def test_reporter_keeps_decisions_and_only_the_newest_probe_summary():
    from wg_failover.client.reporter import Reporter

    r = Reporter("http://127.0.0.1:9", "c1", "tok", max_queue=4)
    r.post({"type": "probe", "n": 1})
    r.post({"type": "switch", "from_worker": "w1", "to_worker": "w2"})
    r.post({"type": "probe", "n": 2})
    assert [e["type"] for e in r.queue] == ["switch", "probe"] and r.queue[-1]["n"] == 2
    for v in range(5):
        r.post({"type": "applied", "version": v})
    assert len(r.queue) == 4 and r.queue[-1] == {"type": "applied", "version": 4}
    assert r.url == "http://127.0.0.1:9/v1/clients/c1/events"
    silent = Reporter(None, "c1", None)
    silent.post({"type": "probe"})
    assert not silent.queue


def test_a_failed_assignment_switch_is_retried():
    decider = Decider(W, active="w1")
    up_all(decider, 0.0)
    [sw] = switches(decider.on_assignment(a(4, "w2"), 1.0))
    decider.switch_failed(sw)  # `wg set` failed
    assert decider.active == "w1" and decider.pending is not None
    acts = decider.on_reply("w2", 0.001, 2.0)
    [again] = switches(acts)
    assert again.to == "w2" and reports(acts, "applied") == [
        {"type": "applied", "version": 4, "worker": "w2"}]
    assert reports(acts, "rejected") == []


def test_a_dead_worker_reports_no_rtt():
    h = WorkerHealth("w1")
    for t in range(4):
        h.record_reply(0.002, now=float(t))
    assert h.summary().rtt_ms == 2.0
    for t in range(3):
        h.record_miss(now=10.0 + t, k=3)
    assert h.summary() == ProbeResult(up=False, rtt_ms=None, loss=round(3 / 7, 4))
