"""The switcher's decisions and parsers, as plain logic: no sockets, no clock, no `wg`."""

from __future__ import annotations

import json
import logging
import random

import pytest

from wg_failover.backoff import Backoff
from wg_failover.client import cache
from wg_failover.client.bounds import (
    LogLimiter,
    WireInputError,
    loads_json,
    shown,
)
from wg_failover.client.decisions import (
    DOWN,
    UP,
    Decider,
    Note,
    Report,
    Settings,
    Switch,
    WorkerHealth,
    check_version,
)
from wg_failover.client.probe import checksum, echo_request, parse_echo_reply
from wg_failover.client.wgctl import plan_reconcile
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


def test_fast_path_off_waits_for_the_responder():
    decider = Decider(W, Settings(k=3, fast_path=False), active="w1")
    up_all(decider, 0.0)
    acts = miss(decider, "w1", 5, 0.5)
    assert switches(acts) == [] and decider.active == "w1"
    assert decider.health["w1"].state == "down"  # the probes still judge it
    miss(decider, "w3", 3, 0.6)
    assert switches(decider.on_assignment(a(1, "w3"), 0.7)) == []  # never onto a dead one
    [sw] = switches(decider.on_assignment(a(2, "w2"), 0.8))
    assert (sw.to, sw.kind) == ("w2", "assignment")


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
            "switch": {"type", "from_worker", "to_worker", "reason", "elapsed_ms", "cause"},
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


def a(version: int, worker: str, backups=("w2", "w3"), reason="planned",
      epoch: str | None = None) -> Assignment:
    return Assignment(client="c1", worker=worker, version=version, backups=tuple(backups),
                      reason=reason, epoch=epoch)


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


# --------------------------------------------------------------------------- store epochs

OLD, NEW = "0123abcd", "feedbeef99"


def test_within_one_epoch_only_a_higher_version_is_news():
    assert check_version(OLD, 50, a(51, "w1", epoch=OLD)).accept
    assert not check_version(OLD, 50, a(50, "w1", epoch=OLD)).accept
    assert not check_version(OLD, 50, a(1, "w1", epoch=OLD)).accept
    assert check_version(OLD, 50, a(51, "w1", epoch=OLD)).warning is None


def test_an_assignment_without_an_epoch_counts_as_the_known_one():
    # An older responder sends no epoch: versions compare as they always did.
    assert not check_version(OLD, 50, a(1, "w1")).accept
    assert check_version(OLD, 50, a(51, "w1")) == check_version(None, 50, a(51, "w1"))
    assert check_version(None, 50, a(51, "w1")).accept
    assert not check_version(None, 50, a(50, "w1")).accept


def test_another_epoch_is_a_new_store_taken_whatever_its_version_with_a_warning():
    check = check_version(OLD, 50, a(1, "w1", epoch=NEW))
    assert check.accept
    assert check.warning is not None
    assert f"epoch {OLD} -> {NEW}" in check.warning and "v1" in check.warning
    assert "v50" in check.warning
    # A higher version in another epoch is a new store too, and said so.
    assert check_version(OLD, 50, a(70, "w1", epoch=NEW)).warning is not None


def test_the_first_epoch_heard_is_adopted_and_warned_about_only_when_versions_went_back():
    assert check_version(None, 0, a(1, "w1", epoch=NEW)) == check_version(None, 0, a(1, "w1"))
    assert check_version(None, 7, a(8, "w1", epoch=NEW)).warning is None
    # A cache from before epochs says v7; the responder's store, now with an epoch, is at v3:
    # its store was replaced, and following it beats ignoring the responder until v8.
    back = check_version(None, 7, a(3, "w1", epoch=NEW))
    assert back.accept and back.warning is not None and NEW in back.warning


def test_decider_follows_a_replaced_store_and_warns_once():
    decider = Decider(W, active="w1")
    up_all(decider, 0.0)
    decider.on_assignment(a(50, "w1", epoch=OLD), 1.0)
    assert (decider.version, decider.epoch) == (50, OLD)
    assert decider.on_assignment(a(49, "w2", epoch=OLD), 1.1) == []
    acts = decider.on_assignment(a(1, "w2", epoch=NEW), 1.2)
    warnings = [n for n in acts if isinstance(n, Note) and n.level == logging.WARNING]
    assert len(warnings) == 1 and f"{OLD} -> {NEW}" in warnings[0].message
    [sw] = switches(acts)
    assert sw.to == "w2" and sw.version == 1
    assert reports(acts, "applied") == [{"type": "applied", "version": 1, "worker": "w2"}]
    assert (decider.version, decider.epoch) == (1, NEW)
    # The new store's versions now count; an epoch-less message belongs to it.
    acts = decider.on_assignment(a(2, "w3", epoch=NEW), 1.3)
    assert switches(acts)[0].to == "w3"
    assert not any(isinstance(n, Note) and n.level == logging.WARNING for n in acts)
    assert decider.on_assignment(a(2, "w1"), 1.4) == []
    assert decider.epoch == NEW


def test_an_assignment_without_an_epoch_keeps_the_known_epoch():
    decider = Decider(W, active="w1", version=5, epoch=OLD)
    up_all(decider, 0.0)
    decider.on_assignment(a(6, "w2"), 1.0)
    assert (decider.version, decider.epoch) == (6, OLD)


# --------------------------------------------------------------------------- wire formats


