"""The responder's FastAPI app: webhook in, durable state, planner, assignments out.

Every change follows one path (`AppState.change`): take the write lock, build a `Draft` (the
pending change over the in-memory state), re-plan, commit the draft to SQLite in one transaction,
and only then apply it to memory and tell the notifiers. If the commit fails, memory is untouched
and the caller answers 503. Reads are served from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.types import Receive, Scope, Send

from wg_failover.fleet import Fleet
from wg_failover.tokens import token_matches

from . import planner as P
from .metrics import Metrics
from .notify import KEEPALIVE_SECONDS, Hub, Registry, build_notifiers, load_plugins
from .store import AssignmentRow, Event, Store, StoreError, Tx, WorkerRow

log = logging.getLogger("wg_failover.responder")

MAX_BODY = 1024 * 1024
MAX_WAIT = 60.0
PREEMPT_INTERVAL = 1.0  # seconds between preempt batches
RECENT_EVENTS = 20


@functools.lru_cache(maxsize=4096)  # one change stamps thousands of rows with one time
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- request models


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _check_time(v: str) -> str:
    try:
        datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"{v!r} is not an RFC 3339 time") from None
    return v


class AMAlert(_Lenient):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str
    endsAt: str | None = None
    fingerprint: str | None = None

    _t = field_validator("startsAt")(_check_time)


class AMPayload(_Lenient):
    version: str | None = None
    status: str | None = None
    groupKey: str | None = None
    truncatedAlerts: int = 0
    alerts: list[AMAlert]

    @field_validator("version")
    @classmethod
    def _v4(cls, v: str | None) -> str | None:
        if v is not None and v != "4":
            raise ValueError(f"webhook version {v!r} is not supported (expected \"4\")")
        return v


WorkerName = Annotated[str, Field(min_length=1, max_length=63)]


class ProbeResult(_Lenient):
    up: bool
    rtt_ms: float | None = Field(default=None, ge=0)
    loss: float | None = Field(default=None, ge=0, le=1)


class ProbeEvent(_Lenient):
    type: Literal["probe"]
    workers: dict[str, ProbeResult]


class SwitchEvent(_Lenient):
    type: Literal["switch"]
    from_worker: WorkerName | None = None
    to_worker: WorkerName
    reason: str = ""
    elapsed_ms: float | None = None


class AppliedEvent(_Lenient):
    type: Literal["applied"]
    version: int
    worker: WorkerName | None = None


class RejectedEvent(_Lenient):
    type: Literal["rejected"]
    version: int
    worker: WorkerName
    reason: str = ""


ClientEvent = TypeAdapter(
    Annotated[ProbeEvent | SwitchEvent | AppliedEvent | RejectedEvent,
              Field(discriminator="type")]
)


# --------------------------------------------------------------------------- state


@dataclass
class Probe:
    up: bool
    rtt_ms: float | None
    loss: float | None


class Draft:
    """A pending change over the in-memory state: reads see the change, writes go to `tx`."""

    def __init__(self, st: AppState):
        self.st = st
        self.tx = Tx()
        self.worker_changed: set[str] = set()
        self.now = time.time()
        self.assign_reason: dict[str, str] = {}  # client -> reason for a forced new version

    def worker(self, name: str) -> WorkerRow:
        return self.tx.workers.get(name) or self.st.workers[name]

    def set_worker(self, row: WorkerRow) -> None:
        self.tx.workers[row.name] = row
        self.worker_changed.add(row.name)

    def alerts(self) -> dict[str, tuple[str, str]]:
        out = {k: v for k, v in self.st.alerts.items() if k not in self.tx.alerts_del}
        out.update(self.tx.alerts_add)
        return out

    def unusable(self, client: str) -> set[str]:
        s = self.st.unusable.get(client, set())
        if self.tx.unusable_add or self.tx.unusable_del:
            s = set(s)
            s |= {w for c, w in self.tx.unusable_add if c == client}
            s -= {w for c, w in self.tx.unusable_del if c == client}
        return s

    def mark_unusable(self, client: str, worker: str, usable: bool) -> None:
        key = (client, worker)
        if usable:
            self.tx.unusable_add.discard(key)
            if worker in self.st.unusable.get(client, set()):
                self.tx.unusable_del.add(key)
        else:
            self.tx.unusable_del.discard(key)
            if worker not in self.st.unusable.get(client, set()):
                self.tx.unusable_add.add(key)

    def plan_inputs_changed(self) -> bool:
        t = self.tx
        return bool(t.workers or t.alerts_add or t.alerts_del or t.unusable_add
                    or t.unusable_del or t.assignments or self.assign_reason
                    or self.worker_changed)

    def assignment(self, client: str) -> AssignmentRow | None:
        return self.tx.assignments.get(client) or self.st.assignments.get(client)

    def event(self, kind: str, worker: str | None = None, client: str | None = None,
              **data: Any) -> None:
        self.tx.events.append(Event(kind, worker, client, data, self.now))


class AppState:
    def __init__(self, fleet: Fleet, store: Store):
        self.fleet = fleet
        self.settings = fleet.responder
        self.store = store
        self.metrics = Metrics()
        self.hub = Hub(self.metrics.notification_latency)
        load_plugins()
        self.registry = Registry([self.hub, *build_notifiers(fleet, self.settings)])
        self.lock = asyncio.Lock()
        self.workers: dict[str, WorkerRow] = {}
        self.assignments: dict[str, AssignmentRow] = {}
        self.retired: dict[str, AssignmentRow] = {}
        self.alerts: dict[str, tuple[str, str]] = {}
        self.unusable: dict[str, set[str]] = {}
        self.probes: dict[str, tuple[float, dict[str, Probe]]] = {}
        self.unplaceable: list[str] = []
        self.ready = False
        self.client_by_name = {c.name: c for c in fleet.clients}
        self.worker_by_name = {w.name: w for w in fleet.workers}
        self.prefs = {c.name: tuple(c.workers) if c.workers is not None
                      else tuple(self.worker_by_name) for c in fleet.clients}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._preempt_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.metrics.attach(self)
        self.metrics.known_labels([w.name for w in fleet.workers], [c.name for c in fleet.clients])

    # ----------------------------------------------------------------- views

    def views(self, d: Draft | None = None) -> dict[str, P.WorkerView]:
        get = d.worker if d else (lambda n: self.workers[n])
        alerts = d.alerts() if d else self.alerts
        drained_by_alert = {w for w, a in alerts.values() if a == "drain"}
        out = {}
        for w in self.fleet.workers:
            row = get(w.name)
            out[w.name] = P.WorkerView(
                w.name, row.state, row.drain_admin or w.name in drained_by_alert, w.capacity)
        return out

    def client_view(self, name: str, d: Draft | None = None) -> P.ClientView:
        unusable = d.unusable(name) if d else self.unusable.get(name, set())
        return P.ClientView(name, self.prefs[name], frozenset(unusable))

    def assignment_json(self, a: AssignmentRow) -> dict[str, Any]:
        return {"client": a.client, "worker": a.worker, "backups": list(a.backups),
                "version": a.version, "reason": a.reason, "since": iso(a.since)}

    def all_assignments(self) -> list[dict[str, Any]]:
        """Every fleet client's current assignment (for a notifier's start, e.g. MQTT retain)."""
        return [self.assignment_json(self.assignments[c.name]) for c in self.fleet.clients
                if c.name in self.assignments]

    def all_workers(self) -> list[dict[str, Any]]:
        return [self.worker_json(w.name) for w in self.fleet.workers]

    def worker_json(self, name: str) -> dict[str, Any]:
        v = self.views()[name]
        row = self.workers[name]
        w = self.worker_by_name[name]
        assigned = sum(1 for a in self.assignments.values() if a.worker == name)
        return {"name": name, "state": v.state, "draining": v.draining, "healthy": v.healthy,
                "since": iso(row.since), "capacity": w.capacity, "region": w.region,
                "assigned": assigned, "exporter": w.exporter}

    # ----------------------------------------------------------------- the one write path

    async def change(self, build: Callable[[Draft], Any], *, durable: bool = True) -> Any:
        """Run `build(draft)` under the write lock, re-plan, commit, apply, notify.

        Raises StoreError when the commit fails (memory is then unchanged).
        """
        async with self.lock:
            d = Draft(self)
            result = build(d)
            if d.tx.empty():
                return result
            # Re-planning walks every client: only do it when something it reads changed
            # (not for the stream of `applied` and probe reports).
            t0 = time.perf_counter()
            plan = self._replan(d) if d.plan_inputs_changed() else None
            t1 = time.perf_counter()
            await asyncio.to_thread(self.store.commit, d.tx, durable)
            t2 = time.perf_counter()
            self._apply(d, plan)
            t3 = time.perf_counter()
            if t3 - t0 > 0.2:
                log.info("slow change: plan %.0f ms, commit %.0f ms, notify %.0f ms, "
                         "%d assignments", 1000 * (t1 - t0), 1000 * (t2 - t1),
                         1000 * (t3 - t2), len(d.tx.assignments))
            return result

    def _replan(self, d: Draft) -> P.Plan:
        views = self.views(d)
        cviews = [self.client_view(c.name, d) for c in self.fleet.clients]
        current = {}
        for c in self.fleet.clients:
            a = d.assignment(c.name)
            current[c.name] = a.worker if a else None
        plan = P.plan(views, cviews, current, preempt=self.settings.preempt,
                      preempt_batch=self.settings.preempt_batch_size)
        for cv in cviews:
            old = d.assignment(cv.name)
            move = plan.moves.get(cv.name)
            worker = move.to_worker if move else current[cv.name]
            backups = P.backups(cv, worker, views)
            forced = d.assign_reason.get(cv.name)
            if old is not None and not move and not forced and old.backups == backups \
                    and old.worker == worker:
                continue
            reason = move.reason if move else (forced or "backups")
            version = (old.version if old else 0) + 1
            d.tx.assignments[cv.name] = AssignmentRow(cv.name, worker, backups, version, reason,
                                                      d.now)
            if old is None or old.worker != worker:
                d.event("move", worker=worker, client=cv.name, from_worker=old and old.worker,
                        to_worker=worker, version=version, reason=reason)
        if plan.unplaceable != self.unplaceable:
            d.event("unplaceable", clients=plan.unplaceable[:100], count=len(plan.unplaceable))
        moved = len([1 for c, a in d.tx.assignments.items()
                     if (o := self.assignments.get(c)) is None or o.worker != a.worker])
        if d.tx.assignments:
            d.event("plan", moved=moved, updated=len(d.tx.assignments),
                    unplaceable=len(plan.unplaceable))
        return plan

    def _apply(self, d: Draft, plan: P.Plan | None) -> None:
        tx = d.tx
        old_assign = {c: self.assignments.get(c) for c in tx.assignments}
        self.workers.update(tx.workers)
        for fp in tx.alerts_del:
            self.alerts.pop(fp, None)
        self.alerts.update(tx.alerts_add)
        for c, w in tx.unusable_del:
            self.unusable.get(c, set()).discard(w)
        for c, w in tx.unusable_add:
            self.unusable.setdefault(c, set()).add(w)
        self.assignments.update(tx.assignments)
        if plan is not None:
            self.unplaceable = list(plan.unplaceable)
        for c, a in tx.assignments.items():
            o = old_assign[c]
            if o is not None and o.worker != a.worker:
                self.metrics.moves.labels(reason=a.reason).inc()
        for name in sorted(d.worker_changed):
            self.registry.worker_changed(self.worker_json(name))
        for a in tx.assignments.values():
            self.registry.assignment_changed(self.assignment_json(a))
        for name in d.worker_changed:
            self._schedule_holddown(name)
        if plan is not None and any(m.reason == P.R_PREEMPT for m in plan.moves.values()):
            self._schedule_preempt()

    # ----------------------------------------------------------------- timers

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule_holddown(self, name: str) -> None:
        old = self._timers.pop(name, None)
        if old:
            old.cancel()
        row = self.workers[name]
        if row.state != P.RECOVERING:
            return
        delay = max(0.0, row.since + self.settings.hold_down_seconds - time.time())
        loop = asyncio.get_running_loop()
        since = row.since
        # A lambda, not a coroutine object: a cancelled timer must not leave one un-awaited.
        self._timers[name] = loop.call_later(
            delay, lambda: self._spawn(self._holddown_done(name, since)))

    async def _holddown_done(self, name: str, since: float) -> None:
        def build(d: Draft) -> None:
            row = d.worker(name)
            if row.state == P.RECOVERING and row.since == since:
                d.set_worker(replace(row, state=P.UP, since=d.now))
                d.event("worker-state", worker=name, **{"from": P.RECOVERING, "to": P.UP},
                        cause="hold-down")

        try:
            await self.change(build)
        except StoreError as exc:
            log.error("hold-down of %s: %s; retrying in 1 s", name, exc)
            loop = asyncio.get_running_loop()
            self._timers[name] = loop.call_later(
                1.0, lambda: self._spawn(self._holddown_done(name, since)))

    def _schedule_preempt(self) -> None:
        if self._preempt_timer is not None:
            self._preempt_timer.cancel()
        loop = asyncio.get_running_loop()
        self._preempt_timer = loop.call_later(PREEMPT_INTERVAL,
                                              lambda: self._spawn(self._preempt()))

    async def _preempt(self) -> None:
        # Nothing changed but time: plan directly under the lock (change() would skip planning).
        async with self.lock:
            d = Draft(self)
            plan = self._replan(d)
            if d.tx.empty():
                return
            try:
                await asyncio.to_thread(self.store.commit, d.tx, True)
            except StoreError as exc:
                log.error("preempt batch: %s; retrying", exc)
                self._schedule_preempt()
                return
            self._apply(d, plan)

    # ----------------------------------------------------------------- start / stop

    async def start(self) -> None:
        loaded = self.store.load()
        self.workers = loaded.workers
        # Rows of clients no longer in the fleet stay on disk (a client that comes back continues
        # where it was, versions included) but out of the served and counted state.
        self.assignments = {c: a for c, a in loaded.assignments.items()
                            if c in self.client_by_name}
        self.retired = {c: a for c, a in loaded.assignments.items()
                        if c not in self.client_by_name}
        self.alerts = loaded.alerts
        self.unusable = loaded.unusable
        await self.registry.start(self)
        for c in self.fleet.clients:
            if c.token_sha256 is None:
                log.warning("client %s has no token_sha256: it cannot use the API (401)", c.name)

        async with self.lock:
            if all(w.name in self.workers for w in self.fleet.workers):
                # A restart: what was unplaceable before still is; no new "unplaceable" event.
                self.unplaceable = self._replan(Draft(self)).unplaceable
            d = Draft(self)
            for w in self.fleet.workers:
                if w.name not in self.workers:
                    row = WorkerRow(w.name, P.UP, d.now)
                    self.workers[w.name] = row  # so views() sees it; also written below
                    d.set_worker(row)
                    d.event("worker-added", worker=w.name)
                row = d.worker(w.name)
                if row.state == P.RECOVERING and \
                        d.now - row.since >= self.settings.hold_down_seconds:
                    d.set_worker(replace(row, state=P.UP, since=d.now))
                    d.event("worker-state", worker=w.name,
                            **{"from": P.RECOVERING, "to": P.UP}, cause="hold-down")
            plan = self._replan(d)
            d.event("start", workers=len(self.fleet.workers), clients=len(self.fleet.clients))
            await asyncio.to_thread(self.store.commit, d.tx, True)
            self._apply(d, plan)
            for w in self.fleet.workers:
                self._schedule_holddown(w.name)
        await asyncio.to_thread(self.store.prune_dedup)
        # The fleet and state are long-lived: keep them out of the collector's full passes.
        gc.collect()
        gc.freeze()
        # Fewer, larger young collections: a 10,000-client change allocates ~100k objects,
        # i.e. ~140 collections at the default threshold of 700. In bench/responder.py this
        # took the 10,000-client webhook answer from 420-570 ms to 210-375 ms.
        gc.set_threshold(50_000, 20, 100)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        for t in self._timers.values():
            t.cancel()
        if self._preempt_timer:
            self._preempt_timer.cancel()
        await self.registry.stop()
        for task in list(self._tasks):
            task.cancel()

    # ----------------------------------------------------------------- alerts

    def apply_alerts(self, d: Draft, payload: AMPayload, fresh: list[AMAlert]) -> None:
        now = d.now
        if payload.truncatedAlerts:
            # Alertmanager's max_alerts cut some alerts out of this delivery: they never reach
            # us, so say so where an operator will look.
            log.warning("webhook from group %s: %d alerts truncated (raise max_alerts)",
                        payload.groupKey, payload.truncatedAlerts)
            d.event("alerts-truncated", count=payload.truncatedAlerts, group=payload.groupKey)
        for a in fresh:
            fp = alert_fingerprint(a)
            d.tx.dedup.add(dedup_key(a))
            action = a.labels.get("action")
            name = a.labels.get("worker")
            info = {"status": a.status, "action": action, "alertname": a.labels.get("alertname"),
                    "fingerprint": fp, "startsAt": a.startsAt,
                    "summary": a.annotations.get("summary")}
            if a.status == "firing":
                with contextlib.suppress(ValueError):
                    delay = now - datetime.fromisoformat(a.startsAt).timestamp()
                    if delay >= 0:
                        self.metrics.alert_delay.observe(delay)
            if action not in ("failover", "drain", "notify") or not name:
                d.event("alert-ignored", worker=name, why="no worker/action label", **info)
                continue
            if name not in self.worker_by_name:
                d.event("alert-ignored", worker=name, why="unknown worker", **info)
                continue
            d.event("alert", worker=name, **info)
            if action == "notify":
                continue
            row = d.worker(name)
            drained_before = self.views(d)[name].draining
            if a.status == "firing":
                d.tx.alerts_del.discard(fp)
                d.tx.alerts_add[fp] = (name, action)
            else:
                d.tx.alerts_add.pop(fp, None)
                if fp in self.alerts:
                    d.tx.alerts_del.add(fp)
            holding = [f for f, (w, act) in d.alerts().items() if w == name and act == action]
            if action == "failover":
                if a.status == "firing" and row.state != P.DOWN:
                    d.set_worker(replace(row, state=P.DOWN, since=now))
                    d.event("worker-state", worker=name, **{"from": row.state, "to": P.DOWN},
                            cause=info["alertname"])
                    self.metrics.failovers.labels(worker=name).inc()
                elif a.status == "resolved" and row.state == P.DOWN and not holding:
                    d.set_worker(replace(row, state=P.RECOVERING, since=now))
                    d.event("worker-state", worker=name,
                            **{"from": P.DOWN, "to": P.RECOVERING}, cause=info["alertname"],
                            hold_down_seconds=self.settings.hold_down_seconds)
            else:  # drain
                now_drained = row.drain_admin or bool(holding)
                if drained_before != now_drained:
                    d.worker_changed.add(name)
                    d.event("drain" if now_drained else "undrain", worker=name,
                            cause=info["alertname"])

    # ----------------------------------------------------------------- admin

    def set_drain(self, d: Draft, name: str, drain: bool) -> None:
        row = d.worker(name)
        before = self.views(d)[name].draining
        if drain:
            d.set_worker(replace(row, drain_admin=True))
        else:
            d.set_worker(replace(row, drain_admin=False))
            # Undrain overrides a firing drain alert too: the operator has the last word.
            for fp, (w, act) in d.alerts().items():
                if w == name and act == "drain":
                    d.tx.alerts_del.add(fp)
        if before != drain:
            d.event("drain" if drain else "undrain", worker=name, cause="admin")

    # ----------------------------------------------------------------- client reports

    def client_report(self, d: Draft, name: str, ev: Any) -> None:
        if isinstance(ev, ProbeEvent):
            self._probe(d, name, ev)
        elif isinstance(ev, SwitchEvent):
            self._switch(d, name, ev)
        elif isinstance(ev, AppliedEvent):
            a = self.assignments.get(name)
            if a is not None and a.version == ev.version:
                self.metrics.apply_latency.observe(max(0.0, d.now - a.since))
            d.event("client-applied", worker=ev.worker, client=name, version=ev.version)
        elif isinstance(ev, RejectedEvent):
            d.event("client-rejected", worker=ev.worker, client=name, version=ev.version,
                    reason=ev.reason[:500])
            if ev.worker in self.worker_by_name:
                d.mark_unusable(name, ev.worker, usable=False)
                a = d.assignment(name)
                if a is not None and a.worker != ev.worker:
                    # Already elsewhere: still tell the client where it should be.
                    d.assign_reason[name] = "client-rejected"

    def probe_unremarkable(self, name: str, ev: ProbeEvent) -> bool:
        """Record a probe report in memory if it changes nothing durable; True when it did.

        False (and nothing recorded) when the client's up/down view changed or a worker unusable
        for it answers again: then the report goes through `change()` like any other."""
        results = {w: Probe(p.up, p.rtt_ms, p.loss) for w, p in ev.workers.items()
                   if w in self.worker_by_name}
        prev = self.probes.get(name)
        if prev is None or {w: p.up for w, p in prev[1].items()} != {
                w: p.up for w, p in results.items()}:
            return False
        unusable = self.unusable.get(name)
        if unusable and any(p.up and w in unusable for w, p in results.items()):
            return False
        self.probes[name] = (time.time(), results)
        return True

    def _probe(self, d: Draft, name: str, ev: ProbeEvent) -> None:
        results = {w: Probe(p.up, p.rtt_ms, p.loss) for w, p in ev.workers.items()
                   if w in self.worker_by_name}
        prev = self.probes.get(name)
        self.probes[name] = (d.now, results)
        up = sorted(w for w, p in results.items() if p.up)
        down = sorted(w for w, p in results.items() if not p.up)
        if prev is None or {w: p.up for w, p in prev[1].items()} != {
                w: p.up for w, p in results.items()}:
            d.event("client-probe", client=name, up=up, down=down)
        for w in up:
            if w in d.unusable(name):
                d.mark_unusable(name, w, usable=True)

    def _switch(self, d: Draft, name: str, ev: SwitchEvent) -> None:
        self.metrics.switches.labels(client=name).inc()
        d.event("client-switch", worker=ev.to_worker, client=name, from_worker=ev.from_worker,
                to_worker=ev.to_worker, reason=ev.reason[:500], elapsed_ms=ev.elapsed_ms)
        if ev.from_worker in self.worker_by_name and ev.from_worker != ev.to_worker:
            d.mark_unusable(name, ev.from_worker, usable=False)
        if ev.to_worker not in self.worker_by_name:
            d.assign_reason[name] = "switch-refused"
            return
        d.mark_unusable(name, ev.to_worker, usable=True)
        cv = self.client_view(name, d)
        a = d.assignment(name)
        cur = a.worker if a else None
        current = {c: (x.worker if (x := d.assignment(c)) else None)
                   for c in self.client_by_name}
        if P.accept_switch(cv, ev.to_worker, cur, self.views(d), current):
            if cur != ev.to_worker:
                views = self.views(d)
                version = (a.version if a else 0) + 1
                d.tx.assignments[name] = AssignmentRow(
                    name, ev.to_worker, P.backups(cv, ev.to_worker, views), version,
                    P.R_SWITCH, d.now)
                d.event("move", worker=ev.to_worker, client=name, from_worker=cur,
                        to_worker=ev.to_worker, version=version, reason=P.R_SWITCH)
        else:
            d.assign_reason[name] = "switch-refused"


def alert_fingerprint(a: AMAlert) -> str:
    if a.fingerprint:
        return a.fingerprint
    # Alertmanager always sends one; for hand-made payloads derive it from the labels.
    raw = json.dumps(sorted(a.labels.items()))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def dedup_key(a: AMAlert) -> str:
    return f"{alert_fingerprint(a)}|{a.status}|{a.startsAt}"


# --------------------------------------------------------------------------- HTTP helpers


class ApiError(Exception):
    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None):
        self.status, self.detail, self.headers = status, detail, headers


def unauthorized(why: str = "missing or wrong bearer token") -> ApiError:
    return ApiError(401, why, {"WWW-Authenticate": "Bearer"})


def bearer(request: Request) -> str | None:
    h = request.headers.get("authorization", "")
    scheme, _, token = h.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _check_length(length: str | None) -> None:
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, "bad Content-Length") from None
        if n > MAX_BODY:
            raise ApiError(413, f"body larger than {MAX_BODY} bytes")


async def read_json(request: Request) -> Any:
    _check_length(request.headers.get("content-length"))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    return parse_json(body)


async def read_json_asgi(receive: Receive, length: str | None) -> Any:
    """read_json for the ASGI fast path (no Request object)."""
    _check_length(length)
    body = bytearray()
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ApiError(400, "the client went away mid-body")
        body += msg.get("body", b"")
        if len(body) > MAX_BODY:
            raise ApiError(413, f"body larger than {MAX_BODY} bytes")
        if not msg.get("more_body", False):
            return parse_json(body)


def parse_json(body: bytes | bytearray) -> Any:
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and they would poison the event log.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def validation_detail(exc: ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    errs = exc.errors(include_url=False, include_context=False, include_input=False) \
        if isinstance(exc, ValidationError) else exc.errors()
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in errs]


# --------------------------------------------------------------------------- SSE


class SSEResponse(Response):
    """An SSE stream written straight to ASGI: one coroutine and one tiny disconnect watcher per
    stream (StreamingResponse would add a task group per stream; this stays lean at 10,000)."""

    def __init__(self, st: AppState, client: str, last_id: int | None):
        super().__init__(status_code=200)
        self.st, self.client, self.last_id = st, client, last_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        st, hub = self.st, self.st.hub
        sub = hub.subscribe(self.client)
        hub.streams_open += 1

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    sub.close()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no"),
            ]})
            sent = self.last_id if self.last_id is not None else -1
            a = st.assignments.get(self.client)
            if a is not None and a.version > sent:
                await send(_sse_chunk(st.assignment_json(a)))
                sent = a.version
            else:
                await send({"type": "http.response.body", "body": b": connected\n\n",
                            "more_body": True})
            while not sub.closed:
                await sub.wait(KEEPALIVE_SECONDS)
                if sub.closed:
                    break
                if not sub.pending:
                    await send({"type": "http.response.body", "body": b": keepalive\n\n",
                                "more_body": True})
                    continue
                while sub.pending:
                    item, t0 = sub.pending.popleft()
                    if item["version"] > sent:
                        await send(_sse_chunk(item))
                        sent = item["version"]
                        hub.observe("sse", t0)
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        finally:
            hub.streams_open -= 1
            hub.unsubscribe(sub)
            watcher.cancel()


def client_auth_error(s: AppState, token: str | None, name: str) -> ApiError | None:
    """None when `token` may use client `name`'s endpoints (its own token, or admin)."""
    if token_matches(token, s.settings.admin_token_sha256):
        return None if name in s.client_by_name else ApiError(404, f"no client named {name!r}")
    c = s.client_by_name.get(name)
    if c is None or not token_matches(token, c.token_sha256):
        return unauthorized()
    return None


