"""The stream front: the per-client hot paths, served as plain ASGI before FastAPI.

    GET  /v1/clients/{name}/assignment         long-poll (`?after=VERSION&wait=SECONDS&epoch=E`)
    GET  /v1/clients/{name}/assignment/stream  SSE, resumes from `Last-Event-ID` (`?epoch=E`)
    POST /v1/clients/{name}/events             a switcher's report (probe, switch, ...)

These are the only implementations of the three routes. They skip FastAPI's routing, dependency
and exception layers on purpose: an idle stream or long-poll then holds a few small frames
instead of a deep stack (10,000 of them stay within the memory goal, and bench/responder.py
notifies all 10,000 in well under a second), and a probe report costs a fraction of a
millisecond. Auth, limits and errors are the same functions the routers' dependencies use.
`openapi.py` beside this file documents the routes in /docs.

`epoch=E` is the store epoch a follower last saw: when it is not the store's (the database was
lost or replaced, versions started again at 1), `after` and `Last-Event-ID` belong to a store
that is gone, so they are ignored and the current assignment is answered at once. A client holds
at most `--max-streams-per-client` streams and long-polls (a newer one closes the oldest) and may
send `--report-rate` reports a second (429 with Retry-After past that; limits.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import ValidationError
from starlette.datastructures import URL
from starlette.types import ASGIApp, Receive, Scope, Send

from wg_failover.wire import ClientEvent

from ..deps import check_client
from ..http import ApiError, bearer_token, error_response, read_json_body, validation_detail
from ..intake.clients import take_report
from ..limits import ClientGuard, Limits, advised_heartbeat, retry_after
from ..state import ResponderState
from ..store import StoreError

MAX_WAIT = 60.0  # seconds a long-poll may wait
# SSE comment interval; the environment override exists for tests (15 s is the contract).
KEEPALIVE_SECONDS = float(os.environ.get("WGFO_SSE_KEEPALIVE_SECONDS", "15"))

EPOCH_RE = re.compile(r"^[0-9a-f]{8,32}$")  # wire.Epoch
REPLANNING = ("switch", "rejected")  # reports that re-plan every client

Headers = dict[str, str]
Handler = Callable[[ResponderState, ClientGuard, str, Scope, Receive, Headers],
                   Awaitable[Callable[[Scope, Receive, Send], Awaitable[None]]]]


# --------------------------------------------------------------------------- the routes


async def serve_longpoll(state: ResponderState, guard: ClientGuard, name: str, scope: Scope,
                         receive: Receive, headers: Headers) -> JSONResponse:
    """With `after`, answer once version > after or `wait` seconds passed (at most 60); 200
    with the current assignment either way. Without `after`, or with `wait=0`, or with an
    `epoch` that is not the store's, at once."""
    # Blank values kept: `after=` is not a version (422), as FastAPI's routes answer too.
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    after = _query_number(query, "after", int)
    wait = min(_query_number(query, "wait", float) or 0.0, MAX_WAIT)
    epoch = _query_epoch(query)
    current = state.current_assignment(name)
    if after is None or current["version"] > after or wait <= 0 or \
            (epoch is not None and epoch != state.epoch):
        return JSONResponse(current)
    hub = state.hub
    sub = hub.subscribe(name, guard.limits.max_streams_per_client)
    deadline = time.monotonic() + wait
    try:
        while not sub.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await sub.wait(left)
            while sub.pending:
                item, t0 = sub.pending.popleft()
                if item["version"] > after:
                    hub.observe("longpoll", t0)
                    return JSONResponse(item)
    finally:
        hub.unsubscribe(sub)
    if sub.closed and not sub.replaced:
        # The replica stopped serving this state (it stepped down, or a follower lost its
        # database): what it holds may be stale, so no answer from it (leader.py).
        raise StoreError("this replica stopped serving; retry (another responder)")
    return JSONResponse(state.current_assignment(name))


