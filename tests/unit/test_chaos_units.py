"""The fault campaign's pure parts: the seeded schedule, and each invariant checker on recorded
observations (lab/faults.py, lab/invariants.py; the campaign itself is bench/chaos.py)."""

from __future__ import annotations

from itertools import islice

from wg_failover.lab import faults
from wg_failover.lab.invariants import (
    BlindMasterCheck,
    Snapshot,
    SwitchCheck,
    TrafficCheck,
    VersionCheck,
    not_converged,
    percentile,
)
from wg_failover.lab.state import LabState, Proc

W = ["w1", "w2", "w3"]
C = ["c1", "c2", "c3", "c4"]


def first(seed: int, n: int, workers=W, clients=C) -> list[faults.Episode]:
    return list(islice(faults.schedule(seed, workers, clients), n))


# ---------------------------------------------------------------------- the schedule


def test_same_seed_same_schedule_and_other_seeds_differ():
    assert first(1, 40) == first(1, 40)
    assert first(1, 40) != first(2, 40)
    # a longer run replays the shorter one's episodes first
    assert first(7, 60)[:25] == first(7, 25)


def test_every_kind_comes_up_early_and_faults_are_well_formed():
    for seed in range(20):
        eps = first(seed, len(faults.KINDS))
        assert {ep.faults[0].kind for ep in eps} == set(faults.KINDS)
        for ep in first(seed, 60):
            kinds = [f.kind for f in ep.faults]
            assert ep.faults[0].start == 0
            assert 1 <= len(ep.faults) <= 3
            if "all-down" in kinds:
                assert kinds == ["all-down"]
            targets = [f.target for f in ep.faults if f.target in W + C]
            assert len(targets) == len(set(targets)), ep  # one fault per worker or client
            assert not {"crash-responder", "disk-full"} <= set(kinds)
            assert len([k for k in kinds if faults.KINDS[k][0] == "master"]) == len(
                {k for k in kinds if faults.KINDS[k][0] == "master"})
            for f in ep.faults:
                what, lo, hi = faults.KINDS[f.kind]
                assert lo <= f.duration <= hi
                assert f.target in {"worker": W, "client": C}.get(what, [what])
                assert (f.param in ("in", "out")) == (f.kind == "cut-oneway")


def test_schedule_depends_on_the_lab_size():
    assert first(1, 30) != first(1, 30, workers=W + ["w4"])


def test_missing_parts_are_skipped_not_faked(tmp_path):
    st = LabState(prefix="t", directory=str(tmp_path), subnet="198.18.9.0/24",
                  master_address="198.18.9.2", root_address="198.18.9.254", root_ifname="t-root",
                  hub="t-hub", scrape_interval=1, eval_interval=1,
                  processes=[Proc("responder", "master", 1, 1)])
    inj = faults.Injector(st, say=lambda _m: None)
    for kind in ("crash-mosquitto", "crash-replica", "crash-postgres", "disk-full"):
        assert inj.unavailable(kind)
    for kind in ("crash-responder", "crash-wireguard", "loss", "master-cut", "all-down"):
        assert inj.unavailable(kind) is None
    st.processes.append(Proc("mosquitto", "master", 2, 2))
    assert inj.unavailable("crash-mosquitto") is None


# ---------------------------------------------------------------------- 1. traffic


def replies(check: TrafficCheck, client: str, t0: float, t1: float, step: float = 0.02) -> None:
    n = int(round((t1 - t0) / step))
    for i in range(n + 1):
        check.reply(client, t0 + i * step)


def test_a_covered_gap_over_the_bound_is_a_violation_reported_once():
    tc = TrafficCheck()
    tc.covered("c1", 0.0, True)
    replies(tc, "c1", 0.0, 5.0)
    assert tc.check(5.5) == []
    found = tc.check(6.2, ("crash-wireguard(w1)",))
    assert len(found) == 1 and found[0].invariant == "1 traffic"
    assert "c1" in found[0].text and found[0].faults == ("crash-wireguard(w1)",)
    assert tc.check(6.5) == []  # the same gap is not reported twice
    tc.reply("c1", 6.6)
    assert abs(tc.worst - 1.6) < 1e-9 and tc.worst_client == "c1"


