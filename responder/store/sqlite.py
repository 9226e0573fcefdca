"""The embedded backend: SQLite in WAL mode, one file.

Tables: workers, assignments, active alerts, unusable workers per client, an append-only event
log, delivery de-duplication keys, and the outbound webhooks' delivery log. Every change is ONE
transaction (`commit(tx)`), and the responder applies it to memory only after COMMIT returns.
With WAL and synchronous=FULL, killing the process at any moment keeps either all of a change or
none of it, and a webhook is only answered 200 once its change is on disk.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .base import AssignmentRow, DeliveryLog, Loaded, StoreError, Tx, WorkerRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,            -- up | down | recovering
    since REAL NOT NULL,            -- unix time of the last state change
    drain_admin INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS active_alerts (
    fingerprint TEXT PRIMARY KEY,   -- firing alerts that hold a worker down or drained
    worker TEXT NOT NULL,
    action TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    client TEXT PRIMARY KEY,
    worker TEXT,
    backups TEXT NOT NULL,          -- JSON list
    version INTEGER NOT NULL,       -- per client, only grows
    reason TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS unusable (
    client TEXT NOT NULL,
    worker TEXT NOT NULL,
    PRIMARY KEY (client, worker)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    worker TEXT,
    client TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_client ON events (client, id);
CREATE TABLE IF NOT EXISTS dedup (key TEXT PRIMARY KEY, ts REAL NOT NULL);
"""

DELIVERY_SCHEMA = """
CREATE TABLE IF NOT EXISTS notify_webhook (
    target TEXT NOT NULL,           -- client:NAME or hook:NAME
    client TEXT NOT NULL,
    delivered INTEGER NOT NULL,     -- newest version the target answered 2xx to
    ts REAL NOT NULL,
    PRIMARY KEY (target, client)
);
"""

DEDUP_KEEP_SECONDS = 30 * 86400


