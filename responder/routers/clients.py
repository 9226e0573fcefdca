"""`GET /v1/clients` (admin token): every client's assignment in one line each.
`GET /v1/clients/{name}` (client or admin token): a client's assignment, the workers its
probes rejected, its latest probes, its recent events and how its notifications are doing."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends

from wg_failover.wire import ClientStatus, ClientSummary, EventRecord, ProbeReport

from ..apidoc import errors
from ..deps import State, require_admin, require_client
from ..views import event_json, iso

router = APIRouter(tags=["clients"])

RECENT_EVENTS = 20


@router.get("/v1/clients", dependencies=[Depends(require_admin)], responses=errors(401, 503))
async def list_clients(state: State) -> list[ClientSummary]:
    """Every fleet client in fleet order (503 while the store has not committed a plan)."""
    out = []
    for c in state.fleet.clients:
        a = state.current_assignment(c.name)
        out.append(ClientSummary(name=c.name, worker=a["worker"], version=a["version"],
                                 epoch=a.get("epoch"), reason=a.get("reason") or "",
                                 since=a.get("since"),
                                 unusable=sorted(state.unusable.get(c.name, set()))))
    return out


@router.get("/v1/clients/{name}",
            responses=errors(401, 404, 503, e404="no such client (admin token only)"))
async def client_status(state: State, name: Annotated[str, Depends(require_client)]
                        ) -> ClientStatus:
    events = await asyncio.to_thread(state.store.events, 0, RECENT_EVENTS, name, True)
    probe = state.probes.get(name)
    return ClientStatus(
        assignment=state.current_assignment(name),  # with the store's epoch
        unusable=sorted(state.unusable.get(name, set())),
        probes=None if probe is None else ProbeReport(time=iso(probe.time),
                                                       workers=dict(probe.workers)),
        events=[EventRecord.model_validate(event_json(e)) for e in events],
        delivery=state.notifiers.client_status(name),
    )
