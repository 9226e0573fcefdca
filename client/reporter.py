"""Events to the responder: `POST /v1/clients/{name}/events`, one event per request.

Reports must never slow the fast path, so they go through a bounded queue drained by one task.
While the responder is away the queue keeps the important events (switch, applied, rejected) and
only the newest probe summary; older probe summaries are worthless once a newer one exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import httpx

from wg_failover.backoff import Backoff

log = logging.getLogger("wg_failover.switcher")


class Reporter:
    def __init__(self, base_url: str | None, client: str, token: str | None,
                 max_queue: int = 200, backoff: Backoff | None = None) -> None:
        self.url = f"{base_url.rstrip('/')}/v1/clients/{client}/events" if base_url else None
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.queue: deque[dict[str, Any]] = deque()
        self.max_queue = max_queue
        self.backoff = backoff or Backoff(base=0.5, cap=15.0)
        self.wakeup = asyncio.Event()
        self.sent = 0
        self.dropped = 0

    def post(self, event: dict[str, Any]) -> None:
        if self.url is None:
            return
        if event.get("type") == "probe":
            # Only the newest probe summary matters.
            kept = [e for e in self.queue if e.get("type") != "probe"]
            self.dropped += len(self.queue) - len(kept)
            self.queue = deque(kept)
        self.queue.append(event)
        while len(self.queue) > self.max_queue:
            self.queue.popleft()
            self.dropped += 1
        self.wakeup.set()

    async def run(self) -> None:
        if self.url is None:
            await asyncio.Event().wait()  # nothing to report to: idle until cancelled
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as http:
            while True:
                if not self.queue:
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                event = self.queue[0]
                try:
                    r = await http.post(self.url, json=event, headers=self.headers)
                except (httpx.HTTPError, OSError) as exc:
                    delay = self.backoff.next()
                    log.debug("report %s not delivered (%s); retry in %.1f s",
                              event.get("type"), type(exc).__name__, delay)
                    await asyncio.sleep(delay)
                    continue
                if self.queue and self.queue[0] is event:
                    self.queue.popleft()
                if r.status_code >= 500:
                    # The responder is in trouble: keep the event and retry later.
                    self.queue.appendleft(event)
                    await asyncio.sleep(self.backoff.next())
                    continue
                self.backoff.reset()
                if r.status_code >= 400:
                    log.warning("responder refused a %s report: HTTP %d", event.get("type"),
                                r.status_code)
                else:
                    self.sent += 1

    async def flush(self, timeout: float) -> None:
        """Give queued events up to `timeout` seconds to go out (for `--once` and shutdown)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.queue and loop.time() < end:
            await asyncio.sleep(0.05)
