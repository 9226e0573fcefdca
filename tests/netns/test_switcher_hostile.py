"""The real switcher process against a hostile responder (hardening, issue 19, finding 3 and 1).

The switcher needs its WireGuard interface, so it runs in a lab (real wireguard-go in network
namespaces, `wg_failover.lab.kit`); the "responder" is a small HTTP server of this test on
127.0.0.1 inside the client's namespace (its listening socket is made there, see `Hostile`), so
nothing leaves that namespace. It sends what a broken or forged responder could: a 300 MB line,
100,000-deep JSON, names carrying newlines and terminal escapes, a version of 10**30, and a store
that was replaced (its versions restarted at 1). Then TLS: a pinned CA and mutual TLS work, a
server certificate from another CA is refused in one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from wg_failover.client import cache
from wg_failover.client.cache import cache_path
from wg_failover.lab import kit, tlsca
from wg_failover.lab.procs import poll_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

CLONE_NEWNET = 0x40000000
MB = 1024 * 1024
OLD_EPOCH, NEW_EPOCH = "0a0a0a0a0a0a0a0a", "0b0b0b0b0b0b0b0b"


# --------------------------------------------------------------------------- the hostile server


@dataclass
class Request:
    n: int  # 0, 1, ...: the order in which requests came
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


def _enter_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace `name`: the sockets it makes
    from now on live there."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class Hostile:
    """An HTTP/1.1 server on 127.0.0.1 in namespace `netns`, run by an asyncio loop in a thread
    of its own. Every request is recorded; `POST .../events` (the switcher's reports) gets 202;
    every GET goes to `handler`, which writes the whole answer (the connection closes after)."""

    def __init__(self, netns: str, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.requests: list[Request] = []
        self.sent_bytes: list[int] = []  # per big stream: what went out before the switcher hung up
        self._lock = threading.Lock()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self.loop = asyncio.new_event_loop()
        self.stopping = asyncio.Event()
        self.port = 0
        ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, args=(netns, ready), daemon=True)
        self.thread.start()
        assert ready.wait(10), "hostile server did not start"
        if self._error is not None:
            raise self._error

    def _main(self, netns: str, ready: threading.Event) -> None:
        try:
            _enter_netns(netns)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self._serve, sock=sock, ssl=self.tls))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._error = exc
            ready.set()
            return
        ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def gets(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == "GET"]

    def nth(self, req: Request, path_end: str) -> int:
        """1 for the first GET whose path ends with `path_end`, 2 for the second, ..."""
        return sum(1 for r in self.gets() if r.n <= req.n and r.path.endswith(path_end))

    def posts(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            url = urlsplit(target)
            with self._lock:
                req = Request(len(self.requests), method, url.path, parse_qs(url.query), headers)
                self.requests.append(req)
            if method == "POST":
                await reader.readexactly(int(headers.get("content-length", "0")))
                writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
            else:
                await self.handler(req, writer)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass  # the switcher hung up (as it should on a 300 MB line), or refused our TLS
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def hold(self, writer: asyncio.StreamWriter, seconds: float = 60.0) -> None:
        """Keep a stream open with keep-alive comments, as the responder does between events."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.stopping.is_set():
            writer.write(b": keepalive\n\n")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.5)

    async def _close(self) -> None:
        self.stopping.set()
        self.server.close()
        for w in list(self._writers):
            w.transport.abort()  # a handler blocked writing to a switcher that is gone
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
            b"Connection: close\r\n\r\n")


def assignment(version: int, worker: str, epoch: str | None = None, **extra) -> dict:
    a = {"client": "c1", "worker": worker, "backups": [], "version": version,
         "reason": "test", "since": None, **extra}
    if epoch is not None:
        a["epoch"] = epoch
    return a


