"""What SQLite's failures mean for the responder: a reason (base.py's constants) for each
sqlite3 error, the one message for a damaged database, and the checks `load()` makes of each row
(a byte flipped inside a row passes SQLite's own checks; it must not reach a follower)."""

from __future__ import annotations

import math
import os

from wg_failover.fleet import NAME_RE

from .base import DAMAGED, DISK_FULL, IO_ERROR, LOCKED, READ_ONLY, UNAVAILABLE, StoreCorrupt

# Below this much free space an I/O error is taken for a full disk (SQLite grows its -shm index
# file 32 KiB at a time and reports a failure to do so as an I/O error).
FULL_BELOW_BYTES = 256 * 1024


def reason_of(exc: BaseException, path: str) -> str:
    """A sqlite3 (or OS) error as one of base's reasons."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return DISK_FULL
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text \
            or "not a database" in text:
        return DAMAGED
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return LOCKED
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return READ_ONLY
    if name.startswith("SQLITE_IOERR") or "i/o error" in text or isinstance(exc, OSError):
        return DISK_FULL if disk_full(path) else IO_ERROR
    return UNAVAILABLE


def disk_full(path: str) -> bool:
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_BELOW_BYTES


def damaged(path: str, detail: object) -> StoreCorrupt:
    return StoreCorrupt(
        f"the state store {path} is damaged ({str(detail)[:300]}). Restore it from a backup, "
        f"or move it aside (with its -wal and -shm files) to start a new store: it gets a new "
        f"epoch, and the switchers take their current assignments from it")


def is_name(value: object) -> bool:
    # fullmatch: NAME_RE ends in `$`, which also matches before a final newline.
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def is_time(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def check_row(ok: bool, table: str, key: object) -> None:
    """ValueError (load() turns it into StoreCorrupt) unless the row of `table` is `ok`."""
    if not ok:
        raise ValueError(f"{table} row {str(key)[:80]!r}")
