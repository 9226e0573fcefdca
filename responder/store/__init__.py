"""The responder's durable state: the backend interface (`Store`) and the backends behind it."""

from __future__ import annotations

from .base import (
    PERSISTENT,
    AssignmentRow,
    DeliveryLog,
    EnrollKeyRow,
    Event,
    FleetDoc,
    Loaded,
    Store,
    StoreCorrupt,
    StoreError,
    Tx,
    WorkerRow,
)
from .sqlite import SQLiteStore

__all__ = ["PERSISTENT", "AssignmentRow", "DeliveryLog", "EnrollKeyRow", "Event", "FleetDoc",
           "Loaded", "SQLiteStore",
           "Store", "StoreCorrupt", "StoreError", "Tx", "WorkerRow", "check_store",
           "open_store"]


def open_store(location: str) -> Store:
    """The backend for `--db`: a file path is SQLite (created if missing). Raises StoreError
    (StoreCorrupt for a damaged database)."""
    return SQLiteStore(location)


def check_store(location: str) -> None:
    """Open the store as the responder will, check its structure and read every row, then close
    it: at start, so that a damaged database is one clear error (StoreCorrupt) before the server
    starts, and a new database is created (and announced) here."""
    store = open_store(location)
    try:
        store.verify()
        store.load()
    finally:
        store.close()
