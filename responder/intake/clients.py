"""Client reports (`POST /v1/clients/{name}/events`): probes, fast-path switches, applied and
rejected assignment versions. The fleet votes with its probes on what is really reachable.

A client votes only on the workers it may use (its `workers:` list in the fleet, else all): its
probes of any other worker are dropped before anything keeps them, so one client cannot vote a
worker it has no business with down. Each client keeps one latest report, so it is one vote
(metrics.py counts clients, not reports; hardening finding 4)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping

from wg_failover.wire import AppliedEvent, ProbeEvent, ProbeResult, RejectedEvent, SwitchEvent

from .. import latency, planner
from ..draft import Draft, ProbeRecord
from ..metrics import probe_max_age
from ..state import ResponderState
from ..store import AssignmentRow, StoreError
from .suspect import suspects_of

log = logging.getLogger("wg_failover.responder")

ClientReport = ProbeEvent | SwitchEvent | AppliedEvent | RejectedEvent


async def take_report(state: ResponderState, name: str, ev: ClientReport) -> None:
    """Apply one report of fleet client `name`. Raises StoreError when it cannot commit."""
    # The usual case, a probe report that changes nothing durable: memory only, no lock, no
    # transaction. Switchers report on a change and a heartbeat (client/report_policy.py), so
    # most reports are heartbeats that land here.
    if not (isinstance(ev, ProbeEvent) and record_unremarkable_probe(state, name, ev)):
        # Client reports are frequent and re-sent: no fsync (see Store.commit).
        suspect = await state.change(lambda d: client_report(d, name, ev), durable=False)
        if suspect is not None:
            suspects_of(state).schedule_end(state, suspect)
    if isinstance(ev, ProbeEvent):
        # Kept once the report is (a commit that failed leaves the last report's window).
        state.metrics.probe_max_age[name] = probe_max_age(ev.heartbeat_s)
        observe_latency(state, name, ev)
    state.metrics.client_events.labels(type=ev.type).inc()
    if isinstance(ev, SwitchEvent):
        state.metrics.switch_causes.labels(cause=ev.cause or "unknown").inc()


def observe_latency(state: ResponderState, name: str, ev: ProbeEvent) -> None:
    """Fold a probe report into the latency figures (responder/latency.py); with latency
    placement, ask for a plan when this client may now be due a latency move."""
    settings = state.settings
    rule = latency.rule_of(settings)
    a = state.assignments.get(name)
    now = state.clock()
    mem = latency.memory_of(state)
    mem.observe(name, _allowed_results(state.prefs[name], ev), a and a.worker, now,
                          rule, a.since if a is not None and a.reason == planner.R_LATENCY
                          else None)
    if settings.placement == "latency" and mem.due(name, now, rule):
        _latency_plan_soon(state)


def _latency_plan_soon(state: ResponderState) -> None:
    """Re-plan for latency moves, at most once a second: many clients come due together when a
    faster worker appears, and each plan moves at most `latency_batch_size` of them."""
    mem = latency.memory_of(state)
    if mem.plan_pending:
        return
    mem.plan_pending = True

    async def run() -> None:
        try:
            await state.change(lambda d: None, always_plan=True)
        except StoreError as exc:
            log.warning("latency plan: %s", exc)  # the due clients ask again later
        finally:
            mem.plan_pending = False

    def spawn() -> None:
        task = asyncio.ensure_future(run())
        mem.tasks.add(task)
        task.add_done_callback(mem.tasks.discard)

    delay = max(0.0, mem.next_plan - time.monotonic())
    mem.next_plan = time.monotonic() + delay + 1.0
    asyncio.get_running_loop().call_later(delay, spawn)


def record_unremarkable_probe(state: ResponderState, name: str, ev: ProbeEvent) -> bool:
    """Keep a probe report in memory if it changes nothing durable; True when it did.

    False (and nothing kept) when the client's up/down view changed or a worker unusable for it
    answers again: then the report goes through `change()` like any other."""
    results = _allowed_results(state.prefs[name], ev)
    prev = state.probes.get(name)
    if prev is None or _up_view(prev.workers) != _up_view(results):
        return False
    unusable = state.unusable.get(name)
    if unusable and any(p.up and w in unusable for w, p in results.items()):
        return False
    state.remember_probe(name, ProbeRecord(time.time(), results))
    return True


def client_report(d: Draft, name: str, ev: ClientReport) -> str | None:
    """Apply one report to the draft; returns the worker its switch report made suspect."""
    if isinstance(ev, ProbeEvent):
        _probe(d, name, ev)
    elif isinstance(ev, SwitchEvent):
        return _switch(d, name, ev)
    elif isinstance(ev, AppliedEvent):
        a = d.committed.assignments.get(name)
        if a is not None and a.version == ev.version:
            d.after.apply_latencies.append(max(0.0, d.now - a.since))
        d.event("client-applied", worker=ev.worker, client=name, version=ev.version)
        d.after.applied[name] = ev.version
    elif isinstance(ev, RejectedEvent):
        d.event("client-rejected", worker=ev.worker, client=name, version=ev.version,
                reason=ev.reason[:500])
        if d.knows_worker(ev.worker):
            d.mark_unusable(name, ev.worker, usable=False)
            a = d.assignment(name)
            if a is not None and a.worker != ev.worker:
                # Already elsewhere: still tell the client where it should be.
                d.assign_reason[name] = "client-rejected"
    return None


def _allowed_results(allowed: Iterable[str], ev: ProbeEvent) -> dict[str, ProbeResult]:
    """The report's results for the workers the client may use (all fleet workers by default)."""
    return {w: ev.workers[w] for w in allowed if w in ev.workers}


