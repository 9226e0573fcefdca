"""Where assignments come from. The switcher only knows the `AssignmentSource` interface.

`HttpAssignmentSource` follows the responder: SSE (`/assignment/stream`, resumed with
`Last-Event-ID`), falling back to long-poll (`/assignment?after=V&wait=S`) when the responder or a
proxy on the way does not do SSE; reconnects with bounded exponential backoff and jitter. Both
also send `epoch=E`, the responder store's epoch the switcher last saw, so a responder whose store
was replaced (versions restarted at 1) answers its current assignment at once instead of waiting
for a version past the old store's. Everything read is bounded (`client.bounds`; the SSE reader
is the core's, `wg_failover.sse`).

Several responder URLs (replicas, DESIGN.md "How it grows past one machine") are tried in turn
(`wg_failover.endpoints.Endpoints`): a URL that refuses the connection, times out or answers 5xx
(503: a standby) is passed over at once for the next; the backoff applies only once every URL
failed in a row, and the first URL is tried again after a while away from it.
`client.mqtt_source.MqttAssignmentSource` (`--mqtt`) plugs in beside it with the same
`run(deliver, after, epoch)` method.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Protocol

import httpx

from wg_failover.backoff import Backoff
from wg_failover.endpoints import Endpoints
from wg_failover.sse import SseReader, SseTooLarge
from wg_failover.wire import Assignment, AssignmentError, parse_assignment

from .bounds import (
    MAX_BODY,
    MAX_EVENT,
    MAX_LINE,
    BodyTooLarge,
    LogLimiter,
    WireInputError,
    loads_json,
    shown,
)

log = logging.getLogger("wg_failover.switcher")

Deliver = Callable[[Assignment], None]
EpochOf = Callable[[], str | None]

# A connection that lasted this long was healthy, even if it brought nothing new: the next
# reconnect starts from the shortest backoff again. A shorter one that brought nothing counts as
# a failure, so a responder (or anything posing as one) that answers and hangs up at once, or
# sends garbage, is retried less and less often instead of in a tight loop.
STABLE_SECONDS = 10.0


class AssignmentSource(Protocol):
    """Anything that yields the client's assignments: the responder over HTTP, or MQTT.

    `run` delivers every assignment it sees (the switcher drops old versions itself), resumes
    after the version `after()` returns in the store epoch `epoch()` returns (None: not known
    yet), and keeps going (reconnecting) until cancelled.
    """

    async def run(self, deliver: Deliver, after: Callable[[], int],
                  epoch: EpochOf | None = None) -> None: ...


class AuthError(Exception):
    pass


class NoSse(Exception):
    """The server answered, but not with an event stream: use long-poll."""


def describe(exc: BaseException, ca_file: str | None = None) -> str:
    """One line for a failed request: what went wrong, TLS verification spelled out (it is the
    error an operator must act on: the wrong --ca-file, or not the responder at all)."""
    seen: BaseException | None = exc
    for _ in range(8):  # the cause chain is short; bounded all the same
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            against = f"--ca-file {ca_file}" if ca_file else "the system CAs"
            why = seen.verify_message or seen.reason or "certificate verify failed"
            return (f"TLS: the responder's certificate does not verify against {against} "
                    f"({shown(why, 100)})")
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {shown(seen.reason or seen, 100)}"
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return f"{type(exc).__name__}: {shown(text)}" if text else type(exc).__name__


async def read_body(r: httpx.Response, limit: int = MAX_BODY) -> bytes:
    """A response body, at most `limit` bytes (BodyTooLarge past that, without reading on)."""
    _check_encoding(r)
    length = r.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BodyTooLarge(f"a response body of {length} bytes (at most {limit})")
    buf = bytearray()
    async for chunk in r.aiter_raw():
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge(f"a response body larger than {limit} bytes")
    return bytes(buf)


def _check_encoding(r: httpx.Response) -> None:
    # Requests say `Accept-Encoding: identity` and bodies are read raw: a compressed body would
    # be a way around every size bound (a few kilobytes of gzip unpack to gigabytes).
    enc = r.headers.get("content-encoding", "identity").strip().lower()
    if enc not in ("", "identity"):
        raise WireInputError(f"a compressed body (Content-Encoding {shown(enc, 40)}) although "
                             "identity was asked for")


class HttpAssignmentSource:
    # What the stream's events are called; `client.view.HttpViewSource` follows the client's
    # view the same way, with its own event, URLs and parser.
    EVENT = "assignment"
    # Appended to "responder refused the token": what a refused token means for this source.
    AUTH_HINT = ""

    def __init__(self, base_url: str | Sequence[str], client: str, token: str | None, *,
                 longpoll_wait: float = 25.0, read_timeout: float = 45.0,
                 backoff: Backoff | None = None,
                 on_connected: Callable[[bool], None] | None = None,
                 verify: ssl.SSLContext | bool = True, ca_file: str | None = None,
                 limiter: LogLimiter | None = None) -> None:
        self.eps = Endpoints([base_url] if isinstance(base_url, str) else base_url)
        self.client = client
        self.headers = {"Accept-Encoding": "identity"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.longpoll_wait = longpoll_wait
        self.read_timeout = read_timeout
        self.backoff = backoff or Backoff()
        self.on_connected = on_connected or (lambda _up: None)
        self.verify = verify
        self.ca_file = ca_file  # only to name it when the responder's certificate fails
        self.limiter = limiter or LogLimiter(log)
        self.mode = "sse"

    @property
    def base(self) -> str:
        """The responder URL in use now (one of `eps.urls`)."""
        return self.eps.current()

    @property
    def stream_url(self) -> str:
        return f"{self.base}/v1/clients/{self.client}/assignment/stream"

    @property
    def poll_url(self) -> str:
        return f"{self.base}/v1/clients/{self.client}/assignment"

    def http_client(self, timeout: float = 10.0) -> httpx.AsyncClient:
        """An HTTP client that verifies the responder as configured (--ca-file, --tls-cert)."""
        return httpx.AsyncClient(timeout=httpx.Timeout(timeout), verify=self.verify)

    def _auth_error(self, status: int) -> AuthError:
        return AuthError(f"responder refused the token ({status}){self.AUTH_HINT}")

    def _stream_request(self, version: int, epoch: str | None) -> tuple[dict, dict]:
        """(query, headers) that resume the stream after `version` of store `epoch`."""
        headers = {"Last-Event-ID": str(version)} if version > 0 else {}
        return ({"epoch": epoch} if epoch else {}), headers

    def _poll_params(self, version: int, epoch: str | None) -> dict:
        params = {"after": str(version), "wait": f"{self.longpoll_wait:g}"}
        if epoch:
            params["epoch"] = epoch
        return params

    def _parse(self, data: bytes | str) -> Assignment | None:
        try:
            return parse_assignment(loads_json(data, "assignment"), self.client)
        except (WireInputError, AssignmentError) as exc:
            self.limiter.warning("unusable", "responder: ignoring an unusable assignment: %s",
                                 shown(exc, 200))
            return None

    async def fetch_current(self, http: httpx.AsyncClient) -> Assignment | None:
        """The current assignment, without waiting (for `--once` and a first view): every URL
        in turn until one answers; None when none had one, the last error when none answered."""
        error: Exception | None = None
        for _ in self.eps.urls:
            url = self.base
            try:
                async with http.stream("GET", self.poll_url, headers=self.headers,
                                       timeout=5.0) as r:
                    if r.status_code in (401, 403):
                        raise self._auth_error(r.status_code)
                    if r.status_code >= 500:
                        self.eps.failed(url)  # a standby (503) or a replica in trouble
                        error = None
                        continue
                    self.eps.ok(url)
                    if r.status_code != 200:
                        return None
                    return self._parse(await read_body(r))
            except (httpx.HTTPError, OSError) as exc:
                self.eps.failed(url)
                error = exc
        if error is not None:
            raise error
        return None

    async def run(self, deliver: Deliver, after: Callable[[], int],
                  epoch: EpochOf | None = None) -> None:
        epoch_of: EpochOf = epoch or (lambda: None)
        loop = asyncio.get_running_loop()
        async with self.http_client() as http:
            while True:
                started, url = loop.time(), self.base
                position = (after(), epoch_of())
                level = logging.INFO
                kind = "ended"
                try:
                    if self.mode == "sse":
                        await self._sse(http, deliver, after, epoch_of)
                        reason = "stream ended" if self.base == url else \
                            f"stream ended to go back to {self.base}"
                    else:
                        await self._longpoll(http, deliver, after, epoch_of)
                        continue
                except asyncio.CancelledError:
                    raise
                except NoSse as exc:
                    log.info("responder: no event stream (%s); falling back to long-poll", exc)
                    self.mode = "longpoll"
                    continue
                except AuthError as exc:
                    reason, kind, level = str(exc), "auth", logging.WARNING
                    self.backoff.attempt = max(self.backoff.attempt, 6)  # no point hurrying
                except (WireInputError, SseTooLarge) as exc:
                    reason, level = f"{exc}: dropped the connection", logging.WARNING
                    kind = f"input:{type(exc).__name__}"
                except (httpx.HTTPError, OSError) as exc:
                    reason, kind = describe(exc, self.ca_file), "http"
                    if reason.startswith("TLS"):
                        kind, level = "tls", logging.WARNING
                except Exception as exc:  # noqa: BLE001 - the fast path must outlive any surprise
                    # A bug, not bad input (that is refused above): one line, the traceback only
                    # for whoever asks for it, so a peer that found the bug cannot flood the log.
                    log.debug("responder: unexpected error", exc_info=True)
                    reason, kind, level = (f"unexpected {type(exc).__name__}: {shown(exc)} "
                                           "(--log-level debug shows where)", "bug",
                                           logging.ERROR)
                self.on_connected(False)
                if (after(), epoch_of()) != position or loop.time() - started >= STABLE_SECONDS:
                    # Only a connection that brought news or lasted counts as this URL working:
                    # one that answers and hangs up at once is a failure like a refused one.
                    self.backoff.reset()
                    self.eps.ok(url)
                if kind != "auth" and len(self.eps.urls) > 1:
                    self.eps.failed(url)
                    if not self.eps.all_failed():
                        self.limiter.log(level, f"moved:{kind}", "responder %s: %s; trying %s",
                                         url, reason, self.base)
                        continue
                delay = self.backoff.next()
                self.limiter.log(level, kind, "responder: %s; reconnecting in %.1f s (%s)",
                                 reason, delay, self.mode)
                await asyncio.sleep(delay)

    async def _sse(self, http: httpx.AsyncClient, deliver: Deliver,
                   after: Callable[[], int], epoch_of: EpochOf) -> None:
        params, resume = self._stream_request(after(), epoch_of())
        headers = dict(self.headers, Accept="text/event-stream", **resume)
        timeout = httpx.Timeout(10.0, read=self.read_timeout)
        async with http.stream("GET", self.stream_url, params=params or None, headers=headers,
                               timeout=timeout) as r:
            if r.status_code in (401, 403):
                raise self._auth_error(r.status_code)
            ctype = r.headers.get("content-type", "")
            if r.status_code in (404, 405, 406, 501) or (
                    r.status_code == 200 and not ctype.startswith("text/event-stream")):
                raise NoSse(shown(f"HTTP {r.status_code} {ctype}".strip(), 80))
            if r.status_code != 200:
                raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request,
                                            response=r)
            _check_encoding(r)
            self.on_connected(True)
            reader = SseReader(max_line=MAX_LINE, max_event=MAX_EVENT)
            url = self.base
            async for chunk in r.aiter_raw():
                for ev in reader.feed(chunk):
                    if ev.event != self.EVENT:
                        continue
                    a = self._parse(ev.data)
                    if a is not None:
                        deliver(a)
                if self.base != url:
                    # Away from the first URL for `eps.home_after`: end this stream (at the
                    # next event or keep-alive) and try the first again; it resumes there.
                    return

    async def _longpoll(self, http: httpx.AsyncClient, deliver: Deliver,
                        after: Callable[[], int], epoch_of: EpochOf) -> None:
        loop = asyncio.get_running_loop()
        before = (after(), epoch_of())
        params = self._poll_params(*before)
        timeout = httpx.Timeout(10.0, read=self.longpoll_wait + 15)
        started = loop.time()
        async with http.stream("GET", self.poll_url, params=params, headers=self.headers,
                               timeout=timeout) as r:
            if r.status_code in (401, 403):
                raise self._auth_error(r.status_code)
            if r.status_code in (204, 304):
                self.on_connected(True)
                self.eps.ok(self.base)
                body = None
            elif r.status_code != 200:
                raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request,
                                            response=r)
            else:
                self.on_connected(True)
                self.eps.ok(self.base)
                body = await read_body(r)
        if body is not None:
            a = self._parse(body)
            if a is not None:
                deliver(a)
        if (after(), epoch_of()) != before:
            self.backoff.reset()
        elif loop.time() - started < min(self.longpoll_wait / 2, 5.0):
            # Nothing new, and at once rather than after waiting: do not spin on it; a peer that
            # keeps doing it is asked less and less often.
            await asyncio.sleep(self.backoff.next())
        else:
            self.backoff.reset()  # an honest wait that ran out: ask again at once
