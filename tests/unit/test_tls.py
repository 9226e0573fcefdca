"""The control plane's TLS checks: refusing plain HTTP off loopback, and clear errors for bad
certificate files. Certificates come from a real `openssl` CA (wg_failover.lab.tlsca)."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from wg_failover.lab import tlsca
from wg_failover.tls import TlsError, check_listen, client_context, is_loopback, server_tls


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.5.6.7", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False),
    ("198.18.0.1", False), ("2001:db8::1", False), ("no-such-host.invalid", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plain_http_only_on_loopback_unless_told() -> None:
    check_listen("127.0.0.1", tls=False, insecure_http=False)
    check_listen("0.0.0.0", tls=True, insecure_http=False)
    check_listen("0.0.0.0", tls=False, insecure_http=True)
    with pytest.raises(TlsError, match="clear text.*--insecure-http"):
        check_listen("0.0.0.0", tls=False, insecure_http=False)
    with pytest.raises(TlsError, match="every address"):
        check_listen("", tls=False, insecure_http=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = tlsca.make_ca(d / "ca")
    other = tlsca.make_ca(d / "other", name="someone else")
    server = tlsca.issue(ca, d, "responder", ips=["127.0.0.1"], dns=["localhost"])
    client = tlsca.issue(ca, d, "c1", client=True)
    return d, ca, other, server, client


def test_bad_files_are_one_line_errors(pki, tmp_path) -> None:
    _, ca, other, (crt, key), _ = pki
    assert server_tls(None, None) is None
    with pytest.raises(TlsError, match="go together"):
        server_tls(str(crt), None)
    with pytest.raises(TlsError, match="needs --tls-cert"):
        server_tls(None, None, str(ca.cert))
    with pytest.raises(TlsError, match=r"--tls-cert .*missing\.crt: No such file"):
        server_tls(str(tmp_path / "missing.crt"), str(key))
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(TlsError, match="not a PEM file"):
        server_tls(str(junk), str(key))
    with pytest.raises(TlsError, match="do not make a usable pair"):
        server_tls(str(crt), str(other.key))
    with pytest.raises(TlsError, match="--ca-file .*No such file"):
        client_context(str(tmp_path / "nope.crt"))


def test_lab_ca_certificates_work_for_real(pki) -> None:
    """A TLS server with the issued certificate, verified by client_context pinned to the CA;
    a client pinned to another CA refuses it; mutual TLS asks for the client's certificate."""
    _, ca, other, (crt, key), (ccrt, ckey) = pki
    tls = server_tls(str(crt), str(key), str(ca.cert))
    assert tls is not None and tls.uvicorn_kwargs()["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls.cert, tls.key)
    server_ctx.load_verify_locations(cafile=tls.client_ca)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[str] = []

    def serve(n: int) -> None:
        for _ in range(n):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as s:
                    seen.append(dict(x[0] for x in s.getpeercert()["subject"])["commonName"])
                    s.sendall(b"ok")
            except (ssl.SSLError, OSError):
                seen.append("refused")

    t = threading.Thread(target=serve, args=(3,), daemon=True)
    t.start()
    good = client_context(str(ca.cert), str(ccrt), str(ckey))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            good.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.recv(2) == b"ok"
    with pytest.raises(ssl.SSLCertVerificationError), \
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        client_context(str(other.cert)).wrap_socket(raw, server_hostname="localhost")
    no_cert = client_context(str(ca.cert))
    # TLS 1.3: the server checks the client's certificate after the handshake; the refusal
    # arrives on the first read.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            no_cert.wrap_socket(raw, server_hostname="127.0.0.1") as s, \
            pytest.raises((ssl.SSLError, ConnectionError)):
        if s.recv(2) == b"":
            raise ConnectionError("closed")
    t.join(10)
    listener.close()
    assert seen == ["c1", "refused", "refused"]