def parse_last_id(header: str | None, query: int | str | None) -> int | None:
    raw = header if header is not None else query
    if raw is None:
        return None
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ApiError(400, "Last-Event-ID must be an assignment version") from None


async def client_event(s: AppState, name: str, raw: Any) -> None:
    """Validate and apply one client report. Raises ApiError (4xx) or StoreError (503)."""
    try:
        ev = ClientEvent.validate_python(raw)
    except ValidationError as exc:
        raise ApiError(422, validation_detail(exc)) from None
    s.metrics.client_events.labels(type=ev.type).inc()
    if isinstance(ev, ProbeEvent) and s.probe_unremarkable(name, ev):
        return  # the usual case: memory only, no lock, no transaction
    await s.change(lambda d: s.client_report(d, name, ev), durable=False)


async def longpoll(s: AppState, name: str, after: int | None, wait: float) -> dict[str, Any]:
    a = s.assignments[name]
    wait = min(wait, MAX_WAIT)
    if after is None or a.version > after or wait <= 0:
        return s.assignment_json(a)
    sub = s.hub.subscribe(name)
    deadline = time.monotonic() + wait
    try:
        while not sub.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await sub.wait(left)
            while sub.pending:
                item, t0 = sub.pending.popleft()
                if item["version"] > after:
                    s.hub.observe("longpoll", t0)
                    return item
    finally:
        s.hub.unsubscribe(sub)
    return s.assignment_json(s.assignments[name])


