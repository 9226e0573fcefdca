"""A change in the making: the `Draft` that intake functions read and write, and `replan`.

Intake functions (`responder/intake/`) never touch the served state. They read through a Draft,
which shows the committed state with the change so far applied, and write into it: rows into
`draft.tx` (what the store commits in one transaction) and memory-only effects into
`draft.after` (probe results, metric observations). `ResponderState.change` applies both only
once the commit succeeded, so a failed commit (503) leaves memory and metrics as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

from wg_failover.fleet import Client, Fleet, ResponderSettings, Worker
from wg_failover.wire import ProbeResult

from . import latency, planner
from .intake.suspect import suspects_of
from .store import AssignmentRow, Event, FleetDoc, Tx, WorkerRow


class ProbeRecord(NamedTuple):
    """A client's latest probe report: when, and each fleet worker's result."""

    time: float
    workers: Mapping[str, ProbeResult]


class Committed(Protocol):
    """The committed, served state a Draft reads (`ResponderState` is one)."""

    @property
    def fleet(self) -> Fleet: ...
    @property
    def settings(self) -> ResponderSettings: ...
    @property
    def worker_by_name(self) -> Mapping[str, Worker]: ...
    @property
    def client_by_name(self) -> Mapping[str, Client]: ...
    @property
    def prefs(self) -> Mapping[str, tuple[str, ...]]: ...
    @property
    def workers(self) -> Mapping[str, WorkerRow]: ...
    @property
    def assignments(self) -> Mapping[str, AssignmentRow]: ...
    @property
    def retired(self) -> Mapping[str, AssignmentRow]: ...  # clients that left the fleet
    @property
    def alerts(self) -> Mapping[str, tuple[str, str]]: ...
    @property
    def unusable(self) -> Mapping[str, set[str]]: ...
    @property
    def probes(self) -> Mapping[str, ProbeRecord]: ...
    @property
    def unplaceable(self) -> Sequence[str]: ...
    @property
    def clock(self) -> Callable[[], float]: ...  # unix time


@dataclass
class AfterCommit:
    """Memory and metric updates of a change that wait for its commit."""

    probes: dict[str, ProbeRecord] = field(default_factory=dict)
    failovers: list[str] = field(default_factory=list)  # workers marked down
    switches: list[str] = field(default_factory=list)  # clients that switched on their own
    alert_delays: list[float] = field(default_factory=list)  # startsAt -> delivered, seconds
    apply_latencies: list[float] = field(default_factory=list)  # commit -> `applied`, seconds
    applied: dict[str, int] = field(default_factory=dict)  # client -> version it applied


_NONE: frozenset[str] = frozenset()  # most clients' unusable set: shared, never built per client


def prefs_of(fleet: Fleet) -> dict[str, tuple[str, ...]]:
    """Every client's workers in preference order (its list, else every worker in fleet order)."""
    names = tuple(w.name for w in fleet.workers)
    return {c.name: tuple(c.workers) if c.workers is not None else names for c in fleet.clients}


def worker_views(fleet: Fleet, row_of: Callable[[str], WorkerRow],
                 alerts: Mapping[str, tuple[str, str]],
                 suspects: Collection[str] = (),
                 fled: Collection[str] = ()) -> dict[str, planner.WorkerView]:
    """The planner's view of every fleet worker (fleet order): its state, and drained when the
    admin drained it or a drain alert is firing for it."""
    drained_by_alert = {w for w, action in alerts.values() if action == "drain"}
    views = {}
    for w in fleet.workers:
        row = row_of(w.name)
        views[w.name] = planner.WorkerView(
            w.name, row.state, row.drain_admin or w.name in drained_by_alert, w.capacity,
            suspect=w.name in suspects, region=w.region, fled=w.name in fled)
    return views


