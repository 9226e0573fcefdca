"""The switcher follows its view (DESIGN.md "The fleet is live"): without a fleet file it gets the
workers it may use and its own routes from the responder (`GET /v1/clients/{name}/view/stream`,
SSE, long-poll fallback), caches the view beside the assignment cache, and applies each change to
the running switcher: a new worker becomes a warm peer (`wg set`: endpoint, keepalive, its tunnel
/32) and a probe target; a departed one loses its peer, after the routes left it if it held them.

The view is turned into a one-client `Fleet`, so reconcile, the route move and `find_active` are
the same code with or without a fleet file. A view holds nothing about other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from pydantic import ValidationError

from wg_failover import wg
from wg_failover.backoff import Backoff
from wg_failover.fleet import Client, Fleet, ResponderSettings, Worker
from wg_failover.wire import ClientView

from . import cache, wgctl
from .bounds import WireInputError, loads_json, shown
from .probe import ProbeError
from .sources import AuthError, HttpAssignmentSource, describe

if TYPE_CHECKING:
    from .switcher import Switcher

log = logging.getLogger("wg_failover.switcher")

# A joined worker's agent may add this client as a peer a moment after the switcher added the
# worker's: the first handshake then goes unanswered, and WireGuard tries again only after 5 s
# (REKEY_TIMEOUT). A new peer without a handshake after REWARM_AFTER seconds is set afresh (a
# backup holds no routes), which makes WireGuard send a new handshake at once; at most
# REWARM_TRIES times.
REWARM_AFTER = 1.0
REWARM_TRIES = 4

# Stands in for the client's own public key when the interface does not say it: the switcher
# never uses its own key (only the workers'), but the fleet model wants one.
_NO_KEY = "A" * 43 + "="


class HttpViewSource(HttpAssignmentSource):
    """The client's view from the responder: SSE (`event: view`; its first event is the current
    view, so nothing is resumed), long-poll `?version=V&wait=S` when SSE does not get through."""

    EVENT = "view"
    AUTH_HINT = (": the client was revoked or its token replaced; keeping the last view and "
                 "failing over on it")

    @property
    def stream_url(self) -> str:
        return f"{self.base}/v1/clients/{self.client}/view/stream"

    @property
    def poll_url(self) -> str:
        return f"{self.base}/v1/clients/{self.client}/view"

    def _stream_request(self, version: int, epoch: str | None) -> tuple[dict, dict]:
        return {}, {}

    def _poll_params(self, version: int, epoch: str | None) -> dict:
        return {"version": str(version), "wait": f"{min(self.longpoll_wait, 60):g}"}

    def _parse(self, data: bytes | str) -> ClientView | None:  # type: ignore[override]
        try:
            view = ClientView.model_validate(loads_json(data, "view"))
        except (WireInputError, ValidationError) as exc:
            self.limiter.warning("unusable-view", "responder: ignoring an unusable view: %s",
                                 shown(exc, 200))
            return None
        if view.client != self.client:
            self.limiter.warning("unusable-view", "responder: ignoring the view of another "
                                 "client (%s)", view.client)
            return None
        return view


def view_fleet(view: ClientView, public_key: str | None = None,
               responder_url: str = "http://127.0.0.1:8080") -> tuple[Fleet, Client]:
    """The view as a fleet of its workers and this one client (ValueError: it cannot be one)."""
    if not view.workers:
        raise ValueError("the view names no worker this client may use")
    try:
        workers = [Worker(name=w.name, public_key=w.public_key, endpoint=w.endpoint,
                          tunnel_address=w.tunnel_address,
                          # The switcher never scrapes; the model wants an address here.
                          exporter=w.endpoint)
                   for w in view.workers]
        client = Client(name=view.client, public_key=public_key or _NO_KEY,
                        address=view.address, routes=list(view.routes),
                        workers=[w.name for w in view.workers])
        fleet = Fleet(workers=workers, clients=[client],
                      responder=ResponderSettings(url=responder_url))
    except ValidationError as exc:
        raise ValueError(f"the view does not describe a usable interface: "
                         f"{shown(exc, 200)}") from None
    return fleet, client


def is_news(known: ClientView | None, view: ClientView) -> bool:
    """A view is taken once per fleet version within a store epoch; another epoch is a new
    store (its versions started again), so its view is taken whatever its version."""
    return known is None or view.epoch != known.epoch or view.version > known.version


@dataclass
class ViewPlan:
    """What a new view changes for the switcher (pure: from the fleets before and after)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # endpoint, tunnel address or key
    stale_keys: list[str] = field(default_factory=list)  # peers to remove from the interface
    routes_changed: bool = False
    order_changed: bool = False

    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.stale_keys
                    or self.routes_changed or self.order_changed)

    def describe(self) -> str:
        parts = [f"{what} {', '.join(names)}" for what, names in
                 (("added", self.added), ("removed", self.removed), ("changed", self.changed))
                 if names]
        if self.routes_changed:
            parts.append("routes changed")
        if self.order_changed and not (self.added or self.removed):
            parts.append("preference order changed")
        return "; ".join(parts) or "nothing to change"


