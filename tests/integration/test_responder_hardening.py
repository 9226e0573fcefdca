"""Issue 19 ("Hardening"), the responder's part A: one regression test (or a few) per finding, on
the real responder (uvicorn, SQLite) over real HTTP(S); TLS from a throwaway openssl CA.

    1  tokens crossed the network in clear text: the responder serves HTTPS itself and refuses
       plain HTTP off loopback
    2  one request poisoned the event log for good: every text is checked before it is stored,
       nothing stored breaks a later read (also after a restart), no transaction stays open
    4  one client voted a worker down: a client votes only on the workers it may use, once
    8  the fleet's inventory answered anyone: /v1/workers and /v1/targets need a token
    9  the OpenAPI document left out answers: every route documents what it answers (the live
       fuzzing is tests/integration/test_responder_fuzz.py)
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.responder import (
    WG_FAILOVER,
    ResponderProc,
    alert_payload,
    make_fleet,
    unlimited_reports,
)
from wg_failover.fleet import dump_fleet
from wg_failover.lab import tlsca
from wg_failover.lab.gen import Generated
from wg_failover.tls import client_context

# Valid JSON whose strings Python reads as lone surrogates: UTF-8 cannot encode them.
SURROGATE = "\ud800"


def send(p: ResponderProc, method: str, path: str, who: str | None = None, *,
         body: Any = None, **kw: Any) -> httpx.Response:
    """A request with `body` as JSON text written with escapes (httpx's own encoder cannot
    write a lone surrogate)."""
    headers = {**(p.headers(who) if who else {}), **kw.pop("headers", {})}
    if body is not None:
        kw["content"] = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    return httpx.request(method, p.url + path, headers=headers, timeout=10, verify=p.verify,
                         **kw)


def metric(p: ResponderProc, series: str) -> float | None:
    for line in send(p, "GET", "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WG_FAILOVER, "responder", *args], capture_output=True, text=True,
                          timeout=30)


# --------------------------------------------------------------------------- 1: TLS


def test_https_with_the_fleets_tokens_and_only_for_those_who_trust_the_ca(tmp_path):
    p = ResponderProc.start(tmp_path / "r", tls=True)
    try:
        assert p.url.startswith("https://127.0.0.1:")
        assert send(p, "GET", "/healthz").status_code == 200
        r = p.alert("w1")  # the alert token, over TLS
        assert r.status_code == 200 and r.json()["applied"] == 1
        assert send(p, "GET", "/v1/workers", "read").json()[0]["state"] == "down"
        # The system's CAs do not vouch for the lab CA; another CA's trust is no trust.
        with pytest.raises(httpx.ConnectError):
            httpx.get(p.url + "/healthz", timeout=5)
        other = tlsca.make_ca(tmp_path / "other", name="someone else")
        with pytest.raises(httpx.ConnectError):
            httpx.get(p.url + "/healthz", timeout=5, verify=client_context(str(other.cert)))
        # Plain HTTP to the TLS port is never served: the token sent so is not taken.
        try:
            answered: int | None = httpx.get(f"http://127.0.0.1:{p.port}/v1/workers",
                                             headers=p.headers("read"), timeout=5).status_code
        except httpx.HTTPError:
            answered = None
        assert answered is None or answered >= 400
        p.restart()  # the TLS arguments are kept
        assert send(p, "GET", "/readyz").status_code == 200
    finally:
        p.stop()


def test_mutual_tls_turns_away_clients_without_a_certificate(tmp_path):
    p = ResponderProc.start(tmp_path / "r", mutual_tls=True)
    try:
        assert send(p, "GET", "/v1/targets", "read").status_code == 200
        assert p.ca_file is not None
        no_cert = client_context(str(p.ca_file))
        with pytest.raises(httpx.HTTPError):
            httpx.get(p.url + "/healthz", timeout=5, verify=no_cert)
        # A certificate from another CA is refused as well.
        other = tlsca.make_ca(tmp_path / "other", name="someone else")
        crt, key = tlsca.issue(other, tmp_path / "other", "mallory", client=True)
        with pytest.raises(httpx.HTTPError):
            httpx.get(p.url + "/healthz", timeout=5,
                      verify=client_context(str(p.ca_file), str(crt), str(key)))
    finally:
        p.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tuple[Path, tlsca.CA, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("pki")
    ca = tlsca.make_ca(d)
    return d, ca, tlsca.issue(ca, d, "responder", ips=["127.0.0.1"])


@pytest.fixture
def fleet_file(tmp_path) -> Path:
    f = tmp_path / "fleet.yaml"
    f.write_text(dump_fleet(make_fleet(2, 1).fleet))
    return f


def test_plain_http_off_loopback_is_refused_unless_asked_for(fleet_file, tmp_path, pki):
    _, ca, (crt, key) = pki
    # No server is started in this test: the options are checked before anything listens, and
    # an unusable --db after the checks stops the ones that pass (nothing binds 0.0.0.0).
    no_db = str(tmp_path / "not-a-dir" / "db")
    (tmp_path / "not-a-dir").write_text("")
    for listen in ("0.0.0.0:18443", ":18443", "[::]:18443"):
        r = run_cli("--fleet", str(fleet_file), "--listen", listen, "--db", no_db)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "refusing to serve plain HTTP" in lines[0], r.stderr
        assert "--insecure-http" in lines[0] and "--tls-cert" in lines[0]
    # The default listen address is every address: refused too.
    r = run_cli("--fleet", str(fleet_file), "--db", no_db)
    assert r.returncode == 2 and "refusing to serve plain HTTP" in r.stderr
    # Asked for, or with TLS, the checks pass (and the bad --db is what stops it).
    for extra in (["--insecure-http"], ["--tls-cert", str(crt), "--tls-key", str(key)],
                  ["--tls-cert", str(crt), "--tls-key", str(key), "--tls-client-ca",
                   str(ca.cert)]):
        r = run_cli("--fleet", str(fleet_file), "--listen", "0.0.0.0:18443", "--db", no_db,
                    *extra)
        assert r.returncode == 2 and "cannot open --db" in r.stderr, r.stderr
        assert "refusing" not in r.stderr and "Traceback" not in r.stderr


def test_bad_tls_files_exit_2_naming_the_file(fleet_file, tmp_path, pki):
    d, ca, (crt, key) = pki
    other_key = tmp_path / "other.key"
    other_key.write_bytes(tlsca.make_ca(tmp_path / "o").key.read_bytes())
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [
        (["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(key)], "missing.crt"),
        (["--tls-cert", str(junk), "--tls-key", str(key)], "junk.pem"),
        (["--tls-cert", str(crt), "--tls-key", str(other_key)], "other.key"),
        (["--tls-cert", str(crt)], "--tls-key"),
        (["--tls-client-ca", str(ca.cert)], "--tls-cert"),
        (["--tls-cert", str(crt), "--tls-key", str(key), "--tls-client-ca", str(junk)],
         "junk.pem"),
    ]
    for args, named in cases:
        r = run_cli("--fleet", str(fleet_file), "--listen", "127.0.0.1:1", "--db",
                    str(tmp_path / "db"), *args)
        assert r.returncode == 2, (args, r.stderr)
        assert named in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# --------------------------------------------------------------------------- 2: poison


def events(p: ResponderProc, page: int = 1000) -> Iterator[dict[str, Any]]:
    """Every event, page by page, each page answered 200 and read as JSON."""
    after = 0
    for _ in range(10_000):
        r = send(p, "GET", "/v1/events", "admin", params={"after": after, "limit": page})
        assert r.status_code == 200, (after, r.status_code, r.text[:500])
        body = r.json()
        if not body["events"]:
            return
        yield from body["events"]
        after = body["last_id"]
    raise AssertionError("the event log does not end")


def read_everything(p: ResponderProc) -> list[dict[str, Any]]:
    """Every page the API serves, each 200 and valid JSON: what a poisoned row used to break."""
    evs = list(events(p, page=3))
    assert evs == list(events(p))
    for c in p.fleet.clients:
        for who in ("admin", c.name):
            r = send(p, "GET", f"/v1/clients/{c.name}", who)
            assert r.status_code == 200, r.text[:500]
            r.json()
        r = send(p, "GET", f"/v1/clients/{c.name}/assignment", c.name)
        assert r.status_code == 200 and r.json()["client"] == c.name
    for path in ("/v1/workers", "/v1/targets"):
        assert send(p, "GET", path, "read").status_code == 200
    assert send(p, "GET", "/metrics").status_code == 200
    assert send(p, "GET", "/openapi.json").status_code == 200
    return evs


def test_the_worst_inputs_through_every_write_path_never_break_a_read(tmp_path):
    p = ResponderProc.start(tmp_path / "r", args=unlimited_reports())
    try:
        bad_texts = [SURROGATE, "a\ud800b", "\udfff", "line\nbreak", "\x1b[31mred", "\x00",
                     "x" * 100_000, "ü" * 300]

        def innocent_write_works() -> None:
            # What a transaction left open used to turn into 503.
            r = send(p, "POST", "/v1/workers/w2/drain", "admin")
            assert r.status_code == 200, r.text
            assert send(p, "POST", "/v1/workers/w2/undrain", "admin").status_code == 200

        # Alertmanager: every text it sends. A bad worker label is ignored and counted (200);
        # a bad fingerprint or time is not Alertmanager's (422); nothing is a 500.
        for n, text in enumerate(bad_texts):
            body = alert_payload("w1", fingerprint=f"fp{n}")
            a = body["alerts"][0]
            a["labels"]["worker"] = text
            a["labels"]["alertname"] = text
            a["annotations"] = {"summary": text, "description": text}
            body["groupKey"] = text
            body["truncatedAlerts"] = 3
            r = send(p, "POST", "/v1/alerts", "alert", body=body)
            assert r.status_code == 200, (text[:20], r.status_code, r.text[:300])
            innocent_write_works()
            for field in ("fingerprint", "startsAt"):
                body = alert_payload("w1")
                body["alerts"][0][field] = text
                r = send(p, "POST", "/v1/alerts", "alert", body=body)
                assert r.status_code == 422, (field, text[:20], r.status_code, r.text[:300])
                assert all("type" in d for d in r.json()["detail"])
            # A good alert whose free texts are bad: it acts, its texts are cut to printable.
            body = alert_payload("w3", fingerprint=f"good{n}", alertname="WorkerDown")
            body["alerts"][0]["annotations"] = {"summary": text}
            assert send(p, "POST", "/v1/alerts", "alert", body=body).status_code == 200
            innocent_write_works()
        assert metric(p, 'wgfo_alerts_ignored_total{why="malformed-worker"}') == len(bad_texts)
        assert send(p, "GET", "/v1/workers", "read").json()[2]["state"] == "down"

        # Clients: every report kind, every text and name field.
        for text in bad_texts:
            for report in (
                {"type": "switch", "from_worker": "w1", "to_worker": "w2", "reason": text},
                {"type": "rejected", "version": 1, "worker": "w2", "reason": text},
                {"type": "switch", "to_worker": text},
                {"type": "applied", "version": 1, "worker": text},
                {"type": "probe", "workers": {text: {"up": True}}},
                {"type": text},
            ):
                r = send(p, "POST", "/v1/clients/c1/events", "c1", body=report)
                assert r.status_code in (202, 422), (report, r.status_code, r.text[:300])
            innocent_write_works()
        assert send(p, "POST", "/v1/clients/c1/events", "c1",
                    body={"type": "switch", "to_worker": "w2", "reason": "ü ok"}
                    ).status_code == 202

        # Admin: names in paths.
        for name in ("%ED%A0%80", "w1%0A", "W1", "x" * 300):
            r = send(p, "POST", f"/v1/workers/{name}/drain", "admin")
            assert r.status_code == 404, (name, r.status_code)
            r = send(p, "GET", f"/v1/clients/{name}", "admin")
            assert r.status_code == 404, (name, r.status_code)

        before = read_everything(p)
        p.restart()
        after = read_everything(p)
        assert after[:len(before)] == before
        assert [e["kind"] for e in after[len(before):]] == ["start"]
        ignored = [e for e in after if e["kind"] == "alert-ignored"]
        assert ignored and all(e["worker"] is None for e in ignored
                               if e["data"]["why"] == "malformed worker label")
        for e in after:
            json.dumps(e, ensure_ascii=False).encode("utf-8")  # no lone surrogate anywhere
            for key in ("summary", "alertname", "group", "reason"):
                text = e["data"].get(key) or ""
                assert len(text) <= 200 and text.isprintable(), e
    finally:
        p.stop()


def test_the_store_refuses_what_it_could_not_read_back_and_stays_usable(tmp_path):
    """Below the intake checks: a text UTF-8 cannot encode never reaches the disk, and the
    failed commit leaves no transaction open (the next innocent one used to answer 503)."""
    from wg_failover.responder.store import open_store
    from wg_failover.responder.store.base import Event, Tx

    store = open_store(str(tmp_path / "responder.db"))
    try:
        for where in ({"worker": SURROGATE}, {"data": {"reason": SURROGATE}}):
            with pytest.raises(UnicodeEncodeError):
                store.commit(Tx(events=[Event("client-switch", **where)]))
        assert store.commit(Tx(events=[Event("client-switch", data={"reason": "ü fine"})]))
        assert [e["data"] for e in store.events(0, 10)] == [{"reason": "ü fine"}]
    finally:
        store.close()


def test_event_log_queries_out_of_range_are_4xx_with_a_reason(responder):
    p = responder
    for params in ({"after": "99999999999999999999"}, {"after": str(2**63)}, {"after": "-1"},
                   {"after": "x"}, {"after": "1e3"}, {"limit": "0"}, {"limit": str(10**30)},
                   {"after": ""}):
        r = send(p, "GET", "/v1/events", "admin", params=params)
        assert r.status_code == 422, (params, r.status_code, r.text)
        detail = r.json()["detail"]
        assert detail and {"loc", "msg", "type"} <= set(detail[0]), detail
    # The same bounds on the client's long-poll.
    for params in ({"after": "x"}, {"after": ""}, {"wait": "-1"}, {"wait": "nan"}):
        r = send(p, "GET", "/v1/clients/c1/assignment", "c1", params=params)
        assert r.status_code == 422, (params, r.status_code, r.text)
        assert {"loc", "msg", "type"} <= set(r.json()["detail"][0])
    assert send(p, "GET", "/v1/events", "admin",
                params={"after": str(2**53 - 1)}).json()["events"] == []


def test_a_row_an_older_version_poisoned_is_served_again(tmp_path):
    """Databases written before the fix may hold a lone surrogate in event data (as a JSON
    escape); the pages holding it answered 500 for good. Now they are served, the character
    replaced."""
    p = ResponderProc.start(tmp_path / "r", db=tmp_path / "r" / "responder.db")  # SQLite's rows
    try:
        p.stop()
        db = sqlite3.connect(p.db_path)
        with db:
            db.execute("INSERT INTO events (ts, kind, worker, client, data) VALUES "
                       "(?, 'client-switch', 'w2', 'c1', ?)",
                       (time.time(), '{"reason": "\\ud800 old", "to_worker": "w2"}'))
        db.close()
        p.restart()
        evs = read_everything(p)
        old = [e for e in evs if e["kind"] == "client-switch"]
        assert len(old) == 1 and old[0]["data"]["reason"].endswith(" old")
    finally:
        p.stop()


# --------------------------------------------------------------------------- 4: votes


def test_a_client_votes_once_and_only_on_workers_it_may_use(tmp_path):
    base = make_fleet(3, 3)
    clients = list(base.fleet.clients)
    clients[0] = clients[0].model_copy(update={"workers": ["w1", "w2"]})  # c1 may not use w3
    gen = Generated(base.fleet.model_copy(update={"clients": clients}), {}, base.tokens)
    p = ResponderProc.start(tmp_path / "r", gen, args=unlimited_reports())
    try:
        def probe(client: str, **up: bool) -> None:
            body = {"type": "probe",
                    "workers": {w: {"up": ok, "rtt_ms": 5} for w, ok in up.items()}}
            r = send(p, "POST", f"/v1/clients/{client}/events", client, body=body)
            assert r.status_code == 202, r.text

        probe("c1", w1=True, w2=True, w3=False)
        # c1's probe of w3 is no vote: nobody may vote w3 down on its word.
        assert metric(p, 'wgfo_client_observed_reporters{worker="w3"}') == 0
        assert metric(p, 'wgfo_client_observed_up{worker="w3"}') is None
        assert metric(p, 'wgfo_client_probe_rtt_seconds{client="c1",worker="w3"}') is None
        status = send(p, "GET", "/v1/clients/c1", "c1").json()
        assert set(status["probes"]["workers"]) == {"w1", "w2"}

        # One client is one vote, however often it reports, and whatever it says.
        for up in (False, True, False, False, False):
            probe("c1", w1=up, w2=True, w3=False)
        assert metric(p, 'wgfo_client_observed_reporters{worker="w1"}') == 1
        assert metric(p, 'wgfo_client_observed_up{worker="w1"}') == 0
        probe("c2", w1=True, w2=True, w3=True)
        assert metric(p, 'wgfo_client_observed_reporters{worker="w1"}') == 2
        assert metric(p, 'wgfo_client_observed_up{worker="w1"}') == 0.5
        assert metric(p, 'wgfo_client_observed_reporters{worker="w3"}') == 1
        assert metric(p, 'wgfo_client_observed_up{worker="w3"}') == 1
        # A client cannot vote as another (its token is its own).
        r = send(p, "POST", "/v1/clients/c3/events", "c1",
                 body={"type": "probe", "workers": {"w1": {"up": False}}})
        assert r.status_code == 401
        assert metric(p, 'wgfo_client_observed_reporters{worker="w1"}') == 2
    finally:
        p.stop()


# --------------------------------------------------------------------------- 8: inventory


def test_inventory_needs_the_read_or_admin_token(responder):
    p = responder
    for path in ("/v1/workers", "/v1/targets"):
        for who in (None, "alert", "c1"):
            r = send(p, "GET", path, who)
            assert r.status_code == 401, (path, who, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json() == {"detail": "missing or wrong bearer token"}
        r = send(p, "GET", path, headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401
        for who in ("read", "admin"):
            r = send(p, "GET", path, who)
            assert r.status_code == 200 and len(r.json()) == 3, (path, who, r.text)
    # The read token reads the inventory, nothing else.
    assert send(p, "POST", "/v1/workers/w1/drain", "read").status_code == 401
    assert send(p, "GET", "/v1/events", "read").status_code == 401
    assert send(p, "GET", "/v1/clients/c1", "read").status_code == 401
    assert send(p, "GET", "/v1/clients/c1/assignment", "read").status_code == 401
    # /metrics stays open, as an exporter's does; so do the probes.
    for path in ("/metrics", "/healthz", "/readyz"):
        assert send(p, "GET", path).status_code == 200


def test_without_a_read_token_only_the_admin_reads_the_inventory(tmp_path):
    gen = make_fleet(2, 1)
    rs = gen.fleet.responder.model_copy(update={"read_token_sha256": None})
    gen = Generated(gen.fleet.model_copy(update={"responder": rs}), {}, gen.tokens)
    p = ResponderProc.start(tmp_path / "r", gen)
    try:
        assert send(p, "GET", "/v1/targets", "read").status_code == 401
        assert send(p, "GET", "/v1/targets", "admin").status_code == 200
    finally:
        p.stop()


def test_check_validates_the_read_token_field(tmp_path):
    gen = make_fleet(1, 1)
    good = tmp_path / "good.yaml"
    good.write_text(dump_fleet(gen.fleet))
    assert "read_token_sha256" in good.read_text()
    r = subprocess.run([WG_FAILOVER, "check", str(good)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace(gen.fleet.responder.read_token_sha256 or "?",
                                            "not-hex"))
    r = subprocess.run([WG_FAILOVER, "check", str(bad)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "responder.read_token_sha256" in r.stderr, r.stderr


# --------------------------------------------------------------------------- 9: the document


def test_every_route_documents_what_it_answers(responder):
    p = responder
    doc = send(p, "GET", "/openapi.json").json()
    paths = doc["paths"]
    schemas = doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"][
            "securitySchemes"]["bearer"]["description"]}
    # The error bodies as they really are.
    assert schemas["ErrorMessage"]["required"] == ["detail"]
    assert set(schemas["FieldError"]["required"]) == {"loc", "msg", "type"}
    assert "HTTPValidationError" not in schemas
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    for path, methods in paths.items():
        for method, op in methods.items():
            codes = set(op["responses"])
            if "401" in codes:
                assert op["security"] == [{"bearer": []}], (method, path)
                assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
            if "503" in codes and path != "/readyz":
                assert "Retry-After" in op["responses"]["503"]["headers"], (method, path)
            for code in codes - {"200", "201", "202"}:
                body = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                want = "ValidationErrors" if code == "422" else (
                    "Readiness" if path == "/readyz" else "ErrorMessage")
                assert body.endswith("/" + want), (method, path, code, body)

    # What the routes answer, each documented for its route (a conformance sample; the fuzzer
    # in test_responder_fuzz.py covers the rest).
    def documented(method: str, template: str, r: httpx.Response) -> None:
        op = paths[template][method.lower()]
        assert str(r.status_code) in op["responses"], (method, template, r.status_code, r.text)

    cases = [
        ("GET", "/v1/workers", "/v1/workers", None, None),
        ("GET", "/v1/targets", "/v1/targets", None, None),
        ("GET", "/v1/events?after=x", "/v1/events", "admin", None),
        ("GET", "/v1/events", "/v1/events", None, None),
        ("POST", "/v1/alerts", "/v1/alerts", None, None),
        ("POST", "/v1/alerts", "/v1/alerts", "alert", {"alerts": "no"}),
        ("POST", "/v1/workers/nope/drain", "/v1/workers/{name}/drain", "admin", None),
        ("POST", "/v1/workers/w1/undrain", "/v1/workers/{name}/undrain", None, None),
        ("GET", "/v1/clients/nope", "/v1/clients/{name}", "admin", None),
        ("GET", "/v1/clients/c1", "/v1/clients/{name}", "c2", None),
        ("GET", "/v1/clients/nope/assignment", "/v1/clients/{name}/assignment", "admin", None),
        ("GET", "/v1/clients/c1/assignment?after=x", "/v1/clients/{name}/assignment", "c1",
         None),
        ("GET", "/v1/clients/c1/assignment/stream", "/v1/clients/{name}/assignment/stream",
         None, None),
        ("POST", "/v1/clients/c1/events", "/v1/clients/{name}/events", "c1", {"type": 1}),
        ("POST", "/v1/clients/c1/events", "/v1/clients/{name}/events", None, None),
    ]
    for method, url, template, who, body in cases:
        r = send(p, method, url, who, body=body)
        assert r.status_code >= 400, (method, url, r.status_code)
        documented(method, template, r)
        if r.status_code == 422:
            assert all({"loc", "msg", "type"} <= set(d) for d in r.json()["detail"]), r.text
        else:
            assert isinstance(r.json()["detail"], str), r.text
        if r.status_code == 401:
            assert r.headers["www-authenticate"] == "Bearer"
    r = send(p, "POST", "/v1/alerts", "alert", content=b"{", headers={
        "Content-Type": "application/json"})
    documented("POST", "/v1/alerts", r)
    assert r.status_code == 400
    r = send(p, "GET", "/metrics")
    assert r.headers["content-type"].startswith("text/plain")

