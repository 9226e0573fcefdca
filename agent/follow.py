"""Following a worker's peers on the responder, as the switcher follows its assignment.

SSE first (`/v1/workers/{name}/peers/stream`, resumed with `Last-Event-ID: EPOCH:VERSION`), and
long-poll (`/v1/workers/{name}/peers?version=V&wait=S`) when the responder or a proxy on the way
does not stream. Reconnects wait with bounded exponential backoff and jitter (wg_failover.backoff),
so a responder outage costs nothing but log lines, and the agent resumes where it was as soon as
one answers. Everything read is bounded; whatever does not parse as WorkerPeers for this very
worker is refused in one log line and never applied.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx
from pydantic import ValidationError
from pydantic_core import from_json

from wg_failover.backoff import Backoff
from wg_failover.endpoints import Endpoints
from wg_failover.sse import SseReader, SseTooLarge
from wg_failover.wire import PeerEntry, WorkerPeers

log = logging.getLogger("wg_failover.agent")

# A worker's peers are ~120 bytes per client: 32 MiB leaves room for 200,000 clients and still
# bounds what a broken (or hostile) answer can cost.
MAX_BODY = 32 * 1024 * 1024
STABLE_SECONDS = 10.0  # a connection that lasted this long was healthy: back off from scratch
SSE_AGAIN = 600.0  # long-polling this long: try the stream again (a proxy may have changed)
LOG_EVERY = 10.0

Deliver = Callable[[WorkerPeers], None]
Position = Callable[[], tuple[str | None, int]]  # (epoch, version) of the newest peers known


class Refused(Exception):
    """The responder refused this worker's token or does not know the worker (401/403/404)."""


class NoSse(Exception):
    """An answer, but not an event stream: long-poll instead."""


class BadInput(ValueError):
    pass


def describe(exc: BaseException, ca_file: str | None = None) -> str:
    """One line for a failed request; a certificate that does not verify is spelled out."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            against = f"--ca-file {ca_file}" if ca_file else "the system CAs"
            return (f"TLS: the responder's certificate does not verify against {against} "
                    f"({seen.verify_message or seen.reason})")
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    text = str(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Limiter:
    """At most one log line per LOG_EVERY seconds of each kind (kinds are our constants)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def log(self, level: int, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -LOG_EVERY) >= LOG_EVERY:
            self.last[kind] = now
            log.log(level, msg, *args)


