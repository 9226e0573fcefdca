"""HTTP serving: /metrics (fast text writer, OpenMetrics on request), TLS and basic auth.

TLS and basic auth follow a subset of the Prometheus exporter-toolkit web-config file, so the
same file works here and for node_exporter:

    tls_server_config:
      cert_file: /etc/wg-failover/exporter.crt
      key_file: /etc/wg-failover/exporter.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: /etc/wg-failover/ca.crt
      min_version: TLS12                             # or TLS13
      max_version: TLS13
    basic_auth_users:
      prometheus: $2y$10$...                         # bcrypt, as `htpasswd -nBC 10 ""` prints

Anything else in the file is refused at start (so a setting never silently does nothing).
bcrypt hashes are checked through the system's libcrypt (libxcrypt on Debian); successful
checks are cached in memory as salted sha256 digests, as exporter-toolkit does, so a 15 s scrape
interval does not pay for bcrypt each time.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from .collector import WireGuardCollector
from .limits import MAX_CONNECTIONS, REQUEST_TIMEOUT
from .render import PageRenderer

log = logging.getLogger("wg-failover.exporter")

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class WebConfigError(ValueError):
    pass


# ------------------------------------------------------------------------------ web-config
@dataclass
class WebConfig:
    cert_file: str | None = None
    key_file: str | None = None
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str | None = None
    max_version: str | None = None
    users: dict[str, str] = field(default_factory=dict)  # name -> bcrypt hash


_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
             "max_version"}
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}


def parse_web_config(text: str, source: str = "web-config") -> WebConfig:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise WebConfigError(f"{source}: expected a mapping at the top")
    problems = []
    for key in data:
        if key not in ("tls_server_config", "basic_auth_users"):
            problems.append(f"{key}: not supported here (supported: tls_server_config, "
                            "basic_auth_users)")
    cfg = WebConfig()
    tls = data.get("tls_server_config") or {}
    if not isinstance(tls, dict):
        problems.append("tls_server_config: expected a mapping")
        tls = {}
    for key, value in tls.items():
        if key not in _TLS_KEYS:
            problems.append(f"tls_server_config.{key}: not supported here "
                            f"(supported: {', '.join(sorted(_TLS_KEYS))})")
        elif not isinstance(value, str):
            problems.append(f"tls_server_config.{key}: expected a string")
        else:
            setattr(cfg, key, value)
    if tls and not (cfg.cert_file and cfg.key_file):
        problems.append("tls_server_config: cert_file and key_file are both required")
    if cfg.client_auth_type not in _CLIENT_AUTH:
        problems.append(f"tls_server_config.client_auth_type: one of {', '.join(_CLIENT_AUTH)}")
    elif cfg.client_auth_type != "NoClientCert" and not cfg.client_ca_file:
        problems.append("tls_server_config.client_ca_file: required to verify client certificates")
    for key in ("min_version", "max_version"):
        v = getattr(cfg, key)
        if v is not None and v not in _VERSIONS:
            problems.append(f"tls_server_config.{key}: one of {', '.join(_VERSIONS)}")
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        problems.append("basic_auth_users: expected a mapping of user name to bcrypt hash")
        users = {}
    for name, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            problems.append(f"basic_auth_users.{name}: expected a bcrypt hash ($2y$...)")
        else:
            cfg.users[str(name)] = hashed
    if problems:
        raise WebConfigError(f"{source}: invalid web config:\n  " + "\n  ".join(problems))
    return cfg


def load_web_config(path: str) -> WebConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_web_config(text, path)


def ssl_context(cfg: WebConfig) -> ssl.SSLContext | None:
    if not cfg.cert_file:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[cfg.min_version] if cfg.min_version else ssl.TLSVersion.TLSv1_2
    if cfg.max_version:
        ctx.maximum_version = _VERSIONS[cfg.max_version]
    try:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        if cfg.client_ca_file:
            ctx.load_verify_locations(cafile=cfg.client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"TLS: {exc}") from None
    ctx.verify_mode = _CLIENT_AUTH[cfg.client_auth_type]
    return ctx


# ------------------------------------------------------------------------------ bcrypt
_crypt_lock = threading.Lock()
_libcrypt: Any = None


def _crypt(password: bytes, setting: bytes) -> bytes | None:
    global _libcrypt
    with _crypt_lock:  # crypt() returns a static buffer
        if _libcrypt is None:
            name = ctypes.util.find_library("crypt")
            if not name:
                raise WebConfigError("basic auth needs libcrypt (apt-get install libcrypt1)")
            lib = ctypes.CDLL(name)
            lib.crypt.restype = ctypes.c_char_p
            lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            _libcrypt = lib
        return _libcrypt.crypt(password, setting)


def bcrypt_check(password: str, hashed: str) -> bool:
    # libxcrypt knows $2b$ and $2y$ (the same algorithm); htpasswd writes $2y$.
    result = _crypt(password.encode(), hashed.encode())
    return result is not None and hmac.compare_digest(result, hashed.encode())


def bcrypt_hash(password: str, cost: int = 10) -> str:
    salt = base64.b64encode(secrets.token_bytes(16)).decode()
    # bcrypt's own base64 alphabet: ./A-Za-z0-9; 22 characters of salt.
    alphabet = str.maketrans("+=", "./")
    setting = f"$2b${cost:02d}${salt.translate(alphabet)[:22]}"
    out = _crypt(password.encode(), setting.encode())
    if not out or not out.startswith(b"$2b$"):
        raise WebConfigError("this system's libcrypt cannot make bcrypt hashes")
    return out.decode()


class BasicAuth:
    def __init__(self, users: dict[str, str]):
        self.users = users
        self._pepper = secrets.token_bytes(16)
        self._ok: set[bytes] = set()
        cost = next(iter(users.values()), "$2b$10$")[4:6] if users else "10"
        self._dummy = bcrypt_hash(secrets.token_urlsafe(16), cost=int(cost))

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            # Spend a bcrypt check anyway, so the answer's timing does not tell which user
            # names exist.
            bcrypt_check(password, self._dummy)
            return False
        key = hashlib.sha256(self._pepper + f"{user}\0{password}\0{hashed}".encode()).digest()
        if key in self._ok:
            return True
        if bcrypt_check(password, hashed):
            self._ok.add(key)
            return True
        return False


# ------------------------------------------------------------------------------ WSGI
def _wants_text(accept: str) -> bool:
    """True unless the scraper accepts only other formats (e.g. only OpenMetrics).

    Prometheus lists text/plain in its Accept header (at a lower q than OpenMetrics); the server
    may pick any format the client accepts, and the text format is the fast one here.
    """
    if not accept:
        return True
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("text/plain", "text/*", "*/*"):
            return True
    return False


LANDING = b"""<!doctype html><title>wg-failover exporter</title>
<h1>wg-failover exporter</h1><p><a href="/metrics">Metrics</a></p>
"""

StartResponse = Callable[..., Any]


def coalesce(chunks: list[bytes], size: int = 1 << 16) -> list[bytes]:
    """Merge small chunks: each chunk is one socket write, and small writes in a row meet
    Nagle's algorithm and the client's delayed ACK (measured: +40 to +100 ms per scrape)."""
    out: list[bytes] = []
    small: list[bytes] = []
    pending = 0
    for c in chunks:
        if len(c) >= size:
            if small:
                out.append(b"".join(small))
                small, pending = [], 0
            out.append(c)
        else:
            small.append(c)
            pending += len(c)
            if pending >= size:
                out.append(b"".join(small))
                small, pending = [], 0
    if small:
        out.append(b"".join(small))
    return out


def make_app(collector: WireGuardCollector, auth: BasicAuth | None = None):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    openmetrics_app = make_wsgi_app(registry)
    renderer = PageRenderer()

    def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        if auth is not None and not auth.check(environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", 'Basic realm="wg-failover"')])
            return [b"Unauthorized\n"]
        path = environ.get("PATH_INFO", "/")
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [LANDING]
        if path != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not Found: try /metrics\n"]
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        if not _wants_text(environ.get("HTTP_ACCEPT", "")):
            return openmetrics_app(environ, start_response)
        families = collector.read()
        headers = [("Content-Type", TEXT_CONTENT_TYPE)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            chunks = renderer.gzip(families)
            headers.append(("Content-Encoding", "gzip"))
        else:
            chunks = renderer.text(families)
        chunks = coalesce(chunks)
        headers.append(("Content-Length", str(sum(map(len, chunks)))))
        start_response("200 OK", headers)
        return chunks if environ.get("REQUEST_METHOD") != "HEAD" else [b""]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


def parse_listen(value: str) -> tuple[str, int]:
    """`:9586`, `0.0.0.0:9586`, `[::1]:9586`, `localhost:9586` -> (host, port)."""
    host, sep, port_s = value.rpartition(":")
    if not sep:
        raise ValueError(f"{value!r}: expected [HOST]:PORT, e.g. :9586")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"{value!r}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port must be 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def _family(host: str) -> socket.AddressFamily:
    if not host:
        return socket.AF_INET6 if socket.has_ipv6 and _v6_works() else socket.AF_INET
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return infos[0][0]


def _v6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::", 0))
        return True
    except OSError:
        return False


_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
         b"Connection: close\r\n\r\n")


def serve(app, host: str, port: int, tls: ssl.SSLContext | None = None, *,
          request_timeout: float = REQUEST_TIMEOUT, max_connections: int = MAX_CONNECTIONS):
    """Bind and return the server (not yet serving). An empty host means every address.

    Every connection gets `request_timeout` per read or write (a half-open or dribbling client
    lets its thread go), and at most `max_connections` are served at once: past that a new one
    is answered 503 with Retry-After and closed, so idle sockets cannot use up threads or files.
    """
    family = _family(host)
    active = threading.BoundedSemaphore(max_connections)

    class Server(ThreadingWSGIServer):
        address_family = family

        def server_bind(self) -> None:
            if family == socket.AF_INET6 and not host:
                # `:9586` means every address, IPv4 too.
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

        def get_request(self):
            conn, addr = super().get_request()
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                # The page goes out in a few large writes; do not let Nagle hold the last one.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(request_timeout)
            if tls is not None:
                # The handshake runs on first read, in the request's own thread, so a slow client
                # cannot stall accept(); the timeout stops a stalled one holding its thread.
                conn = tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            return conn, addr

        def process_request(self, request, client_address) -> None:
            if not active.acquire(blocking=False):
                if tls is None:  # over TLS there is no handshake yet to answer through
                    with contextlib.suppress(OSError):
                        request.setblocking(False)
                        request.send(_BUSY)
                self.shutdown_request(request)
                return
            super().process_request(request, client_address)

        def process_request_thread(self, request, client_address) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                active.release()

        def handle_error(self, request, client_address) -> None:
            # A failed TLS handshake or a client gone mid-answer: one line, not a traceback.
            exc = sys.exc_info()[1]
            log.info("request from %s failed: %s", client_address[0], exc)

    bind_host = host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    return make_server(bind_host, port, app, Server, handler_class=_QuietHandler)
