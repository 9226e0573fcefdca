"""`wg-failover responder migrate --from-sqlite PATH --db URL`: a SQLite store into an empty
PostgreSQL database, as it is.

Everything a responder and its followers rely on comes along: the epoch (so followers do not
re-sync), workers, assignments with their versions, active alerts, unusable workers, the event
log with its ids (so `Last-Event-ID` resumes; new ids continue above the highest SQLite ever
gave), de-duplication keys with their times (an Alertmanager retry after the move is still a
duplicate), the webhooks' delivery log, the live fleet and its enrollment keys. One transaction:
a failed migration leaves the target without state, and it can be run again. A target that holds
any state is refused. Stop the responder on the SQLite file first.

Rows are read through the SQLite store (so a damaged row is StoreCorrupt, as at a responder's
start), except the two tables the Store protocol has no reader for (dedup keys and the delivery
log's times), read as they are.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .base import StoreError, Tx
from .postgres import PostgresStore
from .postgres_tables import STATE_TABLES, write_tx
from .sqlite import SQLiteStore

EVENT_PAGE = 5000


class MigrateError(Exception):
    """The migration cannot start (no source, a target that holds state); nothing was written."""


@dataclass
class Migrated:
    source: str
    target: str  # without its password
    epoch: str
    workers: int = 0
    assignments: int = 0
    events: int = 0
    next_event_id: int = 1
    dedup: int = 0
    deliveries: int = 0
    fleet_version: int | None = None
    keys: int = 0

    def summary(self) -> str:
        fleet = "no fleet" if self.fleet_version is None else f"fleet v{self.fleet_version}"
        return (f"migrated {self.source} into {self.target}: epoch {self.epoch}, "
                f"{self.workers} workers, {self.assignments} assignments (versions kept), "
                f"{self.events} events (ids kept; new ones from {self.next_event_id}), "
                f"{self.dedup} de-duplication keys, {self.deliveries} webhook deliveries, "
                f"{fleet}, {self.keys} enrollment keys. Start the responder with --db "
                f"{self.target}")


def migrate_sqlite_to_postgres(sqlite_path: str, url: str) -> Migrated:
    """Copy the SQLite store at `sqlite_path` into the empty PostgreSQL database at `url`.
    Raises MigrateError, StoreError (StoreCorrupt for a damaged source)."""
    path = Path(sqlite_path)
    if not path.is_file() or path.stat().st_size == 0:
        raise MigrateError(f"--from-sqlite {sqlite_path}: no SQLite store there")
    src = SQLiteStore(path)
    try:
        src.verify()
        loaded = src.load()
        # A new database gets a random epoch here, replaced by the source's in the same
        # transaction as the rows: a failed migration never leaves an empty database that
        # carries the old epoch (followers would take its fresh versions for stale ones).
        dst = PostgresStore(url)
        try:
            out = Migrated(str(path), dst.path, src.epoch)
            with dst.transaction("cannot migrate into") as conn:
                # One long transaction (a million events copy for a while): not the bounds
                # that keep a responder's changes from hanging.
                conn.execute("SET LOCAL statement_timeout = 0")
                conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
                held = [t for t in STATE_TABLES if conn.execute(
                    f"SELECT EXISTS(SELECT 1 FROM {t})").fetchone()[0]]  # type: ignore[call-overload,index]
                if held:
                    raise MigrateError(
                        f"--db {dst.path} already holds a responder's state (rows in "
                        f"{', '.join(held)}): migrate only into an empty database")
                conn.execute("UPDATE meta SET value = %s WHERE key = 'epoch'", (src.epoch,))
                write_tx(conn, Tx(
                    workers=loaded.workers, assignments=loaded.assignments,
                    alerts_add=loaded.alerts,
                    unusable_add={(c, w) for c, ws in loaded.unusable.items() for w in ws},
                    fleet=loaded.fleet, keys=loaded.keys))
                out.workers, out.assignments = len(loaded.workers), len(loaded.assignments)
                out.fleet_version = loaded.fleet.version if loaded.fleet else None
                out.keys = len(loaded.keys)
                out.events, last = _copy_events(src, conn)
                raw = _raw_rows(path)
                with conn.cursor().copy("COPY dedup (key, ts) FROM STDIN") as copy:
                    for row in raw["dedup"]:
                        copy.write_row(row)
                with conn.cursor().copy(
                        "COPY notify_webhook (target, client, delivered, ts) FROM STDIN") as copy:
                    for row in raw["deliveries"]:
                        copy.write_row(row)
                out.dedup, out.deliveries = len(raw["dedup"]), len(raw["deliveries"])
                # Ids never come back, not even those of events SQLite had already pruned.
                high = max(last, int(raw["sequence"][0][0]) if raw["sequence"] else 0)
                conn.execute("SELECT setval(pg_get_serial_sequence('events', 'id'), %s, %s)",
                             (max(high, 1), high > 0))
                out.next_event_id = high + 1
        finally:
            dst.close()
    finally:
        src.close()
    return out


def _copy_events(src: SQLiteStore, conn: psycopg.Connection) -> tuple[int, int]:
    """Every event, ids kept, in pages; (how many, the highest id)."""
    n, after = 0, 0
    with conn.cursor().copy("COPY events (id, ts, kind, worker, client, data) FROM STDIN") as copy:
        while True:
            page = src.events(after, EVENT_PAGE)
            for e in page:
                copy.write_row((e["id"], e["ts"], e["kind"], e["worker"], e["client"],
                                json.dumps(e["data"], sort_keys=True, ensure_ascii=False)))
            n += len(page)
            if page:
                after = page[-1]["id"]
            if len(page) < EVENT_PAGE:
                return n, after


def _raw_rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """The rows the Store protocol has no reader for, read-only from the file."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        out: dict[str, list[tuple[object, ...]]] = {"dedup": [], "deliveries": [],
                                                    "sequence": []}
        if "dedup" in tables:
            out["dedup"] = db.execute("SELECT key, ts FROM dedup").fetchall()
        if "notify_webhook" in tables:
            out["deliveries"] = db.execute(
                "SELECT target, client, delivered, ts FROM notify_webhook").fetchall()
        if "sqlite_sequence" in tables:
            out["sequence"] = db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchall()
        return out
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {path}: {exc}") from None
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.close()
