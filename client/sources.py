"""Where assignments come from. The switcher only knows the `AssignmentSource` interface.

`HttpAssignmentSource` follows the responder: SSE (`/assignment/stream`, resumed with
`Last-Event-ID`), falling back to long-poll (`/assignment?after=V&wait=S`) when the responder or a
proxy on the way does not do SSE; reconnects with bounded exponential backoff and jitter.
`client.mqtt_source.MqttAssignmentSource` (`--mqtt`) plugs in beside it with the same
`run(deliver, after)` method.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from wg_failover.backoff import Backoff
from wg_failover.wire import Assignment, AssignmentError, parse_assignment

log = logging.getLogger("wg_failover.switcher")

Deliver = Callable[[Assignment], None]


class AssignmentSource(Protocol):
    """Anything that yields the client's assignments: the responder over HTTP, or MQTT.

    `run` delivers every assignment it sees (the switcher drops old versions itself), resumes
    after the version `after()` returns, and keeps going (reconnecting) until cancelled.
    """

    async def run(self, deliver: Deliver, after: Callable[[], int]) -> None: ...


@dataclass
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass
class SseParser:
    """The text/event-stream format (WHATWG HTML, "server-sent events"), one line at a time."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    last_id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data and not self._event:
                return None
            ev = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            if self._id is not None:
                self.last_id = self._id
            self._event, self._data, self._id = "", [], None
            return ev
        if line.startswith(":"):
            return None  # a comment: keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


class AuthError(Exception):
    pass


class NoSse(Exception):
    """The server answered, but not with an event stream: use long-poll."""


class HttpAssignmentSource:
    def __init__(self, base_url: str, client: str, token: str | None, *,
                 longpoll_wait: float = 25.0, read_timeout: float = 45.0,
                 backoff: Backoff | None = None,
                 on_connected: Callable[[bool], None] | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.longpoll_wait = longpoll_wait
        self.read_timeout = read_timeout
        self.backoff = backoff or Backoff()
        self.on_connected = on_connected or (lambda _up: None)
        self.mode = "sse"

    @property
    def stream_url(self) -> str:
        return f"{self.base}/v1/clients/{self.client}/assignment/stream"

    @property
    def poll_url(self) -> str:
        return f"{self.base}/v1/clients/{self.client}/assignment"

    def _parse(self, text: str) -> Assignment | None:
        try:
            return parse_assignment(json.loads(text), self.client)
        except (ValueError, AssignmentError) as exc:
            log.warning("responder: ignoring an unusable assignment: %s", exc)
            return None

    async def fetch_current(self, http: httpx.AsyncClient) -> Assignment | None:
        """The current assignment, without waiting (for `--once`)."""
        r = await http.get(self.poll_url, headers=self.headers, timeout=5.0)
        if r.status_code in (401, 403):
            raise AuthError(f"responder refused the token ({r.status_code})")
        if r.status_code != 200:
            return None
        return self._parse(r.text)

    async def run(self, deliver: Deliver, after: Callable[[], int]) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
            while True:
                try:
                    if self.mode == "sse":
                        await self._sse(http, deliver, after)
                        reason = "stream ended"
                    else:
                        await self._longpoll(http, deliver, after)
                        continue
                except asyncio.CancelledError:
                    raise
                except NoSse as exc:
                    log.info("responder: no event stream (%s); falling back to long-poll", exc)
                    self.mode = "longpoll"
                    continue
                except AuthError as exc:
                    reason = str(exc)
                    self.backoff.attempt = max(self.backoff.attempt, 6)  # no point hurrying
                except (httpx.HTTPError, OSError) as exc:
                    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                except Exception as exc:  # noqa: BLE001 - the fast path must outlive any surprise
                    log.exception("responder: unexpected error")
                    reason = f"unexpected {type(exc).__name__}"
                self.on_connected(False)
                delay = self.backoff.next()
                log.info("responder: %s; reconnecting in %.1f s (%s)", reason, delay, self.mode)
                await asyncio.sleep(delay)

    async def _sse(self, http: httpx.AsyncClient, deliver: Deliver,
                   after: Callable[[], int]) -> None:
        headers = dict(self.headers, Accept="text/event-stream")
        version = after()
        if version > 0:
            headers["Last-Event-ID"] = str(version)
        timeout = httpx.Timeout(10.0, read=self.read_timeout)
        async with http.stream("GET", self.stream_url, headers=headers, timeout=timeout) as r:
            if r.status_code in (401, 403):
                raise AuthError(f"responder refused the token ({r.status_code})")
            ctype = r.headers.get("content-type", "")
            if r.status_code in (404, 405, 406, 501) or (
                    r.status_code == 200 and not ctype.startswith("text/event-stream")):
                raise NoSse(f"HTTP {r.status_code} {ctype}".strip())
            if r.status_code != 200:
                raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request,
                                            response=r)
            self.on_connected(True)
            self.backoff.reset()
            parser = SseParser()
            async for line in r.aiter_lines():
                ev = parser.feed(line)
                if ev is None or ev.event != "assignment":
                    continue
                a = self._parse(ev.data)
                if a is not None:
                    deliver(a)

    async def _longpoll(self, http: httpx.AsyncClient, deliver: Deliver,
                        after: Callable[[], int]) -> None:
        before = after()
        params = {"after": str(before), "wait": f"{self.longpoll_wait:g}"}
        timeout = httpx.Timeout(10.0, read=self.longpoll_wait + 15)
        r = await http.get(self.poll_url, params=params, headers=self.headers, timeout=timeout)
        if r.status_code in (401, 403):
            raise AuthError(f"responder refused the token ({r.status_code})")
        if r.status_code in (204, 304):
            self.on_connected(True)
            return
        if r.status_code != 200:
            raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
        self.on_connected(True)
        self.backoff.reset()
        a = self._parse(r.text)
        if a is not None:
            deliver(a)
            if a.version <= before:
                # An answer that is not newer came back at once: do not spin on it.
                await asyncio.sleep(min(1.0, self.longpoll_wait))
