"""The SQLite store's tables, and the outbound webhooks' delivery log: the newest version each
target accepted, per client (see responder/notify/webhooks.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import TYPE_CHECKING

from .base import StoreError
from .sqlite_faults import reason_of

if TYPE_CHECKING:
    from .sqlite import SQLiteStore

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
CREATE TABLE IF NOT EXISTS fleet (
    id INTEGER PRIMARY KEY CHECK (id = 1),  -- one row: the fleet the responder serves
    version INTEGER NOT NULL,       -- grows with every fleet change
    data TEXT NOT NULL,             -- JSON, wg_failover.fleet.fleet_data()
    enrolled TEXT NOT NULL          -- JSON list of "client:NAME" / "worker:NAME" that joined
);
CREATE TABLE IF NOT EXISTS enroll_keys (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,    -- of the key; the key itself is never stored
    kind TEXT NOT NULL,             -- client | worker
    reusable INTEGER NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    uses INTEGER NOT NULL,
    revoked INTEGER NOT NULL,
    name TEXT,
    address TEXT
);
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


class SQLiteDeliveryLog:
    """The `notify_webhook` table, on its own connection: deliveries are recorded from the
    webhook notifier's tasks, never inside the responder's write transaction. Connects on first
    use, so a store that is read-only at start still starts its notifiers."""

    def __init__(self, store: SQLiteStore):
        self.store = store
        self.lock = threading.Lock()
        self.db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self.store.degraded is not None:
            raise StoreError(f"cannot use the delivery log in {self.store.path}: "
                             f"{self.store.degraded}", self.store.degraded)
        if self.db is None:
            db = sqlite3.connect(self.store.path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA busy_timeout=5000")
                # No fsync per delivery (WAL + NORMAL survives a killed process; an OS crash may
                # forget the last few, which are then sent again: receivers de-duplicate anyway).
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(DELIVERY_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self.db = db
        return self.db

    def load(self) -> dict[tuple[str, str], int]:
        try:
            with self.lock:
                rows = self._conn().execute("SELECT target, client, delivered FROM notify_webhook")
                return {(t, c): v for t, c, v in rows}
        except sqlite3.Error as exc:
            raise self.store._error("cannot read the webhook delivery log of", exc) from None

    def record(self, target: str, client: str, version: int) -> None:
        try:
            with self.lock:
                self._conn().execute(
                    "INSERT INTO notify_webhook (target, client, delivered, ts) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(target, client) DO UPDATE SET "
                    "delivered=MAX(delivered, excluded.delivered), ts=excluded.ts",
                    (target, client, version, time.time()))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record a webhook delivery: {exc}",
                             reason_of(exc, self.store.path)) from None

    def close(self) -> None:
        with self.lock:
            if self.db is not None:
                self.db.close()
                self.db = None


def prune_event_rows(db: sqlite3.Connection, before: float, keep_rows: int, limit: int) -> int:
    """Delete at most `limit` of the oldest events older than `before` or past the newest
    `keep_rows`. Ids only grow (AUTOINCREMENT) and only the oldest rows go, so the newest
    `keep_rows` are the ids above MAX(id) - keep_rows; only the `limit` oldest rows are looked
    at, so a batch never scans the table, however large it is."""
    db.execute("PRAGMA synchronous=NORMAL")  # a prune lost in an OS crash: redone
    hi = db.execute("SELECT MAX(id) FROM events").fetchone()[0]
    if hi is None:
        return 0
    cur = db.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, ts FROM events "
        "ORDER BY id LIMIT ?) WHERE id <= ? OR ts < ?)",
        (int(limit), hi - int(keep_rows), float(before)))
    return max(0, cur.rowcount)
