"""The JSON shapes the responder serves, built from its rows (plain dicts: the fan-out path builds
one per changed client, 10,000 at a failover, so no model validation there). Their schemas are
`wg_failover.wire.Assignment`, `WorkerStatus` and `EventRecord`."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from wg_failover.fleet import Worker

from .planner import WorkerView
from .store import AssignmentRow, WorkerRow


@functools.lru_cache(maxsize=4096)  # one change stamps thousands of rows with one time
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def assignment_json(a: AssignmentRow) -> dict[str, Any]:
    return {"client": a.client, "worker": a.worker, "backups": list(a.backups),
            "version": a.version, "reason": a.reason, "since": iso(a.since)}


def worker_json(w: Worker, view: WorkerView, row: WorkerRow, assigned: int) -> dict[str, Any]:
    return {"name": w.name, "state": view.state, "draining": view.draining,
            "healthy": view.healthy, "since": iso(row.since), "capacity": w.capacity,
            "region": w.region, "assigned": assigned, "exporter": w.exporter}


def event_json(e: dict[str, Any]) -> dict[str, Any]:
    return {"id": e["id"], "time": iso(e["ts"]), "ts": e["ts"], "kind": e["kind"],
            "worker": e["worker"], "client": e["client"], "data": _encodable(e["data"])}


def _encodable(value: Any) -> Any:
    """`value` with every lone surrogate replaced. Intake now refuses them, but an older version
    stored some in event data (as JSON escapes), and one such row made every page holding it
    answer 500: UTF-8 cannot encode it."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    return value
