"""TLS for the control plane: what the responder serves with and what its followers trust.

Tokens never cross a network in clear text: the responder serves HTTPS itself (`--tls-cert`,
`--tls-key`, optional `--tls-client-ca` for mutual TLS) and refuses a non-loopback listen address
without TLS unless `--insecure-http` says so; every follower pins the responder's CA with
`--ca-file`. Each function checks its files up front and raises `TlsError` with one line that
names the file and what is wrong, so a bad path is an exit-2 error, never a traceback.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used, or an unsafe listen address."""


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) reaches only this machine: 127.0.0.0/8, ::1, or a
    name that resolves to loopback addresses only. An empty host or 0.0.0.0/:: is every address."""
    host = host.strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_listen(host: str, *, tls: bool, insecure_http: bool) -> None:
    """Refuse plain HTTP on an address other machines can reach: bearer tokens would cross the
    network in clear text. `insecure_http` is the operator saying a proxy or a private lab
    network takes care of it."""
    if tls or insecure_http or is_loopback(host):
        return
    raise TlsError(
        f"refusing to serve plain HTTP on {host or 'every address'}: bearer tokens would cross "
        "the network in clear text; give --tls-cert and --tls-key (see docs/deploy.md), listen "
        "on 127.0.0.1 behind a TLS proxy, or say --insecure-http")


def check_responder_url(url: str, *, insecure_http: bool, token: str,
                        tls_files: bool = False) -> None:
    """Refuse a responder URL a follower must not use: not http(s), no host, TLS files for a
    plain http:// one, or plain HTTP to another machine (`token`, e.g. "the admin token", would
    cross the network in clear text) unless `insecure_http`. Raises TlsError, never echoing a
    password written into the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise TlsError(f"--responder {url!r}: not a URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise TlsError(f"--responder {url!r}: expected an http:// or https:// URL")
    if parts.scheme == "https":
        return
    shown = f"http://{parts.netloc.rpartition('@')[2]}"
    if tls_files:
        raise TlsError(f"--responder {shown}: --ca-file, --tls-cert and --tls-key are for an "
                       "https:// responder; this one is plain http://")
    if not insecure_http and not is_loopback(host):
        raise TlsError(
            f"--responder {shown}: refusing plain HTTP to {host}, which is not this machine: "
            f"{token} would cross the network in clear text; use https:// (--ca-file pins the "
            "responder's CA), or say --insecure-http")


def _readable(path: str | Path, what: str) -> Path:
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(64 * 1024)
    except OSError as exc:
        raise TlsError(f"{what} {p}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in head:
        raise TlsError(f"{what} {p}: not a PEM file (no -----BEGIN line)")
    return p


@dataclass(frozen=True)
class ServerTls:
    """The responder's certificate, key and, for mutual TLS, the CA its clients' certificates
    must chain to. `uvicorn_kwargs()` is what uvicorn.Config takes."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def uvicorn_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            kw["ssl_ca_certs"] = str(self.client_ca)
            kw["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        return kw


def server_tls(cert: str | None, key: str | None, client_ca: str | None = None
               ) -> ServerTls | None:
    """Check the responder's TLS files (they must exist, be PEM and belong together); None when
    TLS is off. A key without a certificate, or the reverse, is an error, not plain HTTP."""
    if not cert and not key:
        if client_ca:
            raise TlsError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not cert or not key:
        raise TlsError("--tls-cert and --tls-key go together")
    tls = ServerTls(_readable(cert, "--tls-cert"), _readable(key, "--tls-key"),
                    _readable(client_ca, "--tls-client-ca") if client_ca else None)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as exc:
        raise TlsError(f"--tls-cert {tls.cert} and --tls-key {tls.key} do not make a usable "
                       f"pair: {exc.reason or exc}") from None
    if tls.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca)
        except ssl.SSLError as exc:
            raise TlsError(f"--tls-client-ca {tls.client_ca}: {exc.reason or exc}") from None
    return tls


def client_context(ca_file: str | None = None, cert: str | None = None,
                   key: str | None = None) -> ssl.SSLContext:
    """The context a follower verifies the responder with: the system's CAs, or only `ca_file`
    (pinning the responder's CA); `cert`/`key` present a client certificate for mutual TLS.
    Host names are always checked."""
    try:
        if ca_file:
            ctx = ssl.create_default_context(cafile=str(_readable(ca_file, "--ca-file")))
        else:
            ctx = ssl.create_default_context()
        if cert or key:
            if not (cert and key):
                raise TlsError("--tls-cert and --tls-key go together")
            ctx.load_cert_chain(_readable(cert, "--tls-cert"), _readable(key, "--tls-key"))
    except ssl.SSLError as exc:
        raise TlsError(f"TLS files unusable: {exc.reason or exc}") from None
    return ctx
