"""`wg-failover ctl` as an operator runs it: a real subprocess against the real responder over
HTTPS (a throwaway CA), tables and --json, drain/undrain moving clients, and every error an exit 2
with one line saying what to check, never a traceback or the token."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers.ctl import ctl, refused, run, token_file
from tests.helpers.responder import ResponderProc
from wg_failover.lab import tlsca


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResponderProc]:
    # One responder for the read-only tests (a start costs a second or two); the tests that
    # change state start their own.
    p = ResponderProc.start(tmp_path_factory.mktemp("ctl"), tls=True, workers=3, clients=4)
    try:
        yield p
    finally:
        p.stop()


def no_secret(p: ResponderProc, r: subprocess.CompletedProcess[str]) -> None:
    for secret in p.tokens.values():
        assert secret not in r.stdout + r.stderr


# ------------------------------------------------------------------------------ reading


def test_workers_table_and_json(fleet: ResponderProc):
    r = ctl(fleet, "workers")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "DRAINING", "HEALTHY", "SUSPECT", "ASSIGNED",
                                "RTT_MS", "REGION", "SINCE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == ["w1", "w2", "w3"]
    assert all(row[1:5] == ["up", "no", "yes", "no"] for row in rows.values())
    # 4 clients over 3 workers, no capacity set; no probe reports yet: no RTT figures
    assert sorted(int(row[5].split("/")[0]) for row in rows.values()) == [1, 1, 2]
    assert all(row[5].endswith("/-") and row[6] == "-" for row in rows.values())
    no_secret(fleet, r)

    j = ctl(fleet, "--json", "workers")
    assert j.returncode == 0
    data = json.loads(j.stdout)
    assert [w["name"] for w in data] == ["w1", "w2", "w3"]
    assert data == fleet.http("admin").get("/v1/workers").json()


def test_clients_table_and_json_match_the_api(fleet: ResponderProc):
    api = fleet.http("admin").get("/v1/clients")
    assert api.status_code == 200
    listed = api.json()
    assert [c["name"] for c in listed] == ["c1", "c2", "c3", "c4"]
    for c in listed:  # each summary agrees with the client's own route
        one = fleet.http("admin").get(f"/v1/clients/{c['name']}").json()["assignment"]
        assert (c["worker"], c["version"], c["epoch"]) == (one["worker"], one["version"],
                                                          one["epoch"])
    r = ctl(fleet, "clients")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "WORKER", "VERSION"]
    assert [(ln.split()[0], ln.split()[1]) for ln in lines[1:]] == [
        (c["name"], c["worker"]) for c in listed]
    j = ctl(fleet, "clients", "--json")  # options after the subcommand work too
    assert j.returncode == 0 and json.loads(j.stdout) == listed


def test_the_client_list_is_admin_only(fleet: ResponderProc):
    assert fleet.http("read").get("/v1/clients").status_code == 401
    assert fleet.http("c1").get("/v1/clients").status_code == 401
    assert fleet.http().get("/v1/clients").status_code == 401
    # the list route does not shadow the per-client one
    assert fleet.http("c1").get("/v1/clients/c1").status_code == 200


def test_client_block_and_json(fleet: ResponderProc):
    r = ctl(fleet, "client", "c2")
    assert r.returncode == 0, r.stderr
    want = fleet.http("admin").get("/v1/clients/c2").json()
    assert "client   c2" in r.stdout
    assert f"worker   {want['assignment']['worker']} (version " in r.stdout
    assert "recent events" in r.stdout and "move" in r.stdout
    j = ctl(fleet, "--json", "client", "c2")
    assert j.returncode == 0 and json.loads(j.stdout)["assignment"] == want["assignment"]


def test_events_page(fleet: ResponderProc):
    r = ctl(fleet, "events", "--limit", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "TIME", "KIND"]
    assert [ln.split()[0] for ln in lines[1:3]] == ["1", "2"]
    assert lines[-1] == "(last id 2; next page: --after 2)"
    j = json.loads(ctl(fleet, "--json", "events", "--after", "2", "--limit", "3").stdout)
    assert [e["id"] for e in j["events"]] == [3, 4, 5] and j["last_id"] == 5


# ------------------------------------------------------------------------------ changing


def test_drain_then_undrain_moves_clients(responder_factory):
    p = responder_factory(tls=True, workers=3, clients=4)
    before = {c["name"]: c["worker"] for c in p.http("admin").get("/v1/clients").json()}
    on_w1 = sorted(c for c, w in before.items() if w == "w1")
    assert on_w1

    r = ctl(p, "drain", "w1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"w1: drained; {len(on_w1)} clients moved off it "
                        f"({len(on_w1)} -> 0 assigned); state up\n")
    after = {c["name"]: c["worker"] for c in p.http("admin").get("/v1/clients").json()}
    assert all(after[c] != "w1" for c in on_w1)
    workers = {w["name"]: w for w in json.loads(ctl(p, "--json", "workers").stdout)}
    assert workers["w1"]["draining"] is True and workers["w1"]["assigned"] == 0
    table = ctl(p, "workers").stdout.splitlines()
    assert next(ln for ln in table if ln.startswith("w1")).split()[2] == "yes"

    again = ctl(p, "drain", "w1")
    assert again.returncode == 0 and again.stdout.startswith("w1: already drained; no client")

    r = ctl(p, "--json", "undrain", "w1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["draining"] is False
    workers = {w["name"]: w for w in json.loads(ctl(p, "--json", "workers").stdout)}
    assert workers["w1"]["draining"] is False


# ------------------------------------------------------------------------------ errors


def test_a_wrong_token_is_refused(fleet: ResponderProc):
    r = ctl(fleet, "workers", token=token_file(fleet, "c1"))
    refused(r, "the responder refused the token (401): check --token-file")
    no_secret(fleet, r)
    # the read token reads workers but not clients
    assert ctl(fleet, "workers", token=token_file(fleet, "read")).returncode == 0
    refused(ctl(fleet, "clients", token=token_file(fleet, "read")), "(401)")


def test_unknown_names(fleet: ResponderProc):
    refused(ctl(fleet, "drain", "x"), "no worker named 'x'")
    refused(ctl(fleet, "undrain", "x"), "no worker named 'x'")
    refused(ctl(fleet, "client", "x"), "no client named 'x'")


def test_unreachable_responder(fleet: ResponderProc, tmp_path: Path):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"https://127.0.0.1:{port}"
    r = run("--responder", url, "--ca-file", str(fleet.ca_file),
            "--token-file", str(token_file(fleet)), "workers", "--timeout", "3")
    refused(r, f"cannot reach the responder at {url}/v1/workers", "ConnectError")


def test_a_certificate_from_another_ca_names_the_ca_file(fleet: ResponderProc, tmp_path: Path):
    other = tlsca.make_ca(tmp_path / "other", "another CA")
    r = ctl(fleet, "workers", ca=str(other.cert))
    refused(r, "cannot verify the responder's certificate", "--ca-file")


def test_no_ca_file_fails_verification_against_the_system_cas(fleet: ResponderProc):
    r = run("--responder", fleet.url, "--token-file", str(token_file(fleet)), "workers")
    refused(r, "cannot verify the responder's certificate", "check --ca-file")


def test_file_errors(fleet: ResponderProc, tmp_path: Path):
    refused(ctl(fleet, "workers", token=tmp_path / "missing"), "--token-file", "cannot read")
    refused(ctl(fleet, "workers", ca=str(tmp_path / "missing.pem")), "--ca-file")
    refused(run("--responder", fleet.url, "workers"), "no admin token", "--token-file")
    refused(run("workers", env={"WG_FAILOVER_FLEET": str(tmp_path / "none.yaml")}),
            "none.yaml")


def test_a_readable_token_file_warns_but_works(fleet: ResponderProc):
    r = ctl(fleet, "workers", token=token_file(fleet, mode=0o644))
    assert r.returncode == 0
    assert "readable by group or others (mode 0644); chmod 600" in r.stderr
    no_secret(fleet, r)
    assert "warning" not in ctl(fleet, "workers").stderr


def test_environment_and_fleet_file_defaults(fleet: ResponderProc):
    env = {"WG_FAILOVER_TOKEN_FILE": str(token_file(fleet))}
    r = run("--ca-file", str(fleet.ca_file), "workers",
            env={**env, "WG_FAILOVER_RESPONDER": fleet.url})
    assert r.returncode == 0, r.stderr
    # the fleet file's responder.url (ResponderProc writes the real URL there)
    r = run("--ca-file", str(fleet.ca_file), "--fleet", str(fleet.fleet_path), "workers", env=env)
    assert r.returncode == 0, r.stderr


def test_plain_http_to_another_machine_is_refused(fleet: ResponderProc):
    r = run("--responder", "http://192.0.2.1:8080", "--token-file", str(token_file(fleet)),
            "workers")
    refused(r, "refusing plain HTTP to 192.0.2.1", "--insecure-http")
    refused(run("--responder", "ftp://x", "workers"), "expected an http:// or https:// URL")


class _Unavailable(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b'{"detail": "state store unavailable (disk full); retry"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_a_503_says_the_responders_reason(fleet: ResponderProc):
    # A stand-in on loopback: making the real store refuse a read on demand needs a damaged
    # database (tests/integration/test_responder_store_faults.py); ctl only sees the answer.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        r = run("--responder", url, "--token-file", str(token_file(fleet)), "clients")
        refused(r, "(503)", "state store unavailable (disk full); retry")
    finally:
        server.shutdown()
        server.server_close()


def test_help_explains():
    r = run("--help")
    assert r.returncode == 0
    for word in ("--token-file", "--ca-file", "--insecure-http", "--json", "workers", "clients",
                 "drain", "undrain", "events", "never printed"):
        assert word in r.stdout, word
    r = run("drain", "--help")
    assert r.returncode == 0 and "NAME" in r.stdout
    r = run()
    assert r.returncode == 2 and "COMMAND" in r.stderr
