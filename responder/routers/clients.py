"""`GET /v1/clients/{name}` (client or admin token): a client's assignment, the workers its
probes rejected, its latest probes, its recent events and how its notifications are doing."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends

from wg_failover.wire import ClientStatus, EventRecord, ProbeReport

from ..apidoc import errors
from ..deps import State, require_client
from ..views import event_json, iso

router = APIRouter(tags=["clients"])

RECENT_EVENTS = 20


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