class SQLiteStore:
    """`Store` on one SQLite file."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 2000):
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # One connection, used by one thread at a time (the app serialises writes with a lock).
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        # Reads of the event log come from the event loop while a commit may be running in a
        # worker thread: a second connection (WAL lets readers and one writer work together).
        self.reader = sqlite3.connect(self.path, check_same_thread=False)
        self.reader.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        self.reader_lock = threading.Lock()  # readers run in worker threads, several at once

    def close(self) -> None:
        self.reader.close()
        self.db.close()

    def load(self) -> Loaded:
        query = self.db.execute
        workers = {r[0]: WorkerRow(r[0], r[1], r[2], bool(r[3]))
                   for r in query("SELECT name, state, since, drain_admin FROM workers")}
        assignments = {
            r[0]: AssignmentRow(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5])
            for r in query("SELECT client, worker, backups, version, reason, since "
                           "FROM assignments")
        }
        alerts = {r[0]: (r[1], r[2])
                  for r in query("SELECT fingerprint, worker, action FROM active_alerts")}
        unusable: dict[str, set[str]] = {}
        for c, w in query("SELECT client, worker FROM unusable"):
            unusable.setdefault(c, set()).add(w)
        last = query("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        return Loaded(workers, assignments, alerts, unusable, last)

    def seen(self, keys: list[str]) -> set[str]:
        out: set[str] = set()
        for i in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            part = keys[i:i + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(f"SELECT key FROM dedup WHERE key IN ({marks})", part)
            out |= {r[0] for r in rows}
        return out

    def commit(self, tx: Tx, durable: bool = True) -> list[int]:
        """Write `tx` in one transaction; returns the new events' ids. Raises StoreError.

        `durable=False` skips the fsync at commit (synchronous=NORMAL): still atomic and safe
        against the process being killed, but an OS crash may lose the last commits. Used for
        the high-rate client reports; webhooks and admin changes are always durable.
        """
        if tx.empty():
            return []
        try:
            self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            return self._write(tx)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise StoreError(f"cannot commit to {self.path}: {exc}") from exc
        except BaseException:
            # Anything else mid-transaction (text UTF-8 cannot encode, a bug) must not leave
            # the transaction open: every later commit would fail with 503.
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise

    def _write(self, tx: Tx) -> list[int]:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "INSERT INTO workers (name, state, since, drain_admin) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET state=excluded.state, since=excluded.since, "
            "drain_admin=excluded.drain_admin",
            [(w.name, w.state, w.since, int(w.drain_admin)) for w in tx.workers.values()],
        )
        self.db.executemany(
            "INSERT INTO assignments (client, worker, backups, version, reason, since) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(client) DO UPDATE SET worker=excluded.worker, "
            "backups=excluded.backups, version=excluded.version, reason=excluded.reason, "
            "since=excluded.since",
            [(a.client, a.worker, json.dumps(a.backups), a.version, a.reason, a.since)
             for a in tx.assignments.values()],
        )
        self.db.executemany("DELETE FROM active_alerts WHERE fingerprint = ?",
                            [(fp,) for fp in tx.alerts_del])
        self.db.executemany(
            "INSERT OR REPLACE INTO active_alerts (fingerprint, worker, action) VALUES (?, ?, ?)",
            [(fp, w, a) for fp, (w, a) in tx.alerts_add.items()],
        )
        self.db.executemany("DELETE FROM unusable WHERE client = ? AND worker = ?",
                            sorted(tx.unusable_del))
        self.db.executemany("INSERT OR IGNORE INTO unusable (client, worker) VALUES (?, ?)",
                            sorted(tx.unusable_add))
        now = time.time()
        self.db.executemany("INSERT OR IGNORE INTO dedup (key, ts) VALUES (?, ?)",
                            [(k, now) for k in tx.dedup])
        ids = []
        for e in tx.events:
            cur = self.db.execute(
                "INSERT INTO events (ts, kind, worker, client, data) VALUES (?, ?, ?, ?, ?)",
                # Not ensure_ascii: text with a lone surrogate then fails here (UTF-8 cannot
                # encode it) instead of being stored as an escape that breaks every read.
                (e.ts, e.kind, e.worker, e.client,
                 json.dumps(e.data, sort_keys=True, ensure_ascii=False)))
            ids.append(int(cur.lastrowid))
        self.db.execute("COMMIT")
        return ids

    def open_delivery_log(self) -> DeliveryLog:
        return SQLiteDeliveryLog(self.path)

    def prune_dedup(self, now: float | None = None) -> None:
        cutoff = (now or time.time()) - DEDUP_KEEP_SECONDS
        self.db.execute("DELETE FROM dedup WHERE ts < ?", (cutoff,))

    def events(self, after: int = 0, limit: int = 100, client: str | None = None,
               newest: bool = False) -> list[dict[str, Any]]:
        where, args = "id > ?", [after]
        if client is not None:
            where += " AND client = ?"
            args.append(client)
        order = "DESC" if newest else "ASC"
        with self.reader_lock:
            rows = self.reader.execute(
                f"SELECT id, ts, kind, worker, client, data FROM events WHERE {where} "
                f"ORDER BY id {order} LIMIT ?", [*args, limit],
            ).fetchall()
        if newest:
            rows.reverse()
        return [{"id": r[0], "ts": r[1], "kind": r[2], "worker": r[3], "client": r[4],
                 "data": json.loads(r[5])} for r in rows]


class SQLiteDeliveryLog:
    """The `notify_webhook` table, on its own connection: deliveries are recorded from the
    webhook notifier's tasks, never inside the responder's write transaction."""

    def __init__(self, path: str):
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=5000")
        # No fsync per delivery (WAL + NORMAL survives a killed process; an OS crash may forget
        # the last few, which are then sent again: receivers de-duplicate by version anyway).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(DELIVERY_SCHEMA)

    def load(self) -> dict[tuple[str, str], int]:
        with self.lock:
            rows = self.db.execute("SELECT target, client, delivered FROM notify_webhook")
            return {(t, c): v for t, c, v in rows}

    def record(self, target: str, client: str, version: int) -> None:
        try:
            with self.lock:
                self.db.execute(
                    "INSERT INTO notify_webhook (target, client, delivered, ts) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(target, client) DO UPDATE SET "
                    "delivered=MAX(delivered, excluded.delivered), ts=excluded.ts",
                    (target, client, version, time.time()))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record a webhook delivery: {exc}") from exc

    def close(self) -> None:
        with self.lock:
            self.db.close()
