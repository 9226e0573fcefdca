"""The exporter process over real TLS and basic auth (--web-config), on loopback."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from tests.helpers.exporter import EXPORTER
from tests.helpers.tools import require_tool
from tests.helpers.wait import free_port


def start(args: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen([*EXPORTER, *args], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def get(url: str, ctx: ssl.SSLContext | None = None, auth: str | None = None,
        attempts: int = 50) -> tuple[int, bytes]:
    headers = {"Authorization": "Basic " + b64encode(auth.encode()).decode()} if auth else {}
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        context=ctx, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError(f"no answer from {url}")


@pytest.fixture
def cert(tmp_path):
    openssl = require_tool("openssl")
    key, crt = tmp_path / "key.pem", tmp_path / "crt.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    return key, crt


def test_tls_and_basic_auth(tmp_path, cert):
    key, crt = cert
    hashed = subprocess.run([*EXPORTER, "--hash-password"], input="s3cret\n", text=True,
                            capture_output=True, check=True, timeout=30).stdout.strip()
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n"
                   f"basic_auth_users:\n  prom: '{hashed}'\n")
    port = free_port()
    # wg fails here on purpose: this test is about the web side; the page must still be served.
    proc = start(["--listen", f"127.0.0.1:{port}", "--web-config", str(web)],
                 WG_FAILOVER_WG="/bin/false")
    try:
        ctx = ssl.create_default_context(cafile=str(crt))
        url = f"https://127.0.0.1:{port}/metrics"
        status, body = get(url, ctx, auth="prom:s3cret")
        assert status == 200 and b"wgfo_scrape_success 0" in body
        assert get(url, ctx)[0] == 401
        assert get(url, ctx, auth="prom:wrong")[0] == 401
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP: no page
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
    log = proc.stderr.read()
    assert "Traceback" not in log and "s3cret" not in log, log


@pytest.mark.parametrize("content, message", [
    ("tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n", "TLS"),
    ("basic_auth_users:\n  prom: plain\n", "bcrypt"),
    ("http_server_config:\n  http2: false\n", "not supported"),
])
def test_bad_web_config_is_a_clean_error(tmp_path, content, message):
    web = tmp_path / "web.yml"
    web.write_text(content)
    proc = subprocess.run([*EXPORTER, "--listen", "127.0.0.1:0", "--web-config", str(web)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_bad_arguments_are_clean_errors(tmp_path):
    cases = [(["--listen", "nope"], "--listen"),
             (["--fleet", str(tmp_path / "missing.yaml")], "no such file")]
    if not Path("/etc/wg-failover/fleet.yaml").exists():
        cases.append((["--worker", "w9"], "--worker needs a fleet file"))
    for args, message in cases:
        env = {k: v for k, v in os.environ.items() if k != "WG_FAILOVER_FLEET"}
        proc = subprocess.run([*EXPORTER, *args], capture_output=True, text=True, timeout=30,
                              env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_help_lists_every_metric():
    from wg_failover.exporter.metrics import METRICS

    out = subprocess.run([*EXPORTER, "--help"], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    for name in METRICS:
        assert name in out


def test_plain_http_with_wg_missing_serves_200():
    port = free_port()
    proc = start(["--listen", f"127.0.0.1:{port}"], WG_FAILOVER_WG="/nonexistent/wg")
    try:
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"wgfo_scrape_success 0" in body
        assert get(f"http://127.0.0.1:{port}/")[0] == 200
        assert get(f"http://127.0.0.1:{port}/other")[0] == 404
    finally:
        proc.terminate()
        proc.wait(10)
    assert "not found" in proc.stderr.read()  # the failure is logged, once
