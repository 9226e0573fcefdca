"""The real `wg-failover switcher` process refuses, before it connects to anything, what would
send its token in clear text or trust the wrong responder (hardening, issue 19, finding 1).

Everything here fails at argument checking: no interface, no namespace and no network are
needed (the interface named does not exist, and the checks must come before it is looked at).
The hostile-responder tests need a WireGuard interface and sit in
tests/netns/test_switcher_hostile.py.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.helpers.fleets import VALID
from tests.helpers.tools import WG_FAILOVER
from wg_failover.lab import tlsca

pytestmark = pytest.mark.timeout(60)


# The fleet's own responder URL on an address (a name would be looked up in DNS).
FLEET_URL = "http://198.18.0.7:8080"


@pytest.fixture
def base(tmp_path) -> list[str]:
    fleet = tmp_path / "fleet.yaml"
    assert "http://master.example.net:8080" in VALID
    fleet.write_text(VALID.replace("http://master.example.net:8080", FLEET_URL))
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    return [WG_FAILOVER, "switcher", "--fleet", str(fleet), "--client", "bob-phone",
            "--interface", "wgfo-none0", "--token-file", str(token),
            "--state-dir", str(tmp_path / "state")]


def run(argv: list[str]) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def test_plain_http_across_a_network_is_refused_before_any_connection(base):
    rc, out, took = run([*base, "--responder", "http://198.18.0.1:8080", "--once"])
    assert rc == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert "refusing plain HTTP to 198.18.0.1" in lines[0]
    assert "clear text" in lines[0] and "--insecure-http" in lines[0]
    assert "s3cret" not in out and "Traceback" not in out
    assert "interface" not in out  # refused before the interface, let alone the network
    assert took < 10


def test_the_fleet_files_plain_http_url_is_refused_too(base):
    # No --responder: responder.url of the fleet file.
    rc, out, _ = run(base)
    assert rc == 2, out
    assert "refusing plain HTTP to 198.18.0.7" in out, out


def test_insecure_http_or_loopback_passes_the_url_check(base):
    for extra in (["--responder", "http://198.18.0.1:8080", "--insecure-http"],
                  ["--responder", "http://127.0.0.1:9"]):
        rc, out, _ = run([*base, *extra])
        assert rc == 2, out  # the next check: the interface does not exist
        assert "interface wgfo-none0" in out and "clear text" not in out, out


def test_ca_file_and_client_certificate_only_for_https(base, tmp_path):
    ca = tlsca.make_ca(tmp_path / "ca")
    rc, out, _ = run([*base, "--responder", "http://127.0.0.1:9", "--ca-file", str(ca.cert)])
    assert rc == 2 and "are for an https:// responder" in out, out


@pytest.mark.parametrize("content, what", [
    (None, "No such file or directory"),
    (b"hello\n", "not a PEM file"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n", ""),
])
def test_a_bad_ca_file_is_exit_2_naming_the_file(base, tmp_path, content, what):
    ca = tmp_path / "bad-ca.pem"
    if content is not None:
        ca.write_bytes(content)
    rc, out, _ = run([*base, "--responder", "https://127.0.0.1:9", "--ca-file", str(ca)])
    assert rc == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and str(ca) in lines[0] and what in lines[0], out
    assert "Traceback" not in out


def test_a_client_certificate_needs_its_key(base, tmp_path):
    ca = tlsca.make_ca(tmp_path / "ca")
    cert, key = tlsca.issue(ca, tmp_path / "c", "bob-phone", client=True)
    rc, out, _ = run([*base, "--responder", "https://127.0.0.1:9", "--tls-cert", str(cert)])
    assert rc == 2 and "--tls-cert and --tls-key go together" in out, out
    other_cert, _ = tlsca.issue(ca, tmp_path / "d", "other", client=True)
    rc, out, _ = run([*base, "--responder", "https://127.0.0.1:9", "--tls-cert",
                      str(other_cert), "--tls-key", str(key)])
    assert rc == 2 and "Traceback" not in out, out
    assert str(other_cert) in out or str(key) in out, out
    rc, out, _ = run([*base, "--responder", "https://127.0.0.1:9", "--ca-file", str(ca.cert),
                      "--tls-cert", str(cert), "--tls-key", str(key)])
    assert rc == 2 and "interface wgfo-none0" in out, out  # good files: on to the next check
