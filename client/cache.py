"""The switcher's on-disk cache: the last applied state, so a restart resumes without the responder.

Written atomically (temporary file in the same directory, fsync, rename, fsync of the directory):
a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wg_failover.wire import Assignment, AssignmentError, parse_assignment

DEFAULT_STATE_DIR = "/var/lib/wg-failover"


@dataclass
class CachedState:
    client: str
    active: str | None = None  # the worker that held the routes when last written
    version: int = 0  # the last responder version seen (applied or rejected)
    pending: Assignment | None = None  # a responder assignment not applied yet

    def to_json(self) -> dict[str, Any]:
        return {"client": self.client, "active": self.active, "version": self.version,
                "pending": self.pending.to_json() if self.pending else None}


def cache_path(state_dir: str | os.PathLike[str], client: str) -> Path:
    return Path(state_dir) / f"switcher-{client}.json"


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(path: Path, state: CachedState) -> None:
    atomic_write(path, json.dumps(state.to_json(), indent=1) + "\n")


def load(path: Path, client: str) -> CachedState | None:
    """The cached state, or None when there is none or it is unusable (then we start afresh)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("client") != client:
        return None
    version = data.get("version")
    active = data.get("active")
    pending = None
    if data.get("pending") is not None:
        try:
            pending = parse_assignment(data["pending"], client)
        except AssignmentError:
            pending = None
    return CachedState(
        client=client,
        active=active if isinstance(active, str) else None,
        version=version if isinstance(version, int) and not isinstance(version, bool) else 0,
        pending=pending,
    )