def test_json_too_deep_or_not_json_is_refused_in_one_short_line():
    with pytest.raises(WireInputError, match="nested too deep"):
        loads_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(WireInputError, match="nested too deep"):
        loads_json('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(WireInputError, match="not UTF-8"):
        loads_json(b"\xff\xfe{")
    with pytest.raises(WireInputError, match="not JSON") as err:
        loads_json("\x1b[31m" + "y" * 10_000)
    assert len(str(err.value)) < 200 and "\x1b" not in str(err.value)
    assert loads_json(b'{"worker": "w1"}') == {"worker": "w1"}


def test_mqtt_payloads_are_bounded_like_http_bodies(caplog):
    from wg_failover.client.bounds import MAX_BODY
    from wg_failover.client.mqtt_source import MqttAssignmentSource

    caplog.set_level(logging.INFO, logger="wg_failover.switcher")
    src = MqttAssignmentSource("mqtt://127.0.0.1:1", "c1")
    assert src.parse(b"[" * 100_000) is None
    big = b'{"worker": "w1", "version": 1, "pad": "' + b"x" * MAX_BODY + b'"}'
    assert src.parse(big) is None
    assert src.parse(b"\x1b[31m\n") is None
    ok = src.parse(json.dumps({"worker": "w1", "version": 1, "epoch": OLD}).encode())
    assert ok is not None and ok.epoch == OLD
    # Three refused payloads, one log line (rate-limited), no traceback.
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "mqtt: ignoring an unusable assignment on"]
    assert "nested too deep" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is None


def test_wire_text_is_shown_escaped_and_cut():
    assert shown("plain text") == "plain text"
    assert shown("w1\nERROR forged") == repr("w1\nERROR forged")
    assert "\x1b" not in shown("\x1b[31mred") and "\n" not in shown("a\nb")
    assert len(shown("x" * 100_000, 50)) < 60


def test_log_limiter_lets_one_line_per_kind_through_and_counts_the_rest(caplog):
    now = [0.0]
    limiter = LogLimiter(logging.getLogger("test.limiter"), every=10, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.limiter")
    assert limiter.warning("bad", "bad input %d", 1)
    for i in range(50):
        now[0] += 0.1
        assert not limiter.warning("bad", "bad input %d", i)
    assert limiter.warning("other", "another kind")  # kinds are limited separately
    now[0] = 10.5
    assert limiter.warning("bad", "bad input %d", 99)
    assert [r.getMessage() for r in caplog.records] == [
        "bad input 1", "another kind", "bad input 99 (50 more like it in the last 10 s)"]


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


def test_cache_keeps_the_store_epoch(tmp_path):
    path = cache.cache_path(tmp_path, "c1")
    st = cache.CachedState("c1", "w2", 50, a(51, "w3", epoch=OLD), epoch=OLD)
    cache.save(path, st)
    assert json.loads(path.read_text())["epoch"] == OLD
    assert cache.load(path, "c1") == st


def test_cache_written_before_epochs_still_loads(tmp_path):
    path = cache.cache_path(tmp_path, "c1")
    path.write_text(json.dumps({"client": "c1", "active": "w2", "version": 7, "pending": {
        "client": "c1", "worker": "w3", "backups": [], "version": 8, "reason": "drain",
        "since": None}}))
    st = cache.load(path, "c1")
    assert st is not None
    assert (st.active, st.version, st.epoch) == ("w2", 7, None)
    assert st.pending is not None and (st.pending.version, st.pending.epoch) == (8, None)


def test_cache_with_a_forged_version_or_epoch_starts_afresh(tmp_path):
    # An older switcher cached whatever version the wire said (finding 3: 10**30); resuming
    # after it would ignore the responder for good.
    path = cache.cache_path(tmp_path, "c1")
    path.write_text(json.dumps({"client": "c1", "active": "w1", "version": 10**30,
                                "epoch": "\x1b[31m"}))
    assert cache.load(path, "c1") == cache.CachedState("c1", "w1", 0, None, None)
    path.write_text("[" * 100_000)
    assert cache.load(path, "c1") is None


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
    base = ["switcher", "--fleet", str(fleet), "--interface", "wgfo-none0",
            "--responder", "http://127.0.0.1:9"]
    assert main([*base, "--client", "nobody"]) == 2
    assert "no client named 'nobody'" in capsys.readouterr().err
    assert main([*base, "--client", "bob-phone", "--token-file", str(tmp_path / "nope")]) == 2
    assert "--token-file" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    assert main([*base, "--client", "bob-phone", "--token-file", str(token)]) == 2
    err = capsys.readouterr().err
    assert "interface wgfo-none0" in err and "s3cret" not in err


@pytest.mark.parametrize("url, ok", [
    ("http://127.0.0.1:8080", True),
    ("http://[::1]:8080", True),
    ("https://198.18.0.1:8443", True),
    ("http://198.18.0.1:8080", False),
    ("http://10.0.0.1", False),
    ("http://0.0.0.0:8080", False),
])
def test_plain_http_only_to_this_machine(url, ok):
    from wg_failover.cli import CliError
    from wg_failover.client.cli import check_responder_url

    if ok:
        check_responder_url(url, insecure_http=False, tls_files=False)
    else:
        with pytest.raises(CliError, match="clear text.*--insecure-http"):
            check_responder_url(url, insecure_http=False, tls_files=False)
        check_responder_url(url, insecure_http=True, tls_files=False)


def test_responder_url_checks():
    from wg_failover.cli import CliError
    from wg_failover.client.cli import check_responder_url

    with pytest.raises(CliError, match="are for an https:// responder"):
        check_responder_url("http://127.0.0.1:8080", insecure_http=False, tls_files=True)
    with pytest.raises(CliError, match="http:// or https://"):
        check_responder_url("ftp://127.0.0.1", insecure_http=True, tls_files=False)
    with pytest.raises(CliError) as err:
        check_responder_url("http://user:pw@198.18.0.1", insecure_http=False, tls_files=False)
    assert "pw" not in str(err.value)


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