class Draft:
    """A pending change over the committed state: reads see the change, writes go to `tx`."""

    def __init__(self, committed: Committed):
        self.committed = committed
        self.fleet = committed.fleet
        self.settings = committed.settings
        self.worker_by_name = committed.worker_by_name
        self.client_by_name = committed.client_by_name
        self.prefs = committed.prefs
        self.fleet_changed = False
        self.tx = Tx()
        self.after = AfterCommit()
        self.worker_changed: set[str] = set()
        self.now = committed.clock()
        self.assign_reason: dict[str, str] = {}  # client -> reason for a forced new version

    # ----------------------------------------------------------------- reads

    def knows_worker(self, name: str | None) -> bool:
        return name in self.worker_by_name

    def worker(self, name: str) -> WorkerRow:
        return self.tx.workers.get(name) or self.committed.workers[name]

    def alerts(self) -> dict[str, tuple[str, str]]:
        out = {k: v for k, v in self.committed.alerts.items() if k not in self.tx.alerts_del}
        out.update(self.tx.alerts_add)
        return out

    def unusable(self, client: str) -> AbstractSet[str]:
        s: AbstractSet[str] = self.committed.unusable.get(client, _NONE)
        if self.tx.unusable_add or self.tx.unusable_del:
            s = (set(s) | {w for c, w in self.tx.unusable_add if c == client}) \
                - {w for c, w in self.tx.unusable_del if c == client}
        return s

    def assignment(self, client: str) -> AssignmentRow | None:
        return self.tx.assignments.get(client) or self.committed.assignments.get(client)

    def current_workers(self) -> dict[str, str | None]:
        """Every fleet client's worker, with this change's moves."""
        return {c.name: (a.worker if (a := self.assignment(c.name)) else None)
                for c in self.fleet.clients}

    def views(self) -> dict[str, planner.WorkerView]:
        return worker_views(self.fleet, self.worker, self.alerts(), self.suspects(),
                            suspects_of(self.committed).fleeing(
                                self.now, self.settings.suspect_window_seconds))

    def suspects(self) -> frozenset[str]:
        """Workers marked suspect now (intake/suspect.py)."""
        def state_of(name: str) -> str:
            row = self.tx.workers.get(name) or self.committed.workers.get(name)
            return row.state if row is not None else planner.DOWN

        return suspects_of(self.committed).active(self.now, state_of)

    def client_view(self, name: str) -> planner.ClientView:
        unusable = self.unusable(name)
        return planner.ClientView(name, self.prefs[name],
                                  frozenset(unusable) if unusable else _NONE)

    def last_probe(self, client: str) -> ProbeRecord | None:
        return self.after.probes.get(client) or self.committed.probes.get(client)

    def plan_inputs_changed(self) -> bool:
        t = self.tx
        return bool(t.workers or t.alerts_add or t.alerts_del or t.unusable_add
                    or t.unusable_del or t.assignments or self.assign_reason
                    or self.worker_changed or self.fleet_changed)

    # ----------------------------------------------------------------- writes

    def set_fleet(self, fleet: Fleet, doc: FleetDoc) -> None:
        """Serve `fleet` (stored as `doc`) from this change on. A worker new to the served fleet
        starts up and undrained, even if it was in it before (its old row is history)."""
        self.fleet = fleet
        self.settings = fleet.responder
        self.worker_by_name = {w.name: w for w in fleet.workers}
        self.client_by_name = {c.name: c for c in fleet.clients}
        self.prefs = prefs_of(fleet)
        self.tx.fleet = doc
        self.fleet_changed = True
        for w in fleet.workers:
            if w.name not in self.committed.worker_by_name:
                self.set_worker(WorkerRow(w.name, planner.UP, self.now))
                self.event("worker-added", worker=w.name)

    def set_worker(self, row: WorkerRow) -> None:
        self.tx.workers[row.name] = row
        self.worker_changed.add(row.name)

    def set_worker_state(self, name: str, to: str, cause: str | None, **data: Any) -> None:
        """Move a worker to state `to` (up | down | recovering), with its `worker-state` event."""
        row = self.worker(name)
        self.set_worker(replace(row, state=to, since=self.now))
        self.event("worker-state", worker=name, **{"from": row.state, "to": to}, cause=cause,
                   **data)
        if to == planner.DOWN:
            self.after.failovers.append(name)

    def mark_unusable(self, client: str, worker: str, usable: bool) -> None:
        key = (client, worker)
        committed = self.committed.unusable.get(client, set())
        if usable:
            self.tx.unusable_add.discard(key)
            if worker in committed:
                self.tx.unusable_del.add(key)
        else:
            self.tx.unusable_del.discard(key)
            if worker not in committed:
                self.tx.unusable_add.add(key)

    def event(self, kind: str, worker: str | None = None, client: str | None = None,
              **data: Any) -> None:
        self.tx.events.append(Event(kind, worker, client, data, self.now))


def replan(d: Draft) -> planner.Plan:
    """Run the planner over the draft and write the new assignment versions into it: a new
    version when a client moves, when its backups change, or when an intake function asked for
    one (`assign_reason`)."""
    views = d.views()
    backups_of = planner.backup_lists(views)
    client_views = [d.client_view(c.name) for c in d.fleet.clients]
    current = d.current_workers()
    figures = (latency.memory_of(d.committed).inputs(current, d.now)
               if d.settings.placement == "latency" else None)
    plan = planner.plan(views, client_views, current, preempt=d.settings.preempt,
                        preempt_batch=d.settings.preempt_batch_size, latency=figures,
                        rule=latency.rule_of(d.settings), now=d.now)
    for cv in client_views:
        # A client that comes back continues its versions (its switcher may remember them).
        old = d.assignment(cv.name) or d.committed.retired.get(cv.name)
        move = plan.moves.get(cv.name)
        worker = move.to_worker if move else current[cv.name]
        backups = backups_of(cv, worker)
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
    if plan.unplaceable != list(d.committed.unplaceable):
        d.event("unplaceable", clients=plan.unplaceable[:100], count=len(plan.unplaceable))
    committed = d.committed.assignments
    moved = len([1 for c, a in d.tx.assignments.items()
                 if (o := committed.get(c)) is None or o.worker != a.worker])
    if d.tx.assignments:
        d.event("plan", moved=moved, updated=len(d.tx.assignments),
                unplaceable=len(plan.unplaceable))
    return plan
