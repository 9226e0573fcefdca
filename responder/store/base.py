"""What the responder keeps durably, and the interface a storage backend implements.

The responder holds the whole state in memory and serves reads from there; a backend only has to
load it at start, commit each change (`Tx`) atomically, answer de-duplication lookups, page
through the event log and prune it. `responder/store/sqlite.py` is the embedded backend.

Every store has an epoch, made with its database and kept in it: assignment versions only grow
within one epoch, so a follower that sends the epoch it knows learns when the database it followed
is gone (lost, replaced, restored from an old backup) and takes the current assignment at once.

A backend says why it failed in words an operator and a follower can use: `StoreError.reason`
("disk full", "database locked", ...) goes into the 503 answer and /readyz; `StoreCorrupt` is a
damaged database, which no retry mends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# Why a store cannot answer, as StoreError.reason (short, fixed texts: answers and logs use them).
UNAVAILABLE = "unavailable"
DISK_FULL = "disk full"
LOCKED = "database locked"
DAMAGED = "database damaged"
READ_ONLY = "read-only"
IO_ERROR = "I/O error"
# A replica whose leader lease (and fencing term) is over: it must not write (postgres_lease.py).
NOT_LEADER = "not the leader"
# Reasons that last until an operator acts (free space, restore a backup): /readyz reports them.
# A locked database is contention that passes by itself, not a readiness problem.
PERSISTENT = frozenset({DISK_FULL, DAMAGED, READ_ONLY, IO_ERROR})


class StoreError(Exception):
    """The store could not answer or commit; the caller answers 503 so the sender retries.
    `reason` says why in a few words (one of the constants above)."""

    def __init__(self, message: str, reason: str = UNAVAILABLE):
        super().__init__(message)
        self.reason = reason


class StoreCorrupt(StoreError):
    """The database is damaged (not a database, a bad page, a row no commit could have
    written). The message names the file and what to do; retrying does not help."""

    def __init__(self, message: str):
        super().__init__(message, DAMAGED)


@dataclass
class WorkerRow:
    name: str
    state: str
    since: float
    drain_admin: bool = False


@dataclass
class AssignmentRow:
    client: str
    worker: str | None
    backups: list[str]
    version: int
    reason: str
    since: float


def backups_texts() -> Callable[[list[str]], str]:
    """The stored text of backup lists (JSON), made once per distinct list: a failover writes
    a row per client, and 30,000 rows share a handful of lists."""
    memo: dict[tuple[str, ...], str] = {}

    def text(backups: list[str]) -> str:
        key = tuple(backups)
        got = memo.get(key)
        if got is None:
            got = memo[key] = json.dumps(backups)
        return got

    return text


@dataclass
class Event:
    kind: str
    worker: str | None = None
    client: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


@dataclass
class FleetDoc:
    """The fleet the responder serves (DESIGN.md "The fleet is live"): `data` is
    `wg_failover.fleet.fleet_data()` of it, `version` grows with every fleet change, `enrolled`
    names the nodes that joined at run time ("client:NAME", "worker:NAME"), which applying a
    file keeps when the file does not name them."""

    version: int
    data: dict[str, Any]
    enrolled: list[str] = field(default_factory=list)


@dataclass
class EnrollKeyRow:
    """An enrollment key for `wg-failover join`, stored as the sha256 of the key only."""

    id: str
    sha256: str
    kind: str  # client | worker
    reusable: bool
    created: float
    expires: float
    uses: int = 0
    revoked: bool = False
    name: str | None = None  # a one-time key may fix the node's name and (clients) address
    address: str | None = None


@dataclass
class Tx:
    """Everything one change writes; a backend commits it atomically or not at all."""

    workers: dict[str, WorkerRow] = field(default_factory=dict)
    assignments: dict[str, AssignmentRow] = field(default_factory=dict)
    alerts_add: dict[str, tuple[str, str]] = field(default_factory=dict)  # fp -> (worker, action)
    alerts_del: set[str] = field(default_factory=set)
    unusable_add: set[tuple[str, str]] = field(default_factory=set)
    unusable_del: set[tuple[str, str]] = field(default_factory=set)
    dedup: set[str] = field(default_factory=set)
    # De-duplication keys to forget, by prefix: an expired alert's ("FP|firing|"), so that
    # Alertmanager's next repeat of it, if it still fires, is applied again, not dropped.
    dedup_forget: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    fleet: FleetDoc | None = None  # the new fleet, when this change changes it
    keys: dict[str, EnrollKeyRow] = field(default_factory=dict)  # enrollment keys, by id

    def empty(self) -> bool:
        return not (self.workers or self.assignments or self.alerts_add or self.alerts_del
                    or self.unusable_add or self.unusable_del or self.dedup or self.events
                    or self.dedup_forget
                    or self.fleet is not None or self.keys)


@dataclass
class Loaded:
    workers: dict[str, WorkerRow]
    assignments: dict[str, AssignmentRow]
    alerts: dict[str, tuple[str, str]]
    unusable: dict[str, set[str]]
    last_event_id: int
    fleet: FleetDoc | None = None  # None: no fleet stored yet (a store from before live fleets)
    keys: dict[str, EnrollKeyRow] = field(default_factory=dict)


class DeliveryLog(Protocol):
    """The newest assignment version each outbound webhook target accepted, per client."""

    def load(self) -> dict[tuple[str, str], int]: ...

    def record(self, target: str, client: str, version: int) -> None:
        """Raises StoreError; the caller may then deliver that version again (at least once)."""

    def close(self) -> None: ...


class Store(Protocol):
    """A storage backend. Called from worker threads, one writer at a time (the responder's
    write lock), so an implementation may block. Every method raises StoreError (never the
    driver's own exceptions) when it cannot answer."""

    # The database's epoch: 16 lowercase hex digits, made with the database and kept in it.
    epoch: str
    # This open made a new database (so a new epoch): the backend has logged a warning.
    created: bool
    # Why the store serves reads only (e.g. it opened on a full disk), None when it can write.
    degraded: str | None

    def load(self) -> Loaded:
        """The whole state. Raises StoreCorrupt for rows no commit could have written."""

    def verify(self) -> None:
        """Check the database's structure (at start); raises StoreCorrupt when it is damaged."""

    def writable(self) -> None:
        """Make sure a commit can go through now (a tiny write; leave read-only mode when the
        cause is gone). Raises StoreError with the reason when not."""

    def seen(self, keys: list[str]) -> set[str]:
        """The de-duplication keys among `keys` that an earlier commit stored."""

    def commit(self, tx: Tx, durable: bool = True) -> list[int]:
        """Write `tx` in one transaction; return the new events' ids. Raises StoreError.

        `durable=False` may trade the last commits before an OS crash for speed (client reports);
        it must still be atomic and survive the process being killed."""

    def prune_dedup(self, now: float | None = None) -> None: ...

    def prune_events(self, before: float, keep_rows: int, limit: int) -> int:
        """Delete at most `limit` of the oldest events that are older than `before` (unix time)
        or not among the newest `keep_rows`, in one short transaction; the number deleted.
        Only the event log is pruned: assignments are state, and followers resume from them."""

    def events(self, after: int = 0, limit: int = 100, client: str | None = None,
               newest: bool = False) -> list[dict[str, Any]]:
        """Event log rows with id > `after`, oldest first (`newest`: the last `limit` of them)."""

    def open_delivery_log(self) -> DeliveryLog: ...

    def close(self) -> None: ...