def test_a_fast_path_gap_is_fine_and_measured():
    tc = TrafficCheck()
    tc.covered("c1", 0.0, True)
    replies(tc, "c1", 0.0, 2.0)
    tc.reply("c1", 2.41)
    replies(tc, "c1", 2.41, 4.0)
    assert tc.check(4.0) == []
    assert abs(tc.worst - 0.41) < 1e-9


def test_time_without_any_usable_worker_does_not_count():
    tc = TrafficCheck()
    tc.covered("c1", 0.0, True)
    replies(tc, "c1", 0.0, 1.0)
    tc.covered("c1", 1.0, False)  # every worker down
    assert tc.check(9.0) == []
    tc.covered("c1", 9.0, True)  # a worker handshaken again: the clock starts here
    assert tc.check(9.9) == []
    tc.reply("c1", 9.7)
    assert abs(tc.worst - 0.7) < 1e-9
    tc.covered("c1", 20.0, True)
    assert [v.invariant for v in tc.check(10.8)] == ["1 traffic"]


# ---------------------------------------------------------------------- 2. switching


def test_a_move_with_no_fault_is_a_flap():
    sc = SwitchCheck()
    assert sc.observe(0, {"c1": "w1", "c2": "w2"}) == []
    assert sc.observe(1, {"c1": None, "c2": "w2"}) == []  # no routes for a moment: not a move
    found = sc.observe(2, {"c1": "w3", "c2": "w2"})
    assert [v.invariant for v in found] == ["2 flap"] and "w1 -> w3" in found[0].text


def test_at_most_two_moves_per_fault():
    sc = SwitchCheck()
    sc.observe(0, {"c1": "w1"})
    sc.begin("#1", 1)
    assert sc.observe(1, {"c1": "w2"}) == []
    assert sc.observe(2, {"c1": "w1"}) == []
    found = sc.observe(3, {"c1": "w2"})
    assert [v.invariant for v in found] == ["2 switches"]
    assert sc.observe(4, {"c1": "w3"}) == []  # reported once per episode
    sc.end()
    assert sc.observe(5, {"c1": "w3"}) == []
    sc.begin("#2", 2)  # two faults: four moves allowed
    for t, w in enumerate(["w1", "w2", "w1", "w2"]):
        assert sc.observe(6 + t, {"c1": w}) == []
    assert len(sc.observe(11, {"c1": "w3"})) == 1
    assert sc.switches == 9


# ---------------------------------------------------------------------- 3. convergence


def snap(**kw) -> Snapshot:
    base = dict(worker_states={"w1": "up", "w2": "up"}, assigned={"c1": "w1", "c2": "w2"},
                routes={"c1": "w1", "c2": "w2"},
                worker_peers={"w1": frozenset({"k1", "k2"}), "w2": frozenset({"k1", "k2"})},
                fleet_peers=frozenset({"k1", "k2"}))
    base.update(kw)
    return Snapshot(**base)


def test_converged_only_when_everything_matches():
    assert not_converged(snap()) == []
    assert not_converged(snap(worker_states={"w1": "recovering", "w2": "up"})) == [
        "responder calls w1 recovering", "c1: assigned w1, which is not up"]
    assert not_converged(snap(routes={"c1": "w2", "c2": "w2"})) == ["c1: routes on w2, "
                                                                     "assigned w1"]
    assert not_converged(snap(worker_peers={"w1": frozenset({"k1"}),
                                            "w2": frozenset({"k1", "k2"})})) == [
        "w1: peers do not match the fleet"]
    assert not_converged(snap(worker_states=None, assigned=None)) == [
        "responder does not answer /v1/workers", "responder does not answer every assignment"]
    assert not_converged(snap(dead_processes=("switcher on c1",))) == [
        "switcher on c1 is not running"]
    assert not_converged(snap(silent=("c2",))) == ["c2: no traffic"]


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 50) == 50.0 and percentile(xs, 99) == 99.0
    assert percentile([0.4, 65.3, 0.2, 37.7], 50) == 0.4


# ---------------------------------------------------------------------- 4. versions


