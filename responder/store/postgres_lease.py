"""The leader lease of responder replicas on one PostgreSQL database, and its fencing term.

One row, `leader (term, holder, expires)`. A replica takes the lease when it has expired by the
database's clock (`now()`, so no two hosts' clocks are compared), which increments the term, and
renews it while it holds it. Every write of a leader (`Fenced`, below) first reads that row
`FOR KEY SHARE` inside its own transaction and goes on only while the row still names this
replica and its term: a replica that lost the lease (paused past it, cut from the database)
cannot write, whatever it believes, and its transaction changes nothing ("not the leader"). A
take-over first locks the row `FOR UPDATE`, which waits for those locks: it is ordered after any
commit of the old leader that is still running, so the new leader's `load()` sees every change
the old one acknowledged. A renewal (an UPDATE of no key column) does not wait for them: a
commit of 30,000 rows that takes seconds on a busy machine must not cost its leader the lease
(with FOR SHARE it did, in bench/replicas.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from .base import NOT_LEADER, DeliveryLog, Loaded, StoreError, Tx

if TYPE_CHECKING:
    from .postgres import PostgresStore

# Appended to postgres_tables.MIGRATIONS: the lease row exists from the start, expired.
MIGRATION = """
    CREATE TABLE leader (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        term BIGINT NOT NULL,
        holder TEXT NOT NULL,
        expires TIMESTAMPTZ NOT NULL
    );
    INSERT INTO leader (id, term, holder, expires) VALUES (1, 0, '', '-infinity');
"""


def check_fence(conn: psycopg.Connection, fence: tuple[int, str]) -> None:
    """Inside a transaction: raise StoreError(NOT_LEADER) unless `fence` (term, holder) still
    holds the lease row. Its share lock lasts until the transaction ends."""
    row = conn.execute("SELECT term, holder FROM leader WHERE id = 1 FOR KEY SHARE").fetchone()
    if row is None or (int(row[0]), row[1]) != fence:
        raise StoreError(f"not the leader: term {fence[0]} is over (the lease is at term "
                         f"{row[0] if row else '?'}): another replica leads; nothing written",
                         NOT_LEADER)


def take_lease(store: PostgresStore, holder: str, term: int | None,
               seconds: float) -> int | None:
    """Renew the lease of `term` held by `holder`, or (`term` None, or it is not ours any more)
    take it if it expired, with a new term. The term held now, or None when another replica
    holds a live lease (or took ours). Raises StoreError when the database cannot answer."""
    with store._conn("cannot take the leader lease in") as conn, conn.transaction():
        if term is not None:  # a renewal: waits for no commit of ours (module docstring)
            row = conn.execute(
                "UPDATE leader SET expires = now() + make_interval(secs => %s) WHERE id = 1 "
                "AND holder = %s AND term = %s RETURNING term",
                (float(seconds), holder, term)).fetchone()
            if row is not None:
                return int(row[0])
        # A take-over, once the lease expired: FOR UPDATE waits for the commits still running
        # under it (a live lease is not locked at all: no wait, and no queue in front of the
        # leader's next commit).
        row = conn.execute("SELECT term FROM leader WHERE id = 1 AND expires < now() "
                           "FOR UPDATE").fetchone()
        if row is None:
            return None
        row = conn.execute(
            "UPDATE leader SET term = term + 1, holder = %s, expires = now() + "
            "make_interval(secs => %s) WHERE id = 1 RETURNING term",
            (holder, float(seconds))).fetchone()
    return None if row is None else int(row[0])


def release_lease(store: PostgresStore, holder: str, term: int) -> None:
    """Give the lease up at once (a clean stop), so a standby need not wait for it to expire."""
    with store._conn("cannot release the leader lease in") as conn:
        conn.execute("UPDATE leader SET expires = '-infinity' WHERE id = 1 AND term = %s AND "
                     "holder = %s", (term, holder))


def lease_row(store: PostgresStore) -> tuple[int, str, float]:
    """(term, holder, seconds until it expires by the database's clock; < 0: expired)."""
    with store._conn("cannot read the leader lease in") as conn:
        row = conn.execute("SELECT term, holder, EXTRACT(EPOCH FROM (expires - now())) "
                           "FROM leader WHERE id = 1").fetchone()
    if row is None:
        return 0, "", -1.0
    return int(row[0]), row[1], float(row[2]) if row[2] is not None else -1.0


class Fenced:
    """A PostgresStore as one leadership term writes it: every write carries the fence (term,
    holder), so a term that is over writes nothing (StoreError NOT_LEADER), even when the same
    process leads again later with a newer term. Reads and everything else go to the store."""

    def __init__(self, store: PostgresStore, term: int, holder: str):
        self._store = store
        self.fence = (term, holder)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def load(self) -> Loaded:
        return self._store.load()

    def commit(self, tx: Tx, durable: bool = True) -> list[int]:
        return self._store.commit(tx, durable, fence=self.fence)

    def writable(self) -> None:
        self._store.writable(fence=self.fence)

    def prune_dedup(self, now: float | None = None) -> None:
        self._store.prune_dedup(now, fence=self.fence)

    def prune_events(self, before: float, keep_rows: int, limit: int) -> int:
        return self._store.prune_events(before, keep_rows, limit, fence=self.fence)

    def open_delivery_log(self) -> DeliveryLog:
        return self._store.open_delivery_log()

    def close(self) -> None:
        """The store outlives a term: the responder closes it once, at exit."""
