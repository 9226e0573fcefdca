"""Operations: `/healthz`, `/readyz`, `/metrics`, `GET /v1/targets` (Prometheus http_sd) and
`GET /v1/events` (the event log, admin token). /metrics stays open, as an exporter's does: it
holds counts and states by worker and client name, no addresses and no tokens."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wg_failover.wire import MAX_VERSION, EventRecord, EventsPage

from ..apidoc import errors
from ..deps import State, require_admin, require_reader
from ..models import Health, Readiness, TargetGroup
from ..views import event_json

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz(request: Request) -> Health:
    state = getattr(request.app.state, "responder", None)
    return Health(ok=True, epoch=state.epoch if state is not None else None)


@router.get("/readyz", responses={503: {"model": Readiness, "description": "not ready"}})
async def readyz(request: Request, response: Response) -> Readiness:
    """200 once the state is loaded and planned and the store takes commits; 503 with the
    reason otherwise (e.g. the disk is full: reads still work). `leader`: this replica leads
    (always, on SQLite); a follower that is caught up is ready too (it serves reads); a standby
    that is not, or a replica that cannot reach its database, is not ready."""
    state = getattr(request.app.state, "responder", None)
    ready, reason = state.readiness() if state is not None else (False, "starting")
    leader = True  # SQLite: one process, always the leader
    lead = getattr(request.app.state, "leadership", None)  # replicas on PostgreSQL (leader.py)
    if lead is not None:
        ready, leader, reason = lead.readiness()
        state = lead.served()  # the leader's state, or a follower's
    response.status_code = 200 if ready else 503
    return Readiness(ready=ready, leader=leader, epoch=state.epoch if state is not None else None,
                     reason=reason)


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text exposition format",
    "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.collector_registry),
                    media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/targets", dependencies=[Depends(require_reader)], responses=errors(401))
async def targets(state: State) -> list[TargetGroup]:
    out = []
    for w in state.fleet.workers:
        labels = {"worker": w.name}
        if w.region:
            labels["region"] = w.region
        out.append(TargetGroup(targets=[w.exporter], labels=labels))
    return out


@router.get("/v1/events", dependencies=[Depends(require_admin)],
            responses=errors(401, 422, 503))
async def events(state: State, after: Annotated[int, Query(ge=0, le=MAX_VERSION)] = 0,
                 limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> EventsPage:
    rows = await asyncio.to_thread(state.store.events, after, limit)
    page = [EventRecord.model_validate(event_json(e)) for e in rows]
    return EventsPage(events=page, last_id=page[-1].id if page else after)
