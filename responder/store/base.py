"""What the responder keeps durably, and the interface a storage backend implements.

The responder holds the whole state in memory and serves reads from there; a backend only has to
load it at start, commit each change (`Tx`) atomically, answer de-duplication lookups and page
through the event log. `responder/store/sqlite.py` is the embedded backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol


class StoreError(Exception):
    """The store could not commit; the caller answers 503 so the sender retries."""


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


@dataclass
class Event:
    kind: str
    worker: str | None = None
    client: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


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
    events: list[Event] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.workers or self.assignments or self.alerts_add or self.alerts_del
                    or self.unusable_add or self.unusable_del or self.dedup or self.events)


@dataclass
class Loaded:
    workers: dict[str, WorkerRow]
    assignments: dict[str, AssignmentRow]
    alerts: dict[str, tuple[str, str]]
    unusable: dict[str, set[str]]
    last_event_id: int


class DeliveryLog(Protocol):
    """The newest assignment version each outbound webhook target accepted, per client."""

    def load(self) -> dict[tuple[str, str], int]: ...

    def record(self, target: str, client: str, version: int) -> None:
        """Raises StoreError; the caller may then deliver that version again (at least once)."""

    def close(self) -> None: ...


class Store(Protocol):
    """A storage backend. Called from worker threads, one writer at a time (the responder's
    write lock), so an implementation may block."""

    def load(self) -> Loaded: ...

    def seen(self, keys: list[str]) -> set[str]:
        """The de-duplication keys among `keys` that an earlier commit stored."""

    def commit(self, tx: Tx, durable: bool = True) -> list[int]:
        """Write `tx` in one transaction; return the new events' ids. Raises StoreError.

        `durable=False` may trade the last commits before an OS crash for speed (client reports);
        it must still be atomic and survive the process being killed."""

    def prune_dedup(self, now: float | None = None) -> None: ...

    def events(self, after: int = 0, limit: int = 100, client: str | None = None,
               newest: bool = False) -> list[dict[str, Any]]:
        """Event log rows with id > `after`, oldest first (`newest`: the last `limit` of them)."""

    def open_delivery_log(self) -> DeliveryLog: ...

    def close(self) -> None: ...
