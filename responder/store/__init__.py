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
           "describe_location", "is_postgres", "open_store"]


def is_postgres(location: str) -> bool:
    return location.lower().startswith(("postgresql://", "postgres://"))


def describe_location(location: str) -> str:
    """`--db` as logs and errors may show it: a URL without its password."""
    if is_postgres(location):
        from .postgres_faults import redact

        return redact(location)
    return location


def open_store(location: str) -> Store:
    """The backend for `--db`: a `postgresql://` (or `postgres://`) URL is PostgreSQL (schema
    created or upgraded there), anything else a SQLite file path (created if missing). Raises
    StoreError (StoreCorrupt for a damaged database)."""
    if is_postgres(location):
        # Imported only here: a SQLite responder does not load the driver.
        from .postgres import PostgresStore

        return PostgresStore(location)
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
