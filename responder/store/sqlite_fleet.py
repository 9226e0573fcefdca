"""The SQLite store's live-fleet rows: the fleet document and the enrollment keys."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from .base import EnrollKeyRow, FleetDoc, Tx

Query = Callable[..., sqlite3.Cursor]


def load_fleet(query: Query, as_bytes: str = "CAST({} AS BLOB)"
               ) -> tuple[FleetDoc | None, dict[str, EnrollKeyRow]]:
    """The stored fleet (None before the first one) and every enrollment key. Raises ValueError
    or TypeError for rows no commit could have written (the caller reports a damaged store)."""
    doc = None
    # As bytes: sqlite3's own decode error would quote the damaged text (keys, hashes).
    # `as_bytes` is the backend's way to read a text column as bytes ("{}" when it need not).
    row = query(f"SELECT version, {as_bytes.format('data')}, {as_bytes.format('enrolled')} "
                "FROM fleet WHERE id = 1").fetchone()
    if row is not None:
        try:
            version, data, enrolled = row[0], json.loads(row[1]), json.loads(row[2])
        except (UnicodeDecodeError, TypeError, ValueError):
            raise ValueError("the stored fleet row does not parse") from None
        if not (isinstance(version, int) and version >= 1 and isinstance(data, dict)
                and isinstance(enrolled, list) and all(isinstance(e, str) for e in enrolled)):
            raise ValueError("the stored fleet row is malformed")
        doc = FleetDoc(version, data, enrolled)
    keys = {}
    for r in query("SELECT id, sha256, kind, reusable, created, expires, uses, revoked, name, "
                   "address FROM enroll_keys"):
        if r[2] not in ("client", "worker"):
            raise ValueError(f"enrollment key {r[0]!r} has kind {r[2]!r}")
        keys[r[0]] = EnrollKeyRow(r[0], r[1], r[2], bool(r[3]), float(r[4]), float(r[5]),
                                  int(r[6]), bool(r[7]), r[8], r[9])
    return doc, keys


def write_fleet(db: sqlite3.Connection, tx: Tx) -> None:
    """Inside the caller's transaction: the new fleet document and changed keys."""
    if tx.fleet is not None:
        f = tx.fleet
        db.execute("INSERT INTO fleet (id, version, data, enrolled) VALUES (1, ?, ?, ?) "
                   "ON CONFLICT(id) DO UPDATE SET version=excluded.version, data=excluded.data, "
                   "enrolled=excluded.enrolled",
                   (f.version, _json(f.data), _json(sorted(f.enrolled))))
    db.executemany(
        "INSERT INTO enroll_keys (id, sha256, kind, reusable, created, expires, uses, revoked, "
        "name, address) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
        "uses=excluded.uses, revoked=excluded.revoked",
        [(k.id, k.sha256, k.kind, int(k.reusable), k.created, k.expires, k.uses, int(k.revoked),
          k.name, k.address) for k in tx.keys.values()])


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
