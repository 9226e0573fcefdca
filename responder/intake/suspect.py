"""Suspect workers: when several clients of one worker report fast-path switches away from it
within seconds, the fleet has seen it die before Prometheus has. The responder then treats it as
unavailable (the planner re-plans its remaining clients by capacity at once) instead of waiting
8-13 s for the alert.

The quorum: at least `suspect_quorum_min` (>= 2) distinct clients, and at least
`suspect_quorum_ratio` of the worker's recently reporting clients, each of which was assigned to
that worker (since before the window) when it reported the switch, within
`suspect_window_seconds`. A client counts once
however often it reports, and only about the worker it was on, so one client's reports never
move others, and a few lying or broken clients move nobody in a fleet where the ratio asks for
more.

The re-plan waits `SETTLE` seconds after the quorum (the mark is `settling` until then): the
worker's other clients run the same fast path as the voters and switch within the same moment,
and a switch report still in flight when the quorum forms must land before the responder moves
that client too, or it would move twice for one fault (its own switch, the re-plan, then its
report making a third; chaos campaign, issue 17). A client whose report landed is on its new
worker by then, so the re-plan leaves it there. And when most voters report the worker
answering again by then, the mark is `withdrawn` with no re-plan: their switches came from a
stall of their own side (a starved machine stalls every tunnel for a few hundred ms at once),
not from a death, and the worker's other clients must not be moved for it.

Prometheus stays the authority for down and recovered: a mark changes no worker state. It ends
`suspect_expire_seconds` after it was set, re-planning again; `confirmed` if the worker went down
(an alert) meanwhile, else `expired`. Marks and switch reports live in memory only (after a
restart the fleet reports again); they are recorded before the change commits, which is harmless
since a re-sent report counts once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from .. import planner
from ..store import StoreError

if TYPE_CHECKING:
    from ..draft import Draft, ProbeRecord
    from ..state import ResponderState

log = logging.getLogger("wg_failover.responder")

# seconds: a client whose last probe report is older is not counted as reporting, unless its
# report promised a longer heartbeat (`Suspects.max_age`: the data-plane vote's own freshness)
RECENT = 30.0
# seconds from the quorum to the re-plan: the other clients' fast-path switch reports of the same
# death come within a few hundred ms (25 ms apart in the campaign), and the mark still beats the
# alert (8-13 s) by far
SETTLE = 1.0
OUTCOMES = ("marked", "confirmed", "expired", "withdrawn")


@dataclass
class Mark:
    since: float
    until: float
    voters: tuple[str, ...]
    confirmed: bool = False  # the worker was seen not up while marked
    settle: float = 0.0  # when the planner starts to treat the worker as unavailable
    voted: Mapping[str, float] = field(default_factory=dict)  # voter -> when its vote came

    def settling(self, now: float) -> bool:
        return now < self.settle


class Suspects:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.switches: dict[str, dict[str, float]] = {}  # worker -> client -> last switch away
        self.marks: dict[str, Mark] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._recent: dict[str, tuple[float, frozenset[str]]] = {}  # worker -> (when, clients)
        # How long a client's latest probe report counts: switchers that report on a change
        # and a heartbeat (30 s by default) would otherwise drop out of the quorum's base
        # between heartbeats, and a smaller base lets fewer voters mark a worker.
        self.max_age: Callable[[str], float] = lambda _client: RECENT
        self.marks_total = Counter("wgfo_worker_suspect_marks_total",
                                   "Suspect marks of workers (a quorum of their clients switched "
                                   "away), by outcome", ["outcome"], registry=registry)
        self.suspect = Gauge("wgfo_worker_suspect",
                             "1 while a worker is marked suspect", ["worker"], registry=registry)
        for outcome in OUTCOMES:
            self.marks_total.labels(outcome=outcome)

    def active(self, now: float, state_of: Callable[[str], str]) -> frozenset[str]:
        """The workers marked suspect now (the planner treats them as unavailable)."""
        out = []
        for w, m in self.marks.items():
            if state_of(w) != planner.UP:
                m.confirmed = True
            elif not m.confirmed and m.settle <= now < m.until:
                out.append(w)
        return frozenset(out)

    def fleeing(self, now: float, window: float) -> frozenset[str]:
        """Workers that clients left by their fast path within `window` seconds, or marked and
        not over: the latency rule moves nobody onto them (its figures predate the flight;
        bench/placement_wg.py with default switchers saw two clients moved onto a worker just
        vacated, and off again by the mark a second later)."""
        voted = {w for w, v in self.switches.items() if any(t >= now - window
                                                            for t in v.values())}
        return frozenset(voted | {w for w, m in self.marks.items() if now < m.until})

    def vote(self, d: Draft, client: str, from_worker: str | None, window: float) -> str | None:
        """Count a fast-path switch of `client` away from `from_worker` (inside its change).
        Returns the worker when this vote made the quorum (the mark is set and logged)."""
        a = d.assignment(client)
        now, s = d.now, d.settings
        # Only a client that has been on the worker since before the window votes: one just
        # placed there (and leaving at once, e.g. because its own probes reject it) says
        # nothing about the worker.
        if from_worker is None or a is None or a.worker != from_worker \
                or a.since > now - window or d.worker(from_worker).state != planner.UP:
            return None
        m = self.marks.get(from_worker)
        if m is not None and not m.confirmed and now < m.until:
            return None  # marked already
        votes = self.switches.setdefault(from_worker, {})
        votes[client] = now
        for c in [c for c, t in votes.items() if t < now - window]:
            del votes[c]
        if len(votes) < s.suspect_quorum_min:
            return None
        need = quorum(len(self._reporting(d, from_worker, votes)), s.suspect_quorum_min,
                      s.suspect_quorum_ratio)
        if len(votes) < need:
            return None
        voters = tuple(sorted(votes))
        # No re-plan in this change: `schedule_end` re-plans after SETTLE (see the module doc).
        self.marks[from_worker] = Mark(now, now + s.suspect_expire_seconds, voters,
                                       settle=now + SETTLE, voted=dict(votes))
        del self.switches[from_worker]
        self.marks_total.labels(outcome="marked").inc()
        self.suspect.labels(worker=from_worker).set(1)
        d.event("worker-suspect", worker=from_worker, clients=list(voters[:20]),
                count=len(voters), quorum=need, expires_in=s.suspect_expire_seconds,
                replan_in=SETTLE)
        log.warning("%s suspect: %d clients switched away from it within %g s (quorum %d)",
                    from_worker, len(voters), window, need)
        return from_worker

    def _reporting(self, d: Draft, worker: str, votes: Mapping[str, float]) -> set[str]:
        """The worker's clients (assigned now, or switched away within the window) that sent a
        probe report recently. Walking every client once a second per worker is enough: a
        failover of 2,000 clients brings 2,000 switch reports in a second or two."""
        at, recent = self._recent.get(worker, (-1.0, frozenset()))
        if d.now - at >= 1.0:
            recent = frozenset(
                c for c, w in d.current_workers().items() if w == worker
                and (p := d.last_probe(c)) is not None and p.time >= d.now - self.max_age(c))
            self._recent[worker] = (d.now, recent)
        return set(recent) | set(votes)

    # ----------------------------------------------------------------- the mark's end

    def schedule_end(self, state: ResponderState, worker: str) -> None:
        """After the change that set the mark committed: re-plan when it settles, end it when
        it expires."""
        m = self.marks.get(worker)
        if m is None:
            return
        for key in (worker, f"{worker}|settle"):
            old = self._timers.pop(key, None)
            if old is not None:
                old.cancel()
        loop, now = asyncio.get_running_loop(), state.clock()
        self._timers[f"{worker}|settle"] = loop.call_later(
            max(0.0, m.settle - now), self._spawn, lambda: self._settled(state, worker, m))
        self._timers[worker] = loop.call_later(
            max(0.0, m.until - now), self._spawn, lambda: self._end(state, worker))

    async def _settled(self, state: ResponderState, worker: str, mark: Mark) -> None:
        """The mark takes effect: its worker's remaining clients are re-planned; unless most
        voters reach the worker again (then the mark is withdrawn)."""
        self._timers.pop(f"{worker}|settle", None)

        def build(d: Draft) -> None:
            if self.marks.get(worker) is not mark:
                return  # ended or replaced meanwhile
            back = answering_again(mark, worker, d.last_probe)
            if 2 * len(back) > len(mark.voters):
                del self.marks[worker]
                self.marks_total.labels(outcome="withdrawn").inc()
                self.suspect.labels(worker=worker).set(0)
                d.event("worker-suspect-end", worker=worker, outcome="withdrawn",
                        seconds=round(d.now - mark.since, 3), clients=back[:20])
                log.warning("%s suspect withdrawn: %d of its %d voters reach it again",
                            worker, len(back), len(mark.voters))
                return
            d.worker_changed.add(worker)  # re-plan, and tell the notifiers

        try:
            await state.change(build, always_plan=True)
        except StoreError as exc:
            # The mark stays in force: the next change that plans re-plans with it.
            log.error("re-planning the clients of suspect %s: %s", worker, exc)

    def _spawn(self, coro_fn: Callable[[], Any]) -> None:
        task = asyncio.ensure_future(coro_fn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end(self, state: ResponderState, worker: str) -> None:
        self._timers.pop(worker, None)

        def build(d: Draft) -> None:
            m = self.marks.get(worker)
            if m is None or m.until > d.now + 0.5:
                return  # ended already, or a newer mark with its own timer
            del self.marks[worker]
            # The worker may have left the fleet meanwhile (no row to read): nothing to confirm.
            row = d.tx.workers.get(worker) or d.committed.workers.get(worker)
            if row is not None and row.state != planner.UP:
                m.confirmed = True
            outcome = "confirmed" if m.confirmed else "expired"
            self.marks_total.labels(outcome=outcome).inc()
            self.suspect.labels(worker=worker).set(0)
            d.worker_changed.add(worker)
            d.event("worker-suspect-end", worker=worker, outcome=outcome,
                    seconds=round(d.now - m.since, 3))

        try:
            await state.change(build, always_plan=True)
        except StoreError as exc:
            # The mark is already gone from memory; the next change re-plans without it.
            log.error("ending the suspect mark of %s: %s", worker, exc)

    def stop(self) -> None:
        for t in self._timers.values():
            t.cancel()
        for task in list(self._tasks):
            task.cancel()


_BY_STATE: weakref.WeakKeyDictionary[Any, Suspects] = weakref.WeakKeyDictionary()


def suspects_of(state: Any) -> Suspects:
    """The suspect marks of a responder state (kept beside it, created at first use, with its
    metrics in the state's registry)."""
    s = _BY_STATE.get(state)
    if s is None:
        s = _BY_STATE[state] = Suspects(state.metrics.collector_registry)
        ages = state.metrics.probe_max_age  # set by each probe report (intake/clients.py)
        s.max_age = lambda client: ages.get(client, RECENT)
    return s


def answering_again(mark: Mark, worker: str,
                    last_probe: Callable[[str], ProbeRecord | None]) -> list[str]:
    """The voters whose latest probe report, taken after their vote, says `worker` answers."""
    out = []
    for c in mark.voters:
        p = last_probe(c)
        after = p is not None and p.time > mark.voted.get(c, mark.since)
        r = p.workers.get(worker) if p is not None and after else None
        if r is not None and r.up:
            out.append(c)
    return out


def quorum(reporting: int, minimum: int, ratio: float) -> int:
    """Distinct clients needed to mark a worker with `reporting` recently reporting clients."""
    return max(minimum, math.ceil(ratio * reporting - 1e-9))