def plan_view(old: Fleet, old_client: Client, new: Fleet, new_client: Client) -> ViewPlan:
    before = {w.name: w for w in old.preferences(old_client)}
    after = {w.name: w for w in new.preferences(new_client)}
    keep_keys = {w.public_key for w in after.values()}
    return ViewPlan(
        added=[n for n in after if n not in before],
        removed=[n for n in before if n not in after],
        changed=[n for n, w in after.items() if n in before and w != before[n]],
        stale_keys=[w.public_key for w in before.values() if w.public_key not in keep_keys],
        routes_changed=(wg.normalize_networks(old_client.routes)
                        != wg.normalize_networks(new_client.routes)),
        order_changed=list(before) != list(after),
    )


class ViewFollower:
    """Keeps a running `Switcher` on its view: takes each new one, applies it, caches it."""

    def __init__(self, switcher: Switcher, view: ClientView, path: Path,
                 source: HttpViewSource | None = None) -> None:
        self.sw, self.view, self.path, self.source = switcher, view, path, source

    def save(self) -> None:
        try:
            cache.save_view(self.path, self.view)
        except OSError as exc:
            log.warning("cannot write the view cache %s: %s", self.path, exc)

    async def run(self) -> None:
        assert self.source is not None
        await self.source.run(self.on_view, lambda: self.view.version,  # type: ignore[arg-type]
                              lambda: self.view.epoch)

    def on_view(self, view: ClientView) -> None:
        if not is_news(self.view, view):
            return
        sw = self.sw
        try:
            fleet, client = view_fleet(view, sw.client.public_key, sw.fleet.responder.url)
        except ValueError as exc:
            log.warning("view v%d: not applied, keeping v%d: %s", view.version,
                        self.view.version, exc)
            return
        plan = plan_view(sw.fleet, sw.client, fleet, client)
        if not plan.empty():
            log.info("view v%d (was v%d): %s", view.version, self.view.version, plan.describe())
            self.apply(fleet, client, plan)
        # Only once applied: a surprise half way leaves the old view, so the same view is
        # news again when the source reconnects, and the plan (idempotent) is made again.
        self.view = view
        self.save()

    def apply(self, fleet: Fleet, client: Client, plan: ViewPlan) -> None:
        """Carry a planned view change out on the interface, the decider and the prober."""
        sw = self.sw
        decider = sw.decider
        assert decider is not None
        names = [w.name for w in fleet.preferences(client)]
        now = asyncio.get_running_loop().time()
        was = decider.active
        decider.set_workers(names)
        if was is not None and (was in plan.removed or was in plan.changed):
            # The routes must leave a departed peer before it goes (or sit on its new key).
            target = was if was in names else (decider.best_backup(now) or names[0])
        else:
            target = was
        iface = sw.opts.interface
        try:
            dump = wg.show_dump(iface)
            changes = wgctl.plan_reconcile(fleet, client, dump.peers, target, sw.opts.keepalive)
            wgctl.apply_changes(iface, changes)  # the active peer first: routes move atomically
            if plan.routes_changed and target is not None and not any(
                    c.worker == target and c.allowed_ips for c in changes):
                wgctl.move_routes(iface, fleet, client, target)  # exactly the new routes
            for key in plan.stale_keys:
                wg.set_peer(iface, key, remove=True)
        except wg.WgError as exc:
            # The interface watch re-plans against the new fleet every few seconds.
            log.error("view: applying it to %s failed (the interface watch retries): %s",
                      iface, exc)
            changes = []
        for c in changes:
            log.info("view: peer %s: %s", c.worker, c.why)
        for key in plan.stale_keys:
            log.info("view: removed the peer %s…", key[:8])
        sw.fleet, sw.client, sw.prefs = fleet, client, names
        if target != was:
            decider.active = target
            log.info("switch %s -> %s (view): %s left this client's workers", was, target, was)
            sw.switches += 1
        if sw.prober is not None:
            try:
                sw.prober.set_targets(sw.probe_targets())
            except ProbeError as exc:
                log.error("view: probing the new workers: %s", exc)
        if sw.metrics is not None:
            for name in plan.removed:
                for gauge in (sw.metrics.rtt, sw.metrics.loss, sw.metrics.up,
                              sw.metrics.active):
                    with contextlib.suppress(KeyError):
                        gauge.remove(name)
            sw.metrics.workers = names
        sw.save()
        sw.view_changed()
        if plan.added:
            asyncio.get_running_loop().call_later(REWARM_AFTER, self.rewarm, plan.added, 1)

    def rewarm(self, names: list[str], attempt: int) -> None:
        """Set a new backup peer afresh while it has no handshake (see REWARM_AFTER)."""
        sw = self.sw
        iface = sw.opts.interface
        try:
            peers = {p.public_key: p for p in wg.show_dump(iface).peers}
            cold = [w for w in sw.fleet.preferences(sw.client) if w.name in names
                    and w.name != (sw.decider.active if sw.decider else None)
                    and w.public_key in peers and not peers[w.public_key].latest_handshake]
            for w in cold:
                wg.set_peer(iface, w.public_key, remove=True)
            changes = wgctl.plan_reconcile(sw.fleet, sw.client,
                                           wg.show_dump(iface).peers,
                                           sw.decider.active if sw.decider else None,
                                           sw.opts.keepalive)
            wgctl.apply_changes(iface, changes)
        except wg.WgError as exc:
            log.warning("view: setting new peers afresh failed: %s", exc)
            return
        if cold:
            log.info("view: %s: no handshake %.0f s after it was added (its agent may have "
                     "added this client only now); peer set afresh to try again at once",
                     ", ".join(w.name for w in cold), attempt * REWARM_AFTER)
            if attempt < REWARM_TRIES:
                asyncio.get_running_loop().call_later(
                    REWARM_AFTER, self.rewarm, [w.name for w in cold], attempt + 1)


async def first_view(source: HttpViewSource, stop: Callable[[], bool] | None = None,
                     backoff: Backoff | None = None) -> ClientView | None:
    """The current view from the responder, asked again with backoff until it answers one
    (a first start has nothing cached to run on). None once `stop()` says so."""
    backoff = backoff or Backoff()
    async with source.http_client() as http:
        while not (stop and stop()):
            try:
                view = await source.fetch_current(http)
                if view is not None:
                    return view  # type: ignore[return-value]
                reason = "no usable view in the answer"
            except AuthError as exc:
                reason = str(exc).split(":", 1)[0]
                backoff.attempt = max(backoff.attempt, 6)
            except WireInputError as exc:
                reason = str(exc)
            except (httpx.HTTPError, OSError) as exc:
                reason = describe(exc, source.ca_file)
            delay = backoff.next()
            source.limiter.warning("first-view", "responder: no view yet, nothing cached to run "
                                   "on (%s); asking again in %.1f s", reason, delay)
            await asyncio.sleep(delay)
    return None
