"""`GET /v1/workers` (read or admin token), `POST /v1/workers/{name}/drain|undrain` (admin
token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from wg_failover.wire import WorkerStatus

from .. import latency, planner
from ..apidoc import errors
from ..deps import State, require_admin, require_reader
from ..http import ApiError
from ..intake.drains import set_drain
from ..intake.suspect import suspects_of
from ..state import ResponderState
from ..views import iso

router = APIRouter(tags=["workers"])


def _status(state: ResponderState, rows: list[dict[str, Any]]) -> list[WorkerStatus]:
    """The workers' rows with what lives in memory beside the state: suspect marks and the
    clients' latency figures (issue 18)."""
    now = state.clock()
    state_of = {w.name: w.state for w in state.views().values()}
    marks = suspects_of(state)
    active = marks.active(now, lambda w: state_of.get(w, planner.UP))
    figures = latency.memory_of(state).worker_figures(now)
    out = []
    for row in rows:
        name = row["name"]
        extra: dict[str, Any] = {}
        if name in active:
            extra.update(suspect=True, suspect_until=iso(marks.marks[name].until))
        if (f := figures.get(name)) is not None:
            extra.update(rtt_clients=f.clients, rtt_ms_median=f.median_ms, rtt_ms_p90=f.p90_ms)
        out.append(WorkerStatus.model_validate({**row, **extra}))
    return out


@router.get("/v1/workers", dependencies=[Depends(require_reader)], responses=errors(401))
async def list_workers(state: State) -> list[WorkerStatus]:
    """Every worker: state, drain, health, load, a suspect mark, the clients' RTT figures."""
    return _status(state, state.all_workers())


async def _drain(state: State, name: str, drain: bool) -> WorkerStatus:
    if name not in state.worker_by_name:
        raise ApiError(404, f"no worker named {name!r}")
    await set_drain(state, name, drain)
    return _status(state, [state.worker_json(name)])[0]


@router.post("/v1/workers/{name}/drain", dependencies=[Depends(require_admin)],
             responses=errors(401, 404, 503, e404="no such worker"))
async def drain(state: State, name: str) -> WorkerStatus:
    """The worker takes no clients; its clients get a new assignment first."""
    return await _drain(state, name, True)


@router.post("/v1/workers/{name}/undrain", dependencies=[Depends(require_admin)],
             responses=errors(401, 404, 503, e404="no such worker"))
async def undrain(state: State, name: str) -> WorkerStatus:
    """Clears the admin's drain and overrides a still-firing drain alert."""
    return await _drain(state, name, False)