class PeersFollower:
    def __init__(self, base_url: str | list[str], worker: str, token: str | None, *,
                 verify: ssl.SSLContext | bool = True, ca_file: str | None = None,
                 longpoll_wait: float = 25.0, read_timeout: float = 45.0,
                 backoff: Backoff | None = None,
                 on_connected: Callable[[bool], None] | None = None) -> None:
        # Several URLs are replicas (only one serves, the others answer 503): a failure moves
        # on to the next at once; the back-off applies only once every URL failed in a row.
        self.eps = Endpoints([base_url] if isinstance(base_url, str) else base_url)
        self.worker = worker
        self.headers = {"Accept-Encoding": "identity"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.verify = verify
        self.ca_file = ca_file
        self.longpoll_wait = longpoll_wait
        self.read_timeout = read_timeout
        self.backoff = backoff or Backoff(base=0.25, cap=30.0)
        self.on_connected = on_connected or (lambda _up: None)
        self.mode = "sse"
        self.limiter = _Limiter()
        self._known: dict[tuple[str, str, tuple[str, ...]], PeerEntry] = {}

    @property
    def base(self) -> str:
        return self.eps.current()

    @property
    def poll_url(self) -> str:
        return f"{self.base}/v1/workers/{quote(self.worker, safe='')}/peers"

    @property
    def stream_url(self) -> str:
        return self.poll_url + "/stream"

    def parse(self, data: bytes | str) -> WorkerPeers | None:
        try:
            peers = self._parse(data)
        except (ValidationError, ValueError, RecursionError) as exc:
            n = exc.error_count() if isinstance(exc, ValidationError) else 1
            self.limiter.log(logging.WARNING, "unusable",
                             "responder: ignoring peers that do not parse (%d problems)", n)
            return None
        if peers.worker != self.worker:
            self.limiter.log(logging.WARNING, "other", "responder: ignoring the peers of "
                             "worker %r (this is %r)", peers.worker[:64], self.worker)
            return None
        return peers

    def _parse(self, data: bytes | str) -> WorkerPeers:
        """WorkerPeers.model_validate_json, but each peer that is exactly one already validated
        (same name, key and allowed-ips) is taken as it was: every event carries all of the
        worker's peers, and validating 10,000 of them again for one change cost the agent more
        than everything else it does for that change."""
        raw = from_json(data)
        if not isinstance(raw, dict) or not isinstance(raw.get("peers"), list):
            return WorkerPeers.model_validate(raw)  # raises, saying what is wrong
        head = WorkerPeers.model_validate({**raw, "peers": []})
        known, seen = self._known, {}
        entries = []
        for item in raw["peers"]:
            # A lookup hits only when every value equals one validated before, so the values
            # are strings of the right shape; anything else raises here or misses: validated.
            try:
                key = (item["name"], item["public_key"], tuple(item["allowed_ips"]))
                entry = known.get(key)
            except (TypeError, KeyError):
                key, entry = None, None
            if entry is None:
                entry = PeerEntry.model_validate(item)
                key = (entry.name, entry.public_key, tuple(entry.allowed_ips))
            seen[key] = entry
            entries.append(entry)
        self._known = seen
        return WorkerPeers.model_construct(worker=head.worker, version=head.version,
                                           epoch=head.epoch, peers=entries)

    async def fetch(self, http: httpx.AsyncClient) -> WorkerPeers | None:
        """The current peers, without waiting."""
        r = await http.get(self.poll_url, headers=self.headers, timeout=10.0)
        self._check(r.status_code)
        if r.status_code != 200:
            return None
        return self.parse(r.content[:MAX_BODY])

    def _check(self, status: int) -> None:
        if status in (401, 403):
            raise Refused(f"the responder refused this worker's token ({status})")

    async def run(self, deliver: Deliver, position: Position) -> None:
        """Deliver every WorkerPeers seen (the caller drops old ones), reconnecting forever."""
        loop = asyncio.get_running_loop()
        sse_again = loop.time() + SSE_AGAIN  # only read while long-polling
        async with httpx.AsyncClient(verify=self.verify, timeout=10.0) as http:
            while True:
                started, before, url = loop.time(), position(), self.base
                if self.mode == "longpoll" and started >= sse_again:
                    self.mode = "sse"
                level, kind = logging.INFO, "ended"
                try:
                    if self.mode == "sse":
                        await self._sse(http, deliver, position)
                        reason = "stream ended"
                    else:
                        await self._longpoll(http, deliver, position)
                        continue
                except asyncio.CancelledError:
                    raise
                except NoSse as exc:
                    log.info("responder: no event stream (%s); long-polling instead", exc)
                    self.mode, sse_again = "longpoll", loop.time() + SSE_AGAIN
                    continue
                except Refused as exc:
                    # Peers stay as they are: a wrong token must not take live sessions down.
                    reason, kind, level = f"{exc}; the peers stay as they are", "auth", \
                        logging.WARNING
                    self.backoff.attempt = max(self.backoff.attempt, 6)
                except (BadInput, SseTooLarge) as exc:
                    reason, kind, level = f"{exc}: dropped the connection", "input", \
                        logging.WARNING
                except (httpx.HTTPError, OSError) as exc:
                    reason, kind = describe(exc, self.ca_file), "http"
                    if reason.startswith("TLS"):
                        kind, level = "tls", logging.WARNING
                except Exception as exc:  # noqa: BLE001 - following must outlive any surprise
                    log.debug("responder: unexpected error", exc_info=True)
                    reason, kind, level = f"unexpected {type(exc).__name__}: {exc}", "bug", \
                        logging.ERROR
                self.on_connected(False)
                if position() != before or loop.time() - started >= STABLE_SECONDS:
                    self.backoff.reset()
                    self.eps.ok(url)
                if kind != "auth" and len(self.eps.urls) > 1:
                    self.eps.failed(url)
                    if not self.eps.all_failed():
                        log.info("responder %s: %s; trying %s", url, reason, self.base)
                        continue
                delay = self.backoff.next()
                self.limiter.log(level, kind, "responder: %s; reconnecting in %.1f s (%s)",
                                 reason, delay, self.mode)
                await asyncio.sleep(delay)

    async def _sse(self, http: httpx.AsyncClient, deliver: Deliver, position: Position) -> None:
        headers = dict(self.headers, Accept="text/event-stream")
        epoch, version = position()
        if epoch and version > 0:
            headers["Last-Event-ID"] = f"{epoch}:{version}"
        timeout = httpx.Timeout(10.0, read=self.read_timeout)
        async with http.stream("GET", self.stream_url, headers=headers, timeout=timeout) as r:
            self._check(r.status_code)
            ctype = r.headers.get("content-type", "")
            if r.status_code in (405, 406, 501) or (
                    r.status_code == 200 and not ctype.startswith("text/event-stream")):
                raise NoSse(f"HTTP {r.status_code} {ctype[:60]}".strip())
            if r.status_code == 404:
                # A responder without streams, or one that does not know this worker: the
                # long-poll answer tells them apart (404 again: Refused).
                raise NoSse("HTTP 404")
            if r.status_code != 200:
                raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request,
                                            response=r)
            _identity(r)
            self.on_connected(True)
            # Not eps.ok() yet: a replica that accepts the stream and hangs up at once would
            # reset the count of failures, and two of them would be tried in a loop without
            # the back-off. run() counts the URL good once the stream brought news or lasted.
            reader = SseReader(max_line=MAX_BODY, max_event=MAX_BODY)
            async for chunk in r.aiter_raw():
                for ev in reader.feed(chunk):
                    if ev.event == "peers":
                        peers = self.parse(ev.data)
                        if peers is not None:
                            deliver(peers)

    async def _longpoll(self, http: httpx.AsyncClient, deliver: Deliver,
                        position: Position) -> None:
        loop = asyncio.get_running_loop()
        before = position()
        params = {"version": str(before[1]), "wait": f"{self.longpoll_wait:g}"}
        if before[0]:
            params["epoch"] = before[0]
        timeout = httpx.Timeout(10.0, read=self.longpoll_wait + 15)
        started = loop.time()
        async with http.stream("GET", self.poll_url, params=params, headers=self.headers,
                               timeout=timeout) as r:
            self._check(r.status_code)
            if r.status_code == 404:
                raise Refused("the responder does not know this worker (404)")
            if r.status_code != 200:
                raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request,
                                            response=r)
            _identity(r)
            self.on_connected(True)
            self.eps.ok(self.base)
            body = bytearray()
            async for chunk in r.aiter_raw():
                body += chunk
                if len(body) > MAX_BODY:
                    raise BadInput(f"an answer larger than {MAX_BODY} bytes")
        peers = self.parse(bytes(body))
        if peers is not None:
            deliver(peers)
        if position() != before:
            self.backoff.reset()
        elif loop.time() - started < min(self.longpoll_wait / 2, 5.0):
            await asyncio.sleep(self.backoff.next())  # nothing new at once: do not spin
        else:
            self.backoff.reset()


def _identity(r: httpx.Response) -> None:
    # Bodies are read raw and bounded: a compressed one would be a way around the bound.
    enc = r.headers.get("content-encoding", "identity").strip().lower()
    if enc not in ("", "identity"):
        raise BadInput(f"a compressed answer ({enc[:40]}) although identity was asked for")
