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
   most `rule.batch` such moves per plan, never onto a full worker. A suspect worker is treated
   like a down one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .latency_rule import ClientLatency, LatencyRule, gain_enough

__all__ = ["ClientLatency", "LatencyRule", "gain_enough"]  # planner.* for callers and tests

UP, DOWN, RECOVERING = "up", "down", "recovering"
INF = float("inf")

# Reasons an assignment changes; they label wgfo_client_moves_total and appear in the API.
R_INITIAL = "initial"
R_FAILOVER = "failover"
R_DRAIN = "drain"
R_UNUSABLE = "client-rejected"
R_CAPACITY = "capacity"
R_PREEMPT = "preempt"
R_SWITCH = "client-switch"
R_FLEET = "fleet-change"  # its worker left the fleet or its preference list
R_SUSPECT = "suspect"  # several of its worker's clients switched away from it (intake/suspect.py)
R_LATENCY = "latency"
REASONS = (R_INITIAL, R_FAILOVER, R_DRAIN, R_UNUSABLE, R_CAPACITY, R_PREEMPT, R_SWITCH, R_FLEET,
           R_SUSPECT, R_LATENCY)


@dataclass(frozen=True)
class WorkerView:
    name: str
    state: str = UP  # up | down | recovering
    draining: bool = False
    capacity: int | None = None  # None: unlimited
    suspect: bool = False  # treated as unavailable until an alert confirms it or the mark expires
    region: str | None = None

    @property
    def healthy(self) -> bool:
        """Takes clients: up, not draining, not suspect."""
        return self.state == UP and not self.draining and not self.suspect


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
        _swap_for_latency(workers, [c for c, _ in movers], assign, load, out, latency)
    _rebalance_capacity(workers, clients, assign, load, out, rank)
    if preempt:
        # With latency placement a client with figures returns by the latency rule instead.
        _preempt(workers, clients, assign, load, out, preempt_batch, latency or {})
    if latency is not None:
        _latency_moves(workers, clients, assign, load, out, latency, rule or LatencyRule(), now)
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


def estimates(rtt: Mapping[str, float], workers: Mapping[str, WorkerView]) -> dict[str, float]:
    """Measured RTTs, and for an unmeasured worker the best measured one in its region."""
    best: dict[str, float] = {}
    for n, ms in rtt.items():
        region = workers[n].region if n in workers else None
        if region is not None and ms < best.get(region, INF):
            best[region] = ms
    out = dict(rtt)
    for n, w in workers.items():
        if n not in out and w.region in best:
            out[n] = best[w.region]
    return out


def _swap_for_latency(workers: Mapping[str, WorkerView], movers: Sequence[ClientView],
                      assign: dict[str, str | None], load: dict[str, int], out: Plan,
                      latency: Mapping[str, ClientLatency]) -> None:
    """In one batch of movers, two clients swap their new workers when that lowers their summed
    RTT: every worker keeps the count the spread gave it (so capacity and the spread hold), and
    clients sit on the faster of the workers the spread chose."""
    skip = set(out.unplaceable)
    ok = {c.name: c for c in movers if c.name in out.moves and c.name not in skip
          and (info := latency.get(c.name)) is not None and info.rtt}
    est = {n: estimates(latency[n].rtt, workers) for n in ok}
    dest: dict[str, list[str]] = {}
    for n in ok:
        dest.setdefault(assign[n] or "", []).append(n)
    names = sorted(dest)

    def gains(frm: str, to: str) -> list[tuple[float, str]]:
        return sorted((est[n][to] - est[n][frm], n) for n in dest[frm]
                      if frm in est[n] and to in est[n] and to in ok[n].prefs
                      and to != out.moves[n].from_worker and _usable(ok[n], workers[to]))

    for i, x in enumerate(names):
        for y in names[i + 1:]:
            for (da, a), (db, b) in zip(gains(x, y), gains(y, x), strict=False):
                if da + db >= -1e-9:
                    break
                _record_move(out, assign, load, a, x, y, R_LATENCY)
                _record_move(out, assign, load, b, y, x, R_LATENCY)
                dest[x].remove(a)
                dest[y].remove(b)
                dest[x].append(b)
                dest[y].append(a)


def _latency_moves(workers: Mapping[str, WorkerView], clients: Sequence[ClientView],
                   assign: dict[str, str | None], load: dict[str, int], out: Plan,
                   latency: Mapping[str, ClientLatency], rule: LatencyRule, now: float) -> None:
    """Up to `rule.batch` clients to a worker whose gain is large, lasting and allowed now."""
    moved = 0
    for c in clients:
        if moved >= rule.batch:
            return
        info, cur = latency.get(c.name), assign[c.name]
        if info is None or cur is None or c.name in out.moves or info.against != cur \
                or cur not in info.rtt:
            continue
        if info.last_move is not None and now - info.last_move < rule.move_interval_seconds:
            continue
        cands = [(info.rtt[n], i, n) for i, n in enumerate(c.prefs)
                 if n != cur and n in workers and n in info.rtt and _usable(c, workers[n])
                 and _room(workers[n], load.get(n, 0)) > 0
                 and gain_enough(info.rtt[cur], info.rtt[n], rule)
                 and (since := info.better_since.get(n)) is not None
                 and now - since >= rule.sustain_seconds]
        if cands:
            _record_move(out, assign, load, c.name, cur, min(cands)[2], R_LATENCY)
            moved += 1


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
