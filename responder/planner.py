"""The failover planner: pure functions on plain data, no I/O, no clock.

`plan()` takes the fleet's workers (health, drain flag, capacity), the clients (preference lists)
and the current assignments, and returns the moves to make. The rules, in order:

1. Sticky: a client only moves when it must (its worker is down, draining, unusable for it, or
   over capacity while another worker has room) or, with preempt, to return to a better-preferred
   worker. Nobody else moves.
2. A single moving client goes to the first healthy worker in its preference list with room.
3. When several clients move at once (a whole worker failed), they spread over the healthy workers
   in proportion to each worker's free capacity instead of stampeding onto the first one.
4. Capacity: no worker goes over capacity while another has room. A client that no healthy worker
   can take stays where it is (never black-holed) and is reported as unplaceable.
5. Deterministic: the same input gives the same output (clients are visited in fleet order, ties
   broken by preference order).
6. Latency placement (`latency=` given): a moving client takes its fastest usable worker with room
   (its smoothed RTTs; a worker it has no figure for counts as fast as a measured one in its
   region, else comes after them in preference order); in a batch the spread decides how many
   go where and clients swap destinations when both gain. A client moves for latency alone only
   when the gain is large (both bounds of the rule), lasting (the better worker has beaten the
   current one for the rule's sustain time) and its last latency move is an interval ago; at
   most `rule.batch` such moves per plan, never onto a full worker. A client placed before its
   figures came (preference order) may settle once, while its figures are new, by the rule
   without its absolute floor (reason `settle`; placement.py). A suspect worker is treated
   like a down one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from .latency_rule import ClientLatency, LatencyRule, gain_enough
from .placement import estimates, latency_moves, swap_for_latency
from .placement_base import (
    DOWN,
    INF,
    R_CAPACITY,
    R_DRAIN,
    R_FAILOVER,
    R_FLEET,
    R_INITIAL,
    R_LATENCY,
    R_PREEMPT,
    R_SETTLE,
    R_SUSPECT,
    R_SWITCH,
    R_UNUSABLE,
    REASONS,
    RECOVERING,
    UP,
    ClientView,
    Move,
    Plan,
    WorkerView,
    loads,
)
from .placement_base import record_move as _record_move
from .placement_base import room as _room
from .placement_base import usable as _usable

# planner.* for callers and tests: the data types, reasons and states live in placement_base.
__all__ = ["DOWN", "R_CAPACITY", "R_DRAIN", "R_FAILOVER", "R_FLEET", "R_INITIAL", "R_LATENCY",
           "R_PREEMPT", "R_SETTLE", "R_SUSPECT", "R_SWITCH", "R_UNUSABLE", "REASONS",
           "RECOVERING", "UP", "ClientLatency", "ClientView", "LatencyRule", "Move", "Plan",
           "WorkerView", "accept_switch", "backup_lists", "backups", "estimates", "gain_enough",
           "loads", "plan"]


def _why(c: ClientView, cur: str | None, workers: Mapping[str, WorkerView]) -> str | None:
    """Why client `c` on `cur` must move, or None when it may stay."""
    if cur is None:
        return R_INITIAL
    if cur not in workers or cur not in c.prefs:
        return R_FLEET
    w = workers[cur]
    if w.state != UP:
        return R_FAILOVER
    if w.suspect:
        return R_SUSPECT
    if w.draining:
        return R_DRAIN
    if cur in c.unusable:
        return R_UNUSABLE
    return None


def plan(
    workers: Mapping[str, WorkerView],
    clients: Sequence[ClientView],
    assignments: Mapping[str, str | None],
    *,
    preempt: bool = False,
    preempt_batch: int = 10,
    latency: Mapping[str, ClientLatency] | None = None,
    rule: LatencyRule | None = None,
    now: float = 0.0,
) -> Plan:
    """The moves that bring `assignments` in line with the rules in the module docstring.

    `latency` (client -> figures) turns on latency placement; `now` is the clock of its
    `better_since` and `last_move`."""
    assign = {c.name: assignments.get(c.name) for c in clients}
    load = loads(assign)
    out = Plan()
    rank = _ranker(workers, latency)

    movers = [(c, why) for c in clients if (why := _why(c, assign[c.name], workers))]
    # Free capacity at the start of the batch sets each worker's share when many move at once.
    spread = len(movers) > 1
    free0 = {n: _room(w, load.get(n, 0)) for n, w in workers.items() if w.healthy}
    finite = [f for f in free0.values() if f != float("inf")]
    # An unlimited worker weighs as much as the biggest finite one, or the whole batch.
    unlimited_weight = max([len(movers), *finite, 1])
    incoming: dict[str, int] = {}

    # Usable candidates by (preferences, unusable set, current worker): movers share a few.
    usable_of: dict[tuple[tuple[str, ...], frozenset[str], str | None],
                    list[tuple[int, WorkerView]]] = {}
    for c, why in movers:
        cur = assign[c.name]
        shape = (c.prefs, c.unusable, cur)
        usable = usable_of.get(shape)
        if usable is None:
            usable = usable_of[shape] = [(i, workers[n]) for i, n in enumerate(c.prefs)
                                         if n in workers and n != cur and _usable(c, workers[n])]
        cands = [item for item in usable
                 if item[1].capacity is None or _room(item[1], load.get(item[1].name, 0)) > 0]
        if not cands:
            if cur is None or cur not in workers:
                # Never assigned: give it a worker anyway (over capacity if it must) so it is
                # never left without one, and count it.
                fallback = _fallback(c, workers)
                if fallback is not None:
                    _record_move(out, assign, load, c.name, cur, fallback, why)
            out.unplaceable.append(c.name)
            continue
        key = rank(c)
        if spread:
            def score(item: tuple[int, WorkerView],
                      key: Callable[[int, str], tuple[float, int]] = key
                      ) -> tuple[float, tuple[float, int]]:
                i, w = item
                weight = free0.get(w.name, 0)
                if weight == float("inf"):
                    weight = unlimited_weight
                return ((incoming.get(w.name, 0) + 1) / max(weight, 1e-9), key(i, w.name))

            _, best = min(cands, key=score)
        else:
            _, best = min(cands, key=lambda item: key(item[0], item[1].name))
        incoming[best.name] = incoming.get(best.name, 0) + 1
        _record_move(out, assign, load, c.name, cur, best.name, why)

    if spread and latency:
        swap_for_latency(workers, [c for c, _ in movers], assign, load, out, latency)
    _rebalance_capacity(workers, clients, assign, load, out, rank)
    if preempt:
        # With latency placement a client with figures returns by the latency rule instead.
        _preempt(workers, clients, assign, load, out, preempt_batch, latency or {})
    if latency is not None:
        latency_moves(workers, clients, assign, load, out, latency, rule or LatencyRule(), now)
    if out.moves and (preempt or latency is not None):
        # A client returning home frees room: a client that found every usable worker full a
        # moment ago, and an over-full worker's clients, may now take it.
        _retry_unplaceable(workers, clients, assign, load, out)
        _rebalance_capacity(workers, clients, assign, load, out, rank)
    return out


Rank = Callable[[ClientView], Callable[[int, str], tuple[float, int]]]


def _ranker(workers: Mapping[str, WorkerView],
            latency: Mapping[str, ClientLatency] | None) -> Rank:
    """Per client, the sort key of a candidate worker (its index in the client's preferences,
    its name): preference order, or with latency figures fastest first."""
    def by_preference(i: int, _n: str) -> tuple[float, int]:
        return (0.0, i)

    def rank(c: ClientView) -> Callable[[int, str], tuple[float, int]]:
        info = latency.get(c.name) if latency else None
        if info is None or not info.rtt:
            return by_preference
        est = estimates(info.rtt, workers)
        return lambda i, n: (est.get(n, INF), i)

    return rank


def _retry_unplaceable(workers: Mapping[str, WorkerView], clients: Sequence[ClientView],
                       assign: dict[str, str | None], load: dict[str, int], out: Plan) -> None:
    by_name = {c.name: c for c in clients}
    still = []
    for name in out.unplaceable:
        c, cur = by_name[name], assign[name]
        why = _why(c, cur, workers)
        to = next((n for n in c.prefs if n in workers and n != cur
                   and _usable(c, workers[n]) and _room(workers[n], load.get(n, 0)) > 0), None)
        if why is None or to is None:
            if why is not None:
                still.append(name)
            continue
        _record_move(out, assign, load, name, cur, to, why)
    out.unplaceable = still


def _fallback(c: ClientView, workers: Mapping[str, WorkerView]) -> str | None:
    prefs = [n for n in c.prefs if n in workers]
    for n in prefs:
        if _usable(c, workers[n]):
            return n
    for n in prefs:
        if workers[n].healthy:
            return n
    return prefs[0] if prefs else None


def _rebalance_capacity(workers: Mapping[str, WorkerView], clients: Sequence[ClientView],
                        assign: dict[str, str | None], load: dict[str, int], out: Plan,
                        rank: Rank) -> None:
    """Move clients off over-full workers while another usable worker has room.

    The last clients (fleet order) leave first, so the same ones move every time.
    """
    for c in reversed(clients):
        cur = assign[c.name]
        if cur is None or cur not in workers:
            continue
        w = workers[cur]
        if w.capacity is None or load.get(cur, 0) <= w.capacity:
            continue
        cands = [(i, n) for i, n in enumerate(c.prefs)
                 if n != cur and n in workers and _usable(c, workers[n])
                 and _room(workers[n], load.get(n, 0)) > 0]
        if cands:
            key = rank(c)
            _, n = min(cands, key=lambda item: key(*item))
            _record_move(out, assign, load, c.name, cur, n, R_CAPACITY)


def _preempt(workers: Mapping[str, WorkerView], clients: Sequence[ClientView],
             assign: dict[str, str | None], load: dict[str, int], out: Plan,
             batch: int, latency: Mapping[str, ClientLatency]) -> None:
    """Return up to `batch` clients to a worker they prefer over their current one."""
    moved = 0
    for c in clients:
        if moved >= batch:
            return
        cur = assign[c.name]
        if cur is None or c.name in out.moves or (c.name in latency and latency[c.name].rtt):
            continue
        for n in c.prefs:
            if n == cur:
                break
            if n in workers and _usable(c, workers[n]) and _room(workers[n], load.get(n, 0)) > 0:
                _record_move(out, assign, load, c.name, cur, n, R_PREEMPT)
                moved += 1
                break


def backups(c: ClientView, worker: str | None, workers: Mapping[str, WorkerView]) -> list[str]:
    """The client's other usable workers, in preference order: where its switcher may go alone."""
    return [n for n in c.prefs if n != worker and n in workers and _usable(c, workers[n])]


def backup_lists(workers: Mapping[str, WorkerView]
                 ) -> Callable[[ClientView, str | None], list[str]]:
    """`backups` over one set of worker views, remembered per (preferences, unusable set,
    worker): a failover at 30,000 clients asks 30,000 times for a handful of answers. Each
    answer is a new list (rows never share one)."""
    memo: dict[tuple[tuple[str, ...], frozenset[str], str | None], tuple[str, ...]] = {}

    def of(c: ClientView, worker: str | None) -> list[str]:
        shape = (c.prefs, c.unusable, worker)
        got = memo.get(shape)
        if got is None:
            got = memo[shape] = tuple(backups(c, worker, workers))
        return list(got)

    return of


def accept_switch(c: ClientView, to_worker: str, current: str | None,
                  workers: Mapping[str, WorkerView], assignments: Mapping[str, str | None]) -> bool:
    """May a client's own fast-path switch to `to_worker` stand?

    Yes when the worker is one of its own, healthy and not over capacity with it on board.
    """
    w = workers.get(to_worker)
    if w is None or to_worker not in c.prefs or not w.healthy:
        return False
    if to_worker == current:
        return True
    return _room(w, loads(assignments).get(to_worker, 0)) > 0
