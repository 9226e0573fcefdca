"""Raw HTTP/1.1 over plain sockets, for tests of what a peer can hold: idle and half-sent
connections, many streams, answers read with a bound.

    socks = open_idle(port, 100)                  # connected, nothing sent
    s = connect(port); s.sendall(b"GET / HTTP/1.1\\r\\n")   # half a request
    closed_by_peer(s, timeout=0.2) -> bool        # EOF or reset seen within `timeout`
    head, body = request(port, "GET", "/healthz") # one request, `Connection: close`
    stream = open_stream(port, "/v1/clients/c1/assignment/stream", token)
                                                  # an SSE stream, its response head read
    read_until(stream, b"data: ", timeout=5)      # bytes up to a marker (or what came)
"""

from __future__ import annotations

import contextlib
import socket
import time

HOST = "127.0.0.1"


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def open_idle(port: int, n: int) -> list[socket.socket]:
    return [connect(port) for _ in range(n)]


def closed_by_peer(s: socket.socket, timeout: float = 0.2) -> bool:
    """True once the peer closed (EOF, reset); data the peer sent before is read and dropped."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                return True
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True  # reset
    return False


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"", timeout: float = 10.0) -> tuple[bytes, bytes]:
    """One request with `Connection: close`; (status line and headers, body)."""
    s = connect(port, timeout)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        if body:
            head += f"Content-Length: {len(body)}\r\n"
        s.sendall(head.encode() + b"\r\n" + body)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head_, _, rest = data.partition(b"\r\n\r\n")
    return head_, rest


def open_stream(port: int, path: str, token: str, extra: str = "") -> socket.socket:
    """An SSE stream whose response head has been read (raises unless it is 200)."""
    s = connect(port)
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n"
               f"Accept: text/event-stream\r\n{extra}\r\n").encode())
    head = read_until(s, b"\r\n\r\n", 10)
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        s.close()
        raise AssertionError(f"stream not opened: {head[:200]!r}")
    return s


def read_until(s: socket.socket, marker: bytes, timeout: float) -> bytes:
    """Bytes from `s` up to and including `marker`, or whatever came before `timeout` / EOF."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(1)
        except (TimeoutError, BlockingIOError):
            break
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data
