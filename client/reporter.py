"""Events to the responder: `POST /v1/clients/{name}/events`, one event per request.

Reports must never slow the fast path, so they go through a bounded queue drained by one task.
While the responder is away the queue keeps the important events (switch, applied, rejected) and
only the newest probe summary; older probe summaries are worthless once a newer one exists.

Several responder URLs (replicas): an event that meets a connection error or a 5xx (503: a
standby) goes at once to the next URL (`wg_failover.endpoints.Endpoints`); the backoff applies
once every URL failed in a row, and the first URL is tried again after a while away from it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pydantic

from wg_failover.backoff import Backoff
from wg_failover.endpoints import Endpoints
from wg_failover.wire import ReportAccepted

from .bounds import MAX_BODY

log = logging.getLogger("wg_failover.switcher")


class Reporter:
    def __init__(self, base_url: str | Sequence[str] | None, client: str, token: str | None,
                 max_queue: int = 200, backoff: Backoff | None = None,
                 verify: ssl.SSLContext | bool = True,
                 on_advice: Callable[[float | None], None] | None = None) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url or [])
        self.eps = Endpoints(urls) if urls else None
        self.path = f"/v1/clients/{client}/events"
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
        # Called with the heartbeat advice of each accepted probe report's answer (None: the
        # responder gave none).
        self.on_advice = on_advice

    @property
    def url(self) -> str | None:
        """Where the next event goes (None: no responder to report to)."""
        return self.eps.current() + self.path if self.eps else None

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
                event, url = self.queue[0], self.url or ""
                try:
                    status, body = await self._send(http, url, event)
                except (httpx.HTTPError, OSError) as exc:
                    await self._failed(url, event, type(exc).__name__)
                    continue
                if self.queue and self.queue[0] is event:
                    self.queue.popleft()
                if status >= 500:
                    # A standby (503) or a responder in trouble: keep the event, try the next.
                    self.queue.appendleft(event)
                    await self._failed(url, event, f"HTTP {status}")
                    continue
                assert self.eps is not None
                self.eps.ok(url.removesuffix(self.path))
                self.backoff.reset()
                if status >= 400:
                    log.warning("responder refused a %s report: HTTP %d", event.get("type"),
                                status)
                else:
                    self.sent += 1
                    if self.on_advice is not None and event.get("type") == "probe":
                        self.on_advice(advice_of(body))

    async def _failed(self, url: str, event: dict[str, Any], why: str) -> None:
        """`url` did not take `event`: the next URL at once, the backoff once all failed."""
        assert self.eps is not None
        self.eps.failed(url.removesuffix(self.path))
        if not self.eps.all_failed():
            log.debug("report %s not delivered to %s (%s); trying %s", event.get("type"), url,
                      why, self.url)
            return
        delay = self.backoff.next()
        log.debug("report %s not delivered (%s); retry in %.1f s", event.get("type"), why, delay)
        await asyncio.sleep(delay)

    async def _send(self, http: httpx.AsyncClient, url: str,
                    event: dict[str, Any]) -> tuple[int, bytes]:
        """POST one event; its HTTP status and answer. The body is read up to a bound (so the
        connection can be reused) and kept only when it is within it."""
        async with http.stream("POST", url, json=event, headers=self.headers) as r:
            body = bytearray()
            async for chunk in r.aiter_raw():
                body += chunk
                if len(body) > MAX_BODY:
                    return r.status_code, b""  # leaving drops the connection with the rest
            return r.status_code, bytes(body)

    async def flush(self, timeout: float) -> None:
        """Give queued events up to `timeout` seconds to go out (for `--once` and shutdown)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.queue and loop.time() < end:
            await asyncio.sleep(0.05)


def advice_of(body: bytes) -> float | None:
    """The heartbeat advice of a report's answer (`wire.ReportAccepted`); None when it has none
    or is not that shape (an older responder, a proxy's page)."""
    try:
        return ReportAccepted.model_validate_json(body).heartbeat_s
    except (pydantic.ValidationError, ValueError):
        return None
