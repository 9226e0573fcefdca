"""How assignments and worker changes leave the responder: the notifier seam.

The state calls every notifier after each committed change, once per changed assignment and once
per changed worker. Those calls happen on the event loop, inside the state's write lock, so a
notifier must never block or await there: enqueue and return. Real work (an MQTT publish, an
outbound webhook) happens in the notifier's own task or thread, started by `start()`.

A channel is a module that registers a factory; no other responder file changes:

    # responder/notify/carrier_pigeon.py
    from wg_failover.responder.notify import register_factory

    class PigeonNotifier:
        name = "pigeon"                              # its key under `delivery` (optional)
        async def start(self, host): ...             # host: a NotifierHost (below)
        async def stop(self): ...
        def assignment_changed(self, assignment: dict) -> None: ...   # enqueue only
        def worker_changed(self, worker: dict) -> None: ...           # enqueue only
        def client_status(self, client: str) -> dict | None: ...      # optional

    def factory(fleet, settings):                    # return None to stay off
        return PigeonNotifier(...) if settings.pigeon else None

    register_factory("pigeon", factory)

`load_plugins()` imports every module of this package (the built-in `mqtt` and `webhooks`), then
every module in the `wg_failover.responder_notifiers` entry-point group. `client_status` answers
appear under `delivery.{name}` in `GET /v1/clients/{client}`. `channel` values for
`wgfo_notification_latency_seconds` are sse | longpoll | mqtt | webhook.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from wg_failover.fleet import Fleet

from ..metrics import Metrics
from ..store import AssignmentRow, Store, WorkerRow

log = logging.getLogger("wg_failover.responder")


class NotifierHost(Protocol):
    """What a notifier may use from the responder in `start()` (and keep for later)."""

    @property
    def fleet(self) -> Fleet: ...
    @property
    def metrics(self) -> Metrics: ...  # `.collector_registry` for a channel's own metrics
    @property
    def store(self) -> Store: ...  # `.open_delivery_log()` for per-target progress
    @property
    def workers(self) -> Mapping[str, WorkerRow]: ...
    @property
    def assignments(self) -> Mapping[str, AssignmentRow]: ...

    def all_assignments(self) -> list[dict[str, Any]]:
        """Every fleet client's current assignment JSON (removed clients left out)."""

    def all_workers(self) -> list[dict[str, Any]]: ...
    def assignment_json(self, row: AssignmentRow) -> dict[str, Any]: ...
    def worker_json(self, name: str) -> dict[str, Any]: ...


@runtime_checkable
class Notifier(Protocol):
    async def start(self, host: NotifierHost) -> None: ...

    async def stop(self) -> None: ...

    def assignment_changed(self, assignment: dict[str, Any]) -> None:
        """A client's assignment has a new version (already committed). Enqueue only."""

    def worker_changed(self, worker: dict[str, Any]) -> None:
        """A worker's state or drain flag changed (already committed). Enqueue only."""


NotifierFactory = Callable[[Any, Any], "Notifier | None"]  # (fleet, settings) -> notifier
_notifier_factories: dict[str, NotifierFactory] = {}


def register_factory(name: str, factory: NotifierFactory) -> None:
    """Make a notifier available to every responder started after this call."""
    _notifier_factories[name] = factory


def unregister_factory(name: str) -> None:
    _notifier_factories.pop(name, None)


def load_plugins() -> None:
    """Import the channel modules of this package, then the `wg_failover.responder_notifiers`
    entry points. Each registers its factory; one that fails to import is logged and skipped."""
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{__name__}.{mod.name}")
        except Exception as exc:  # one broken channel must not stop the responder
            log.warning("notifier module %s.%s unavailable: %s", __name__, mod.name, exc)
    for ep in entry_points(group="wg_failover.responder_notifiers"):
        try:
            ep.load()
        except Exception as exc:
            log.warning("notifier plugin %s unavailable: %s", ep.name, exc)


def build_notifiers(fleet: Any, settings: Any) -> list[Notifier]:
    """One notifier per registered factory that wants to run for this fleet."""
    out: list[Notifier] = []
    for name, factory in sorted(_notifier_factories.items()):
        try:
            n = factory(fleet, settings)
        except Exception as exc:
            log.warning("notifier %s not started: %s", name, exc)
            continue
        if n is not None:
            out.append(n)
    return out


class Notifiers:
    """The notifiers of one responder; fans each change out to all of them, isolating failures."""

    def __init__(self, notifiers: list[Notifier]):
        self.notifiers = list(notifiers)

    async def start(self, host: NotifierHost) -> None:
        for n in self.notifiers:
            await n.start(host)

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
