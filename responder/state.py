"""The responder's state, owned here: everything that changes the fleet goes through `change()`.

One write path: take the write lock, let the caller fill a `Draft` (the pending change over the
served state), re-plan when a planner input changed, commit the draft to the store in one
transaction, and only then apply it to memory and metrics, start or cancel timers and tell the
notifiers. If the commit fails (StoreError), memory and metrics are untouched and the caller
answers 503. Reads are served from memory.

Every assignment the responder sends carries the store's epoch (`assignment_json`). When the store
cannot write (a full disk, a damaged page), the state keeps serving what it holds: `readiness()`
says why it is not ready, `upkeep.py` checks every few seconds whether it can write again, and
a start-up change that could not be committed is done before the next change.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from wg_failover.fleet import Fleet

from . import fleetdoc, planner
from .draft import Draft, ProbeRecord, prefs_of, replan, worker_views
from .limits import LogLimiter, store_errors
from .metrics import Metrics, Snapshot, VoteRebuild
from .notify import Notifiers, build_notifiers, load_plugins
from .store import (
    PERSISTENT,
    AssignmentRow,
    EnrollKeyRow,
    FleetDoc,
    Store,
    StoreError,
    WorkerRow,
)
from .stream.hub import Hub
from .upkeep import Upkeep
from .views import assignment_json, worker_json

log = logging.getLogger("wg_failover.responder")
limited = LogLimiter(log)

PREEMPT_INTERVAL = 1.0  # seconds between preempt batches
SLOW_CHANGE = 0.2  # seconds; a change slower than this is logged with its phases

T = TypeVar("T")


class ResponderState:
    def __init__(self, fleet: Fleet, store: Store, clock: Callable[[], float] = time.time):
        self.file_fleet = fleet  # the fleet file given at start (applied over the stored fleet)
        self.store = store
        self.epoch = store.epoch
        self.clock = clock  # unix time for drafts and pruning (bench/retention.py fakes it)
        # The served fleet and what is derived from it; replaced only by _serve_fleet.
        self.fleet, self.settings = fleet, fleet.responder
        self.client_by_name = {c.name: c for c in fleet.clients}
        self.worker_by_name = {w.name: w for w in fleet.workers}
        self.prefs = prefs_of(fleet)
        self.fleet_doc = FleetDoc(0, {}, [])  # version 0 until the start-up change commits
        self.fleet_changed = asyncio.Event()  # set and replaced at every fleet change
        self.keys: dict[str, EnrollKeyRow] = {}  # enrollment keys by id
        self.applied: dict[str, int] = {}  # the newest version each client said it applied
        self._start_doc: FleetDoc | None = None  # the fleet the start-up change commits
        self.votes = VoteRebuild()  # after a restart or a new term (its budget: set by the role)
        self.metrics = Metrics()
        self.metrics.known_labels(list(self.worker_by_name), list(self.client_by_name))
        self.metrics.watch(self.metrics_snapshot)
        self.metrics.store_writable.set_function(lambda: 0.0 if self.store_problem else 1.0)
        self.hub = Hub(self.metrics.notification_latency, self.metrics.streams_replaced)
        load_plugins()
        self.notifiers = Notifiers([self.hub, *build_notifiers(fleet, self.settings)])
        self.lock = asyncio.Lock()
        # The served state; changed only by _apply_committed and remember_probe.
        self.workers: dict[str, WorkerRow] = {}
        self.assignments: dict[str, AssignmentRow] = {}
        self.retired: dict[str, AssignmentRow] = {}  # clients that left the fleet
        self.alerts: dict[str, tuple[str, str]] = {}  # firing: fingerprint -> (worker, action)
        self.unusable: dict[str, set[str]] = {}
        self.probes: dict[str, ProbeRecord] = {}
        self.unplaceable: list[str] = []
        self.ready = False
        # Why the store cannot write now (a PERSISTENT reason), None when it can.
        self.store_problem: str | None = store.degraded
        self.start_pending = False  # the start-up change still waits for its commit
        self.started_at = clock()
        self.upkeep = Upkeep(self)
        self._holddown_timers: dict[str, asyncio.TimerHandle] = {}
        self._preempt_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def worker_row(self, name: str) -> WorkerRow:
        # A fleet worker has a row once the start-up change is committed; until then (a store
        # that cannot write at start) it reads as up since the start.
        row = self.workers.get(name)
        return row if row is not None else WorkerRow(name, planner.UP, self.started_at)

    def views(self) -> dict[str, planner.WorkerView]:
        return worker_views(self.fleet, self.worker_row, self.alerts)

    def readiness(self) -> tuple[bool, str | None]:
        """Ready, or why not: still starting, or the store cannot write (and why)."""
        if not self.ready:
            return False, "starting"
        if self.store_problem is not None:
            return False, f"state store: {self.store_problem}"
        return True, None

    def loads(self) -> dict[str, int]:
        return planner.loads({c: a.worker for c, a in self.assignments.items()})

    def assignment_json(self, row: AssignmentRow) -> dict[str, Any]:
        """The assignment as every channel sends it, with the store's epoch."""
        out = assignment_json(row)
        out["epoch"] = self.epoch
        return out

    def current_assignment(self, client: str) -> dict[str, Any]:
        """Fleet client `client`'s assignment JSON. StoreError (503) while it has none, which
        happens only when the store could not commit the start-up plan."""
        row = self.assignments.get(client)
        if row is None:
            raise StoreError(f"no assignment for {client} yet",
                             self.store_problem or "no assignment yet")
        return self.assignment_json(row)

    def worker_json(self, name: str, loads: dict[str, int] | None = None) -> dict[str, Any]:
        load = self.loads() if loads is None else loads
        return worker_json(self.worker_by_name[name], self.views()[name], self.worker_row(name),
                           load.get(name, 0))

    def all_workers(self) -> list[dict[str, Any]]:
        load = self.loads()
        return [self.worker_json(w.name, load) for w in self.fleet.workers]

    def all_assignments(self) -> list[dict[str, Any]]:
        return [self.assignment_json(self.assignments[c.name]) for c in self.fleet.clients
                if c.name in self.assignments]

    def remember_probe(self, client: str, record: ProbeRecord) -> None:
        """Keep a probe report that changes nothing durable (no commit to wait for)."""
        self.probes[client] = record

    def metrics_snapshot(self) -> Snapshot:
        current = {c.name: a.worker for c in self.fleet.clients
                   if (a := self.assignments.get(c.name)) is not None}
        return Snapshot(workers=self.views(), assignments=current,
                        streams_open=self.hub.streams_open, unplaceable=len(self.unplaceable),
                        probes=dict(self.probes), votes_rebuilding=self.votes.active())

    # ----------------------------------------------------------------- the one write path

    async def change(self, build: Callable[[Draft], T], *, durable: bool = True,
                     always_plan: bool = False) -> T:
        """Run `build(draft)` under the write lock, re-plan, commit, apply, notify.

        `always_plan`: re-plan although no planner input changed (only time passed).
        Raises StoreError when the commit fails (memory is then unchanged)."""
        async with self.lock:
            if self.start_pending:
                await self._record_start()  # the start-up plan first: later changes build on it
            d = Draft(self)
            result = build(d)
            if d.tx.empty() and not always_plan:
                self._apply_committed(d, None)  # nothing to commit: memory-only effects
                return result
            # Re-planning walks every client: only when something it reads changed (not for
            # the stream of `applied` and probe reports).
            t0 = time.perf_counter()
            plan = replan(d) if always_plan or d.plan_inputs_changed() else None
            await self._commit_and_apply(d, plan, durable, t0)
            return result

    async def _commit_and_apply(self, d: Draft, plan: planner.Plan | None, durable: bool,
                                t0: float) -> None:
        t1 = time.perf_counter()
        if not d.tx.empty():
            try:
                await asyncio.to_thread(self.store.commit, d.tx, durable)
            except StoreError as exc:
                self.store_failed(exc)
                raise
            self.store_problem = None
        t2 = time.perf_counter()
        self._apply_committed(d, plan)
        t3 = time.perf_counter()
        if t3 - t0 > SLOW_CHANGE:
            log.info("slow change: plan %.0f ms, commit %.0f ms, notify %.0f ms, "
                     "%d assignments", 1000 * (t1 - t0), 1000 * (t2 - t1),
                     1000 * (t3 - t2), len(d.tx.assignments))

    def _apply_committed(self, d: Draft, plan: planner.Plan | None) -> None:
        """Make a committed draft the served state, then tell metrics, notifiers and timers."""
        tx, after, m = d.tx, d.after, self.metrics
        old_workers = {c: o.worker for c in tx.assignments
                       if (o := self.assignments.get(c)) is not None}
        self.workers.update(tx.workers)
        for fp in tx.alerts_del:
            self.alerts.pop(fp, None)
        self.alerts.update(tx.alerts_add)
        for c, w in tx.unusable_del:
            self.unusable.get(c, set()).discard(w)
        for c, w in tx.unusable_add:
            self.unusable.setdefault(c, set()).add(w)
        self.assignments.update(tx.assignments)
        self.keys.update(tx.keys)
        self.applied.update({c: v for c, v in after.applied.items() if v > self.applied.get(c, 0)})
        if tx.fleet is not None:
            self._serve_fleet(d.fleet, tx.fleet)
        self.probes.update(after.probes)
        if plan is not None:
            self.unplaceable = list(plan.unplaceable)

        m.count_committed([a.reason for c, a in tx.assignments.items()
                           if c in old_workers and old_workers[c] != a.worker],
                          after.failovers, after.switches, after.alert_delays,
                          after.apply_latencies)

        if d.worker_changed:
            load = self.loads()
            for name in sorted(d.worker_changed):
                self.notifiers.worker_changed(self.worker_json(name, load))
        for a in tx.assignments.values():
            self.notifiers.assignment_changed(self.assignment_json(a))
        for name in d.worker_changed:
            self._schedule_holddown(name)
        if plan is not None and any(mv.reason == planner.R_PREEMPT for mv in plan.moves.values()):
            self._schedule_preempt()

    def _serve_fleet(self, fleet: Fleet, doc: FleetDoc) -> None:
        """Serve a committed fleet: clients that left keep their rows aside (to continue their
        versions if they come back) and their streams end; every view follower wakes. Metric
        labels are made for new names only (all of them cost ~50 ms per join at 10,000)."""
        self.fleet, self.fleet_doc, self.settings = fleet, doc, fleet.responder
        old_w, old_c = self.worker_by_name, self.client_by_name
        self.client_by_name = {c.name: c for c in fleet.clients}
        self.worker_by_name = {w.name: w for w in fleet.workers}
        self.prefs = prefs_of(fleet)
        for c in [c for c in self.assignments if c not in self.client_by_name]:
            self.retired[c] = self.assignments.pop(c)
            self.probes.pop(c, None)
            self.hub.drop_client(c)
        for c in self.client_by_name:
            if c not in self.assignments and c in self.retired:
                self.assignments[c] = self.retired.pop(c)
        self.metrics.known_labels([w for w in self.worker_by_name if w not in old_w],
                                  [c for c in self.client_by_name if c not in old_c])
        self.fleet_changed.set()
        self.fleet_changed = asyncio.Event()

    def store_failed(self, exc: StoreError) -> None:
        """Note a failed commit: a lasting reason makes the responder unready until upkeep.py
        finds the store writable again (a locked database is contention, and passes)."""
        if exc.reason in PERSISTENT:
            self.store_problem = exc.reason
        store_errors.error(f"store:{exc.reason}", "%s", exc)

    # ----------------------------------------------------------------- timers

    def _spawn(self, coro_fn: Callable[[], Awaitable[Any]]) -> None:
        # Takes a function, not a coroutine object: a cancelled timer then leaves no un-awaited
        # coroutine behind.
        task = asyncio.ensure_future(coro_fn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule_holddown(self, name: str, delay: float | None = None) -> None:
        old = self._holddown_timers.pop(name, None)
        if old:
            old.cancel()
        row = self.workers.get(name)
        if row is None or row.state != planner.RECOVERING:
            return
        if delay is None:
            delay = max(0.0, row.since + self.settings.hold_down_seconds - self.clock())
        since = row.since
        self._holddown_timers[name] = asyncio.get_running_loop().call_later(
            delay, self._spawn, lambda: self._holddown_over(name, since))

    async def _holddown_over(self, name: str, since: float) -> None:
        def build(d: Draft) -> None:
            row = d.worker(name)
            if row.state == planner.RECOVERING and row.since == since:
                d.set_worker_state(name, planner.UP, cause="hold-down")

        try:
            await self.change(build)
        except StoreError as exc:
            limited.error("holddown", "hold-down of %s: %s; retrying in 1 s", name, exc)
            self._schedule_holddown(name, delay=1.0)

    def _schedule_preempt(self) -> None:
        if self._preempt_timer is not None:
            self._preempt_timer.cancel()
        self._preempt_timer = asyncio.get_running_loop().call_later(
            PREEMPT_INTERVAL, self._spawn, self._preempt)

    async def _preempt(self) -> None:
        try:
            await self.change(lambda d: None, always_plan=True)
        except StoreError as exc:
            limited.error("preempt", "preempt batch: %s; retrying", exc)
            self._schedule_preempt()

    # ----------------------------------------------------------------- start / stop

    async def start(self) -> None:
        loaded = self.store.load()
        self.keys = loaded.keys
        fleet, served, self._start_doc, problem = fleetdoc.start_fleet(self.file_fleet,
                                                                        loaded.fleet)
        if problem:
            # Never drop joined nodes silently: the stored fleet stands until the file is fixed.
            log.error("%s; serving the stored fleet (version %d) instead", problem,
                      served.version)
        self._serve_fleet(fleet, served)
        self.votes.begin(bool(loaded.workers), len(self.prefs))  # workers: a restart, a term
        self.workers = loaded.workers
        # Rows of clients no longer in the fleet stay in the store (a client that comes back
        # continues where it was, versions included) but out of the served and counted state.
        self.assignments = {c: a for c, a in loaded.assignments.items()
                            if c in self.client_by_name}
        self.retired = {c: a for c, a in loaded.assignments.items()
                        if c not in self.client_by_name}
        self.alerts = loaded.alerts
        self.unusable = loaded.unusable
        await self.notifiers.start(self)
        for c in self.fleet.clients:
            if c.token_sha256 is None:
                log.warning("client %s has no token_sha256: it cannot use the API (401)", c.name)

        async with self.lock:
            if all(w.name in self.workers for w in self.fleet.workers):
                # A restart: what was unplaceable before still is, so the start-up plan below
                # logs no new "unplaceable" event. The draft is only read, never committed.
                self.unplaceable = replan(Draft(self)).unplaceable
            self.start_pending = True
            try:
                await self._record_start()
            except StoreError as exc:
                # Serve what the store holds; the next change (or upkeep) commits this first.
                log.error("cannot commit the start-up plan (%s): serving the state the store "
                          "holds; changes answer 503 until it can be written", exc.reason)
            for w in self.fleet.workers:
                self._schedule_holddown(w.name)
        try:
            await asyncio.to_thread(self.store.prune_dedup)
        except StoreError as exc:
            log.warning("cannot prune de-duplication keys now: %s", exc.reason)
        # The fleet and state are long-lived: keep them out of the collector's full passes.
        gc.collect()
        gc.freeze()
        # Fewer, larger young collections: a 10,000-client change allocates ~100k objects,
        # i.e. ~140 collections at the default threshold of 700. In bench/responder.py this
        # took the 10,000-client webhook answer from 420-570 ms to 210-375 ms.
        gc.set_threshold(50_000, 20, 100)
        self.ready = True
        self.upkeep.start()

    async def _record_start(self) -> None:
        """Under the write lock: the start-up change (fleet workers not seen before, hold-downs
        that ended while the responder was away, a plan, the `start` event)."""
        d = Draft(self)
        if self._start_doc is not None:
            d.tx.fleet = self._start_doc
            d.event("fleet-applied", version=self._start_doc.version, cause="start")
        for w in self.fleet.workers:
            if w.name not in self.workers:
                d.set_worker(WorkerRow(w.name, planner.UP, d.now))
                d.event("worker-added", worker=w.name)
            row = d.worker(w.name)
            if row.state == planner.RECOVERING and \
                    d.now - row.since >= self.settings.hold_down_seconds:
                d.set_worker_state(w.name, planner.UP, cause="hold-down")
        t0 = time.perf_counter()
        plan = replan(d)
        d.event("start", workers=len(self.fleet.workers), clients=len(self.fleet.clients))
        await self._commit_and_apply(d, plan, True, t0)
        self.start_pending = False
        self._start_doc = None

    async def stop(self) -> None:
        self.ready = False
        await self.upkeep.stop()
        for t in self._holddown_timers.values():
            t.cancel()
        if self._preempt_timer:
            self._preempt_timer.cancel()
        await self.notifiers.stop()
        for task in list(self._tasks):
            task.cancel()
