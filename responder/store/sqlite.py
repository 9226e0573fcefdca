"""The embedded backend: SQLite in WAL mode, one file.

Tables: meta (the epoch), workers, assignments, active alerts, unusable workers per client, an
append-only event log, delivery de-duplication keys, the outbound webhooks' delivery log, and the
live fleet with its enrollment keys (sqlite_fleet.py).
Every change is ONE transaction (`commit(tx)`), and the responder applies it to memory only after
COMMIT returns. With WAL and synchronous=FULL, killing the process at any moment keeps either all
of a change or none of it, and a webhook is only answered 200 once its change is on disk.

Faults (hardening finding 6) are StoreErrors with a reason, never sqlite3's own exceptions:
- a damaged file (not a database, a bad page, a row no commit could have written) is
  StoreCorrupt, whose message names the file and what to do;
- on a full disk an existing database still opens, read-only: WAL needs a shared-memory index
  file (-shm) that SQLite cannot grow there, so it is opened in EXCLUSIVE locking mode, where
  SQLite keeps that index in heap memory. Reads work, commits answer "disk full", and
  `writable()` goes back to normal mode once there is room again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from wg_failover.wire import MAX_VERSION

from .base import (
    DAMAGED,
    DISK_FULL,
    IO_ERROR,
    UNAVAILABLE,
    AssignmentRow,
    DeliveryLog,
    Loaded,
    StoreError,
    Tx,
    WorkerRow,
    backups_texts,
)
from .sqlite_faults import check_row, damaged, is_name, is_time, reason_of
from .sqlite_fleet import load_fleet, write_fleet
from .sqlite_tables import SCHEMA, SQLiteDeliveryLog, prune_event_rows

log = logging.getLogger("wg_failover.responder")

DEDUP_KEEP_SECONDS = 30 * 86400
EPOCH_RE = re.compile(r"^[0-9a-f]{8,32}$")  # wire.Epoch; this backend makes 16 digits
WORKER_STATES = ("up", "down", "recovering")


class SQLiteStore:
    """`Store` on one SQLite file."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 2000):
        self.path = str(path)
        self.busy_timeout_ms = int(busy_timeout_ms)
        # `db` is the writer (used under the responder's write lock, and `lock`, so that
        # `writable()` can swap it); `reader` serves the event log from other threads while a
        # commit runs. Read-only, both are one EXCLUSIVE connection. Order: reader_lock, lock.
        self.lock = threading.RLock()
        self.reader_lock = threading.Lock()
        self.db: sqlite3.Connection | None = None
        self.reader: sqlite3.Connection | None = None
        self.degraded: str | None = None
        self._epoch_stored = True
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of {self.path}: {exc.strerror or exc}",
                             reason_of(exc, self.path)) from None
        fresh = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        try:
            self._open()
        except sqlite3.Error as exc:
            self._close_all()
            reason = reason_of(exc, self.path)
            if reason == DAMAGED:
                raise damaged(self.path, exc) from None
            if fresh or reason not in (DISK_FULL, IO_ERROR):
                verb = "create" if fresh else "open"
                raise StoreError(f"cannot {verb} the state store {self.path}: {exc}",
                                 reason) from None
            self._open_read_only(reason)
        except UnicodeDecodeError as exc:
            # A damaged schema text (sqlite_master) surfaces as a decode error, not sqlite3's.
            self._close_all()
            raise damaged(self.path, exc) from None
        self.epoch, self.created = self._load_epoch()

    # ----------------------------------------------------------------- connections

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        return db

    def _open(self) -> None:
        # One connection, used by one thread at a time (the app serialises writes with a lock).
        self.db = self._connect()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        # Reads of the event log come from the event loop while a commit may be running in a
        # worker thread: a second connection (WAL lets readers and one writer work together).
        self.reader = self._connect()
        self.degraded = None

    def _open_read_only(self, reason: str, announce: bool = True) -> None:
        try:
            db = self._connect()
            self.db = self.reader = db
            db.execute("PRAGMA locking_mode=EXCLUSIVE")  # the WAL index in memory, no -shm
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            self._close_all()
            if reason_of(exc, self.path) == DAMAGED:
                raise damaged(self.path, exc) from None
            raise StoreError(f"cannot open the state store {self.path}: {exc}", reason) from None
        self.degraded = reason
        if announce:
            log.error("the state store %s cannot be written (%s): serving what it holds, "
                      "read-only; changes answer 503 until it can be written again", self.path,
                      reason)

    def _close_all(self) -> None:
        for conn in {id(c): c for c in (self.reader, self.db) if c is not None}.values():
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self.db = self.reader = None

    def close(self) -> None:
        with self.reader_lock, self.lock:
            self._close_all()

    def _error(self, what: str, exc: sqlite3.Error) -> StoreError:
        reason = reason_of(exc, self.path)
        if reason == DAMAGED:
            return damaged(self.path, exc)
        return StoreError(f"{what} {self.path}: {exc}", reason)

    def _writer(self) -> sqlite3.Connection:
        """The writer connection, or StoreError while the store is read-only."""
        if self.degraded is not None or self.db is None:
            raise StoreError(f"cannot write to {self.path}: {self.degraded or 'closed'} "
                             "(serving reads only)", self.degraded or UNAVAILABLE)
        return self.db

    # ----------------------------------------------------------------- the epoch

    def _load_epoch(self) -> tuple[str, bool]:
        """The stored epoch, or a new one (stored at once when the store can write)."""
        assert self.db is not None
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            has_state = bool(self.db.execute(
                "SELECT EXISTS(SELECT 1 FROM workers) OR EXISTS(SELECT 1 FROM assignments)"
            ).fetchone()[0])
        except sqlite3.Error as exc:
            self._close_all()
            raise self._error("cannot read", exc) from None
        if row is not None:
            if not isinstance(row[0], str) or not EPOCH_RE.match(row[0]):
                self._close_all()
                raise damaged(self.path, "its epoch is not 8-32 lowercase hex digits")
            return row[0], False
        epoch = secrets.token_hex(8)
        self._epoch_stored = False
        if self.degraded is None:
            self._store_epoch(epoch)
        if not has_state:
            # A lost or replaced database looks exactly like this: say so once, loudly.
            log.warning("starting a new store at %s: epoch %s; followers will re-sync",
                        self.path, epoch)
            return epoch, True
        log.info("the state store %s had no epoch yet: it is %s from now on", self.path, epoch)
        return epoch, False

    def _store_epoch(self, epoch: str) -> None:
        try:
            self._writer().execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        except sqlite3.Error as exc:
            self._close_all()
            raise self._error("cannot store the epoch in", exc) from None
        self._epoch_stored = True

    # ----------------------------------------------------------------- reads

    def load(self) -> Loaded:
        with self.lock:
            try:
                return self._load()
            except sqlite3.Error as exc:
                raise self._error("cannot read", exc) from None
            except (ValueError, TypeError, KeyError) as exc:
                raise damaged(self.path, f"a row no commit could have written: {exc}") from None

    def _load(self) -> Loaded:
        assert self.db is not None
        query = self.db.execute
        workers = {}
        for name, state, since, drain in query(
                "SELECT name, state, since, drain_admin FROM workers"):
            check_row(is_name(name) and state in WORKER_STATES and is_time(since), "workers", name)
            workers[name] = WorkerRow(name, state, float(since), bool(drain))
        assignments = {}
        for c, w, backups, version, reason, since in query(
                "SELECT client, worker, backups, version, reason, since FROM assignments"):
            b = json.loads(backups)
            check_row(is_name(c) and (w is None or is_name(w)) and isinstance(b, list)
                      and all(is_name(x) for x in b) and isinstance(version, int)
                      and 0 <= version <= MAX_VERSION and isinstance(reason, str)
                      and is_time(since), "assignments", c)
            assignments[c] = AssignmentRow(c, w, b, version, reason, float(since))
        alerts = {r[0]: (r[1], r[2])
                  for r in query("SELECT fingerprint, worker, action FROM active_alerts")}
        unusable: dict[str, set[str]] = {}
        for c, w in query("SELECT client, worker FROM unusable"):
            unusable.setdefault(c, set()).add(w)
        last = query("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        fleet, keys = load_fleet(query)
        return Loaded(workers, assignments, alerts, unusable, last, fleet, keys)

    def verify(self) -> None:
        with self.reader_lock, self.lock:
            assert self.db is not None
            try:
                rows = [r[0] for r in self.db.execute("PRAGMA quick_check(5)")]
            except sqlite3.Error as exc:
                raise self._error("cannot check", exc) from None
        if rows != ["ok"]:
            raise damaged(self.path, "; ".join(str(r) for r in rows))

    def seen(self, keys: list[str]) -> set[str]:
        out: set[str] = set()
        with self.lock:
            assert self.db is not None
            try:
                for i in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
                    part = keys[i:i + 500]
                    marks = ",".join("?" * len(part))
                    rows = self.db.execute(f"SELECT key FROM dedup WHERE key IN ({marks})", part)
                    out |= {r[0] for r in rows}
            except sqlite3.Error as exc:
                raise self._error("cannot read", exc) from None
        return out

    def events(self, after: int = 0, limit: int = 100, client: str | None = None,
               newest: bool = False) -> list[dict[str, Any]]:
        where, args = "id > ?", [after]
        if client is not None:
            where += " AND client = ?"
            args.append(client)
        order = "DESC" if newest else "ASC"
        sql = (f"SELECT id, ts, kind, worker, client, data FROM events WHERE {where} "
               f"ORDER BY id {order} LIMIT ?")
        # Read-only, the reader is the writer's connection: take its lock too (`degraded` is
        # read once reader_lock is held, which a swap of connections also takes).
        with self.reader_lock, self.lock if self.degraded else contextlib.nullcontext():
            if self.reader is None:
                raise StoreError(f"{self.path} is closed")
            try:
                rows = self.reader.execute(sql, [*args, limit]).fetchall()
            except sqlite3.Error as exc:
                raise self._error("cannot read the event log of", exc) from None
        if newest:
            rows.reverse()
        out = []
        for r in rows:
            try:
                data = json.loads(r[5])
            except (ValueError, TypeError) as exc:
                raise damaged(self.path, f"event {r[0]} does not parse: {exc}") from None
            out.append({"id": r[0], "ts": r[1], "kind": r[2], "worker": r[3], "client": r[4],
                        "data": data})
        return out

    # ----------------------------------------------------------------- writes

    def commit(self, tx: Tx, durable: bool = True) -> list[int]:
        """Write `tx` in one transaction; returns the new events' ids. Raises StoreError.
        `durable=False` skips the fsync at commit (synchronous=NORMAL): still atomic and safe
        against the process being killed, but an OS crash may lose the last commits (for the
        high-rate client reports; webhooks and admin changes are always durable)."""
        if tx.empty():
            return []
        with self.lock:
            db = self._writer()
            try:
                db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                return self._write(db, tx)
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise self._error("cannot commit to", exc) from None
            except BaseException:
                # Anything else mid-transaction (text UTF-8 cannot encode, a bug) must not leave
                # the transaction open: every later commit would fail with 503.
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    def _write(self, db: sqlite3.Connection, tx: Tx) -> list[int]:
        backups_text = backups_texts()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO workers (name, state, since, drain_admin) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET state=excluded.state, since=excluded.since, "
            "drain_admin=excluded.drain_admin",
            [(w.name, w.state, w.since, int(w.drain_admin)) for w in tx.workers.values()],
        )
        db.executemany(
            "INSERT INTO assignments (client, worker, backups, version, reason, since) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(client) DO UPDATE SET worker=excluded.worker, "
            "backups=excluded.backups, version=excluded.version, reason=excluded.reason, "
            "since=excluded.since",
            [(a.client, a.worker, backups_text(a.backups), a.version, a.reason, a.since)
             for a in tx.assignments.values()],
        )
        db.executemany("DELETE FROM active_alerts WHERE fingerprint = ?",
                       [(fp,) for fp in tx.alerts_del])
        db.executemany(
            "INSERT OR REPLACE INTO active_alerts (fingerprint, worker, action) VALUES (?, ?, ?)",
            [(fp, w, a) for fp, (w, a) in tx.alerts_add.items()],
        )
        db.executemany("DELETE FROM unusable WHERE client = ? AND worker = ?",
                       sorted(tx.unusable_del))
        db.executemany("INSERT OR IGNORE INTO unusable (client, worker) VALUES (?, ?)",
                       sorted(tx.unusable_add))
        now = time.time()
        db.executemany("DELETE FROM dedup WHERE substr(key, 1, ?) = ?",
                       [(len(p), p) for p in sorted(tx.dedup_forget)])
        db.executemany("INSERT OR IGNORE INTO dedup (key, ts) VALUES (?, ?)",
                       [(k, now) for k in tx.dedup])
        ids = []
        for e in tx.events:
            cur = db.execute(
                "INSERT INTO events (ts, kind, worker, client, data) VALUES (?, ?, ?, ?, ?)",
                # Not ensure_ascii: text with a lone surrogate then fails here (UTF-8 cannot
                # encode it) instead of being stored as an escape that breaks every read.
                (e.ts, e.kind, e.worker, e.client,
                 json.dumps(e.data, sort_keys=True, ensure_ascii=False)))
            ids.append(int(cur.lastrowid or 0))
        write_fleet(db, tx)
        db.execute("COMMIT")
        return ids

    def writable(self) -> None:
        with self.reader_lock, self.lock:
            if self.degraded is not None:
                self._reopen()
            db = self._writer()
            try:
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("INSERT INTO meta (key, value) VALUES ('checked', ?) ON CONFLICT(key) "
                           "DO UPDATE SET value = excluded.value", (repr(time.time()),))
            except sqlite3.Error as exc:
                raise self._error("cannot write to", exc) from None

    def _reopen(self) -> None:
        """Leave read-only mode if the store can be opened for writing now."""
        reason = self.degraded or UNAVAILABLE
        self._close_all()
        try:
            self._open()
            if not self._epoch_stored:
                self._store_epoch(self.epoch)
        except (sqlite3.Error, StoreError) as exc:
            self._close_all()
            self._open_read_only(reason_of(exc, self.path) if isinstance(exc, sqlite3.Error)
                                 else exc.reason, announce=False)
            raise StoreError(f"cannot write to {self.path}: {self.degraded}",
                             self.degraded or reason) from None

    def prune_dedup(self, now: float | None = None) -> None:
        cutoff = (now or time.time()) - DEDUP_KEEP_SECONDS
        with self.lock:
            try:
                self._writer().execute("DELETE FROM dedup WHERE ts < ?", (cutoff,))
            except sqlite3.Error as exc:
                raise self._error("cannot prune", exc) from None

    def prune_events(self, before: float, keep_rows: int, limit: int) -> int:
        with self.lock:
            db = self._writer()
            try:
                return prune_event_rows(db, before, keep_rows, limit)
            except sqlite3.Error as exc:
                raise self._error("cannot prune the event log of", exc) from None

    def open_delivery_log(self) -> DeliveryLog:
        return SQLiteDeliveryLog(self)
