"""The agent's cache: the last WorkerPeers it took from the responder, so a restart (or a
restarted interface) while the responder is away puts back the same peers, and nothing changes.

Written before the peers are applied, atomically (temporary file in the same directory, mode
0600, fsync, rename, fsync of the directory): a crash leaves the old file or the new one, never
half of one; the peers' public keys and addresses are the fleet's, so the file is the agent's
only (0600 in a 0700 directory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from wg_failover.files import atomic_write
from wg_failover.wire import WorkerPeers

DEFAULT_STATE_DIR = "/var/lib/wg-failover"
MAX_CACHE_BYTES = 64 * 1024 * 1024  # 100,000 peers with room; a larger file is not ours


def cache_path(state_dir: str | os.PathLike[str], worker: str) -> Path:
    return Path(state_dir) / f"agent-{worker}.json"


def save(path: Path, peers: WorkerPeers) -> None:
    atomic_write(path, peers.model_dump_json() + "\n")


def load(path: Path, worker: str) -> tuple[WorkerPeers | None, str | None]:
    """(the cached peers, None), or (None, why not) when there is no usable cache: missing,
    unreadable, not ours, or for another worker. The agent then waits for the responder."""
    try:
        if path.stat().st_size > MAX_CACHE_BYTES:
            return None, f"{path}: larger than {MAX_CACHE_BYTES} bytes"
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{path}: no cache yet"
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"{path}: unreadable ({type(exc).__name__})"
    try:
        peers = WorkerPeers.model_validate(data)
    except ValidationError as exc:
        return None, f"{path}: not a cache of peers ({exc.error_count()} problems)"
    if peers.worker != worker:
        return None, f"{path}: the cache of worker {peers.worker!r}, not {worker!r}"
    return peers, None
