"""The agent's pure parts: the peer diff and its `wg set` batches, the cache, the SSE reader,
the key math, the configs `join` writes, and the CLI's refusals (exit 2, one line)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess

import pytest

from tests.helpers.tools import WG_FAILOVER
from wg_failover.agent import cache, keys
from wg_failover.agent.peers import (
    PeerOp,
    plan,
    plan_from_applied,
    route_changes,
    route_plan,
    wg_set_argvs,
)
from wg_failover.agent.run import Agent
from wg_failover.sse import SseReader, SseTooLarge
from wg_failover.wg import Peer, parse_dump
from wg_failover.wgquick import render_client_view, render_worker_interface, strip
from wg_failover.wire import ClientView, PeerEntry, ViewWorker, WorkerPeers


def key(i: int) -> str:
    return base64.b64encode(i.to_bytes(32, "big")).decode()


def entry(i: int, *ips: str) -> PeerEntry:
    return PeerEntry(name=f"c{i}", public_key=key(i), allowed_ips=list(ips or [f"10.8.0.{i}/32"]))


def peer(i: int, *ips: str) -> Peer:
    return Peer("wg0", key(i), "198.18.0.9:4000", tuple(ips or [f"10.8.0.{i}/32"]), 1700000000,
                5, 6, None)


def test_equal_peers_make_no_operation_whatever_the_spelling_and_order():
    desired = [entry(1, "10.8.0.1/32", "fd00::1/128"), entry(2)]
    current = [peer(2), peer(1, "fd00:0::1/128", "10.8.0.1/32")]
    p = plan(desired, current)
    assert p.empty() and p.kept == 2 and wg_set_argvs("wg0", p.ops()) == []


def test_add_change_remove_touch_only_those_peers():
    desired = [entry(1), entry(2, "10.8.0.22/32"), entry(4)]
    current = [peer(1), peer(2), peer(3)]
    p = plan(desired, current)
    assert [o.public_key for o in p.add] == [key(4)]
    assert p.change == [PeerOp(key(2), ("10.8.0.22/32",), "c2", ("10.8.0.2/32",))]
    assert p.remove == [PeerOp(key(3), None, previous=("10.8.0.3/32",))]
    assert p.kept == 1 and p.summary() == "+1 ~1 -1 (=1 untouched)"
    # Removals first, then changes, then additions; all in one `wg set`.
    assert wg_set_argvs("wg0", p.ops()) == [[
        "set", "wg0", "peer", key(3), "remove",
        "peer", key(2), "allowed-ips", "10.8.0.22/32",
        "peer", key(4), "allowed-ips", "10.8.0.4/32"]]


def test_everything_desired_from_an_empty_interface_and_nothing_from_an_empty_fleet():
    desired = [entry(i) for i in range(1, 6)]
    assert len(plan(desired, []).add) == 5
    p = plan([], [peer(1), peer(2)])
    assert [o.remove for o in p.ops()] == [True, True]


def test_a_key_twice_keeps_the_first_and_says_so():
    p = plan([entry(1), PeerEntry(name="dup", public_key=key(1), allowed_ips=["10.9.9.9/32"])],
             [])
    assert [o.allowed_ips for o in p.add] == [("10.8.0.1/32",)] and p.duplicates == ["dup"]


def test_batches_stay_under_the_argument_bound_and_keep_order():
    ops = [PeerOp(key(i), (f"10.8.{i // 250}.{i % 250}/32",)) for i in range(10_000)]
    argvs = wg_set_argvs("wg0", ops, max_bytes=64 * 1024)
    assert len(argvs) > 1
    flat = [a for argv in argvs for a in argv[2:]]
    assert flat == [a for op in ops for a in op.args()]
    for argv in argvs:
        assert argv[:2] == ["set", "wg0"] and argv[2] == "peer"
        assert sum(len(a) + 1 for a in argv[2:]) <= 64 * 1024


def test_a_change_planned_from_memory_equals_one_planned_from_the_dump():
    old = [entry(i) for i in range(1, 50)]
    new = [*old[:10], entry(11, "10.8.1.11/32"), *old[11:40], entry(77)]
    dump = "\n".join("\t".join([e.public_key, "(none)", "(none)", ",".join(e.allowed_ips), "0",
                                "0", "0", "off"]) for e in old)
    from_dump = plan(new, parse_dump(dump, "wg0").peers)
    from_memory = plan_from_applied(new, old)
    assert from_dump.ops() == from_memory.ops() and len(from_dump.remove) == 9


def test_routes_follow_the_peers_and_only_the_agents_own_are_deleted():
    old = [entry(1), entry(2), entry(3, "10.8.0.3/32", "fd00::3/128")]
    new = [entry(1), entry(2, "10.8.0.22/32"), entry(4), entry(5, "0.0.0.0/0")]
    add, delete = route_changes(plan_from_applied(new, old))
    assert add == {"10.8.0.22/32", "10.8.0.4/32"}  # never a default route through a client
    assert delete == {"10.8.0.2/32", "10.8.0.3/32", "fd00::3/128"}
    # An address that moves from a removed client to a new one is replaced, not deleted.
    add, delete = route_changes(plan_from_applied([entry(9, "10.8.0.1/32")], [entry(1)]))
    assert add == {"10.8.0.1/32"} and delete == set()
    # Full reconcile: `ip route` prints host routes without /32; foreign routes are not listed.
    add, delete = route_plan(new, ["10.8.0.1", "10.8.0.2", "10.8.0.77"])
    assert add == {"10.8.0.22/32", "10.8.0.4/32"}
    assert delete == {"10.8.0.2/32", "10.8.0.77/32"}
    # The same address in two spellings is the same route.
    assert route_plan([entry(3, "fd00:0::3/128")], ["fd00::3"]) == (set(), set())


def test_the_agent_drops_old_versions_and_follows_a_new_epoch(tmp_path):
    a = Agent("w1", "wg0", tmp_path / "c.json", None)

    def wp(version: int, epoch: str = "aaaaaaaa") -> WorkerPeers:
        return WorkerPeers(worker="w1", version=version, epoch=epoch, peers=[])

    a.offer(wp(5))
    a.offer(wp(4))
    a.offer(wp(5))
    assert a.position() == ("aaaaaaaa", 5)
    a.offer(wp(1, "bbbbbbbb"))  # a replaced store starts again at 1
    assert a.position() == ("bbbbbbbb", 1)


def test_cache_round_trip_is_private_and_refuses_what_is_not_ours(tmp_path):
    path = cache.cache_path(tmp_path / "state", "w1")
    wp = WorkerPeers(worker="w1", version=7, epoch="0123abcd", peers=[entry(1), entry(2)])
    cache.save(path, wp)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert cache.load(path, "w1") == (wp, None)
    assert cache.load(path, "w2")[0] is None and "w1" in cache.load(path, "w2")[1]
    path.write_text("{not json")
    assert cache.load(path, "w1")[0] is None
    path.write_text(json.dumps({"worker": "w1", "version": "x"}))
    assert "not a cache" in cache.load(path, "w1")[1]
    assert "no cache" in cache.load(tmp_path / "none.json", "w1")[1]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_sse_reader_splits_events_across_chunks_and_bounds_them():
    r = SseReader(max_line=100, max_event=150)
    stream = b"\xef\xbb\xbf: keepalive\r\nevent: peers\r\nid: e:1\r\ndata: {\"a\"\r\n\r\n"
    got = []
    for i in range(0, len(stream), 3):  # a CR and its LF in different chunks too
        got += r.feed(stream[i:i + 3])
    assert [(e.event, e.id, e.data) for e in got] == [("peers", "e:1", '{"a"')]
    assert r.last_id == "e:1"
    with pytest.raises(SseTooLarge):
        r.feed(b"data: " + b"x" * 200)
    r2 = SseReader(max_line=100, max_event=150)
    with pytest.raises(SseTooLarge):
        r2.feed(b"data: " + b"x" * 90 + b"\ndata: " + b"y" * 90 + b"\n")


def test_python_x25519_matches_rfc7748_and_wg():
    k = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert keys._x25519(k, u).hex() == (
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    if shutil.which("wg") is None:
        pytest.skip("wg not installed: only the RFC vector checked")
    priv = keys.py_genkey()
    want = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                          timeout=10).stdout.strip()
    assert keys.py_pubkey(priv) == want


def test_join_configs_render_as_wg_quick_and_strip_for_setconf():
    view = ClientView(client="c9", version=3, epoch="0123abcd", address="10.70.0.9/32",
                      routes=["10.99.0.0/24"],
                      workers=[ViewWorker(name="w1", public_key=key(1), endpoint="w1.lab:51820",
                                          tunnel_address="10.66.0.1"),
                               ViewWorker(name="w2", public_key=key(2), endpoint="w2.lab:51820",
                                          tunnel_address="10.66.0.2")])
    text = render_client_view(view, "PRIV")
    assert "Address = 10.70.0.9/32" in text and "PrivateKey = PRIV" in text
    assert "AllowedIPs = 10.99.0.0/24, 10.66.0.1/32" in text
    assert "AllowedIPs = 10.66.0.2/32" in text and text.count("PersistentKeepalive = 25") == 2
    assert "AllowedIPs = 10.99.0.0/24, 10.66.0.2/32" in render_client_view(view, "P", "w2")
    with pytest.raises(KeyError):
        render_client_view(view, "P", "w3")
    w = render_worker_interface("w4", "10.66.0.4", 51820, "PRIV", [entry(1)])
    assert "Address = 10.66.0.4/32" in w and "ListenPort = 51820" in w
    assert strip(w).splitlines() == ["[Interface]", "ListenPort = 51820", "PrivateKey = PRIV",
                                     "[Peer]", f"PublicKey = {key(1)}",
                                     "AllowedIPs = 10.8.0.1/32"]


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([WG_FAILOVER, *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv, says", [
    (("agent",), "needs --worker"),
    (("agent", "--worker", "w1", "--interface", "wgfo-none0", "--responder",
      "http://127.0.0.1:1", "--token-file", "/nonexistent/token"), "--token-file"),
    (("agent", "--node", "/nonexistent/node.json"), "--node"),
    (("join", "http://127.0.0.1:1", "--enroll-key-file", "/nonexistent/k", "--name", "n1",
      "--state-dir", "STATE"), "--enroll-key-file /nonexistent/k"),
    (("join", "http://127.0.0.1:1", "--enroll-key-file", "KEY", "--name", "n1",
      "--state-dir", "STATE", "--interface", "much-too-long-name"), "--interface"),
    (("join", "http://127.0.0.1:1", "--enroll-key-file", "KEY", "--name", "n1",
      "--state-dir", "STATE", "--endpoint", "198.18.0.9:51820"), "together"),
    (("join", "ftp://x", "--enroll-key-file", "KEY", "--name", "n1", "--state-dir", "STATE"),
     "http"),
    (("join", "http://127.0.0.1:1", "--enroll-key-file", "KEY", "--name", "bad name!",
      "--state-dir", "STATE"), "--name"),
])
def test_cli_refuses_in_one_line_with_exit_2(tmp_path, argv, says):
    (tmp_path / "key").write_text("k" * 20 + "\n")
    argv = tuple(a.replace("STATE", str(tmp_path / "st")).replace("KEY", str(tmp_path / "key"))
                 for a in argv)
    proc = _cli(*argv)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "st" / "node.json").exists()


def test_help_explains_both_commands():
    for cmd, words in (("agent", ("wg set", "cache", "--reconcile-every")),
                       ("join", ("private", "0600", "409"))):
        proc = _cli(cmd, "--help")
        assert proc.returncode == 0 and all(w in proc.stdout for w in words), proc.stdout


def test_join_refuses_a_directory_that_joined_already(tmp_path):
    (tmp_path / "key").write_text("k" * 20 + "\n")
    (tmp_path / "node.json").write_text("{}")
    proc = _cli("join", "http://127.0.0.1:1", "--enroll-key-file", str(tmp_path / "key"),
                "--name", "n1", "--state-dir", str(tmp_path))
    assert proc.returncode == 2 and "joined already" in proc.stderr
    assert not os.path.exists(tmp_path / "private.key")


def test_join_checks_every_field_before_making_a_key(tmp_path):
    (tmp_path / "key").write_text("k" * 20 + "\n")
    proc = _cli("join", "http://127.0.0.1:1", "--enroll-key-file", str(tmp_path / "key"),
                "--name", "n1", "--state-dir", str(tmp_path / "st"), "--address", "nonsense")
    assert proc.returncode == 2 and "--address" in proc.stderr, proc.stderr
    assert not (tmp_path / "st").exists()


def test_follower_parses_each_event_whole_and_refuses_what_does_not_validate():
    from wg_failover.agent.follow import PeersFollower

    f = PeersFollower("http://127.0.0.1:1", "w1", None)
    wp = WorkerPeers(worker="w1", version=3, epoch="0123abcd", peers=[entry(i) for i in range(5)])
    text = wp.model_dump_json()
    assert f.parse(text) == wp
    assert f.parse(text) == wp  # the second time from the peers already validated
    bad = json.loads(text)
    bad["peers"][2]["allowed_ips"] = ["not-a-cidr"]
    assert f.parse(json.dumps(bad)) is None
    bad["peers"][2] = {"name": "c2", "public_key": "short", "allowed_ips": ["10.8.0.2/32"]}
    assert f.parse(json.dumps(bad)) is None
    for junk in ("[]", '{"peers": 5}', "nope", '{"worker": "w1", "peers": []}',
                 wp.model_copy(update={"worker": "w2"}).model_dump_json()):
        assert f.parse(junk) is None, junk
    changed = wp.model_copy(update={"version": 4, "peers": [*wp.peers[:4], entry(9)]})
    assert f.parse(changed.model_dump_json()) == changed
