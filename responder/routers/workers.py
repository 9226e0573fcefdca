"""`GET /v1/workers` (read or admin token), `POST /v1/workers/{name}/drain|undrain` (admin
token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from wg_failover.wire import WorkerStatus

from ..apidoc import errors
from ..deps import State, require_admin, require_reader
from ..http import ApiError
from ..intake.drains import set_drain

router = APIRouter(tags=["workers"])


@router.get("/v1/workers", dependencies=[Depends(require_reader)], responses=errors(401))
async def list_workers(state: State) -> list[WorkerStatus]:
    return [WorkerStatus.model_validate(w) for w in state.all_workers()]


async def _drain(state: State, name: str, drain: bool) -> WorkerStatus:
    if name not in state.worker_by_name:
        raise ApiError(404, f"no worker named {name!r}")
    await set_drain(state, name, drain)
    return WorkerStatus.model_validate(state.worker_json(name))


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
