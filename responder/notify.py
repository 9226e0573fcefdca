"""How assignments and worker changes leave the responder: the Notifier seam.

The app calls every registered notifier after each committed transaction, once per changed
assignment and once per changed worker. Those calls happen on the event loop, inside the app's
write lock, so a notifier must never block or await there: enqueue and return. Real work (an MQTT
publish, an outbound webhook) happens in the notifier's own task, started by `start()`.

Adding a channel (issue 7: MQTT, outbound webhooks) needs no edit to the other responder files:

    # responder/mqtt.py
    from wg_failover.responder.notify import register_factory

    class MqttNotifier:
        async def start(self, app_state): ...      # app_state: responder.app.AppState
        async def stop(self): ...
        def assignment_changed(self, assignment: dict) -> None: ...   # enqueue only
        def worker_changed(self, worker: dict) -> None: ...           # enqueue only

    def factory(fleet, settings):                  # return None to stay off (e.g. no mqtt:)
        return MqttNotifier(...) if fleet.responder.mqtt else None

    register_factory("mqtt", factory)

Modules named `responder/notify_*.py` are imported at start by `load_plugins()` (so a file
`responder/notify_mqtt.py` is all it takes); modules elsewhere can be listed in the
`wg_failover.responder_notifiers` entry-point group. A notifier may also have
`def client_status(self, client: str) -> dict | None`: its answer appears under
`delivery.{name}` in `GET /v1/clients/{client}` (`name`: the notifier's `name` attribute, else
its class name). `channel` values for `wgfo_notification_latency_seconds` are
sse | longpoll | mqtt | webhook; `app_state.metrics.notification_latency.labels(channel=...)`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import pkgutil
import time
from collections import deque
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prometheus_client import Histogram

log = logging.getLogger("wg_failover.responder")

# SSE comment interval; the environment override exists for tests (15 s is the contract).
KEEPALIVE_SECONDS = float(os.environ.get("WGFO_SSE_KEEPALIVE_SECONDS", "15"))


@runtime_checkable
class Notifier(Protocol):
    async def start(self, app_state: Any) -> None: ...

    async def stop(self) -> None: ...

    def assignment_changed(self, assignment: dict[str, Any]) -> None:
        """A client's assignment has a new version (already committed). Enqueue only."""

    def worker_changed(self, worker: dict[str, Any]) -> None:
        """A worker's state or drain flag changed (already committed). Enqueue only."""


NotifierFactory = Callable[[Any, Any], "Notifier | None"]  # (fleet, settings) -> notifier
_factories: dict[str, NotifierFactory] = {}


def register_factory(name: str, factory: NotifierFactory) -> None:
    """Make a notifier available to every responder started after this call."""
    _factories[name] = factory


def load_plugins() -> None:
    """Import the notifier modules: `responder/notify_*.py` in this package, then any module in
    the `wg_failover.responder_notifiers` entry-point group. Each registers its factory."""

    package = importlib.import_module(__package__)
    for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if mod.name.startswith("notify_"):
            try:
                importlib.import_module(f"{__package__}.{mod.name}")
            except Exception as exc:  # one broken channel must not stop the responder
                log.warning("notifier module %s.%s unavailable: %s", __package__, mod.name, exc)
    for ep in entry_points(group="wg_failover.responder_notifiers"):
        try:
            ep.load()
        except Exception as exc:
            log.warning("notifier plugin %s unavailable: %s", ep.name, exc)


def build_notifiers(fleet: Any, settings: Any) -> list[Notifier]:
    out: list[Notifier] = []
    for name, factory in sorted(_factories.items()):
        try:
            n = factory(fleet, settings)
        except Exception as exc:
            log.warning("notifier %s not started: %s", name, exc)
            continue
        if n is not None:
            out.append(n)
    return out


class Registry:
    """The notifiers of one app; fans each change out to all of them, isolating failures."""

    def __init__(self, notifiers: list[Notifier]):
        self.notifiers = list(notifiers)

    async def start(self, app_state: Any) -> None:
        for n in self.notifiers:
            await n.start(app_state)

    async def stop(self) -> None:
        for n in reversed(self.notifiers):
            try:
                await n.stop()
            except Exception as exc:
                log.warning("notifier %s did not stop cleanly: %s", type(n).__name__, exc)

    def client_status(self, client: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n in self.notifiers:
            fn = getattr(n, "client_status", None)
            if fn is None:
                continue
            try:
                status = fn(client)
            except Exception as exc:
                status = {"error": str(exc)}
            if status is not None:
                out[getattr(n, "name", type(n).__name__)] = status
        return out

    def assignment_changed(self, assignment: dict[str, Any]) -> None:
        for n in self.notifiers:
            try:
                n.assignment_changed(assignment)
            except Exception as exc:
                log.warning("notifier %s failed: %s", type(n).__name__, exc)

    def worker_changed(self, worker: dict[str, Any]) -> None:
        for n in self.notifiers:
            try:
                n.worker_changed(worker)
            except Exception as exc:
                log.warning("notifier %s failed: %s", type(n).__name__, exc)


# --------------------------------------------------------------------------- SSE / long-poll hub


class Subscriber:
    """One open SSE stream or long-poll request of one client.

    Kept lean on purpose (10,000 open streams must fit in well under 300 MB): a deque of pending
    assignments and one future to wake the waiting coroutine; no task, no queue per subscriber.
    """

    __slots__ = ("client", "pending", "waiter", "closed")

    def __init__(self, client: str):
        self.client = client
        self.pending: deque[tuple[dict[str, Any], float]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

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
    """The first Notifier: wakes the SSE streams and long-polls of a client on each change."""

    def __init__(self, latency: Histogram | None = None):
        self.subs: dict[str, set[Subscriber]] = {}
        self.latency = latency
        self.streams_open = 0

    async def start(self, app_state: Any) -> None:
        return None

    async def stop(self) -> None:
        for subs in list(self.subs.values()):
            for s in list(subs):
                s.close()

    def subscribe(self, client: str) -> Subscriber:
        s = Subscriber(client)
        self.subs.setdefault(client, set()).add(s)
        return s

    def unsubscribe(self, s: Subscriber) -> None:
        subs = self.subs.get(s.client)
        if subs is not None:
            subs.discard(s)
            if not subs:
                del self.subs[s.client]

    def assignment_changed(self, assignment: dict[str, Any]) -> None:
        subs = self.subs.get(assignment["client"])
        if subs:
            t0 = time.monotonic()
            for s in subs:
                s.push(assignment, t0)

    def worker_changed(self, worker: dict[str, Any]) -> None:
        return None

    name = "sse"

    def client_status(self, client: str) -> dict[str, Any] | None:
        return {"subscribers": len(self.subs.get(client, ()))}

    def observe(self, channel: str, t0: float) -> None:
        if self.latency is not None:
            self.latency.labels(channel=channel).observe(max(0.0, time.monotonic() - t0))
