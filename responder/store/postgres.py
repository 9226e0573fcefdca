"""The PostgreSQL backend: `--db postgresql://USER:PASSWORD@HOST:PORT/DB` (psycopg 3, a pool).

The `Store` protocol stays synchronous: the responder calls it from worker threads
(asyncio.to_thread) under its write lock, as it calls the SQLite store, and reads of the event
log come from other threads at the same time; the pool (psycopg_pool.ConnectionPool) gives each
caller its own connection. One change is one transaction, committed before the responder applies
it to memory.

Bounded waits, so a lost database makes a write fail (503) within seconds instead of hanging:
libpq's connect_timeout (5 s), a short wait for a pooled connection (2 s, then one attempt of
the caller's own; 0.25 s while the pool cannot connect), statement_timeout (10 s),
lock_timeout (2 s, "database locked"), TCP keepalives and tcp_user_timeout for a peer that
vanished without a word. Every failure is a StoreError with base's reasons (connection refused
or lost: "unavailable"; a hot standby: "read-only"; disk full; corrupted data: StoreCorrupt),
never a psycopg exception, and no message, log line or answer carries the URL's password.

`durable=False` commits with synchronous_commit off: atomic, and nothing is lost when the
responder is killed (the database is another process); a crash of the database server itself may
lose the last such commits. The epoch lives in table `meta`, as in SQLite. Tables, their
versions and how a change is written: postgres_tables.py; failures: postgres_faults.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from .base import (
    DAMAGED,
    READ_ONLY,
    DeliveryLog,
    Loaded,
    StoreError,
    Tx,
)
from .postgres_faults import damaged, reason_of, redact, scrub, secrets_in
from .postgres_lease import check_fence
from .postgres_tables import (
    SCHEMA_VERSION,
    TABLES,
    PostgresDeliveryLog,
    SchemaTooNew,
    migrate,
    schema_version,
    write_tx,
)
from .postgres_tail import read_alerts, read_assignments, read_unusable, read_workers
from .sqlite import DEDUP_KEEP_SECONDS, EPOCH_RE
from .sqlite_fleet import load_fleet

log = logging.getLogger("wg_failover.responder")

CONNECT_TIMEOUT = 5.0
STATEMENT_TIMEOUT = 10.0
LOCK_TIMEOUT = 2.0
POOL_SIZE = 4
# How long a caller waits for a pooled connection before it connects by itself: normally (the
# pool has one ready, or makes one in milliseconds), and while the pool's own attempts fail.
POOL_WAIT = 2.0
OUTAGE_WAIT = 0.25
# libpq settings a URL may set itself; these are the defaults when it does not.
LIBPQ_DEFAULTS = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
                  "keepalives_count": "3", "tcp_user_timeout": "10000",
                  "application_name": "wg-failover-responder"}


class PostgresStore:
    """`Store` on a PostgreSQL database (see the module docstring)."""

    def __init__(self, url: str, *, connect_timeout: float = CONNECT_TIMEOUT,
                 statement_timeout: float = STATEMENT_TIMEOUT,
                 lock_timeout: float = LOCK_TIMEOUT, pool_size: int = POOL_SIZE):
        self.url = url
        self.path = redact(url)  # what messages name (`path`, like the SQLite store's)
        self._secrets = secrets_in(url)
        self.timeout = float(connect_timeout)
        self.statement_timeout = float(statement_timeout)
        self.lock_timeout = float(lock_timeout)
        self.degraded: str | None = None
        self._epoch_stored = True
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreError(f"--db {self.path}: not a PostgreSQL URL libpq takes: "
                             f"{self._text(exc)}") from None
        self._kwargs: dict[str, Any] = {
            k: v for k, v in {**LIBPQ_DEFAULTS,
                              "connect_timeout": str(max(2, round(self.timeout)))}.items()
            if k not in given}
        # The schema, the epoch and a first check that the database answers, on one direct
        # connection: a refused or unknown database is one clear error at once, with libpq's
        # own words (the pool would only say it timed out).
        try:
            with self._connect() as conn:
                self.epoch, self.created = self._prepare(conn)
        except psycopg.Error as exc:
            raise self._error("cannot open the state store", exc) from None
        # libpq's words for the pool's last failed connection attempt, None once one succeeds.
        self._connect_failed: str | None = None
        self.pool = ConnectionPool(
            url, connection_class=_recording(self), kwargs={**self._kwargs, "autocommit": True},
            min_size=1, max_size=pool_size,
            open=False, configure=self._configure, check=ConnectionPool.check_connection,
            timeout=self.timeout, name="wg-failover-store",
            # The pool's retries back off without bound until this gives up; a short one means
            # the next request after an outage tries at once instead of after a long back-off.
            reconnect_timeout=self.timeout)
        self.pool.open(wait=False)

    # ----------------------------------------------------------------- connections

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.url, autocommit=True, **self._kwargs)
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _configure(self, conn: psycopg.Connection) -> None:
        ms = {"statement_timeout": self.statement_timeout, "lock_timeout": self.lock_timeout,
              "idle_in_transaction_session_timeout": max(60.0, 3 * self.statement_timeout)}
        for name, seconds in ms.items():
            conn.execute(f"SET {name} = {int(seconds * 1000)}")  # type: ignore[call-overload]

    @contextlib.contextmanager
    def _conn(self, what: str) -> Iterator[psycopg.Connection]:
        """A pooled connection, else one of its own; any psycopg error inside becomes a
        StoreError (`what` THE STORE: ...).

        When the pool has none to give (its attempts fail, or wait out a back-off after an
        outage), this caller connects once by itself: during an outage it fails at once with
        libpq's reason instead of holding the write lock for the pool's wait, and the first
        change after the database is back goes through instead of waiting for the pool."""
        wait = OUTAGE_WAIT if self._connect_failed else POOL_WAIT
        try:
            with contextlib.ExitStack() as stack:
                try:
                    conn = stack.enter_context(self.pool.connection(timeout=wait))
                except PoolTimeout:
                    conn = stack.enter_context(self._connect())
                yield conn
        except psycopg.Error as exc:
            raise self._error(what, exc) from None

    def _text(self, exc: BaseException) -> str:
        return scrub(" ".join(str(exc).split()), self._secrets)[:500]

    def _error(self, what: str, exc: psycopg.Error) -> StoreError:
        reason = reason_of(exc)
        detail = self._text(exc)
        if reason == DAMAGED:
            return damaged(self.path, detail)
        return StoreError(f"{what} {self.path}: {detail}", reason)

    @contextlib.contextmanager
    def transaction(self, what: str) -> Iterator[psycopg.Connection]:
        """One transaction on a pooled connection, for writers beside `commit` (migrate.py);
        psycopg errors become StoreErrors."""
        with self._conn(what) as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close(timeout=5)

    # ----------------------------------------------------------------- schema and epoch

    def _prepare(self, conn: psycopg.Connection) -> tuple[str, bool]:
        try:
            with conn.transaction():
                had = migrate(conn)
                out = self._epoch(conn, write=True)
        except psycopg.errors.ReadOnlySqlTransaction:
            if schema_version(conn) != SCHEMA_VERSION:
                raise StoreError(f"cannot create or upgrade the state store in {self.path}: the "
                                 "database is read-only (a standby?)", READ_ONLY) from None
            out = self._epoch(conn, write=False)
            self.degraded = READ_ONLY
            log.error("the state store %s cannot be written (%s): serving what it holds, "
                      "read-only; changes answer 503 until it can be written", self.path,
                      READ_ONLY)
            return out
        except SchemaTooNew as exc:
            raise StoreError(f"cannot use the state store {self.path}: {exc}") from None
        if 0 < had < SCHEMA_VERSION:
            log.warning("the state store %s: schema upgraded from version %d to %d", self.path,
                        had, SCHEMA_VERSION)
        return out

    def _epoch(self, conn: psycopg.Connection, write: bool) -> tuple[str, bool]:
        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        has_state = conn.execute("SELECT EXISTS(SELECT 1 FROM workers) OR "
                                 "EXISTS(SELECT 1 FROM assignments)").fetchone()[0]  # type: ignore[index]
        if row is not None:
            if not isinstance(row[0], str) or not EPOCH_RE.match(row[0]):
                raise damaged(self.path, "its epoch is not 8-32 lowercase hex digits")
            return row[0], False
        epoch = secrets.token_hex(8)
        if write:  # under migrate()'s advisory lock: no other replica stores one meanwhile
            conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', %s)", (epoch,))
        else:
            self._epoch_stored = False
        if not has_state:
            log.warning("starting a new store at %s: epoch %s; followers will re-sync",
                        self.path, epoch)
            return epoch, True
        log.info("the state store %s had no epoch yet: it is %s from now on", self.path, epoch)
        return epoch, False

    # ----------------------------------------------------------------- reads

    def load(self) -> Loaded:
        with self.snapshot() as conn:
            return self._load(conn)

    def _load(self, conn: psycopg.Connection) -> Loaded:
        q = conn.execute
        workers, assignments = read_workers(q), read_assignments(q)
        alerts, unusable = read_alerts(q), read_unusable(q)
        last = q("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]  # type: ignore[index]
        fleet, keys = load_fleet(q, "{}")  # SQLite's columns: one reader and its checks
        return Loaded(workers, assignments, alerts, unusable, int(last), fleet, keys)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[psycopg.Connection]:
        """A read-only REPEATABLE READ transaction (one consistent view of every table); a row
        no commit could have written is StoreCorrupt."""
        with self._conn("cannot read") as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield conn
            except (ValueError, TypeError, KeyError) as exc:
                raise damaged(self.path, f"a row no commit could have written: {exc}") from None

    def verify(self) -> None:
        with self._conn("cannot check") as conn:
            version = schema_version(conn)
            missing = [t for t in TABLES if conn.execute(
                "SELECT to_regclass(%s)", (t,)).fetchone()[0] is None]  # type: ignore[index]
        if version != SCHEMA_VERSION or missing:
            raise damaged(self.path, f"schema version {version}, expected {SCHEMA_VERSION}"
                          + (f"; missing tables: {', '.join(missing)}" if missing else ""))

    def seen(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        with self._conn("cannot read") as conn:
            rows = conn.execute("SELECT key FROM dedup WHERE key = ANY(%s::text[])", (keys,))
            return {r[0] for r in rows}

    def events(self, after: int = 0, limit: int = 100, client: str | None = None,
               newest: bool = False) -> list[dict[str, Any]]:
        where, args = "id > %s", [int(after)]
        if client is not None:
            where += " AND client = %s"
            args.append(client)  # type: ignore[arg-type]
        order = "DESC" if newest else "ASC"
        sql = (f"SELECT id, ts, kind, worker, client, data FROM events WHERE {where} "
               f"ORDER BY id {order} LIMIT %s")
        with self._conn("cannot read the event log of") as conn:
            rows = conn.execute(sql, [*args, int(limit)]).fetchall()  # type: ignore[call-overload]
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

    def _writable_now(self) -> None:
        if self.degraded is not None:
            raise StoreError(f"cannot write to {self.path}: {self.degraded} (serving reads "
                             "only)", self.degraded)

    def commit(self, tx: Tx, durable: bool = True,
               fence: tuple[int, str] | None = None) -> list[int]:
        """Write `tx` in one transaction; the new events' ids. Raises StoreError. `fence`:
        (term, holder) that must still hold the leader lease (postgres_lease.Fenced)."""
        if tx.empty():
            return []
        self._writable_now()
        with self._conn("cannot commit to") as conn, conn.transaction():
            if fence is not None:
                check_fence(conn, fence)
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            return write_tx(conn, tx)

    def writable(self, fence: tuple[int, str] | None = None) -> None:
        with self._conn("cannot write to") as conn, conn.transaction():
            if fence is not None:
                check_fence(conn, fence)
            conn.execute("SET LOCAL synchronous_commit = off")
            if not self._epoch_stored:
                conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', %s) "
                             "ON CONFLICT (key) DO NOTHING", (self.epoch,))
            conn.execute("INSERT INTO meta (key, value) VALUES ('checked', %s) ON CONFLICT "
                         "(key) DO UPDATE SET value = excluded.value", (repr(time.time()),))
        self._epoch_stored = True
        self.degraded = None

    def prune_dedup(self, now: float | None = None,
                    fence: tuple[int, str] | None = None) -> None:
        self._writable_now()
        cutoff = (now or time.time()) - DEDUP_KEEP_SECONDS
        with self._conn("cannot prune") as conn, conn.transaction():
            if fence is not None:
                check_fence(conn, fence)
            conn.execute("DELETE FROM dedup WHERE ts < %s", (cutoff,))

    def prune_events(self, before: float, keep_rows: int, limit: int,
                     fence: tuple[int, str] | None = None) -> int:
        # As in the SQLite store: only the `limit` oldest rows are looked at, in one short
        # transaction, and the newest `keep_rows` are the ids above MAX(id) - keep_rows.
        self._writable_now()
        with self._conn("cannot prune the event log of") as conn, conn.transaction():
            if fence is not None:
                check_fence(conn, fence)
            conn.execute("SET LOCAL synchronous_commit = off")  # a prune lost: redone
            hi = conn.execute("SELECT MAX(id) FROM events").fetchone()[0]  # type: ignore[index]
            if hi is None:
                return 0
            cur = conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM (SELECT id, ts FROM events "
                "ORDER BY id LIMIT %s) o WHERE o.id <= %s OR o.ts < %s)",
                (int(limit), int(hi) - int(keep_rows), float(before)))
            return max(0, cur.rowcount)

    def open_delivery_log(self) -> DeliveryLog:
        return PostgresDeliveryLog(self)


def _recording(store: PostgresStore) -> type[psycopg.Connection[Any]]:
    """A connection class for the pool that notes on `store` whether its last connection
    attempt failed, and libpq's words for why (the pool itself only says it timed out)."""

    class Connection(psycopg.Connection[Any]):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Connection:  # type: ignore[override]
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.Error as exc:
                store._connect_failed = store._text(exc)
                raise
            store._connect_failed = None
            return conn  # type: ignore[return-value]

    return Connection
