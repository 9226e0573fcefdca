"""A replica that does not lead serves reads from the change log it tails (DESIGN.md, "How it
grows past one machine"; the lease and the gate: leader.py).

- **Tailing.** Every POLL seconds, and at once when the leader's commit NOTIFYs (a LISTEN
  connection of its own; only a wake-up: without it the poll alone stays correct, at most POLL
  later), the follower reads what changed after the change it knows, in one snapshot
  (store/postgres_tail.py): the assignments a newer change wrote, and the small tables and the
  fleet only when they moved. It applies that to a `ResponderState` it holds for reading only
  (never started: no timers, no preempt batches, no push notifiers; its store refuses writes)
  and tells its hub, so its open SSE streams and long-polls get each new version with the same
  event id (the version) the leader sends: `Last-Event-ID` resumes on any replica, and a stream
  never goes back (it sends only versions above the last it sent).
- **Fresh, or not at all.** The follower serves while its last read of the log succeeded less
  than FRESH seconds ago (asked-at time, like the leader's lease margin). Past that (the
  database is away, or this process was paused) every read answers 503 (the gate checks the time
  on each request) and its open streams and long-polls end (503), so a client moves to another
  replica instead of waiting on stale data. When the database answers again it reads everything
  it missed (the log is not pruned: each assignment row carries its last change) and serves.
- **Writes** answer 503 with Retry-After on a follower (leader.LeaderGate): Alertmanager
  delivers to every replica, and ctl, the agent and the switcher try the next URL.
- **Becoming the leader.** The new term's state takes this follower's hub before it starts, so
  open streams carry on without reconnecting; its view streams end (they follow one state).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

import psycopg
from fastapi import FastAPI

from wg_failover.fleet import Fleet, FleetError, validate_fleet_data

from .limits import LogLimiter
from .notify import Notifiers
from .state import ResponderState
from .store import StoreError
from .store.base import NOT_LEADER, UNAVAILABLE, DeliveryLog, Tx
from .store.postgres_tail import CHANNEL, Changes, read_changes

log = logging.getLogger("wg_failover.responder")
limited = LogLimiter(log)

POLL = 0.25  # seconds between reads of the change log when no NOTIFY wakes the follower
FRESH = 3.0  # seconds a successful read keeps the follower serving (the lease's length)
LISTEN_RETRY = 1.0  # seconds before the LISTEN connection is made again after it failed


class ReadOnly:
    """The store as a follower's state sees it: reads go through, writes are refused."""

    def __init__(self, store: Any):
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise StoreError("not the leader: a follower writes nothing", NOT_LEADER)

    def commit(self, tx: Tx, durable: bool = True) -> list[int]:
        return self._refuse()

    writable = prune_dedup = prune_events = _refuse

    def open_delivery_log(self) -> DeliveryLog:
        return self._refuse()

    def close(self) -> None:
        """The store outlives the follower: the responder closes it once, at exit."""


