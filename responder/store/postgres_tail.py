"""The change log that responder replicas tail to serve reads (DESIGN.md, "How it grows past one
machine"; responder/follower.py reads it).

One row, `change_log (change, other)`: every commit that changes what replicas serve bumps
`change` (postgres_tables.write_tx), and `other` too when it touches more than assignments
(workers, alerts, unusable workers, the fleet, enrollment keys); each assignment row carries the
change that wrote it last. The row's lock, held from the bump to the commit, orders those
commits, so one REPEATABLE READ snapshot that reads change N holds exactly the changes up to N:
a replica that knew change M reads the assignments with `change > M` (a scan of the table:
migration 5 in postgres_tables.py says why there is no index) and, only when `other > M`, the
small tables and (when its version moved) the fleet. The commit also sends `NOTIFY
wgfo_changes`: a wake-up for replicas that LISTEN, never needed for correctness (they poll the
row as well).

The row readers here also serve PostgresStore.load (one set of checks for both).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wg_failover.wire import MAX_VERSION

from .base import AssignmentRow, EnrollKeyRow, FleetDoc, WorkerRow
from .sqlite import WORKER_STATES
from .sqlite_faults import check_row, is_name, is_time
from .sqlite_fleet import load_fleet

if TYPE_CHECKING:
    from .postgres import PostgresStore

CHANNEL = "wgfo_changes"

# Appended to postgres_tables.MIGRATIONS. Existing rows carry change 0: a replica starting
# from nothing (-1) reads them all.
MIGRATION = """
    CREATE TABLE change_log (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        change BIGINT NOT NULL,
        other BIGINT NOT NULL
    );
    INSERT INTO change_log (id, change, other) VALUES (1, 0, 0);
    ALTER TABLE assignments ADD COLUMN change BIGINT NOT NULL DEFAULT 0;
    CREATE INDEX assignments_change ON assignments (change);
"""

Query = Callable[..., Any]


def read_workers(q: Query) -> dict[str, WorkerRow]:
    workers = {}
    for name, state, since, drain in q("SELECT name, state, since, drain_admin FROM workers"):
        check_row(is_name(name) and state in WORKER_STATES and is_time(since), "workers", name)
        workers[name] = WorkerRow(name, state, float(since), bool(drain))
    return workers


def read_assignments(q: Query, after: int | None = None) -> dict[str, AssignmentRow]:
    """Every assignment, or (`after`) those a change newer than `after` wrote."""
    sql = "SELECT client, worker, backups, version, reason, since FROM assignments"
    rows = (q(sql) if after is None else q(sql + " WHERE change > %s", (after,))).fetchall()
    out = {}
    # Worker names and backup lists repeat across rows: each is checked and parsed once (a
    # failover rewrites every row; this keeps a 30,000-row read to the client names' checks).
    names: set[str] = set()
    lists: dict[str, list[str] | None] = {}
    for c, w, backups, version, reason, since in rows:
        b = lists.get(backups, False)
        if b is False:
            got = json.loads(backups)
            b = lists[backups] = got if isinstance(got, list) and all(
                isinstance(x, str) and is_name(x) for x in got) else None
        if w is not None and w not in names:
            check_row(is_name(w), "assignments", c)
            names.add(w)
        check_row(b is not None and is_name(c) and isinstance(version, int)
                  and 0 <= version <= MAX_VERSION and isinstance(reason, str)
                  and is_time(since), "assignments", c)
        out[c] = AssignmentRow(c, w, list(b), version, reason, float(since))  # type: ignore[arg-type]
    return out


def read_alerts(q: Query) -> dict[str, tuple[str, str]]:
    return {r[0]: (r[1], r[2]) for r in q("SELECT fingerprint, worker, action FROM active_alerts")}


def read_unusable(q: Query) -> dict[str, set[str]]:
    unusable: dict[str, set[str]] = {}
    for c, w in q("SELECT client, worker FROM unusable"):
        unusable.setdefault(c, set()).add(w)
    return unusable


def read_keys(q: Query) -> dict[str, EnrollKeyRow]:
    """The enrollment keys alone (load_fleet reads them with the fleet, which is big)."""
    keys = {}
    for r in q("SELECT id, sha256, kind, reusable, created, expires, uses, revoked, name, "
               "address FROM enroll_keys"):
        check_row(r[2] in ("client", "worker"), "enroll_keys", r[0])
        keys[r[0]] = EnrollKeyRow(r[0], r[1], r[2], bool(r[3]), float(r[4]), float(r[5]),
                                  int(r[6]), bool(r[7]), r[8], r[9])
    return keys


@dataclass
class Changes:
    """What changed after the change a replica knew (`PostgresStore.changes`)."""

    change: int  # the change this snapshot holds; the caller knows it from now on
    other: int  # the last change that touched more than assignments
    assignments: dict[str, AssignmentRow] = field(default_factory=dict)
    # The small tables, read whole when `other` moved (None: unchanged).
    workers: dict[str, WorkerRow] | None = None
    alerts: dict[str, tuple[str, str]] | None = None
    unusable: dict[str, set[str]] | None = None
    keys: dict[str, EnrollKeyRow] | None = None
    fleet: FleetDoc | None = None  # when its version is not the one the caller knows
    reset: bool = False  # the log went back (a database restored or replaced): everything


def read_changes(store: PostgresStore, change: int, other: int,
                 fleet_version: int) -> Changes:
    """The changes after `change` (-1: everything), in one snapshot. `other` and
    `fleet_version`: what the caller knows of them. Raises StoreError (StoreCorrupt)."""
    with store.snapshot() as conn:
        q = conn.execute
        row = q("SELECT change, other FROM change_log WHERE id = 1").fetchone()
        now, now_other = (int(row[0]), int(row[1])) if row is not None else (0, 0)
        out = Changes(now, now_other)
        if now < change:  # never by commits: a restored or replaced database
            out.reset, change, other, fleet_version = True, -1, -1, -1
        if now == change:
            return out
        out.assignments = read_assignments(q, None if change < 0 else change)
        if now_other > other or change < 0:
            out.workers, out.alerts, out.unusable = read_workers(q), read_alerts(q), \
                read_unusable(q)
            stored = q("SELECT version FROM fleet WHERE id = 1").fetchone()
            if stored is not None and int(stored[0]) != fleet_version:
                out.fleet, out.keys = load_fleet(q, "{}")
            else:
                out.keys = read_keys(q)
        return out