def _up_view(results: Mapping[str, ProbeResult]) -> dict[str, bool]:
    return {w: p.up for w, p in results.items()}


def _probe(d: Draft, name: str, ev: ProbeEvent) -> None:
    results = _allowed_results(d.committed.prefs[name], ev)
    prev = d.last_probe(name)
    d.after.probes[name] = ProbeRecord(d.now, results)
    up = sorted(w for w, p in results.items() if p.up)
    down = sorted(w for w, p in results.items() if not p.up)
    if prev is None or _up_view(prev.workers) != _up_view(results):
        d.event("client-probe", client=name, up=up, down=down)
    for w in up:
        if w in d.unusable(name):
            d.mark_unusable(name, w, usable=True)


def _switch(d: Draft, name: str, ev: SwitchEvent) -> str | None:
    """The client moved itself: the move stands when its new worker is one of its own, healthy
    and has room; otherwise it gets a new version saying where to be. Its vote may make the
    worker it left suspect (intake/suspect.py): returns that worker then."""
    suspect = None
    if ev.from_worker != ev.to_worker and d.knows_worker(ev.from_worker):
        suspect = suspects_of(d.committed).vote(d, name, ev.from_worker,
                                            d.settings.suspect_window_seconds)
    d.after.switches.append(name)
    d.event("client-switch", worker=ev.to_worker, client=name, from_worker=ev.from_worker,
            to_worker=ev.to_worker, reason=ev.reason[:500], elapsed_ms=ev.elapsed_ms)
    if d.knows_worker(ev.from_worker) and ev.from_worker != ev.to_worker:
        d.mark_unusable(name, ev.from_worker, usable=False)
    if not d.knows_worker(ev.to_worker):
        d.assign_reason[name] = "switch-refused"
        return suspect
    d.mark_unusable(name, ev.to_worker, usable=True)
    cv = d.client_view(name)
    a = d.assignment(name)
    cur = a.worker if a else None
    views = d.views()
    if not planner.accept_switch(cv, ev.to_worker, cur, views, d.current_workers()):
        d.assign_reason[name] = "switch-refused"
        return suspect
    if cur != ev.to_worker:
        version = (a.version if a else 0) + 1
        d.tx.assignments[name] = AssignmentRow(
            name, ev.to_worker, planner.backups(cv, ev.to_worker, views), version,
            planner.R_SWITCH, d.now)
        d.event("move", worker=ev.to_worker, client=name, from_worker=cur,
                to_worker=ev.to_worker, version=version, reason=planner.R_SWITCH)
    return suspect