async def serve_stream(state: ResponderState, guard: ClientGuard, name: str, scope: Scope,
                       receive: Receive, headers: Headers) -> SSEStream:
    """Server-Sent Events: `id: VERSION`, `event: assignment`, `data: JSON`; `: keepalive`
    every 15 s. Resumes from the `Last-Event-ID` header (or the `last_event_id` parameter),
    unless `epoch` is given and is not the store's: then the current assignment comes first."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    # The header wins over the parameter, but each one given must be a version (/docs says so).
    given = [(query.get("last_event_id") or [None])[0], headers.get("last-event-id")]
    last_id = None
    for raw in given:
        if raw is not None:
            try:
                last_id = int(raw.strip())
            except ValueError:
                raise ApiError(400, "Last-Event-ID must be an assignment version") from None
    epoch = _query_epoch(query)
    if epoch is not None and epoch != state.epoch:
        last_id = None  # a version of a store that is gone: this one's current comes first
    return SSEStream(state, name, last_id, guard.limits.max_streams_per_client)


async def serve_report(state: ResponderState, guard: ClientGuard, name: str, scope: Scope,
                       receive: Receive, headers: Headers) -> JSONResponse:
    """One client report (`wg_failover.wire.ClientEvent`) → 202 `wire.ReportAccepted` (with
    the heartbeat advice for the fleet's size, `--report-budget`); 429 with
    Retry-After past the client's report rate (before the body is read), or past its smaller
    rate of the reports that re-plan every client (switch, rejected)."""
    if wait := guard.reports.take(name):
        _limited(state, wait, f"more than {guard.limits.report_rate:g} reports a second")
    raw = await read_json_body(receive, headers.get("content-length"))
    try:
        # strict: JSON types as the schema in /docs says them (`"rtt_ms": false` is no time).
        ev = ClientEvent.validate_python(raw, strict=True)
    except ValidationError as exc:
        raise ApiError(422, validation_detail(exc)) from None
    if ev.type in REPLANNING and (wait := guard.replans.take(name)):
        _limited(state, wait,
                 f"more than {guard.limits.replan_rate:g} switch or rejected reports a second")
    await take_report(state, name, ev)
    return JSONResponse({"accepted": True, "heartbeat_s": advised_heartbeat(
        len(state.prefs), guard.limits.report_budget)}, status_code=202)


def _limited(state: ResponderState, wait: float, what: str) -> None:
    state.metrics.reports_limited.inc()
    raise ApiError(429, f"{what}; retry later", {"Retry-After": retry_after(wait)})


class SSEStream:
    """One SSE stream written straight to ASGI: one coroutine and one tiny disconnect watcher
    (StreamingResponse would add a task group per stream; this stays lean at 10,000)."""

    __slots__ = ("state", "client", "last_id", "limit")

    def __init__(self, state: ResponderState, client: str, last_id: int | None, limit: int):
        self.state, self.client, self.last_id, self.limit = state, client, last_id, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.state.hub
        sub = hub.subscribe(self.client, self.limit)
        hub.streams_open += 1

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    sub.close()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no"),
            ]})
            sent = self.last_id if self.last_id is not None else -1
            a = self.state.assignments.get(self.client)
            if a is not None and a.version > sent:
                await send(_sse_chunk(self.state.assignment_json(a)))
                sent = a.version
            else:
                await send(_comment(b": connected\n\n"))
            while not sub.closed:
                await sub.wait(KEEPALIVE_SECONDS)
                if sub.closed:
                    break
                if not sub.pending:
                    await send(_comment(b": keepalive\n\n"))
                    continue
                while sub.pending:
                    item, t0 = sub.pending.popleft()
                    if item["version"] > sent:
                        await send(_sse_chunk(item))
                        sent = item["version"]
                        hub.observe("sse", t0)
            if sub.replaced:
                await send(_comment(b": closed: this client opened a newer stream\n\n"))
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        finally:
            hub.streams_open -= 1
            hub.unsubscribe(sub)
            watcher.cancel()


def _sse_chunk(a: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(a, separators=(",", ":"))
    body = f"id: {a['version']}\nevent: assignment\ndata: {data}\n\n".encode()
    return {"type": "http.response.body", "body": body, "more_body": True}


def _comment(body: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": True}


def _query_number(query: dict[str, list[str]], key: str, kind: type) -> Any:
    values = query.get(key)
    if not values:
        return None
    try:
        value = kind(values[0])
    except ValueError:
        value = None
    if value is None or (kind is float and not value >= 0) or value != value:
        what = "an integer" if kind is int else "a number >= 0"
        raise ApiError(422, [{"loc": ["query", key], "msg": f"Input should be {what}",
                              "type": "int_parsing" if kind is int else "float_parsing"}])
    return value


def _query_epoch(query: dict[str, list[str]]) -> str | None:
    values = query.get("epoch")
    if not values:
        return None
    if not EPOCH_RE.fullmatch(values[0]):
        raise ApiError(422, [{"loc": ["query", "epoch"], "type": "string_pattern_mismatch",
                              "msg": "Input should be the store's epoch: 8-32 lowercase hex "
                                     "digits"}])
    return values[0]


# --------------------------------------------------------------------------- the front

CLIENTS = "/v1/clients/"
# (path, method, handler); a trailing slash is redirected, as FastAPI does for its own routes.
ROUTES: tuple[tuple[re.Pattern[str], str, Handler], ...] = (
    (re.compile(r"^/v1/clients/([^/]+)/assignment(/?)$"), "GET", serve_longpoll),
    (re.compile(r"^/v1/clients/([^/]+)/assignment/stream(/?)$"), "GET", serve_stream),
    (re.compile(r"^/v1/clients/([^/]+)/events(/?)$"), "POST", serve_report),
)


class StreamFront:
    """ASGI middleware in front of FastAPI: serves the routes above, passes the rest on."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.guard: ClientGuard | None = None  # made from app.state.limits at first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(CLIENTS):
            for pattern, method, handler in ROUTES:
                m = pattern.match(path)
                if m is not None:
                    state = getattr(scope["app"].state, "responder", None)
                    if state is not None:
                        resp = await self._route(state, scope, receive, m, method, handler)
                        await resp(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)

    async def _route(self, state: ResponderState, scope: Scope, receive: Receive,
                     m: re.Match[str], method: str,
                     handler: Handler) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        if m.group(2):
            url = URL(scope=scope)
            return RedirectResponse(url.replace(path=url.path.rstrip("/")))
        if scope["method"] != method:
            return JSONResponse({"detail": "Method Not Allowed"}, status_code=405,
                                headers={"Allow": method})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self.guard is None:
            self.guard = ClientGuard(getattr(scope["app"].state, "limits", None) or Limits())
        try:
            check_client(state, bearer_token(headers.get("authorization")), m.group(1))
            return await handler(state, self.guard, m.group(1), scope, receive, headers)
        except (ApiError, StoreError) as exc:
            return error_response(exc)
