"""Each node's own view of the live fleet, for its follower: `GET /v1/workers/{name}/peers` (the
worker's agent token, or admin) and `GET /v1/clients/{name}/view` (the client's token, or admin),
each as JSON with a long-poll (`?version=V&wait=S`) and as a stream of server-sent events
(`.../stream`: one event at once, then one per fleet change that changes the view).

A view holds nothing about other nodes but what its follower needs: a worker's peers (clients'
names, public keys, addresses), a client's workers. A node that leaves the fleet gets 401 on its
next request and its open streams end. A stream also ends when the state it reads stops being
the one this replica serves (a replica that stepped down, a follower that became the leader or
lost its database: leader.py), so its follower reconnects to fresh state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated
from weakref import WeakKeyDictionary

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse

from wg_failover.wire import ClientView, WorkerPeers

from .. import fleetdoc
from ..apidoc import errors
from ..deps import State, require_client, require_worker
from ..http import ApiError
from ..state import ResponderState

router = APIRouter(tags=["views"])

KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream (proxies close idle ones)
MAX_WAIT = 60.0


# Each view as JSON, made once per fleet version however many requests and streams ask for it
# (a worker's peers at 10,000 clients are ~1 MiB), and a worker's peers from each client's entry
# made once (fleetdoc.PeerFragments: ~4 ms instead of ~100 ms per worker and change).
_cache: WeakKeyDictionary[ResponderState, dict[tuple[str, str], tuple[int, str]]] = \
    WeakKeyDictionary()
_fragments: WeakKeyDictionary[ResponderState, fleetdoc.PeerFragments] = WeakKeyDictionary()


def _cached(state: ResponderState, kind: str, name: str, make: Callable[[], str]) -> str:
    views = _cache.setdefault(state, {})
    version = state.fleet_doc.version
    hit = views.get((kind, name))
    if hit is not None and hit[0] == version:
        return hit[1]
    if len(views) > 2 * (len(state.worker_by_name) + len(state.client_by_name)) + 100:
        views.clear()  # nodes that left the fleet
    body = make()
    views[(kind, name)] = (version, body)
    return body


def worker_peers(state: ResponderState, name: str) -> str:
    """The worker's peers as JSON (wire.WorkerPeers); 404 once it left the fleet."""
    w = state.worker_by_name.get(name)
    if w is None:
        raise ApiError(404, f"no worker named {name!r}")
    fragments = _fragments.setdefault(state, fleetdoc.PeerFragments())
    return _cached(state, "worker", name, lambda: fragments.document(
        state.fleet, w, state.fleet_doc.version, state.epoch))


def client_view(state: ResponderState, name: str) -> str:
    """The client's view as JSON (wire.ClientView); 404 once it left the fleet."""
    c = state.client_by_name.get(name)
    if c is None:
        raise ApiError(404, f"no client named {name!r}")
    return _cached(state, "client", name, lambda: fleetdoc.view_of(
        state.fleet, c, state.fleet_doc.version, state.epoch).model_dump_json())


async def _long_poll(state: ResponderState, make: Callable[[], str],
                     version: int | None, wait: float) -> Response:
    """The view once the fleet version differs from `version` (or after `wait` seconds)."""
    if version is not None and version == state.fleet_doc.version and wait > 0:
        changed = state.fleet_changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), min(wait, MAX_WAIT))
    return Response(make(), media_type="application/json")


def _serves(app: FastAPI, state: ResponderState) -> bool:
    """`state` is still the one this replica serves, and it serves (leader.py)."""
    lead = getattr(app.state, "leadership", None)
    return getattr(app.state, "responder", None) is state and (lead is None or lead.serving())


def _sse(request: Request, state: ResponderState, make: Callable[[], str],
         event: str) -> StreamingResponse:
    app = request.app

    async def events() -> AsyncIterator[str]:
        last = None
        while _serves(app, state):
            changed = state.fleet_changed  # taken before reading: no change is missed
            try:
                body = make()
            except ApiError:
                return  # the node left the fleet: its stream ends
            if body != last:
                last = body
                yield f"event: {event}\nid: {state.epoch}:{state.fleet_doc.version}\n" \
                      f"data: {body}\n\n"
            try:
                await asyncio.wait_for(changed.wait(), KEEPALIVE)
            except TimeoutError:
                yield ": keepalive\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


Version = Annotated[int | None, Query(ge=0, le=2**53 - 1)]
Wait = Annotated[float, Query(ge=0, le=MAX_WAIT)]


@router.get("/v1/workers/{name}/peers", responses=errors(401, 404, 422),
            response_model=WorkerPeers)
async def get_peers(state: State, name: Annotated[str, Depends(require_worker)],
                    version: Version = None, wait: Wait = 0) -> Response:
    """Every client allowed on the worker, as its interface's peers."""
    return await _long_poll(state, lambda: worker_peers(state, name), version, wait)


@router.get("/v1/workers/{name}/peers/stream", responses=errors(401, 404),
            response_class=StreamingResponse)
async def stream_peers(request: Request, state: State,
                       name: Annotated[str, Depends(require_worker)]) -> StreamingResponse:
    """Server-sent events `peers` (data: WorkerPeers), one per change of the worker's peers."""
    return _sse(request, state, lambda: worker_peers(state, name), "peers")


@router.get("/v1/clients/{name}/view", responses=errors(401, 404, 422),
            response_model=ClientView)
async def get_view(state: State, name: Annotated[str, Depends(require_client)],
                   version: Version = None, wait: Wait = 0) -> Response:
    """The client's address, routes and workers (preference order); nothing of other clients."""
    return await _long_poll(state, lambda: client_view(state, name), version, wait)


@router.get("/v1/clients/{name}/view/stream", responses=errors(401, 404),
            response_class=StreamingResponse)
async def stream_view(request: Request, state: State,
                      name: Annotated[str, Depends(require_client)]) -> StreamingResponse:
    """Server-sent events `view` (data: ClientView), one per change of the client's view."""
    return _sse(request, state, lambda: client_view(state, name), "view")
