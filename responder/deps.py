"""Auth and limits as FastAPI dependencies, and the checks behind them (which the stream front,
running before FastAPI, calls directly).

Tokens: `Authorization: Bearer TOKEN`, compared as sha256 in constant time with the fleet's
hashes. The alert token posts webhooks; the admin token drains and reads everything; the read
token reads the inventory (workers, Prometheus targets) only; a client's own token reads and
reports for that client only. Only /metrics, /healthz and /readyz answer without a token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from pydantic import ValidationError

from wg_failover.tokens import token_matches

from .http import ApiError, bearer_token, read_json_body, unauthorized, validation_detail
from .models import AMPayload
from .state import ResponderState

# The dependencies are `async def` although they never wait: FastAPI runs a plain `def`
# dependency in a worker thread, two thread hand-offs per request that cost the webhook path more
# than half its throughput (bench/responder.py, duplicate deliveries).


async def get_state(request: Request) -> ResponderState:
    return request.app.state.responder


State = Annotated[ResponderState, Depends(get_state)]


async def single_query_values(request: Request) -> None:
    """A query parameter given more than once is refused (422): FastAPI would silently take the
    last one, so `?version=junk&version=0` would pass."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key in seen:
            raise ApiError(422, [{"loc": ["query", key[:100]], "msg": "given more than once",
                                  "type": "value_error"}])
        seen.add(key)


def check_client(state: ResponderState, token: str | None, name: str) -> None:
    """Raise unless `token` may use client `name`'s endpoints (its own token, or admin; the
    admin learns that a client does not exist, anyone else gets 401)."""
    if token_matches(token, state.settings.admin_token_sha256):
        if name not in state.client_by_name:
            raise ApiError(404, f"no client named {name!r}")
        return
    c = state.client_by_name.get(name)
    if c is None or not token_matches(token, c.token_sha256):
        raise unauthorized()


def check_worker(state: ResponderState, token: str | None, name: str) -> None:
    """Raise unless `token` may read worker `name`'s peers (its agent's token, or admin)."""
    if token_matches(token, state.settings.admin_token_sha256):
        if name not in state.worker_by_name:
            raise ApiError(404, f"no worker named {name!r}")
        return
    w = state.worker_by_name.get(name)
    if w is None or not token_matches(token, w.token_sha256):
        raise unauthorized()


async def require_worker(name: str, request: Request, state: State) -> str:
    """The path's worker `name`, once the caller may read its peers."""
    check_worker(state, bearer_token(request.headers.get("authorization")), name)
    return name


async def require_admin(request: Request, state: State) -> None:
    token = bearer_token(request.headers.get("authorization"))
    if not token_matches(token, state.settings.admin_token_sha256):
        raise unauthorized()


async def require_reader(request: Request, state: State) -> None:
    """The inventory (worker names, states, exporter addresses) is for Prometheus and the
    operators: the read token or the admin token."""
    token = bearer_token(request.headers.get("authorization"))
    if not (token_matches(token, state.settings.read_token_sha256)
            or token_matches(token, state.settings.admin_token_sha256)):
        raise unauthorized()


async def require_client(name: str, request: Request, state: State) -> str:
    """The path's client `name`, once the caller may use it."""
    check_client(state, bearer_token(request.headers.get("authorization")), name)
    return name


async def require_alert_token(request: Request, state: State) -> None:
    token = bearer_token(request.headers.get("authorization"))
    if not token_matches(token, state.settings.alert_token_sha256):
        state.metrics.deliveries.labels(outcome="unauthorized").inc()
        raise unauthorized()


async def alert_payload(request: Request, state: State) -> AMPayload:
    """The webhook body, size-limited and validated; a rejected one counts as `invalid`."""
    try:
        raw = await read_json_body(request.receive, request.headers.get("content-length"))
        return AMPayload.model_validate(raw)
    except ApiError:
        state.metrics.deliveries.labels(outcome="invalid").inc()
        raise
    except ValidationError as exc:
        state.metrics.deliveries.labels(outcome="invalid").inc()
        raise ApiError(422, validation_detail(exc)) from None
