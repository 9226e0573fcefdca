"""The responder's durable state: the backend interface (`Store`) and the backends behind it."""

from __future__ import annotations

from .base import AssignmentRow, DeliveryLog, Event, Loaded, Store, StoreError, Tx, WorkerRow
from .sqlite import SQLiteStore

__all__ = ["AssignmentRow", "DeliveryLog", "Event", "Loaded", "SQLiteStore", "Store",
           "StoreError", "Tx", "WorkerRow", "open_store"]


def open_store(location: str) -> Store:
    """The backend for `--db`: a file path is SQLite (created if missing)."""
    return SQLiteStore(location)
