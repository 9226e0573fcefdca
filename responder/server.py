"""The responder's HTTP server: uvicorn (httptools, or h11) with limits that hold without a proxy
in front.

uvicorn alone does not bound what a peer can hold (hardening finding 5): a connection that sends
nothing, or half a request line, is never timed out (its keep-alive timer starts only after a
first response), and `limit_concurrency` only looks at a connection once it has sent a complete
request, so idle sockets pile up until accept() fails with EMFILE; then asyncio's accept loop
logs a traceback per attempt, up to `backlog` times per turn of the loop. So:

- **A connection cap under the file limit** (`--max-connections`): at the cap, a new connection
  takes the place of the connection idle the longest (none sent a complete request yet, or one
  between keep-alive requests); only when every connection is busy (streams, requests being
  served) is it answered `503` with `Retry-After` and closed. Idle sockets cannot keep anybody
  out, and the process stays below its file limit, so accept() does not fail.
- **A request timeout** (`--request-timeout`): from a request's first byte (or the connection's
  start) to its last byte; a half-sent request line, headers or body is closed after it.
- **A write timeout**: a peer that stops reading our answers (a full send buffer) for
  DEFAULT_WRITE_TIMEOUT seconds is dropped.
- **A request head cap** (MAX_HEAD, as h11's default): a request line and headers larger than
  it are answered 400 and the connection closed; httptools alone has no cap.
- **Log lines at a bounded rate**: the loop's exception handler and uvicorn's "Invalid HTTP
  request" lines go through limits.py, one line per kind every few seconds with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections import Counter
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, httptools

from .limits import LogLimiter, RepeatFilter
from .metrics import ConnectionStats

log = logging.getLogger("wg_failover.responder")
limited = LogLimiter(log)

_BUSY_BODY = b'{"detail": "too many connections; retry later"}'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(_BUSY_BODY)) + _BUSY_BODY
REFUSING_MAX = 256  # connections being answered 503 at once; past that, closed without a word
REFUSE_LINGER = 2.0  # seconds to let a refused peer read the 503 before the socket closes
RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
SWEEP_EVERY = 0.25  # seconds between looks at incomplete requests (a timeout closes this late)
MAX_HEAD = 16 * 1024  # bytes of request line and headers (h11's default limit)


def file_limit_reserve(nofile: int) -> int:
    """File descriptors kept for everything but client connections: the store's files, the
    listening sockets, outbound webhooks and MQTT, refused connections being answered."""
    return max(100, nofile // 10)


class ConnectionLimiter:
    """Every connection of the server, in the order they came, and which of them are idle."""

    def __init__(self, limit: int, request_timeout: float, write_timeout: float):
        self.limit = limit
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.conns: dict[Limited, None] = {}
        self.idle: dict[Limited, None] = {}  # idle the longest first
        # Connections whose request is incomplete (or that sent nothing yet), with the monotonic
        # time it must be complete by. One sweep a SWEEP_EVERY closes the late ones: cheaper on
        # the hot path than a timer per request (a dict insert and pop instead).
        self.deadlines: dict[Limited, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.refusing = 0
        self.closed: Counter[str] = Counter({"cap": 0, "idle": 0, "timeout": 0,
                                             "write-stall": 0})

    def stats(self) -> ConnectionStats:
        return ConnectionStats(open=len(self.conns), limit=self.limit, closed=dict(self.closed))

    def admit(self, proto: Limited) -> bool:
        if len(self.conns) >= self.limit:
            victim = next(iter(self.idle), None)
            if victim is None:
                self.closed["cap"] += 1
                limited.warning("cap", "%d connections open, all busy: answering 503 "
                                "(--max-connections)", len(self.conns))
                return False
            self.closed["idle"] += 1
            victim.drop()
        self.conns[proto] = None
        self.idle[proto] = None
        return True

    def busy(self, proto: Limited) -> None:
        self.idle.pop(proto, None)

    def idle_again(self, proto: Limited) -> None:
        if proto in self.conns:
            self.idle.pop(proto, None)
            self.idle[proto] = None

    def forget(self, proto: Limited) -> None:
        self.conns.pop(proto, None)
        self.idle.pop(proto, None)
        self.deadlines.pop(proto, None)

    def arm(self, proto: Limited) -> None:
        if proto not in self.deadlines:
            self.deadlines[proto] = time.monotonic() + self.request_timeout
            if self._sweeper is None:
                self._sweeper = proto.loop.call_later(SWEEP_EVERY, self._sweep, proto.loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        late = [p for p, t in self.deadlines.items() if t <= now]
        for p in late:
            self.closed["timeout"] += 1
            p.drop()
        self._sweeper = loop.call_later(SWEEP_EVERY, self._sweep, loop) if self.deadlines \
            else None


class Limited:
    """Mixed into uvicorn's HTTP protocols: a connection admitted by a ConnectionLimiter and
    timed while a request is incomplete. `limiter` is set on the per-server subclass
    (`protocol_class`)."""

    limiter: ConnectionLimiter
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._stall: asyncio.TimerHandle | None = None
        self._refused: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ admission

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self.limiter.admit(self):
            self._refuse(transport)
            return
        super().connection_made(transport)  # type: ignore[misc]
        self.limiter.arm(self)

    def _refuse(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        lim = self.limiter
        if lim.refusing >= REFUSING_MAX:
            transport.abort()
            return
        lim.refusing += 1
        transport.write(BUSY)
        # Half-close and read (and drop) what the peer sent, then close: closing a socket with
        # unread input sends a reset, which can reach the peer before our 503 does.
        if transport.can_write_eof():
            transport.write_eof()
        self._refused = self.loop.call_later(REFUSE_LINGER, transport.abort)

    def drop(self) -> None:
        """Close now (an idle connection making room, a timeout)."""
        self.limiter.forget(self)
        if not self.transport.is_closing():
            self.transport.close()

    # ------------------------------------------------------------------ parser events

    def data_received(self, data: bytes) -> None:
        if self._refused is not None:
            return  # a refused peer's request: read and dropped
        if self.cycle is None or self.cycle.response_complete:
            self.limiter.arm(self)  # the first byte of a new request on a kept-alive connection
        super().data_received(data)  # type: ignore[misc]

    def _head_complete(self) -> None:
        """A complete request head: the app serves it (no longer idle)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self.limiter.busy(self)
            if not cycle.more_body:
                self.limiter.deadlines.pop(self, None)  # ... and its body is in

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]  # may start a pipelined request
        if self.cycle is not None and self.cycle.response_complete:
            self.limiter.deadlines.pop(self, None)
            if not self.transport.is_closing():
                self.limiter.idle_again(self)

    def eof_received(self) -> bool | None:
        if self._refused is not None:
            self.transport.close()  # the refused peer read our answer and closed
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused is not None:
            self._refused.cancel()
            self.limiter.refusing -= 1
            return
        if self._stall is not None:
            self._stall.cancel()
        self.limiter.forget(self)
        super().connection_lost(exc)  # type: ignore[misc]

    # ------------------------------------------------------------------ timeouts

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self._stall is None:
            self._stall = self.loop.call_later(self.limiter.write_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _write_stalled(self) -> None:
        self._stall = None
        self.limiter.closed["write-stall"] += 1
        self.limiter.forget(self)
        self.transport.abort()  # close() would wait for the buffer the peer does not read


class LimitedH11Protocol(Limited, H11Protocol):
    def handle_events(self) -> None:
        super().handle_events()
        self._head_complete()


class LimitedHttpToolsProtocol(Limited, HttpToolsProtocol):
    _head = 0

    def on_message_begin(self) -> None:
        self._head = 0
        super().on_message_begin()

    def _count(self, n: int) -> None:
        self._head += n
        if self._head > MAX_HEAD:
            # Raised through the parser's feed_data: uvicorn answers 400 and closes.
            raise httptools.HttpParserError(f"request head over {MAX_HEAD} bytes")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._head_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.limiter.deadlines.pop(self, None)


def protocol_class(limiter: ConnectionLimiter, parser: str = "httptools") -> type[Limited]:
    """The server's protocol (`--http`): httptools (C, llhttp) costs 170-190 us of CPU per
    request where h11 (pure Python) costs 270-290 (bench/reports.py); h11 stays for a peer
    that only h11 parses the way it expects."""
    base = LimitedHttpToolsProtocol if parser == "httptools" else LimitedH11Protocol
    return type(base.__name__, (base,), {"limiter": limiter})


def loop_exception_handler(limiter: ConnectionLimiter) -> Any:
    """asyncio's exception handler, with one line per kind every few seconds. Out of file
    descriptors (EMFILE) it says so in one line and how many connections are open."""
    kinds = LogLimiter(logging.getLogger("asyncio"))

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", "unhandled exception in the event loop"))
        if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
            limited.error(f"accept:{exc.errno}", "%s: %s (%d connections open, limit %d); "
                          "asyncio retries in 1 s", message, exc.strerror, len(limiter.conns),
                          limiter.limit)
            return
        held = kinds.allow(message[:100])
        if held is not None:
            loop.default_exception_handler(context)
            if held[0]:
                kinds.logger.error("(%d more like it in the last %.0f s)", *held)

    return handle


class Server(uvicorn.Server):
    """uvicorn's server with the responder's connection limits and shutdown order."""

    def __init__(self, config: uvicorn.Config, limiter: ConnectionLimiter):
        super().__init__(config)
        self.limiter = limiter

    async def startup(self, sockets: Any = None) -> None:
        asyncio.get_running_loop().set_exception_handler(loop_exception_handler(self.limiter))
        for name in ("uvicorn.error", "asyncio"):
            logging.getLogger(name).addFilter(RepeatFilter())
        await super().startup(sockets)
        state = self._state()
        if state is not None:
            state.metrics.watch_connections(self.limiter.stats)

    def _state(self) -> Any:
        app = getattr(self.config, "app", None)
        return getattr(getattr(app, "state", None), "responder", None)

    async def shutdown(self, sockets: Any = None) -> None:
        # End the SSE streams first: uvicorn would otherwise wait for them (they never end on
        # their own) until its graceful-shutdown timeout. Switchers reconnect elsewhere.
        state = self._state()
        if state is not None:
            state.ready = False
            with contextlib.suppress(Exception):
                await state.hub.stop()
        await super().shutdown(sockets)
