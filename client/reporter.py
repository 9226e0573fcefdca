"""Events to the responder: `POST /v1/clients/{name}/events`, one event per request.

Reports must never slow the fast path, so they go through a bounded queue drained by one task.
While the responder is away the queue keeps the important events (switch, applied, rejected) and
only the newest probe summary; older probe summaries are worthless once a newer one exists.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import Any

import httpx

from wg_failover.backoff import Backoff

from .bounds import MAX_BODY

log = logging.getLogger("wg_failover.switcher")


class Reporter:
    def __init__(self, base_url: str | None, client: str, token: str | None,
                 max_queue: int = 200, backoff: Backoff | None = None,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.url = f"{base_url.rstrip('/')}/v1/clients/{client}/events" if base_url else None
        self.headers = {"Accept-Encoding": "identity"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.verify = verify
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
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0), verify=self.verify) as http:
            while True:
                if not self.queue:
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                event = self.queue[0]
                try:
                    status = await self._send(http, event)
                except (httpx.HTTPError, OSError) as exc:
                    delay = self.backoff.next()
                    log.debug("report %s not delivered (%s); retry in %.1f s",
                              event.get("type"), type(exc).__name__, delay)
                    await asyncio.sleep(delay)
                    continue
                if self.queue and self.queue[0] is event:
                    self.queue.popleft()
                if status >= 500:
                    # The responder is in trouble: keep the event and retry later.
                    self.queue.appendleft(event)
                    await asyncio.sleep(self.backoff.next())
                    continue
                self.backoff.reset()
                if status >= 400:
                    log.warning("responder refused a %s report: HTTP %d", event.get("type"),
                                status)
                else:
                    self.sent += 1

    async def _send(self, http: httpx.AsyncClient, event: dict[str, Any]) -> int:
        """POST one event; its HTTP status. Only the status matters: the body is read up to a
        bound (so the connection can be reused) and never kept, whatever its size."""
        async with http.stream("POST", self.url or "", json=event, headers=self.headers) as r:
            seen = 0
            async for chunk in r.aiter_raw():
                seen += len(chunk)
                if seen > MAX_BODY:
                    break  # leaving the block drops the connection with the rest of it
            return r.status_code

    async def flush(self, timeout: float) -> None:
        """Give queued events up to `timeout` seconds to go out (for `--once` and shutdown)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.queue and loop.time() < end:
            await asyncio.sleep(0.05)
