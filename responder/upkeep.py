"""The responder's upkeep: one task that prunes the event log and watches the store.

- **Retention.** The event log is pruned to the fleet file's `responder.events_max_age_seconds`
  and `events_max_rows`, oldest first, in batches of PRUNE_BATCH rows: each batch is one short
  transaction under the write lock, with a pause between batches, so a large backlog never holds
  up a webhook. Only events go: assignments are state, and a follower resumes from those.
- **Checks** others add (`checks`): run every tick while the store can write, e.g. the expiry of
  alerts Alertmanager stopped repeating (intake/alerts.py).
- **Store health.** While the store cannot write (a full disk, a read-only open) or the start-up
  plan is not committed yet, every CHECK_EVERY seconds it tries a tiny write; when that works,
  the responder is ready again and the start-up plan is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .limits import LogLimiter
from .store import StoreError

if TYPE_CHECKING:
    from .state import ResponderState

log = logging.getLogger("wg_failover.responder")
limited = LogLimiter(log)

CHECK_EVERY = 2.0  # seconds between ticks (a store check only when there is a problem)
PRUNE_EVERY = 60.0  # seconds between pruning passes
PRUNE_BATCH = 2000  # rows per transaction: a few ms of SQLite work
PRUNE_MAX_BATCHES = 100  # per pass; a larger backlog goes on in the next pass, soon after
PRUNE_PAUSE = 0.02  # seconds between batches, the write lock released


class Upkeep:
    def __init__(self, state: ResponderState):
        self.state = state
        self.task: asyncio.Task[None] | None = None
        self.checks: list[Callable[[], Awaitable[None]]] = []

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None

    async def run(self) -> None:
        next_prune = 0.0
        while True:
            try:
                st = self.state
                if st.store_problem is not None or st.start_pending:
                    await self.check_store()
                if st.store_problem is None and not st.start_pending:
                    for check in self.checks:
                        await check()
                if st.store_problem is None and time.monotonic() >= next_prune:
                    _, more = await self.prune()
                    next_prune = time.monotonic() + (CHECK_EVERY if more else PRUNE_EVERY)
            except StoreError as exc:
                self.state.store_failed(exc)
            except Exception:  # the upkeep must outlive any surprise; say so, rarely
                limited.log(logging.ERROR, "upkeep", "upkeep failed", exc_info=True)
            await asyncio.sleep(CHECK_EVERY)

    async def check_store(self) -> None:
        """Try a tiny write; on success the store problem is gone and a pending start-up plan
        is committed. Raises StoreError when the store still cannot write."""
        st = self.state
        async with st.lock:
            before = st.store_problem
            await asyncio.to_thread(st.store.writable)
            st.store_problem = None
            if before is not None:
                log.warning("the state store %s can be written again (it was: %s)",
                            getattr(st.store, "path", "(store)"), before)
            if st.start_pending:
                await st._record_start()

    async def prune(self, now: float | None = None) -> tuple[int, bool]:
        """One pruning pass: (events deleted, whether a backlog is left for the next pass)."""
        st = self.state
        settings = st.settings
        before = (st.clock() if now is None else now) - settings.events_max_age_seconds
        total, more = 0, True
        for _ in range(PRUNE_MAX_BATCHES):
            async with st.lock:
                n = await asyncio.to_thread(st.store.prune_events, before,
                                            settings.events_max_rows, PRUNE_BATCH)
            total += n
            if n < PRUNE_BATCH:
                more = False
                break
            await asyncio.sleep(PRUNE_PAUSE)
        if total:
            st.metrics.events_pruned.inc(total)
            log.info("event log: pruned %d events (older than %g s or beyond the newest %d)",
                     total, settings.events_max_age_seconds, settings.events_max_rows)
        return total, more