def _query_number(query: dict[str, list[str]], key: str, kind: type) -> Any:
    values = query.get(key)
    if not values:
        return None
    try:
        value = kind(values[0])
    except ValueError:
        value = None
    if value is None or (kind is float and not value >= 0) or value != value:
        what = "an integer" if kind is int else "a number >= 0"
        raise ApiError(422, [{"loc": ["query", key], "msg": f"Input should be {what}"}])
    return value


ASSIGNMENT_PATH = re.compile(r"^/v1/clients/([^/]+)/assignment$")
STREAM_PATH = re.compile(r"^/v1/clients/([^/]+)/assignment/stream$")
EVENTS_PATH = re.compile(r"^/v1/clients/([^/]+)/events$")


class SSEFront:
    """ASGI middleware that serves the per-client hot paths itself, before FastAPI's routing,
    dependency and exception layers: the SSE stream and the long-poll (an idle one then holds a
    few small frames instead of a deep stack, which keeps 10,000 of them well inside the memory
    goal) and the client reports (every switcher posts one every few seconds)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope["method"]
        m = None
        if method == "GET":
            m = STREAM_PATH.match(path) or ASSIGNMENT_PATH.match(path)
        elif method == "POST":
            m = EVENTS_PATH.match(path)
        st = getattr(scope["app"].state, "st", None) if m else None
        if m is None or st is None:
            await self.app(scope, receive, send)
            return
        name = m.group(1)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" and token.strip() else None
        try:
            err = client_auth_error(st, token, name)
            if err is not None:
                raise err
            if method == "POST":
                raw = await read_json_asgi(receive, headers.get("content-length"))
                await client_event(st, name, raw)
                resp = JSONResponse({"accepted": True}, status_code=202)
            elif m.re is ASSIGNMENT_PATH:
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                after = _query_number(query, "after", int)
                wait = _query_number(query, "wait", float) or 0.0
                resp = JSONResponse(await longpoll(st, name, after, wait))
            else:
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                last = parse_last_id(headers.get("last-event-id"),
                                     (query.get("last_event_id") or [None])[0])
                resp = SSEResponse(st, name, last)
        except ApiError as exc:
            resp = JSONResponse({"detail": exc.detail}, status_code=exc.status,
                                headers=exc.headers)
        except StoreError as exc:
            log.error("%s", exc)
            resp = JSONResponse({"detail": "state store unavailable; retry"}, status_code=503,
                                headers={"Retry-After": "1"})
        await resp(scope, receive, send)


def _sse_chunk(a: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(a, separators=(",", ":"))
    body = f"id: {a['version']}\nevent: assignment\ndata: {data}\n\n".encode()
    return {"type": "http.response.body", "body": body, "more_body": True}


# --------------------------------------------------------------------------- the app


def create_app(fleet: Fleet, db_path: str) -> FastAPI:
    holder: dict[str, AppState] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(db_path)
        st = AppState(fleet, store)
        holder["st"] = st
        app.state.st = st
        await st.start()
        log.info("responder ready: %d workers, %d clients, db %s", len(fleet.workers),
                 len(fleet.clients), db_path)
        try:
            yield
        finally:
            await st.stop()
            store.close()

    app = FastAPI(
        title="wg-failover responder",
        middleware=[Middleware(SSEFront)],
        version="1",
        description="Alertmanager webhook in, worker state and client assignments out. "
                    "Bearer tokens: alert (POST /v1/alerts), admin (drain/undrain, events, any "
                    "client), each client's own (its endpoints only).",
        lifespan=lifespan,
    )

    def st() -> AppState:
        return holder["st"]

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _req_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc)}, status_code=422)

    @app.exception_handler(StoreError)
    async def _store_error(_request: Request, exc: StoreError) -> JSONResponse:
        log.error("%s", exc)
        return JSONResponse({"detail": "state store unavailable; retry"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    def require_admin(request: Request) -> None:
        if not token_matches(bearer(request), st().settings.admin_token_sha256):
            raise unauthorized()

    def require_client(request: Request, name: str) -> None:
        err = client_auth_error(st(), bearer(request), name)
        if err is not None:
            raise err

    # --------------------------------------------------------------- probes

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        ok = "st" in holder and st().ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(generate_latest(st().metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/targets", tags=["ops"])
    async def targets() -> list[dict[str, Any]]:
        out = []
        for w in st().fleet.workers:
            labels = {"worker": w.name}
            if w.region:
                labels["region"] = w.region
            out.append({"targets": [w.exporter], "labels": labels})
        return out

    # --------------------------------------------------------------- webhook

    @app.post("/v1/alerts", tags=["alertmanager"], openapi_extra=_body_doc("AMPayload"))
    async def alerts(request: Request) -> JSONResponse:
        s = st()
        m = s.metrics.deliveries
        if not token_matches(bearer(request), s.settings.alert_token_sha256):
            m.labels(outcome="unauthorized").inc()
            raise unauthorized()
        try:
            raw = await read_json(request)
            payload = AMPayload.model_validate(raw)
        except ApiError:
            m.labels(outcome="invalid").inc()
            raise
        except ValidationError as exc:
            m.labels(outcome="invalid").inc()
            raise ApiError(422, validation_detail(exc)) from None

        def build(d: Draft) -> tuple[int, int]:
            keys = [dedup_key(a) for a in payload.alerts]
            seen = s.store.seen(keys)
            fresh, batch = [], set()
            for a, k in zip(payload.alerts, keys, strict=True):
                if k in seen or k in batch:
                    continue
                batch.add(k)
                fresh.append(a)
            s.apply_alerts(d, payload, fresh)
            return len(fresh), len(payload.alerts) - len(fresh)

        try:
            fresh, dups = await s.change(build)
        except StoreError:
            m.labels(outcome="error").inc()
            raise
        if dups:
            s.metrics.duplicate_alerts.inc(dups)
        outcome = "duplicate" if payload.alerts and not fresh else "applied"
        m.labels(outcome=outcome).inc()
        return JSONResponse({"status": outcome, "alerts": len(payload.alerts), "applied": fresh,
                             "duplicates": dups})

    # --------------------------------------------------------------- workers

    @app.get("/v1/workers", tags=["workers"])
    async def workers() -> list[dict[str, Any]]:
        s = st()
        return [s.worker_json(w.name) for w in s.fleet.workers]

    async def _drain(request: Request, name: str, drain: bool) -> dict[str, Any]:
        require_admin(request)
        s = st()
        if name not in s.worker_by_name:
            raise ApiError(404, f"no worker named {name!r}")
        await s.change(lambda d: s.set_drain(d, name, drain))
        return s.worker_json(name)

    @app.post("/v1/workers/{name}/drain", tags=["workers"])
    async def drain(request: Request, name: str) -> dict[str, Any]:
        return await _drain(request, name, True)

    @app.post("/v1/workers/{name}/undrain", tags=["workers"])
    async def undrain(request: Request, name: str) -> dict[str, Any]:
        return await _drain(request, name, False)

    # --------------------------------------------------------------- clients

    @app.get("/v1/clients/{name}/assignment", tags=["clients"])
    async def assignment(
        request: Request, name: str,
        after: Annotated[int | None, Query(description="answer once version > after")] = None,
        wait: Annotated[float, Query(ge=0, description="seconds to wait (max 60)")] = 0,
    ) -> dict[str, Any]:
        """Long-poll: with `after`, answers once version > after or `wait` seconds passed
        (clamped to 60), 200 with the current assignment either way. Served by `SSEFront`."""
        require_client(request, name)
        return await longpoll(st(), name, after, wait)

    @app.get("/v1/clients/{name}/assignment/stream", tags=["clients"],
             response_class=Response)
    async def stream(request: Request, name: str, last_event_id: int | None = None) -> Response:
        """Server-Sent Events: `id: VERSION`, `event: assignment`, `data: JSON`; resumes from
        the `Last-Event-ID` header (or `last_event_id`); `: keepalive` every 15 s.

        Served by `SSEFront` (this route documents it and is the fallback)."""
        require_client(request, name)
        return SSEResponse(st(), name, parse_last_id(request.headers.get("last-event-id"),
                                                     last_event_id))

    @app.post("/v1/clients/{name}/events", tags=["clients"], status_code=202,
              openapi_extra=_body_doc("ClientEvent"))
    async def client_events(request: Request, name: str) -> JSONResponse:
        """Served by `SSEFront` (the hot path: every switcher reports every few seconds); this
        route documents it and is the fallback."""
        require_client(request, name)
        await client_event(st(), name, await read_json(request))
        return JSONResponse({"accepted": True}, status_code=202)

    @app.get("/v1/clients/{name}", tags=["clients"])
    async def client(request: Request, name: str) -> dict[str, Any]:
        require_client(request, name)
        s = st()
        events = await asyncio.to_thread(s.store.events, 0, RECENT_EVENTS, name, True)
        probe = s.probes.get(name)
        return {
            "assignment": s.assignment_json(s.assignments[name]),
            "unusable": sorted(s.unusable.get(name, set())),
            "probes": None if probe is None else {
                "time": iso(probe[0]),
                "workers": {w: {"up": p.up, "rtt_ms": p.rtt_ms, "loss": p.loss}
                            for w, p in probe[1].items()},
            },
            "events": [_event_json(e) for e in events],
            "delivery": s.registry.client_status(name),
        }

    @app.get("/v1/events", tags=["ops"])
    async def events(
        request: Request,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> dict[str, Any]:
        require_admin(request)
        rows = await asyncio.to_thread(st().store.events, after, limit)
        out = [_event_json(e) for e in rows]
        return {"events": out, "last_id": out[-1]["id"] if out else after}

    def openapi() -> dict[str, Any]:
        # Bodies are parsed by hand (size limit, 400 vs 422): add their schemas to the docs.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, adapter in (("AMPayload", TypeAdapter(AMPayload)),
                                  ("ClientEvent", ClientEvent)):
                js = adapter.json_schema(ref_template="#/components/schemas/{model}")
                comps.update(js.pop("$defs", {}))
                comps[name] = js
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _body_doc(model: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model}"}}}}}


def _event_json(e: dict[str, Any]) -> dict[str, Any]:
    return {"id": e["id"], "time": iso(e["ts"]), "ts": e["ts"], "kind": e["kind"],
            "worker": e["worker"], "client": e["client"], "data": e["data"]}