def sse_event(data: dict | str, version: int | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"id: {version}\n" if version is not None else ""
    return (head + "event: assignment\n"
            + "".join(f"data: {line}\n" for line in text.split("\n")) + "\n").encode()


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def lab(netlab, tmp_path):
    return kit.build(netlab, tmp_path / "lab", workers=2)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    assert m, text
    return int(m.group(1)) / 1024


def assert_clean_log(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]
    assert "\x1b" not in text and "\x07" not in text, "a terminal escape reached the log"
    assert not re.search(r"^ERROR forged", text, re.M), "a forged log line reached the log"
    longest = max((len(line) for line in text.splitlines()), default=0)
    assert longest < 1000, f"a log line of {longest} characters"


# --------------------------------------------------------------------------- bounded input


def test_a_300_mb_line_or_event_costs_no_memory_and_the_switcher_reconnects(lab, tmp_path):
    chunk = b"x" * MB  # one megabyte, written 300 times: the test never holds 300 MB
    lines = (b"data: " + b"y" * 1000 + b"\n") * 1000  # ~1 MB of short lines of one event
    srv: Hostile

    async def handler(req: Request, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD)
        n = srv.nth(req, "/stream")
        if n <= 2:
            # First a line that never ends, then an event whose lines never stop.
            piece = chunk if n == 1 else lines
            w.write(b"event: assignment\n" + (b"data: " if n == 1 else b""))
            sent = 0
            try:
                for _ in range(300):
                    w.write(piece)
                    await w.drain()
                    sent += len(piece)
            finally:
                srv.sent_bytes.append(sent)
            w.write(b"\n\n")
            return
        w.write(sse_event(assignment(1, "w2"), 1))
        await srv.hold(w)

    srv = Hostile(lab.client_host.netns, handler)
    try:
        sw = lab.start_switcher(tmp_path / "state", srv.url)
        m = sw.wait_for(r"switch w1 -> w2 \(assignment\): responder v1", 60)
        assert m, sw.text()
        text = sw.text()
        assert "wg-failover" in Path(f"/proc/{sw.proc.pid}/cmdline").read_text()
        peak = peak_rss_mb(sw.proc.pid)
        assert peak < 100, f"switcher peak RSS {peak:.0f} MiB"
        assert len(srv.sent_bytes) == 2
        assert all(sent < 20 * MB for sent in srv.sent_bytes), srv.sent_bytes
        assert re.search(r"WARNING responder: an SSE line longer than 65536 bytes: dropped the "
                         r"connection; reconnecting in", text), text
        assert "an SSE event larger than 262144 bytes: dropped the connection" in text, text
        assert_clean_log(text)
        print(f"\npeak RSS {peak:.1f} MiB; bytes sent before the switcher hung up: "
              f"{srv.sent_bytes}")
        assert sw.stop() == 0
    finally:
        srv.close()


def test_deep_json_is_one_line_without_traceback_and_reconnects_slow_down(lab, tmp_path):
    # 100,000 levels, over several data lines (each under the line bound): the event is small
    # enough to be read, and the parser's recursion gives up on it.
    deep = "\n".join(["[" * 25_000] * 4) + "\n" + "]" * 10

    async def handler(req: Request, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + sse_event(deep, 7))
        await w.drain()
        await asyncio.sleep(0.1)  # and hang up: the switcher has to come back for more

    srv = Hostile(lab.client_host.netns, handler)
    try:
        sw = lab.start_switcher(tmp_path / "state", srv.url)
        assert poll_until(lambda: len(srv.gets()) >= 1, 15)
        t0 = time.monotonic()
        time.sleep(15)
        window = time.monotonic() - t0
        n = len(srv.gets())
        text = sw.text()
        assert sw.proc.poll() is None, text
        assert "JSON nested too deep" in text, text
        assert_clean_log(text)
        # The old code reset its backoff on every 200 and came back 2-4 times a second.
        assert 2 <= n <= 8, f"{n} connections in {window:.0f} s"
        assert text.count("ignoring an unusable assignment") <= 2, text
        print(f"\n{n} connections in {window:.1f} s ({n * 60 / window:.0f} per minute)")
        assert sw.stop() == 0
    finally:
        srv.close()


def test_names_with_newlines_and_escapes_never_reach_the_log(lab, tmp_path):
    forged = "w2\nERROR forged line"
    bad = [
        assignment(2, forged),
        assignment(2, "\x1b[31mw2"),
        assignment(2, "w2", backups=["w1\x1b]0;owned\x07"]),
        # Someone else's, with a long name (a 30 kB line, under the 64 KiB line bound).
        assignment(2, "w2", client="c1\n" + "\x1b[2J" * 5_000),
        "\x1b[31mnot json\x1b[0m",
    ]

    async def handler(req: Request, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD)
        for _ in range(50):
            for item in bad:
                w.write(sse_event(item))
        # The descriptive fields of a usable assignment are dropped when odd, never logged.
        w.write(sse_event(assignment(3, "w2", reason="\x1b]0;owned\x07\nERROR forged line"), 3))
        await srv.hold(w)

    srv = Hostile(lab.client_host.netns, handler)
    try:
        sw = lab.start_switcher(tmp_path / "state", srv.url)
        assert sw.wait_for(r"switch w1 -> w2 \(assignment\): responder v3", 30), sw.text()
        text = sw.text()
        assert_clean_log(text)
        assert "forged" not in text and "owned" not in text, text
        # 250 refused events, one line (at most one per 10 s for that kind).
        assert text.count("ignoring an unusable assignment") == 1, text
        assert sw.stop() == 0
    finally:
        srv.close()


def test_a_forged_huge_version_outranks_nothing_even_from_an_old_cache(lab, tmp_path):
    # An older switcher accepted and cached 10**30 (finding 3); this one starts from that cache.
    state = tmp_path / "state"
    cache.save(cache_path(state, "c1"), cache.CachedState("c1", "w1", 10**30))

    async def handler(req: Request, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + sse_event(assignment(10**30, "w2"), 10**30)
                + sse_event(assignment(2, "w2"), 2))
        await srv.hold(w)

    srv = Hostile(lab.client_host.netns, handler)
    try:
        sw = lab.start_switcher(state, srv.url)
        assert sw.wait_for(r"switch w1 -> w2 \(assignment\): responder v2", 30), sw.text()
        text = sw.text()
        assert "version: Input should be less than or equal to 9007199254740991" in text, text
        assert_clean_log(text)
        first = srv.gets()[0]
        assert "last-event-id" not in first.headers, first.headers
        assert sw.stop() == 0
        assert json.loads(cache_path(state, "c1").read_text())["version"] == 2
    finally:
        srv.close()


# --------------------------------------------------------------------------- store epochs


def test_a_replaced_store_is_followed_and_the_switcher_resumes_in_its_epoch(lab, tmp_path):
    async def handler(req: Request, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD)
        n = srv.nth(req, "/stream")
        if n == 1:
            w.write(sse_event(assignment(50, "w1", OLD_EPOCH), 50))
        elif n == 2:  # the database was lost: a new store, its versions from 1 again
            w.write(sse_event(assignment(1, "w2", NEW_EPOCH), 1))
        else:
            await srv.hold(w)

    srv = Hostile(lab.client_host.netns, handler)
    state = tmp_path / "state"
    try:
        sw = lab.start_switcher(state, srv.url)
        assert sw.wait_for(r"switch w1 -> w2 \(assignment\): responder v1", 30), sw.text()
        assert poll_until(lambda: len(srv.gets()) >= 3, 10)
        text = sw.text()
        warnings = re.findall(r"WARNING (responder's store changed.*)", text)
        assert len(warnings) == 1, text
        assert f"epoch {OLD_EPOCH} -> {NEW_EPOCH}" in warnings[0] and "v1" in warnings[0]
        first, second, third = srv.gets()[:3]
        assert "epoch" not in first.query and "last-event-id" not in first.headers
        assert second.query.get("epoch") == [OLD_EPOCH]
        assert second.headers.get("last-event-id") == "50"
        assert third.query.get("epoch") == [NEW_EPOCH]
        assert third.headers.get("last-event-id") == "1"
        assert_clean_log(text)
        assert sw.stop() == 0
        cached = json.loads(cache_path(state, "c1").read_text())
        assert (cached["epoch"], cached["version"], cached["active"]) == (NEW_EPOCH, 1, "w2")
    finally:
        srv.close()


def test_long_poll_sends_the_epoch_and_follows_a_replaced_store(lab, tmp_path):
    async def handler(req: Request, w: asyncio.StreamWriter) -> None:
        if req.path.endswith("/stream"):  # a proxy that does not do SSE
            w.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        n = srv.nth(req, "/assignment")
        a = assignment(50, "w1", OLD_EPOCH) if n == 1 else assignment(1, "w2", NEW_EPOCH)
        if n > 2:
            await asyncio.sleep(5)  # the long wait of an idle responder
        body = json.dumps(a).encode()
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    srv = Hostile(lab.client_host.netns, handler)
    try:
        sw = lab.start_switcher(tmp_path / "state", srv.url)
        assert sw.wait_for(r"switch w1 -> w2 \(assignment\): responder v1", 30), sw.text()

        def polls() -> list[Request]:
            return [r for r in srv.gets() if r.path.endswith("/assignment")]

        assert poll_until(lambda: len(polls()) >= 3, 10)
        got = polls()
        assert "epoch" not in got[0].query and got[0].query.get("after") == ["0"]
        assert got[1].query.get("epoch") == [OLD_EPOCH]
        assert got[1].query.get("after") == ["50"]
        assert got[2].query.get("epoch") == [NEW_EPOCH]
        assert got[2].query.get("after") == ["1"]
        assert len(re.findall(r"WARNING responder's store changed", sw.text())) == 1
        assert sw.stop() == 0
    finally:
        srv.close()


# --------------------------------------------------------------------------- TLS


def _server_tls(ca: tlsca.CA, d: Path, client_ca: tlsca.CA | None = None) -> ssl.SSLContext:
    crt, key = tlsca.issue(ca, d, "responder", ips=["127.0.0.1"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca.cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def test_tls_with_a_pinned_ca_and_a_client_certificate_and_not_with_another_ca(lab, tmp_path):
    ca = tlsca.make_ca(tmp_path / "ca")
    other = tlsca.make_ca(tmp_path / "other", name="someone else's CA")
    cert, key = tlsca.issue(ca, tmp_path / "client", "c1", client=True)

    async def handler(req: Request, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + sse_event(assignment(1, "w2"), 1))
        await srv.hold(w)

    srv = Hostile(lab.client_host.netns, handler, tls=_server_tls(ca, tmp_path / "srv", ca))
    try:
        # The responder's CA pinned, our certificate presented: it follows, and reports.
        sw = lab.start_switcher(tmp_path / "state", srv.url, "--ca-file", str(ca.cert),
                                "--tls-cert", str(cert), "--tls-key", str(key))
        assert sw.wait_for(r"switch w1 -> w2 \(assignment\): responder v1", 30), sw.text()
        assert poll_until(lambda: srv.posts(), 15), "no report came over TLS"
        get = srv.gets()[0]
        assert get.headers.get("authorization") == f"Bearer {lab.gen.tokens['c1']}"
        assert sw.stop() == 0

        # Another CA: the server's certificate is refused, in one clear line, and nothing is
        # sent (the token included).
        n = len(srv.requests)
        sw = lab.start_switcher(tmp_path / "state2", srv.url, "--ca-file", str(other.cert),
                                "--tls-cert", str(cert), "--tls-key", str(key))
        assert sw.wait_for(r"TLS: ", 15), sw.text()
        time.sleep(4)  # several attempts (backoff 0.5, 1, 2 s): still one line
        text = sw.text()
        lines = [line for line in text.splitlines() if "TLS: " in line]
        assert len(lines) == 1, text
        assert (f"TLS: the responder's certificate does not verify against --ca-file "
                f"{other.cert}") in lines[0]
        assert re.search(r"\(.*certificate.*\); reconnecting in", lines[0]), lines[0]
        assert "Traceback" not in text
        assert len(srv.requests) == n
        assert sw.stop() == 0

        # `--once` the same way.
        sw = lab.start_switcher(tmp_path / "state3", srv.url, "--once", "--ca-file",
                                str(other.cert), "--tls-cert", str(cert), "--tls-key", str(key))
        sw.proc.wait(30)
        text = sw.text()
        assert "once: responder unreachable (TLS: the responder's certificate does not verify" \
            in text, text
        assert "Traceback" not in text
        assert len(srv.requests) == n
    finally:
        srv.close()
