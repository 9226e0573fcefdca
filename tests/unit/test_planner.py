"""The planner's rules, as examples and as hypothesis properties (pure functions, no I/O)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wg_failover.responder import planner
from wg_failover.responder.planner import ClientView, WorkerView


def W(name, state="up", draining=False, capacity=None):  # noqa: N802 - reads like a table
    return WorkerView(name, state, draining, capacity)


def fleet(n_clients, prefs=("w1", "w2", "w3")):
    return [ClientView(f"c{i}", tuple(prefs)) for i in range(n_clients)]


def apply(assign, plan):
    out = dict(assign)
    out.update({m.client: m.to_worker for m in plan.moves.values()})
    return out


# --------------------------------------------------------------------------- examples


def test_initial_assignment_follows_preference():
    ws = {n: W(n) for n in ("w1", "w2")}
    cs = [ClientView("a", ("w1", "w2")), ClientView("b", ("w2", "w1"))]
    plan = planner.plan(ws, cs, {})
    assert apply({}, plan) == {"a": "w1", "b": "w2"}
    assert {m.reason for m in plan.moves.values()} == {planner.R_INITIAL}


def test_failover_moves_only_the_failed_workers_clients_and_spreads_them():
    ws = {"w1": W("w1", "down"), "w2": W("w2"), "w3": W("w3")}
    cs = fleet(6)
    assign = {"c0": "w1", "c1": "w1", "c2": "w1", "c3": "w1", "c4": "w2", "c5": "w3"}
    plan = planner.plan(ws, cs, assign)
    after = apply(assign, plan)
    assert set(plan.moves) == {"c0", "c1", "c2", "c3"}
    assert after["c4"] == "w2" and after["c5"] == "w3"
    # Same preference list for everybody, yet no stampede onto w2: 2 and 2.
    assert sorted(after[c] for c in ("c0", "c1", "c2", "c3")) == ["w2", "w2", "w3", "w3"]
    assert all(m.reason == planner.R_FAILOVER for m in plan.moves.values())


def test_spread_follows_free_capacity():
    ws = {"w1": W("w1", "down"), "w2": W("w2", capacity=10), "w3": W("w3", capacity=40)}
    cs = fleet(10)
    assign = {c.name: "w1" for c in cs}
    after = apply(assign, planner.plan(ws, cs, assign))
    assert sum(1 for v in after.values() if v == "w2") == 2
    assert sum(1 for v in after.values() if v == "w3") == 8


def test_single_mover_takes_first_preference_with_room():
    ws = {"w1": W("w1", draining=True), "w2": W("w2", capacity=1), "w3": W("w3")}
    cs = [ClientView("a", ("w1", "w2", "w3")), ClientView("b", ("w2", "w1"))]
    plan = planner.plan(ws, cs, {"a": "w1", "b": "w2"})
    assert plan.moves["a"].to_worker == "w3"  # w2 is full
    assert plan.moves["a"].reason == planner.R_DRAIN


def test_no_healthy_worker_keeps_assignments_and_counts_unplaceable():
    ws = {"w1": W("w1", "down"), "w2": W("w2", "recovering")}
    cs = fleet(2, ("w1", "w2"))
    plan = planner.plan(ws, cs, {"c0": "w1", "c1": "w2"})
    assert plan.moves == {}
    assert sorted(plan.unplaceable) == ["c0", "c1"]


def test_unusable_worker_moves_only_that_client():
    ws = {n: W(n) for n in ("w1", "w2")}
    cs = [ClientView("a", ("w1", "w2"), frozenset({"w1"})), ClientView("b", ("w1", "w2"))]
    plan = planner.plan(ws, cs, {"a": "w1", "b": "w1"})
    assert {c: m.to_worker for c, m in plan.moves.items()} == {"a": "w2"}
    assert planner.backups(cs[0], "w2", ws) == []


def test_preempt_returns_clients_in_batches():
    ws = {n: W(n) for n in ("w1", "w2")}
    cs = fleet(5, ("w1", "w2"))
    assign = {c.name: "w2" for c in cs}
    assert planner.plan(ws, cs, assign).moves == {}  # sticky without preempt
    plan = planner.plan(ws, cs, assign, preempt=True, preempt_batch=2)
    assert list(plan.moves) == ["c0", "c1"]
    assert all(m.reason == planner.R_PREEMPT and m.to_worker == "w1" for m in plan.moves.values())


def test_fleet_change_moves_clients_off_workers_they_no_longer_list():
    ws = {n: W(n) for n in ("w1", "w2")}
    cs = [ClientView("a", ("w2",)), ClientView("b", ("w1", "w2"))]
    plan = planner.plan(ws, cs, {"a": "w1", "b": "w9"})
    assert {c: (m.to_worker, m.reason) for c, m in plan.moves.items()} == {
        "a": ("w2", planner.R_FLEET), "b": ("w1", planner.R_FLEET)}


def test_accept_switch():
    ws = {"w1": W("w1"), "w2": W("w2", capacity=1), "w3": W("w3", draining=True)}
    c = ClientView("a", ("w1", "w2", "w3"))
    assert planner.accept_switch(c, "w2", "w1", ws, {"a": "w1"})
    assert not planner.accept_switch(c, "w2", "w1", ws, {"a": "w1", "b": "w2"})  # full
    assert not planner.accept_switch(c, "w3", "w1", ws, {"a": "w1"})  # draining
    assert not planner.accept_switch(c, "w9", "w1", ws, {"a": "w1"})  # unknown


def test_preempt_frees_room_for_a_client_stuck_on_an_unusable_worker():
    """Found by the property below (hypothesis seed 25): c1 cannot use w1 and w3 was full when
    it looked, so it stayed unplaceable; preempt then took c2 home from w3. The room it freed
    must go to c1 in the same plan, not wait for the next one."""
    ws = {"w1": W("w1"), "w3": W("w3", capacity=2)}
    clients = [ClientView("c1", ("w1", "w3"), frozenset({"w1"})),
               ClientView("c2", ("w1", "w3")), ClientView("c3", ("w3",))]
    p = planner.plan(ws, clients, {"c1": "w1", "c2": "w3", "c3": "w3"}, preempt=True)
    assert p.moves["c2"].to_worker == "w1" and p.moves["c1"].to_worker == "w3"
    assert p.unplaceable == []


# --------------------------------------------------------------------------- properties

NAMES = ["w1", "w2", "w3", "w4"]


@st.composite
def scenarios(draw):
    n_workers = draw(st.integers(1, 4))
    names = NAMES[:n_workers]
    workers = {
        n: WorkerView(
            n,
            draw(st.sampled_from([planner.UP, planner.UP, planner.UP, planner.DOWN,
                                  planner.RECOVERING])),
            draw(st.integers(0, 4)) == 0,  # draining, now and then
            draw(st.one_of(st.none(), st.integers(1, 8))),
        )
        for n in names
    }
    n_clients = draw(st.integers(0, 20))
    clients = []
    for i in range(n_clients):
        prefs = draw(st.permutations(names))
        k = draw(st.integers(1, len(names)))
        unusable = draw(st.sets(st.sampled_from(names), max_size=1)) \
            if draw(st.integers(0, 5)) == 0 else set()
        clients.append(ClientView(f"c{i}", tuple(prefs[:k]), frozenset(unusable)))
    assign = {}
    for c in clients:
        assign[c.name] = draw(st.one_of(st.none(), st.sampled_from(c.prefs)))
    preempt = draw(st.booleans())
    return workers, clients, assign, preempt


def room(w, load):
    return w.capacity is None or load.get(w.name, 0) < w.capacity


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_no_client_on_bad_worker_while_a_usable_one_has_room(s):
    workers, clients, assign, preempt = s
    after = apply(assign, planner.plan(workers, clients, assign, preempt=preempt))
    load = planner.loads(after)
    for c in clients:
        cur = after[c.name]
        assert cur is not None  # never left without a worker
        w = workers[cur]
        if not w.healthy or cur in c.unusable:
            # Then none of its usable workers may have room.
            for n in c.prefs:
                o = workers[n]
                assert not (o.healthy and n not in c.unusable and room(o, load)), (c, after)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_no_worker_over_capacity_while_another_has_room(s):
    workers, clients, assign, preempt = s
    # Start from a state within capacity (over-capacity starts are repaired as far as possible).
    plan = planner.plan(workers, clients, assign, preempt=preempt)
    after = apply(assign, plan)
    load = planner.loads(after)
    for c in clients:
        cur = after[c.name]
        w = workers[cur]
        if w.capacity is not None and load[cur] > w.capacity:
            for n in c.prefs:
                o = workers[n]
                if n != cur and o.healthy and n not in c.unusable:
                    assert not room(o, load), (c.name, cur, n, after)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_sticky(s):
    """Without preempt, a client on a usable worker within capacity never moves."""
    workers, clients, assign, _ = s
    plan = planner.plan(workers, clients, assign, preempt=False)
    load = planner.loads(assign)
    after = planner.loads(apply(assign, plan))
    for name, m in plan.moves.items():
        c = next(c for c in clients if c.name == name)
        cur = assign[name]
        if cur is None:
            continue
        w = workers[cur]
        if m.reason == planner.R_CAPACITY:
            # Only leaves a worker that would be over capacity with it (e.g. after a client
            # that can go nowhere else was placed there).
            assert w.capacity is not None and after.get(cur, 0) + 1 > w.capacity
            continue
        stays_ok = w.healthy and cur not in c.unusable and (
            w.capacity is None or load[cur] <= w.capacity)
        assert not stays_ok, (name, m)


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_property_deterministic_and_stable(s):
    workers, clients, assign, preempt = s
    a = planner.plan(workers, clients, assign, preempt=preempt)
    b = planner.plan(dict(reversed(list(workers.items()))), list(clients), dict(assign),
               preempt=preempt)
    assert a.moves == b.moves
    # Planning again on the result changes nothing (no ping-pong), preempt batches aside.
    after = apply(assign, a)
    again = planner.plan(workers, clients, after, preempt=False)
    assert again.moves == {}


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_property_moves_only_to_usable_workers(s):
    workers, clients, assign, preempt = s
    plan = planner.plan(workers, clients, assign, preempt=preempt)
    by = {c.name: c for c in clients}
    for m in plan.moves.values():
        if m.from_worker is None and m.client in plan.unplaceable:
            continue  # never-assigned fallback
        assert workers[m.to_worker].healthy
        assert m.to_worker not in by[m.client].unusable
        assert m.to_worker in by[m.client].prefs


def test_room_freed_by_preempt_is_used_by_an_over_full_worker():
    # Found by hypothesis: c8 returning home (preempt) frees w2 after the capacity pass had run,
    # leaving c7 on an over-full w4 while w2 had room.
    workers = {
        "w1": planner.WorkerView("w1"),
        "w2": planner.WorkerView("w2", capacity=1),
        "w4": planner.WorkerView("w4", capacity=1),
    }
    clients = [
        planner.ClientView("c7", ("w4", "w2")),
        planner.ClientView("c8", ("w1", "w2")),
        planner.ClientView("c14", ("w4",)),
    ]
    assign = {"c7": None, "c8": "w2", "c14": None}
    after = apply(assign, planner.plan(workers, clients, assign, preempt=True))
    assert after == {"c7": "w2", "c8": "w1", "c14": "w4"}


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_property_remembered_backups_are_the_backups_and_never_shared(s):
    workers, clients, assign, _ = s
    of = planner.backup_lists(workers)
    for c in clients * 2:  # the second pass answers from the memo
        for w in (None, *c.prefs):
            got = of(c, w)
            assert got == planner.backups(c, w, workers)
            got.append("mutated")  # a row's list is its own: the next answer is untouched
            assert "mutated" not in of(c, w)