class Follower:
    """Tails the change log into a read-only `ResponderState` (module docstring)."""

    def __init__(self, app: FastAPI, fleet: Fleet, store: Any, *, poll: float = POLL,
                 fresh: float = FRESH):
        self.app, self.file_fleet, self.store = app, fleet, store
        self.poll, self.fresh = poll, fresh
        self.state: ResponderState | None = None
        self.change = self.other = -1  # what the state holds of the log (-1: nothing yet)
        self.valid_until = 0.0
        self.problem: str | None = None  # the last read's failure, if it failed
        self.stale = False  # its streams were ended for want of the database
        self.wake = asyncio.Event()
        self.active = True
        self.tasks: list[asyncio.Task[None]] = []
        self.pending: asyncio.Future[tuple[Changes, Fleet | None]] | None = None
        self.asked = 0.0  # when the pending read began

    # ------------------------------------------------------------------ serving

    def serving(self) -> bool:
        return self.active and self.state is not None and _now() < self.valid_until

    def readiness(self) -> tuple[bool, str | None]:
        if self.serving():
            return True, None
        if self.problem:
            return False, f"state store: {self.problem} (a follower, not caught up)"
        return False, "a follower catching up with the change log"

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        """A first read before anything else (so a replica starting as a follower serves at
        once), then the tailing and the LISTEN connection."""
        await self.refresh()
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.run()), loop.create_task(self.listen())]

    async def halt(self) -> None:
        """Stop tailing; the state stays as it is (a new leader may take its hub)."""
        self.active = False
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.tasks = []

    async def stop(self, *, keep_hub: bool = False) -> None:
        """Stop tailing and serving: open streams end, unless `keep_hub` (handed to a leader);
        view streams end either way (they read this state)."""
        await self.halt()
        if self.state is not None:
            if not keep_hub:
                await self.state.hub.stop()
            wake_views(self.state)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll)
            self.wake.clear()
            try:
                await self.refresh()
            except Exception:  # the loop must outlive any surprise; say so, rarely
                limited.log(logging.ERROR, "follow", "follower loop failed", exc_info=True)
            if self.state is not None and not self.serving() and not self.stale:
                await self.go_stale()

    async def listen(self) -> None:
        """LISTEN for the leader's commits: each NOTIFY wakes `run` before its next poll."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.store.url, autocommit=True, **self.store._kwargs)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.wake.set()  # whatever was committed while it did not listen
                    async for _ in conn.notifies():
                        self.wake.set()
            except (psycopg.Error, OSError) as exc:
                limited.warning("listen", "follower: LISTEN connection: %s; polling every "
                                "%g s meanwhile", self.store._text(exc), self.poll)
            await asyncio.sleep(LISTEN_RETRY)

    # ------------------------------------------------------------------ reading the log

    async def refresh(self) -> None:
        """Read and apply what changed. A read still running from an earlier round (a database
        that does not answer) is waited for, never doubled: threads do not pile up."""
        if self.pending is None:
            known = self.state.fleet_doc.version if self.state is not None else -1
            self.asked = _now()  # fresh from when the read began, not when it is applied
            self.pending = asyncio.ensure_future(asyncio.to_thread(
                self._read, self.change, self.other, known))
        asked = self.asked
        done, _ = await asyncio.wait({self.pending}, timeout=self.fresh)
        if not done:
            self._failed(f"no answer from the database within {self.fresh:g} s")
            return
        fut, self.pending = self.pending, None
        try:
            changes, fleet = fut.result()
        except StoreError as exc:
            self._failed(exc.reason if exc.reason != UNAVAILABLE else str(exc))
            return
        except FleetError as exc:
            self._failed(f"the stored fleet does not validate: {exc.render()}")
            return
        if not self.active:
            return
        self.problem = None
        t0 = time.perf_counter()
        if self.state is None:
            self._first(changes, fleet)
        else:
            self._apply(changes, fleet)
        self.valid_until = asked + self.fresh
        if self.stale:
            self.stale = False
            log.warning("follower: the database answers again; caught up to change %d, "
                        "serving reads", self.change)
        if (ms := 1000 * (time.perf_counter() - t0)) > 200:
            log.info("follower: applied change %d (%d assignments) in %.0f ms", self.change,
                     len(changes.assignments), ms)

    def _read(self, change: int, other: int, fleet_version: int) -> tuple[Changes, Fleet | None]:
        """In a worker thread: the changes, and the fleet validated when it moved."""
        changes = read_changes(self.store, change, other, fleet_version)
        fleet = None
        if changes.fleet is not None:
            fleet = validate_fleet_data(changes.fleet.data, "the stored fleet")
        return changes, fleet

    def _failed(self, why: str) -> None:
        self.problem = why
        limited.error("follow", "follower: cannot read the change log: %s", why)

    def _first(self, changes: Changes, fleet: Fleet | None) -> None:
        st = ResponderState(self.file_fleet, ReadOnly(self.store))
        st.notifiers = Notifiers([st.hub])  # the push notifiers are the leader's alone
        self.state = st
        self._apply(changes, fleet)
        st.ready = True
        self.app.state.responder = st
        # As the leader's start does: the long-lived state out of the collector's full passes,
        # and fewer young collections (a 30,000-client refresh allocates many objects).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        log.warning("following: serving reads from change %d (%d clients, fleet version %d)",
                    self.change, len(st.client_by_name), st.fleet_doc.version)

    def _apply(self, ch: Changes, fleet: Fleet | None) -> None:
        """Make the changes the served state and tell the hub (on the event loop)."""
        st = self.state
        assert st is not None
        if fleet is not None and ch.fleet is not None:
            st._serve_fleet(fleet, ch.fleet)  # clients that left: streams end, rows aside
        if ch.workers is not None:
            st.workers = ch.workers
        if ch.alerts is not None:
            st.alerts = ch.alerts
        if ch.unusable is not None:
            st.unusable = ch.unusable
        if ch.keys is not None:
            st.keys = ch.keys
        subs = st.hub.subs
        for c, row in ch.assignments.items():
            if c not in st.client_by_name:
                st.retired[c] = row
                continue
            old = st.assignments.get(c)
            st.assignments[c] = row
            # Only the clients with a stream or long-poll here: the rest are other replicas'
            # (a failover at 30,000 clients rewrites every row; JSON for all cost ~3x).
            if c in subs and (old is None or row.version > old.version):
                st.hub.assignment_changed(st.assignment_json(row))
        self.change, self.other = ch.change, ch.other

    async def go_stale(self) -> None:
        """The database stayed away past FRESH: end every open stream and long-poll (they
        answer 503 or reconnect elsewhere); new requests get 503 from the gate."""
        self.stale = True
        st = self.state
        assert st is not None
        log.error("follower: no read of the change log for %g s (%s): answering 503 and "
                  "ending %d streams until the database answers", self.fresh,
                  self.problem or "no answer", st.hub.streams_open)
        await st.hub.stop()
        wake_views(st)


def hand_hub(state: ResponderState, hub: Any) -> None:
    """Make `hub` (another state's, with its open streams) the hub of `state`: its notifier
    list's first entry (state.py builds it so), its metrics those of `state`."""
    hub.latency, hub.replaced = state.hub.latency, state.hub.replaced
    state.notifiers.notifiers[state.notifiers.notifiers.index(state.hub)] = hub
    state.hub = hub


def wake_views(state: ResponderState) -> None:
    """Wake every view stream and long-poll of `state` (routers/views.py), which then checks
    whether the replica still serves it; a fresh event for the next waiters."""
    ev, state.fleet_changed = state.fleet_changed, asyncio.Event()
    ev.set()


def _now() -> float:
    """Seconds on a clock that also counts time the machine was suspended (CLOCK_BOOTTIME): a
    replica resumed after its lease or freshness ran out must see that it did."""
    return time.clock_gettime(_CLOCK)


_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
