"""The hub that wakes a client's open SSE streams and long-polls when its assignment changes.

It is the first notifier (see `responder/notify/`): the state calls `assignment_changed` after
each commit, on the event loop, and the hub only appends to each subscriber's deque and resolves
its future. The stream front (`front.py`) does the writing.

A client holds at most `--max-streams-per-client` subscribers (SSE streams and long-polls
together): a newer one closes the oldest, so one token cannot hold thousands of streams (the
adversarial pass held 6,000), and a switcher that lost track of an old stream is not refused.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from prometheus_client import Counter, Histogram


class Subscriber:
    """One open SSE stream or long-poll request of one client.

    Kept lean on purpose (10,000 open streams must fit in well under 300 MB): a deque of pending
    assignments and one future to wake the waiting coroutine; no task, no queue per subscriber.
    """

    __slots__ = ("client", "pending", "waiter", "closed", "replaced")

    def __init__(self, client: str):
        self.client = client
        self.pending: deque[tuple[dict[str, Any], float]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.replaced = False  # closed because the client opened a newer one past its limit

    def push(self, assignment: dict[str, Any], t0: float) -> None:
        self.pending.append((assignment, t0))
        self.wake()

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def close(self) -> None:
        self.closed = True
        self.wake()

    async def wait(self, timeout: float) -> None:
        """Until pushed to, closed, or `timeout` seconds pass."""
        if self.pending or self.closed:
            return
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        handle = loop.call_later(timeout, self.wake)
        try:
            await self.waiter
        finally:
            handle.cancel()
            self.waiter = None


class Hub:
    """The subscribers of every client, woken on each committed assignment change."""

    name = "sse"  # its entry under `delivery` in GET /v1/clients/{name}

    def __init__(self, latency: Histogram | None = None, replaced: Counter | None = None):
        # client -> its subscribers, oldest first (a dict as an ordered set)
        self.subs: dict[str, dict[Subscriber, None]] = {}
        self.latency = latency
        self.replaced = replaced
        self.streams_open = 0

    async def start(self, host: Any) -> None:
        return None

    async def stop(self) -> None:
        for subs in list(self.subs.values()):
            for s in list(subs):
                s.close()

    def subscribe(self, client: str, limit: int | None = None) -> Subscriber:
        """A new subscriber of `client`; past `limit`, the client's oldest ones are closed."""
        subs = self.subs.setdefault(client, {})
        while limit is not None and len(subs) >= limit:
            oldest = next(iter(subs))
            del subs[oldest]
            oldest.replaced = True
            oldest.close()
            if self.replaced is not None:
                self.replaced.inc()
        s = Subscriber(client)
        subs[s] = None
        return s

    def unsubscribe(self, s: Subscriber) -> None:
        subs = self.subs.get(s.client)
        if subs is not None:
            subs.pop(s, None)
            if not subs:
                del self.subs[s.client]

    def drop_client(self, client: str) -> None:
        """End every stream of a client that left the fleet (revoked): it may not read on."""
        for s in list(self.subs.pop(client, {})):
            s.close()

    def assignment_changed(self, assignment: dict[str, Any]) -> None:
        subs = self.subs.get(assignment["client"])
        if subs:
            t0 = time.monotonic()
            for s in subs:
                s.push(assignment, t0)

    def worker_changed(self, worker: dict[str, Any]) -> None:
        return None

    def client_status(self, client: str) -> dict[str, Any] | None:
        return {"subscribers": len(self.subs.get(client, ()))}

    def observe(self, channel: str, t0: float) -> None:
        """A subscriber of `channel` (sse | longpoll) got the change pushed at `t0`."""
        if self.latency is not None:
            self.latency.labels(channel=channel).observe(max(0.0, time.monotonic() - t0))
