"""The stream front: the per-client hot paths, served as plain ASGI before FastAPI.

    GET  /v1/clients/{name}/assignment         long-poll (`?after=VERSION&wait=SECONDS`)
    GET  /v1/clients/{name}/assignment/stream  SSE, resumes from `Last-Event-ID`
    POST /v1/clients/{name}/events             a switcher's report (probe, switch, ...)

These are the only implementations of the three routes. They skip FastAPI's routing, dependency
and exception layers on purpose: an idle stream or long-poll then holds a few small frames
instead of a deep stack (10,000 of them stay within the memory goal, and bench/responder.py
notifies all 10,000 in well under a second), and a probe report costs a fraction of a
millisecond. Auth, limits and errors are the same functions the routers' dependencies use.
`openapi.py` beside this file documents the routes in /docs.
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
from ..state import ResponderState
from ..store import StoreError
from ..views import assignment_json

MAX_WAIT = 60.0  # seconds a long-poll may wait
# SSE comment interval; the environment override exists for tests (15 s is the contract).
KEEPALIVE_SECONDS = float(os.environ.get("WGFO_SSE_KEEPALIVE_SECONDS", "15"))

Headers = dict[str, str]
Handler = Callable[[ResponderState, str, Scope, Receive, Headers],
                   Awaitable[Callable[[Scope, Receive, Send], Awaitable[None]]]]


# --------------------------------------------------------------------------- the routes


async def serve_longpoll(state: ResponderState, name: str, scope: Scope, receive: Receive,
                         headers: Headers) -> JSONResponse:
    """With `after`, answer once version > after or `wait` seconds passed (at most 60); 200
    with the current assignment either way. Without `after`, or with `wait=0`, at once."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    after = _query_number(query, "after", int)
    wait = min(_query_number(query, "wait", float) or 0.0, MAX_WAIT)
    a = state.assignments[name]
    if after is None or a.version > after or wait <= 0:
        return JSONResponse(assignment_json(a))
    hub = state.hub
    sub = hub.subscribe(name)
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
    return JSONResponse(assignment_json(state.assignments[name]))


async def serve_stream(state: ResponderState, name: str, scope: Scope, receive: Receive,
                       headers: Headers) -> SSEStream:
    """Server-Sent Events: `id: VERSION`, `event: assignment`, `data: JSON`; `: keepalive`
    every 15 s. Resumes from the `Last-Event-ID` header (or the `last_event_id` parameter)."""
    raw = headers.get("last-event-id")
    if raw is None:
        raw = (parse_qs(scope.get("query_string", b"").decode("latin-1"))
               .get("last_event_id") or [None])[0]
    last_id = None
    if raw is not None:
        try:
            last_id = int(raw.strip())
        except ValueError:
            raise ApiError(400, "Last-Event-ID must be an assignment version") from None
    return SSEStream(state, name, last_id)


async def serve_report(state: ResponderState, name: str, scope: Scope, receive: Receive,
                       headers: Headers) -> JSONResponse:
    """One client report (`wg_failover.wire.ClientEvent`) → 202 {"accepted": true}."""
    raw = await read_json_body(receive, headers.get("content-length"))
    try:
        ev = ClientEvent.validate_python(raw)
    except ValidationError as exc:
        raise ApiError(422, validation_detail(exc)) from None
    await take_report(state, name, ev)
    return JSONResponse({"accepted": True}, status_code=202)


class SSEStream:
    """One SSE stream written straight to ASGI: one coroutine and one tiny disconnect watcher
    (StreamingResponse would add a task group per stream; this stays lean at 10,000)."""

    __slots__ = ("state", "client", "last_id")

    def __init__(self, state: ResponderState, client: str, last_id: int | None):
        self.state, self.client, self.last_id = state, client, last_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.state.hub
        sub = hub.subscribe(self.client)
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
                await send(_sse_chunk(assignment_json(a)))
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
        raise ApiError(422, [{"loc": ["query", key], "msg": f"Input should be {what}"}])
    return value


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
        try:
            check_client(state, bearer_token(headers.get("authorization")), m.group(1))
            return await handler(state, m.group(1), scope, receive, headers)
        except (ApiError, StoreError) as exc:
            return error_response(exc)