def test_versions_never_go_back_and_the_epoch_stays():
    vc = VersionCheck()
    assert vc.observe(0, "c1", "ab", 3) == []
    assert vc.observe(1, "c1", "ab", 3) == []
    assert vc.observe(2, "c1", None, 4) == []  # an answer without the epoch keeps the last one
    back = vc.observe(3, "c1", "ab", 2, ("crash-responder(master)",))
    assert [v.invariant for v in back] == ["4 version"] and "4 -> 2" in back[0].text
    assert [v.invariant for v in vc.observe(4, "c1", "cd", 5)] == ["4 version"]
    assert vc.observe(5, "c2", "cd", 1) == []


# ---------------------------------------------------------------------- 5. blind master


def test_blind_master_clients_must_stay_and_the_worker_stay_up():
    bm = BlindMasterCheck("w1", frozenset({"c1", "c2"}), "master-cut(w1)")
    ok = bm.observe(1, {"c1": "w1", "c2": "w1", "c3": "w2"}, {"w1": "up"},
                    {"c1": "w1", "c2": "w1"})
    assert ok == []
    assert bm.observe(2, {"c1": "w1", "c2": "w1"}, None, None) == []  # responder not asked
    down = bm.observe(3, {"c1": "w1", "c2": "w1"}, {"w1": "down"}, {"c1": "w2", "c2": "w1"})
    assert sorted(v.text for v in down) == [
        "c1 left w1 for w2 although it still reaches it",
        "responder calls w1 down although its clients reach it"]
    moved = bm.observe(4, {"c1": "w2", "c2": "w3"}, {"w1": "down"}, None)
    assert [v.text for v in moved] == ["c2 left w1 for w3 although it still reaches it"]


# ---------------------------------------------------------------------- defects found


