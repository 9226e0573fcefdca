"""`wg-failover agent`: keeps a worker interface's peers equal to the fleet's clients on it.

Two tasks in one event loop. The follower (follow.PeersFollower) offers every WorkerPeers the
responder sends; the newest wins (older versions of the same store epoch are dropped; a new epoch
is a replaced store and is followed). The applier writes the newest to the cache, then applies
it with as few `wg set` calls as the change needs (peers.plan), in a thread so the stream is read
meanwhile; changes that come while one is applied are coalesced into the next.

A change is planned from what was applied last (cheap: nothing is read from the interface); the
interface itself is read (`wg show IFACE dump`) at start, every --reconcile-every seconds and
after any failure, so a restarted interface or a peer removed by hand is put right. Nothing ever
restarts the interface, and a peer that is already right is never named in a `wg set`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from wg_failover import wg
from wg_failover.backoff import Backoff
from wg_failover.wire import WorkerPeers

from . import cache, routes
from .follow import PeersFollower
from .peers import Plan, plan, plan_from_applied, route_changes, route_plan, wg_set_argvs

log = logging.getLogger("wg_failover.agent")


class Agent:
    def __init__(self, worker: str, interface: str, cache_file: Path,
                 follower: PeersFollower | None, *, reconcile_every: float = 10.0,
                 manage_routes: bool = True) -> None:
        self.worker = worker
        self.interface = interface
        self.cache_file = cache_file
        self.follower = follower
        self.reconcile_every = reconcile_every
        self.manage_routes = manage_routes
        self.desired: WorkerPeers | None = None
        self.applied: WorkerPeers | None = None  # None: read the interface before planning
        self.saved: tuple[str, int] | None = None
        self.wake = asyncio.Event()
        self.retry = Backoff(base=0.5, cap=10.0)
        self.up = False
        if follower is not None:
            follower.on_connected = self.connected

    def connected(self, up: bool) -> None:
        """The follower's connection state; one log line when it comes up."""
        if up and not self.up:
            log.info("responder: connected (%s)", self.follower.mode if self.follower else "-")
        self.up = up

    def position(self) -> tuple[str | None, int]:
        d = self.desired
        return (d.epoch, d.version) if d is not None else (None, 0)

    def offer(self, peers: WorkerPeers) -> None:
        """A WorkerPeers from the responder: kept when it is newer than the one we have."""
        d = self.desired
        if d is not None:
            if peers.epoch == d.epoch and peers.version <= d.version:
                return
            if peers.epoch != d.epoch:
                log.warning("responder: a new store epoch %s (was %s): following it, version %d",
                            peers.epoch, d.epoch, peers.version)
        self.desired = peers
        self.wake.set()

    def load_cache(self) -> None:
        peers, why = cache.load(self.cache_file, self.worker)
        if peers is None:
            log.info("cache: %s; waiting for the responder before touching any peer", why)
            return
        log.info("cache: %d peers of version %d (epoch %s): reconciling to them until the "
                 "responder answers", len(peers.peers), peers.version, peers.epoch)
        self.desired = peers
        self.saved = (peers.epoch, peers.version)

    def step(self, full: bool) -> tuple[WorkerPeers, Plan]:
        """Cache the newest peers, then make the interface equal to them. Blocking (wg)."""
        d = self.desired
        assert d is not None
        if (d.epoch, d.version) != self.saved:
            cache.save(self.cache_file, d)
            self.saved = (d.epoch, d.version)
        if full or self.applied is None:
            self.applied = None
            p = plan(d.peers, wg.show_dump(self.interface).peers)
        else:
            p = plan_from_applied(d.peers, self.applied.peers)
        for argv in wg_set_argvs(self.interface, p.ops()):
            wg.run_wg(argv, timeout=30.0)
        if self.manage_routes:
            if self.applied is None:
                add, delete = route_plan(d.peers, routes.list_routes(self.interface))
            else:
                add, delete = route_changes(p)
            routes.apply_routes(self.interface, add, delete)
            p.routes = len(add) + len(delete)
        self.applied = d
        return d, p

    async def apply_loop(self) -> None:
        loop = asyncio.get_running_loop()
        full = True
        next_full = loop.time()
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), max(0.0, next_full - loop.time()))
            except TimeoutError:
                full = True
            self.wake.clear()
            if self.desired is None:
                next_full = loop.time() + self.reconcile_every
                continue
            started = time.perf_counter()
            try:
                d, p = await asyncio.to_thread(self.step, full)
            except (wg.WgError, routes.RouteError, OSError) as exc:
                self.applied = None
                delay = self.retry.next()
                log.warning("interface %s: %s; trying again in %.1f s", self.interface,
                            str(exc)[:300], delay)
                full, next_full = True, loop.time() + delay
                continue
            self.retry.reset()
            ms = (time.perf_counter() - started) * 1000
            if not p.empty() or p.routes:
                log.info("%s version %d: %s in %.1f ms", "reconciled" if full else "applied",
                         d.version, p.summary(), ms)
            for name in p.duplicates:
                log.warning("responder: client %s has the public key of another; skipped", name)
            if full:
                next_full = loop.time() + self.reconcile_every
            full = False

    async def run(self) -> None:
        self.load_cache()
        tasks = [asyncio.create_task(self.apply_loop(), name="apply")]
        if self.follower is not None:
            tasks.append(asyncio.create_task(self.follower.run(self.offer, self.position),
                                             name="follow"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
