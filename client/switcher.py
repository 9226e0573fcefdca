"""The switcher process: one asyncio loop running the prober, the assignment follower and the
reporter around `client.decisions.Decider`, carrying out its actions on the WireGuard interface."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wg_failover import wg
from wg_failover.fleet import Client, Fleet
from wg_failover.wire import Assignment, RejectedEvent

from . import cache, wgctl
from .bounds import WireInputError
from .decisions import DOWN, Action, Decider, GraySettings, Note, Report, Settings, Switch
from .metrics import SwitcherMetrics
from .probe import IcmpProber
from .report_policy import DEFAULT_HEARTBEAT, LONGEST_HEARTBEAT, Summary, Tracker
from .reporter import Reporter
from .sources import AssignmentSource, AuthError, HttpAssignmentSource, describe

if TYPE_CHECKING:
    from .view import ViewFollower

log = logging.getLogger("wg_failover.switcher")


@dataclass
class Options:
    interface: str
    interval: float = 0.1
    k: int = 3
    hold_down: float = 10.0
    probe_timeout: float | None = None  # floor of a probe's deadline; default one interval
    keepalive: int = 25
    report_every: float = 5.0  # how often the probe summary is checked for a change to report
    report_heartbeat: float = DEFAULT_HEARTBEAT  # ...and sent even without one, at least this often
    check_every: float = 2.0  # how often the interface is checked for drift
    fast_path: bool = True  # False: --no-fast-path, move only on the responder's assignment
    burst_interval: float = 0.01  # probe the active worker this fast after a miss (0: off)
    burst_misses: int = 3  # then down after this many burst misses in a row
    gray: GraySettings | None = field(default_factory=GraySettings)  # None: --no-gray


class Switcher:
    def __init__(self, fleet: Fleet, client: Client, opts: Options, cache_file: Path,
                 source: AssignmentSource | None = None, reporter: Reporter | None = None,
                 metrics: SwitcherMetrics | None = None) -> None:
        self.fleet, self.client, self.opts = fleet, client, opts
        self.prefs = [w.name for w in fleet.preferences(client)]
        self.cache_file = cache_file
        self.source = source
        self.reporter = reporter or Reporter(None, client.name, None)
        self.metrics = metrics
        self.decider: Decider | None = None
        self.prober: IcmpProber | None = None
        self.switches = 0
        self.failed_at = -1e9
        # Set when the switcher follows its view (no fleet file): `client.view`.
        self.follower: ViewFollower | None = None
        # An assignment to a worker the view does not have yet (the assignment stream can be
        # ahead of the view stream when a worker joins): delivered once the view has it.
        self.held: Assignment | None = None
        # Probe reports go out on a change that matters or a heartbeat (client/report_policy.py).
        self.reports = Tracker.for_switcher(min(opts.report_heartbeat, LONGEST_HEARTBEAT),
                                            opts.report_every)
        self.reporter.on_advice = self.reports.take_advice  # the responder's, for its fleet

    # ------------------------------------------------------------------ start
    def resume(self) -> Decider:
        """Reconcile the interface with the fleet and the cache; touch no healthy active peer."""
        iface = self.opts.interface
        dump = wg.show_dump(iface)
        cached = cache.load(self.cache_file, self.client.name)
        active = wg.find_active(self.fleet, self.client, dump.peers)
        version = cached.version if cached else 0
        epoch = cached.epoch if cached else None
        if active is not None:
            note = ""
            if cached and cached.active and cached.active != active:
                # E.g. wg-quick brought the interface up from its config after a reboot. Traffic
                # flows, so keep it; but ask the responder for its current assignment again
                # rather than resume after the cached version, so the authority is re-applied.
                note = (f" (the cache said {cached.active}; the interface wins, and the current "
                        "assignment is asked for again)")
                version = 0
            log.info("resume: routes are on %s; keeping it%s", active, note)
        else:
            target = cached.active if cached and cached.active in self.prefs else self.prefs[0]
            log.info("resume: routes are on no peer; putting them on %s (%s)", target,
                     "from the cache" if cached and cached.active == target else "first choice")
            active = target
        changes = wgctl.plan_reconcile(self.fleet, self.client, dump.peers, active,
                                       self.opts.keepalive)
        for c in changes:
            log.info("reconcile: peer %s: %s", c.worker, c.why)
        wgctl.apply_changes(iface, changes)
        if not changes:
            log.info("reconcile: %s matches the fleet (%d worker peers)", iface, len(self.prefs))
        self.decider = Decider(
            self.prefs, Settings(k=self.opts.k, hold_down=self.opts.hold_down,
                                 fast_path=self.opts.fast_path,
                                 burst_interval=self.opts.burst_interval,
                                 burst_misses=self.opts.burst_misses,
                                 gray=self.opts.gray), active=active,
            version=version, pending=cached.pending if cached and version else None,
            epoch=epoch,
        )
        if cached:
            log.info("resume: last responder version %d%s from %s", cached.version,
                     f" (store epoch {epoch})" if epoch else "", self.cache_file)
        self.save()
        return self.decider

    def save(self) -> None:
        assert self.decider is not None
        state = cache.CachedState(self.client.name, self.decider.active, self.decider.version,
                                  self.decider.pending, self.decider.epoch)
        try:
            cache.save(self.cache_file, state)
        except OSError as exc:
            log.warning("cannot write the cache %s: %s", self.cache_file, exc)

    # ------------------------------------------------------------------ actions
    def handle(self, actions: list[Action]) -> None:
        assert self.decider is not None
        failed = False
        changed = False
        for act in actions:
            if isinstance(act, Switch):
                failed = not self._carry_out(act)
                changed = True
            elif isinstance(act, Report):
                if not failed and act.event["type"] == "probe":
                    self.post_probes(act.event)  # an up/down change, reported at once
                elif not failed:
                    self.reporter.post(act.event)
                if act.event["type"] == "rejected" and self.metrics:
                    self.metrics.rejected.inc()
            elif isinstance(act, Note):
                log.log(act.level, "%s", act.message)
        if changed:
            self.save()
        if self.metrics:
            self.metrics.update(self.decider)

    def _carry_out(self, act: Switch) -> bool:
        """One `wg set` for a decided move; False (and the decider told) when it failed."""
        assert self.decider is not None
        t0 = time.monotonic()
        if t0 - self.failed_at < 1.0:
            self.decider.switch_failed(act)  # `wg` just failed: retry in a second, not per probe
            return False
        try:
            wgctl.move_routes(self.opts.interface, self.fleet, self.client, act.to)
        except (wg.WgError, KeyError) as exc:
            log.error("switch %s -> %s FAILED (%s): %s", act.from_, act.to, act.kind, exc)
            self.decider.switch_failed(act)
            self.failed_at = t0
            return False
        took = (time.monotonic() - t0) * 1000
        after = f" after {act.elapsed_ms} ms" if act.elapsed_ms is not None else ""
        log.info("switch %s -> %s (%s)%s: %s [wg set %.1f ms]", act.from_ or "none", act.to,
                 act.kind, after, act.reason, took)
        self.switches += 1
        if self.metrics:
            self.metrics.switches.labels(act.kind).inc()
        return True

    def deliver(self, a: Assignment) -> None:
        assert self.decider is not None
        if self.follower is not None and a.worker not in self.decider.health:
            if self.held is None or self.held.version != a.version:
                log.info("assignment v%d to %s: not in this client's view (v%d) yet; waiting "
                         "for the view", a.version, a.worker, self.follower.view.version)
            self.held = a
            return
        self.held = None
        before = (self.decider.version, self.decider.epoch)
        actions = self.decider.on_assignment(a, asyncio.get_running_loop().time())
        self.handle(actions)
        if (self.decider.version, self.decider.epoch) != before:
            self.save()

    def view_changed(self) -> None:
        """The workers changed: an assignment held for a worker the view now has goes in."""
        assert self.decider is not None
        held = self.held
        if held is not None and held.worker in self.decider.health:
            self.deliver(held)

    def _on_reply(self, worker: str, rtt: float, now: float) -> None:
        assert self.decider is not None
        self.handle(self.decider.on_reply(worker, rtt, now))

    def _on_miss(self, worker: str, now: float) -> None:
        assert self.decider is not None
        self.handle(self.decider.on_miss(worker, now))
        if worker == self.decider.active and self.prober is not None:
            self.prober.reschedule_all()  # the backups are probed faster while it is silent

    def _on_late(self, worker: str, rtt: float, now: float) -> None:
        assert self.decider is not None
        self.handle(self.decider.on_late(worker, rtt, now))

    def probe_targets(self) -> dict[str, str]:
        """Worker name -> the tunnel address its probes go to."""
        targets = {}
        for w in self.fleet.preferences(self.client):
            targets[w.name] = w.tunnel_address  # ICMP or ICMPv6, by the address
        return targets

    def make_prober(self) -> IcmpProber:
        assert self.decider is not None
        decider = self.decider
        targets = self.probe_targets()
        floor = self.opts.probe_timeout
        if floor is None and self.opts.burst_interval > 0:
            floor = self.opts.interval / 2  # a first miss only starts the burst: judge it early

        def timeout(worker: str) -> float:
            return decider.probe_deadline(worker, self.opts.interval, floor)

        self.prober = IcmpProber(targets, self.opts.interval, self._on_reply, self._on_miss,
                                 timeout, interface=self.opts.interface,
                                 interval_for=decider.probe_interval, on_late=self._on_late)
        self.prober.open()
        return self.prober

    # ------------------------------------------------------------------ run
    def probe_summary(self) -> Summary:
        assert self.decider is not None
        d = self.decider
        return Summary(d.active, {w: d.health[w].summary() for w in d.workers})

    def post_probes(self, event: dict | None = None) -> None:
        """Send a probe report (the decider's, else the current one) saying how often the next
        ones come at least, and remember it as the last one sent."""
        assert self.decider is not None
        ev = dict(event if event is not None else self.decider.probe_report().event)
        self.reporter.post({**ev, "heartbeat_s": self.reports.heartbeat_s})
        self.reports.record(self.probe_summary(), time.monotonic())

    async def _report_probes(self) -> None:
        """Each check, the probe summary goes out if it changed in a way that matters since the
        last report or the heartbeat is due (client/report_policy.py)."""
        assert self.decider is not None
        while True:
            await asyncio.sleep(self.opts.report_every)
            if (decision := self.reports.due(self.probe_summary(), time.monotonic())).send:
                log.debug("probe report: %s", decision.why)
                self.post_probes()
            if self.metrics:
                self.metrics.update(self.decider)

    async def _watch_interface(self) -> None:
        """Every few seconds, check that the routes are where the decider thinks they are: the
        interface may have been recreated (wg-quick down/up) or changed by hand."""
        iface = self.opts.interface
        noted = False
        while True:
            await asyncio.sleep(self.opts.check_every)
            moves = (self.switches, self.fleet)  # a view change replaces the fleet
            try:
                dump = await asyncio.to_thread(wg.show_dump, iface)
            except wg.WgError as exc:
                if not noted:
                    log.warning("interface %s unreadable: %s", iface, exc)
                    noted = True
                continue
            if noted:
                log.info("interface %s is back", iface)
                noted = False
            if moves == (self.switches, self.fleet):  # else the dump predates our own move
                self.check_drift(dump)

    def check_drift(self, dump: wg.Dump) -> None:
        assert self.decider is not None
        decider = self.decider
        holder = wg.find_active(self.fleet, self.client, dump.peers)
        if decider.active is not None and holder is not None and holder != decider.active \
                and decider.health[decider.active].state == DOWN:
            log.info("drift: routes are on %s, not on %s which is down; adopting %s", holder,
                     decider.active, holder)
            decider.active = holder
            self.save()
        target = decider.active or holder
        changes = wgctl.plan_reconcile(self.fleet, self.client, dump.peers, target,
                                       self.opts.keepalive)
        if not changes:
            return
        log.info("drift: routes on %s, expected on %s; restoring (%s)", holder or "no peer",
                 target, "; ".join(f"{c.worker}: {c.why}" for c in changes))
        try:
            wgctl.apply_changes(self.opts.interface, changes)
        except wg.WgError as exc:
            log.error("drift: restoring failed: %s", exc)
            return
        if decider.active is None:
            decider.active = target
            self.save()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT."""
        self.resume()
        prober = self.make_prober()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        assert self.decider is not None
        decider = self.decider
        if self.source is not None and hasattr(self.source, "on_connected"):
            self.source.on_connected = self.reports.on_connected(self.source.on_connected)
        tasks = [asyncio.create_task(prober.run(), name="prober"),
                 asyncio.create_task(self.reporter.run(), name="reporter"),
                 asyncio.create_task(self._report_probes(), name="probe-reports"),
                 asyncio.create_task(self._watch_interface(), name="interface-watch")]
        if self.source is not None:
            tasks.append(asyncio.create_task(
                self.source.run(self.deliver, lambda: decider.version, lambda: decider.epoch),
                name="assignments"))
        if self.follower is not None and self.follower.source is not None:
            tasks.append(asyncio.create_task(self.follower.run(), name="view"))
        log.info("switcher %s on %s: probing %s every %g ms, K=%d, hold-down %g s%s",
                 self.client.name, self.opts.interface, ", ".join(self.prefs),
                 self.opts.interval * 1000, self.opts.k, self.opts.hold_down,
                 "" if self.opts.fast_path else ", fast path OFF (responder's assignments only)")
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        rc = 0
        for t in done:
            if t is not waiter and t.exception() is not None:
                log.error("%s failed: %s", t.get_name(), t.exception())
                rc = 1
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.reporter.flush(1.0), 2.0)
        for t in [waiter, *tasks]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        prober.close()
        self.save()
        log.info("switcher stopped; %s holds the routes", decider.active)
        return rc

    async def run_once(self) -> int:
        """Apply the current assignment (responder, else cache) once, then exit.

        0: applied or already in place; 1: rejected (the probes see the worker dead) or none.
        """
        self.resume()
        assert self.decider is not None
        decider = self.decider
        assignment = None
        if isinstance(self.source, HttpAssignmentSource):
            import httpx

            try:
                async with self.source.http_client() as http:
                    assignment = await self.source.fetch_current(http)
            except AuthError as exc:
                log.warning("once: %s; using the cache", exc)
            except WireInputError as exc:
                log.warning("once: responder answered %s; using the cache", exc)
            except (httpx.HTTPError, OSError) as exc:
                log.warning("once: responder unreachable (%s); using the cache",
                            describe(exc, self.source.ca_file))
        reporter_task = asyncio.create_task(self.reporter.run())
        prober = self.make_prober()
        # Probe first, so the assignment is judged on what the tunnels say.
        await prober.run(rounds=self.opts.k + 2)
        rc = 0
        if assignment is not None:
            self.deliver(assignment)
        if decider.pending is not None:
            a = decider.pending
            h = decider.health[a.worker]
            log.info("once: assignment v%d to %s not applied: probes see it %s", a.version,
                     a.worker, h.state)
            if not decider.pending_rejected:
                self.reporter.post(Report.of(RejectedEvent(
                    version=a.version, worker=a.worker,
                    reason=f"probes see {a.worker} {h.state}")).event)
            rc = 1
        elif assignment is None:
            log.info("once: no assignment from the responder; %s holds the routes", decider.active)
        self.reporter.post(decider.probe_report().event)
        await self.reporter.flush(3.0)
        reporter_task.cancel()
        await asyncio.gather(reporter_task, return_exceptions=True)
        prober.close()
        self.save()
        return rc
