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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

UP, DOWN, RECOVERING = "up", "down", "recovering"

# Reasons an assignment changes; they label wgfo_client_moves_total and appear in the API.
R_INITIAL = "initial"
R_FAILOVER = "failover"
R_DRAIN = "drain"
R_UNUSABLE = "client-rejected"
R_CAPACITY = "capacity"
R_PREEMPT = "preempt"
R_SWITCH = "client-switch"
R_FLEET = "fleet-change"  # its worker left the fleet or its preference list
REASONS = (R_INITIAL, R_FAILOVER, R_DRAIN, R_UNUSABLE, R_CAPACITY, R_PREEMPT, R_SWITCH, R_FLEET)


@dataclass(frozen=True)
class WorkerView:
    name: str
    state: str = UP  # up | down | recovering
    draining: bool = False
    capacity: int | None = None  # None: unlimited

    @property
    def healthy(self) -> bool:
        """Takes clients: up and not draining."""
        return self.state == UP and not self.draining


@dataclass(frozen=True)
class ClientView:
    name: str
    prefs: tuple[str, ...]  # worker names, most preferred first
    unusable: frozenset[str] = frozenset()  # workers this client's probes reject


@dataclass(frozen=True)
class Move:
    client: str
    from_worker: str | None
    to_worker: str
    reason: str


@dataclass
class Plan:
    moves: dict[str, Move] = field(default_factory=dict)  # by client, in the order made
    unplaceable: list[str] = field(default_factory=list)  # must move, nowhere to go


def loads(assignments: Mapping[str, str | None]) -> dict[str, int]:
    """Clients per worker, from client -> worker (None: unassigned, not counted)."""
    out: dict[str, int] = {}
    for w in assignments.values():
        if w is not None:
            out[w] = out.get(w, 0) + 1
    return out


def _room(w: WorkerView, load: int) -> float:
    return float("inf") if w.capacity is None else w.capacity - load


def _usable(c: ClientView, w: WorkerView) -> bool:
    return w.healthy and w.name not in c.unusable


def _why(c: ClientView, cur: str | None, workers: Mapping[str, WorkerView]) -> str | None:
    """Why client `c` on `cur` must move, or None when it may stay."""
    if cur is None:
        return R_INITIAL
    if cur not in workers or cur not in c.prefs:
        return R_FLEET
    w = workers[cur]
    if w.state != UP:
        return R_FAILOVER
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
) -> Plan:
    """The moves that bring `assignments` in line with the rules in the module docstring."""
    assign = {c.name: assignments.get(c.name) for c in clients}
    load = loads(assign)
    out = Plan()

    movers = [(c, why) for c in clients if (why := _why(c, assign[c.name], workers))]
    # Free capacity at the start of the batch sets each worker's share when many move at once.
    spread = len(movers) > 1
    free0 = {n: _room(w, load.get(n, 0)) for n, w in workers.items() if w.healthy}
    finite = [f for f in free0.values() if f != float("inf")]
    # An unlimited worker weighs as much as the biggest finite one, or the whole batch.
    unlimited_weight = max([len(movers), *finite, 1])
    incoming: dict[str, int] = {}

    for c, why in movers:
        cur = assign[c.name]
        cands = [
            (i, workers[n]) for i, n in enumerate(c.prefs)
            if n in workers and n != cur and _usable(c, workers[n])
            and _room(workers[n], load.get(n, 0)) > 0
        ]
        if not cands:
            if cur is None or cur not in workers:
                # Never assigned: give it a worker anyway (over capacity if it must) so it is
                # never left without one, and count it.
                fallback = _fallback(c, workers)
                if fallback is not None:
                    _record_move(out, assign, load, c.name, cur, fallback, why)
            out.unplaceable.append(c.name)
            continue
        if spread:
            def score(item: tuple[int, WorkerView]) -> tuple[float, int]:
                i, w = item
                weight = free0.get(w.name, 0)
                if weight == float("inf"):
                    weight = unlimited_weight
                return ((incoming.get(w.name, 0) + 1) / max(weight, 1e-9), i)

            _, best = min(cands, key=score)
        else:
            _, best = cands[0]
        incoming[best.name] = incoming.get(best.name, 0) + 1
        _record_move(out, assign, load, c.name, cur, best.name, why)

    _rebalance_capacity(workers, clients, assign, load, out)
    if preempt:
        _preempt(workers, clients, assign, load, out, preempt_batch)
        # A client returning home frees room: a client that found every usable worker full a
        # moment ago, and an over-full worker's clients, may now take it.
        _retry_unplaceable(workers, clients, assign, load, out)
        _rebalance_capacity(workers, clients, assign, load, out)
    return out


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


def _record_move(out: Plan, assign: dict[str, str | None], load: dict[str, int], client: str,
                 frm: str | None, to: str, reason: str) -> None:
    if frm is not None:
        load[frm] -= 1
    load[to] = load.get(to, 0) + 1
    assign[client] = to
    # One client may move twice in one plan (e.g. capacity fix after failover): keep one move
    # from its original worker to its final one.
    m = out.moves.get(client)
    if m is None:
        out.moves[client] = Move(client, frm, to, reason)
    elif m.from_worker == to:
        del out.moves[client]
    else:
        out.moves[client] = Move(client, m.from_worker, to, m.reason)


def _rebalance_capacity(workers: Mapping[str, WorkerView], clients: Sequence[ClientView],
                        assign: dict[str, str | None], load: dict[str, int], out: Plan) -> None:
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
        for n in c.prefs:
            if n != cur and n in workers and _usable(c, workers[n]) \
                    and _room(workers[n], load.get(n, 0)) > 0:
                _record_move(out, assign, load, c.name, cur, n, R_CAPACITY)
                break


def _preempt(workers: Mapping[str, WorkerView], clients: Sequence[ClientView],
             assign: dict[str, str | None], load: dict[str, int], out: Plan,
             batch: int) -> None:
    """Return up to `batch` clients to a worker they prefer over their current one."""
    moved = 0
    for c in clients:
        if moved >= batch:
            return
        cur = assign[c.name]
        if cur is None or c.name in out.moves:
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
