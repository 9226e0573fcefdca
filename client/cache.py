"""The switcher's on-disk cache: the last applied state, so a restart resumes without the responder.

Written atomically (temporary file in the same directory, fsync, rename, fsync of the directory):
a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from wg_failover.files import atomic_write
from wg_failover.wire import (
    MAX_VERSION,
    Assignment,
    AssignmentError,
    ClientView,
    Epoch,
    parse_assignment,
)

DEFAULT_STATE_DIR = "/var/lib/wg-failover"


@dataclass
class CachedState:
    client: str
    active: str | None = None  # the worker that held the routes when last written
    version: int = 0  # the last responder version seen (applied or rejected)
    pending: Assignment | None = None  # a responder assignment not applied yet
    epoch: str | None = None  # the responder store's epoch `version` belongs to

    def to_json(self) -> dict[str, Any]:
        return {"client": self.client, "active": self.active, "version": self.version,
                "epoch": self.epoch,
                "pending": self.pending.to_json() if self.pending else None}


_EPOCH = TypeAdapter(Epoch)


def _epoch(value: Any) -> str | None:
    try:
        return _EPOCH.validate_python(value) if value is not None else None
    except ValidationError:
        return None


def _version(value: Any) -> int:
    # A version past what any store reaches was forged (an older switcher cached whatever the
    # wire said): resuming after it would ignore the responder for good, so start afresh.
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_VERSION
    return value if ok else 0


def cache_path(state_dir: str | os.PathLike[str], client: str) -> Path:
    return Path(state_dir) / f"switcher-{client}.json"


def view_path(state_dir: str | os.PathLike[str], client: str) -> Path:
    """The client's last view from the responder (when it follows one: no fleet file)."""
    return Path(state_dir) / f"switcher-{client}.view.json"


def save(path: Path, state: CachedState) -> None:
    atomic_write(path, json.dumps(state.to_json(), indent=1) + "\n")


def load(path: Path, client: str) -> CachedState | None:
    """The cached state, or None when there is none or it is unusable (then we start afresh).
    A cache written before epochs existed loads with `epoch` None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("client") != client:
        return None
    version = _version(data.get("version"))
    epoch = _epoch(data.get("epoch"))
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
        version=version,
        pending=pending,
        epoch=epoch,
    )


def save_view(path: Path, view: ClientView) -> None:
    atomic_write(path, view.model_dump_json(indent=1) + "\n")


def load_view(path: Path, client: str) -> ClientView | None:
    """The cached view, or None when there is none, it is another client's, or it does not
    parse (then the switcher asks the responder, as on a first start)."""
    try:
        view = ClientView.model_validate_json(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return view if view.client == client else None