def test_wireguard_go_is_ready_only_when_its_socket_listens(tmp_path):
    # The campaign's crash-wireguard heal hit `wg setconf` between wireguard-go's bind() and
    # listen(): `wg` found no listener, fell back to the kernel and failed ("Protocol not
    # supported"). Readiness is a connection accepted, not the file's existence.
    import socket

    from wg_failover.lab.netns import uapi_ready

    path = tmp_path / "wgt0.sock"
    assert not uapi_ready(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        assert path.exists() and not uapi_ready(path)  # bound, not listening yet
        s.listen(1)
        assert uapi_ready(path)


BURST = dict(k=3, burst_interval=0.02, burst_misses=3)


def _decider():
    from wg_failover.client.decisions import Decider, Settings

    d = Decider(W, Settings(**BURST), active="w1")
    for t in (0.0, 0.1, 0.2):
        for w in W:
            d.on_reply(w, 0.001, t + 0.001)
    return d


def _moves(actions) -> list[tuple[str | None, str]]:
    from wg_failover.client.decisions import Switch

    return [(a.from_, a.to) for a in actions if isinstance(a, Switch)]


def test_every_worker_down_at_once_no_hop_through_dead_backups():
    # chaos all-down (seed 1, episode 13): the burst judged the active dead in ~190 ms, before
    # the backups' next probes could fail, so the switcher hopped w1 -> w2 -> w3 through dead
    # workers, then moved again on the way back (3 moves for one fault). A backup must have
    # answered since the active went quiet.
    d = _decider()
    for w in ("w2", "w3"):
        d.on_reply(w, 0.001, 0.28)  # their last answers: after w1's, before the kill at 0.29
    moves = []
    for t in (0.35, 0.37, 0.39, 0.41):  # w1's first miss, then the burst: down at the 4th
        moves += _moves(d.on_miss("w1", t))
    assert d.health["w1"].state == "down" and moves == []
    for t in (0.43, 0.53, 0.63):
        for w in ("w2", "w3"):
            moves += _moves(d.on_miss(w, t))
    assert moves == [] and d.active == "w1"
    # every worker back within a moment: the backups went quiet with the active (a shared
    # silence, client/health.py), so the switcher waits for the active's answer: no move
    moves += _moves(d.on_reply("w3", 0.001, 5.0))
    moves += _moves(d.on_reply("w1", 0.001, 5.01) + d.on_reply("w2", 0.001, 5.02))
    assert moves == [] and d.active == "w1"


def test_every_worker_down_then_the_active_stays_dead_one_move_to_the_first_back():
    d = _decider()
    for w in ("w2", "w3"):
        d.on_reply(w, 0.001, 0.28)
    moves = []
    for t in (0.35, 0.37, 0.39, 0.41):
        moves += _moves(d.on_miss("w1", t))
    for t in (0.43, 0.53, 0.63):
        for w in ("w2", "w3"):
            moves += _moves(d.on_miss(w, t))
    moves += _moves(d.on_reply("w3", 0.001, 5.0) + d.on_miss("w1", 5.05))
    assert moves == [], "the active has 0.2 s to answer too"
    moves += _moves(d.on_reply("w3", 0.001, 5.22) + d.on_miss("w1", 5.25))
    moves += _moves(d.on_reply("w2", 0.001, 5.3) + d.on_miss("w1", 5.35))
    assert moves == [("w1", "w3")]


def test_one_worker_killed_the_fast_path_still_moves_at_once():
    d = _decider()
    d.on_reply("w2", 0.001, 0.36)  # w2 answers after w1's first miss: alive
    moves = []
    for t in (0.35, 0.37, 0.39):
        moves += _moves(d.on_miss("w1", t))
    assert moves == []
    assert _moves(d.on_miss("w1", 0.41)) == [("w1", "w2")]


def test_the_fast_path_waits_for_a_backup_answer_newer_than_the_silence():
    d = _decider()
    moves = []
    for t in (0.35, 0.37, 0.39, 0.41):
        moves += _moves(d.on_miss("w1", t))
    assert moves == []  # w2 and w3 last answered at 0.201: nothing known since w1 went quiet
    assert _moves(d.on_reply("w3", 0.001, 0.43)) == [("w1", "w3")]


def test_an_assignment_waits_for_a_target_heard_since_the_active_went_quiet():
    from wg_failover.wire import Assignment

    d = _decider()
    d.on_reply("w2", 0.001, 0.28)
    d.on_reply("w3", 0.001, 0.28)
    for t in (0.35, 0.37, 0.39, 0.41):
        d.on_miss("w1", t)
    a = Assignment(client="c1", worker="w3", version=2, backups=("w2",), reason="client-rejected")
    assert _moves(d.on_assignment(a, 0.42)) == [] and d.active == "w1"
    assert _moves(d.on_reply("w3", 0.001, 0.45)) == [("w1", "w3")]


def test_an_assignment_does_not_move_blind_while_the_active_is_going_quiet():
    # chaos all-down (seed 1, episode 21): the responder's answer to the other clients' reports
    # came while this client's active worker had only begun to miss, and took it onto a worker
    # that had died with the rest.
    from wg_failover.wire import Assignment

    d = _decider()
    d.on_miss("w1", 0.35)  # one miss: a burst starts, w1 is not down yet
    a = Assignment(client="c1", worker="w2", version=2, backups=("w3",), reason="suspect")
    assert _moves(d.on_assignment(a, 0.36)) == []
    assert _moves(d.on_reply("w2", 0.001, 0.38)) == [("w1", "w2")]


def test_a_flap_names_the_switchers_own_time_and_reason():
    """A move read from a switcher's log carries its line's time and reason into the violation,
    so a flap under CPU starvation reads as such (docs/chaos.md)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "chaos_bench", Path(__file__).resolve().parents[2] / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    chaos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chaos)
    line = ("2026-12-01T23:38:58.381 INFO switch w3 -> w2 (failover) after 197 ms: w3 missed 4 "
            "probes (last reply 197 ms ago); w2 answers [wg set 3.2 ms]")
    m = chaos.SWITCH_RE.match(line)
    assert m is not None and m.group(2, 3) == ("w3", "w2")
    assert chaos.SWITCH_RE.match("2026-12-01T23:38:58.381 ERROR switch w3 -> w2 FAILED (x)") is None
    (v,) = SwitchCheck().move(5.0, "c1", "w3", "w2", why=f"at 23:38:58.381: ({m.group(4)}")
    assert v.invariant == "2 flap" and "after 197 ms: w3 missed 4 probes" in v.text
    assert 0.0 <= chaos.cpu_pressure() <= 100.0 and len(chaos.loadavg()) == 3
