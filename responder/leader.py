"""Responder replicas on one PostgreSQL database (DESIGN.md, "How it grows past one machine"):
one replica at a time leads and writes; every replica serves reads.

- **The lease.** Every RENEW_EVERY seconds a replica takes or renews the leader lease (LEASE
  seconds by the database's clock; store/postgres_lease.py). Taking it starts a new term: the
  replica loads the whole state from the database (a fresh `ResponderState`, as at start, with
  the live fleet) and only then serves writes and runs its timers, preempt batches and
  notifiers. Every write of that state carries the term (`Fenced`): once the term is over,
  nothing it writes lands, whatever the process believes (a process paused past its lease, a
  network cut).
- **Followers serve reads.** A replica that does not lead follows (follower.py): it tails the
  change log into a read-only state and serves GET and HEAD (the workers, clients, targets,
  views, SSE streams and long-polls) with the same versions and event ids as the leader, so a
  client resumes on any replica. Writes (webhooks, client reports, drains, the fleet,
  enrollment) answer 503 with Retry-After on a follower: Alertmanager delivers to every replica
  and ctl, the agent and the switcher try the next URL; forwarding them to the leader would add
  a hop, its failures and an idempotency question for no client that needs it. /readyz says
  `{"ready": true, "leader": false}` for a follower that is caught up.
- **Never stale as fresh.** The leader stops serving on its own MARGIN seconds before the
  database can give the lease to another replica, measured from when it asked for the last
  renewal; a follower stops serving (503, its streams end) FRESH seconds after its last read of
  the log that succeeded (a lost database, a paused process: the gate checks the time on every
  request, not only when a loop runs). Both catch up when the database answers again.
- **Stepping down.** When the lease is lost (taken, or not renewed in time), the term's state
  stops (timers, notifiers, open streams end) and is dropped; the replica follows again. Taking
  the lease, a follower's open streams are handed to the new term's state (no reconnection).
- **Clean stop.** The leader gives the lease up, so another replica takes over within
  RENEW_EVERY.

SQLite has one process by nature: `Solo` serves always, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import socket
import threading
from typing import Any

from fastapi import FastAPI
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from wg_failover.fleet import Fleet

from .follower import Follower, hand_hub, wake_views
from .follower import _now as _now
from .intake.alerts import expire_alerts
from .limits import LogLimiter
from .state import ResponderState
from .store import Store, StoreError, describe_location
from .store.base import UNAVAILABLE

log = logging.getLogger("wg_failover.responder")
limited = LogLimiter(log)

LEASE = 3.0  # seconds, by the database's clock
RENEW_EVERY = 0.5  # seconds between renewals (and a standby's attempts)
MARGIN = 1.0  # seconds: the leader stops serving this long before its lease can pass on
STANDBY = "standby: not the leader"
OPEN_PATHS = ("/healthz", "/readyz")  # served by a standby too
READS = ("GET", "HEAD")  # what a follower serves


def new_state(fleet: Fleet, store: Store, app: FastAPI) -> ResponderState:
    """A responder state with the upkeep checks of the intake (alert expiry) and the app's
    report budget (`--report-budget`, for the votes' rebuild window)."""
    state = ResponderState(fleet, store)
    state.upkeep.checks.append(lambda: expire_alerts(state))
    limits = getattr(app.state, "limits", None)
    if limits is not None:
        state.votes.budget = limits.report_budget
    return state


class Solo:
    """One responder on its own store (SQLite): it always leads."""

    def __init__(self, app: FastAPI, fleet: Fleet, store: Store, db: str):
        self.app, self.fleet, self.store, self.db = app, fleet, store, db
        self.state: ResponderState | None = None

    async def start(self) -> None:
        self.state = new_state(self.fleet, self.store, self.app)
        self.app.state.responder = self.state
        await self.state.start()
        _log_ready(self.state, self.db)

    async def stop(self) -> None:
        if self.state is not None:
            await self.state.stop()


class Leadership:
    """A replica on PostgreSQL: leader or standby (module docstring)."""

    def __init__(self, app: FastAPI, fleet: Fleet, store: Any, db: str, *,
                 lease: float = LEASE, renew: float = RENEW_EVERY, margin: float = MARGIN):
        self.app, self.fleet, self.store, self.db = app, fleet, store, db
        self.lease, self.renew, self.margin = lease, renew, margin
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.term: int | None = None
        self.state: ResponderState | None = None
        self.valid_until = 0.0  # _now() until which this replica may serve
        self.db_problem: str | None = None  # the last lease attempt's failure, if it failed
        self.expires_in = renew  # a standby: seconds until the leader's lease expires
        self.task: asyncio.Task[None] | None = None
        self.follower: Follower | None = None  # while this replica does not lead
        self.taking: int | None = None  # the term whose state is loading (take)
        self.renewed = 0.0  # when the keeper last asked to renew `taking`, and it was
        self.keeper_stop = threading.Event()
        self.keeper = threading.Thread(target=self.keep, name="wgfo-lease", daemon=True)
        app.state.leadership = self

    def keep(self) -> None:
        """A thread that renews the lease of the term this replica leads, beside `run`: a
        burst of work on the event loop (10,000 streams reconnecting after a replica died, on a
        busy machine) must not cost the leader its lease; role changes stay with `tick`."""
        from .store.postgres_lease import take_lease

        while not self.keeper_stop.wait(self.renew):
            # The term being taken too: loading and planning 30,000 clients can outlast the
            # lease on a busy machine, and `tick` waits for it (a take-over lost mid-load
            # passed the lease around for minutes in bench/replicas.py).
            term = self.term if self.state is not None else self.taking
            if term is None:
                continue
            asked = _now()
            try:
                got = take_lease(self.store, self.holder, term, self.lease)
            except StoreError:
                continue  # tick says why, and steps down when the lease runs out
            if got == term and self.term == term:
                self.valid_until = max(self.valid_until, asked + self.lease - self.margin)
            elif got == term and self.taking == term:
                self.renewed = max(self.renewed, asked)

    def leading(self) -> bool:
        return self.state is not None and _now() < self.valid_until

    def following(self) -> bool:
        """A follower that serves reads now (caught up, its database answering)."""
        return not self.leading() and self.follower is not None and self.follower.serving()

    def serving(self) -> bool:
        return self.leading() or self.following()

    def served(self) -> ResponderState | None:
        """The state that answers reads now: the term's, or the follower's."""
        if self.state is not None:
            return self.state
        return self.follower.state if self.follower is not None else None

    def readiness(self) -> tuple[bool, bool, str | None]:
        """(ready, leader, why not ready). A follower that is caught up is ready."""
        if self.state is None:
            if self.follower is not None and (self.follower.state is not None
                                              or not self.db_problem):
                ready, reason = self.follower.readiness()
                return ready, False, reason
            return False, False, (f"state store: {self.db_problem}" if self.db_problem
                                  else STANDBY)
        if not self.leading():  # its renewal is late: the database is away, or this was paused
            return False, False, (f"state store: {self.db_problem or UNAVAILABLE} (the leader "
                                  "lease was not renewed in time)")
        if self.db_problem:  # still leading on its lease, but it cannot reach the database
            return False, True, f"state store: {self.db_problem}"
        ready, reason = self.state.readiness()
        return ready, True, reason

    async def start(self) -> None:
        # A first attempt before the server answers: a lone replica (or the first) leads at once.
        await self.tick()
        if self.state is None:
            log.warning("following: another replica leads on %s (holder %s); serving reads, "
                        "answering writes 503 until this one leads", describe_location(self.db),
                        self.holder)
        self.task = asyncio.ensure_future(self.run())
        self.keeper.start()

    async def stop(self) -> None:
        self.keeper_stop.set()
        if self.keeper.is_alive():
            await asyncio.to_thread(self.keeper.join, self.lease + 10)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.follower is not None:
            await self.follower.stop()
            self.follower = None
        term = self.term
        await self.step_down("stopping")
        if term is not None:
            from .store.postgres_lease import release_lease

            try:
                await asyncio.to_thread(release_lease, self.store, self.holder, term)
            except StoreError as exc:
                log.warning("cannot give the leader lease up (%s): a standby takes it when it "
                            "expires", exc.reason)

    async def run(self) -> None:
        while True:
            # A standby wakes just after the leader's lease would expire, not up to a whole
            # interval later: a kill -9 of the leader is taken over sooner.
            await asyncio.sleep(min(self.renew, max(0.02, self.expires_in + 0.02)))
            try:
                await self.tick()
            except Exception:  # the lease loop must outlive any surprise; say so, rarely
                limited.log(logging.ERROR, "lease", "leader lease loop failed", exc_info=True)

    async def tick(self) -> None:
        """One attempt to take or renew the lease, and the role change it calls for."""
        from .store.postgres_lease import lease_row, take_lease

        asked = _now()
        self.expires_in = self.renew
        try:
            # Bounded here too: a call stuck on a dead connection must not keep a leader whose
            # lease ran out from standing down (the thread ends with libpq's own timeouts).
            term = await asyncio.wait_for(asyncio.to_thread(
                take_lease, self.store, self.holder, self.term, self.lease), self.lease)
        except (StoreError, TimeoutError) as exc:
            exc = exc if isinstance(exc, StoreError) else StoreError(
                f"the leader lease: no answer from the database within {self.lease:g} s")
            self.db_problem = exc.reason
            limited.error("lease", "leader lease: %s", exc)
            if self.state is not None and not self.leading():
                await self.step_down(f"the database did not renew the lease in time "
                                     f"({exc.reason})")
            if self.state is None:
                await self.follow()
            return
        self.db_problem = None
        if term is None:
            if self.state is not None:
                await self.step_down("another replica holds the lease")
            await self.follow()
            with contextlib.suppress(StoreError, TimeoutError):
                self.expires_in = (await asyncio.wait_for(
                    asyncio.to_thread(lease_row, self.store), self.lease))[2]
            return
        if term == self.term and self.state is not None:
            self.valid_until = asked + self.lease - self.margin
            return
        if self.state is not None:
            await self.step_down(f"term {self.term} is over")
        await self.take(term, asked)

    async def follow(self) -> None:
        """Follow the leader (serve reads), unless this replica already does."""
        if self.follower is None:
            self.follower = Follower(self.app, self.fleet, self.store)
            await self.follower.start()

    async def take(self, term: int, asked: float) -> None:
        from .store.postgres_lease import Fenced

        t0 = _now()
        state = new_state(self.fleet, Fenced(self.store, term, self.holder), self.app)
        f = self.follower
        # The follower's open streams become the term's before it starts (its start-up change
        # reaches them); the follower serves reads until the term's state is ready.
        own_hub = state.hub
        if f is not None and f.state is not None:
            hand_hub(state, f.state.hub)
        self.renewed, self.taking = 0.0, term
        try:
            await state.start()
        except StoreError as exc:
            log.error("cannot lead (term %d): %s; trying again", term, exc)
            hand_hub(state, own_hub)  # the follower keeps its streams
            await state.stop()
            return
        finally:
            self.taking = None
        if f is not None:
            await f.halt()
        self.term, self.state = term, state
        self.valid_until = max(asked, self.renewed) + self.lease - self.margin
        self.app.state.responder = state
        if f is not None:
            if f.state is not None and f.state.hub is state.hub:
                # What the term loaded beyond the follower's last read, to its streams (a
                # stream sends only versions above the last it sent: no repeats).
                for c in list(state.hub.subs):
                    if (a := state.assignments.get(c)) is not None:
                        state.hub.assignment_changed(state.assignment_json(a))
            await f.stop(keep_hub=True)
            self.follower = None
        log.warning("leading (term %d, holder %s): state loaded and planned in %.0f ms",
                    term, self.holder, 1000 * (_now() - t0))
        _log_ready(state, self.db)

    async def step_down(self, why: str) -> None:
        state, term = self.state, self.term
        self.state, self.term, self.valid_until = None, None, 0.0
        if state is None:
            return
        log.warning("standing down from term %s: %s; answering 503 until this replica leads "
                    "again", term, why)
        await state.stop()
        wake_views(state)  # its view streams end (routers/views.py)
        # The term's state was frozen out of the collector (ResponderState.start): let its
        # cycles be collected now that it is dropped; the next term freezes its own.
        gc.unfreeze()


class LeaderGate:
    """ASGI middleware in front of everything: a replica that does not lead (or whose lease
    runs out) answers writes 503, and reads too unless it is a follower that is caught up, so
    no replica serves stale state as fresh; a load balancer that health-checks /readyz, or a
    follower that moves on after a 5xx, finds a replica that serves."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lead = getattr(scope["app"].state, "leadership", None) if "app" in scope else None
        path = scope.get("path")
        if (scope["type"] == "http" and isinstance(lead, Leadership) and not lead.leading()
                and path not in OPEN_PATHS):
            if scope.get("method") in READS and path != "/metrics" and lead.following():
                await self.app(scope, receive, send)
                return
            resp: Response
            if path == "/metrics":
                # Scrapable, so a standby is not a target that is down.
                resp = Response("# a standby replica: the leader has the figures\n"
                                "wg_failover_responder_leader 0\n",
                                media_type="text/plain; version=0.0.4")
            else:
                ready, _, reason = lead.readiness()
                if ready:
                    reason = f"{STANDBY} (a follower serves reads only)"
                resp = JSONResponse({"detail": f"{reason}; retry (another responder)"},
                                    status_code=503, headers={"Retry-After": "1"})
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _log_ready(state: ResponderState, db: str) -> None:
    log.info("responder ready: %d workers, %d clients (fleet version %d), db %s",
             len(state.fleet.workers), len(state.fleet.clients), state.fleet_doc.version,
             describe_location(db))
