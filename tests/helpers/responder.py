"""Run the real responder (`wg-failover responder`, uvicorn) as a subprocess, for any test.

    from tests.helpers.responder import ResponderProc, make_fleet
    # the fixtures `responder` and `responder_factory` are registered for every test by
    # tests/conftest.py: take them as arguments, no import needed

    ResponderProc.start(workdir, gen=None, *, workers=3, clients=4, capacity=None,
                        hold_down_seconds=60, preempt=False, db=None,
                        timeout=30, env=None, args=(), tls=False, mutual_tls=False,
                        standby=False, store=None) -> ResponderProc
        Writes a fleet (`gen`, a wg_failover.lab.gen.Generated, else make_fleet(...)) to
        workdir/fleet.yaml, picks a free port on 127.0.0.1, starts the responder with the db at
        `db` (default workdir/responder.db) and waits for /readyz (raises RuntimeError with the
        log when it does not come up). The fleet's responder.url is set to the real URL.
        `env`: extra environment variables for the process. `args`: extra command-line
        arguments after the ones the helper passes (kept for restart()); `("--db", url)` puts
        the state in PostgreSQL (fixture `pg_url`), and with WGFO_TEST_STORE=postgres in the
        environment every responder started without `db` does.
        `store`: "postgres" does the same for this one (None: WGFO_TEST_STORE).
        `standby`: a replica on PostgreSQL counts as started when /readyz says it is a
        standby (503, "leader": false), not only when it leads.
        `tls`: serve HTTPS with a certificate for 127.0.0.1 from a throwaway CA
        (wg_failover.lab.tlsca, in workdir/tls); `mutual_tls` (implies tls): the responder also
        demands a client certificate from that CA, and the helper presents one.

    proc.url                    "http://127.0.0.1:PORT" ("https://..." with tls)
    proc.ca_file                the CA's certificate (tls), else None
    proc.client_cert            (cert, key) the helper presents (mutual_tls), else None
    proc.verify                 what httpx's `verify=` takes for this responder: an SSLContext
                                that trusts only the CA (and presents the client certificate)
                                with tls, else True: httpx.get(p.url + path, verify=p.verify)
    proc.http(who=None, **kw)   an httpx.Client on proc.url with `verify` and, for `who`, its
                                bearer token

    proc.gen / .fleet / .tokens  the Generated fleet; tokens["alert"], ["admin"], ["read"],
                                [client name]
    proc.headers(who)           {"Authorization": "Bearer ..."}; who = "alert"|"admin"|"read"|
                                a client
    proc.fleet_path, proc.db_path, proc.port, proc.pid
    proc.stop()                 SIGTERM, then SIGKILL after 5 s (idempotent)
    proc.kill()                 SIGKILL (kill -9), waits for the exit
    proc.restart()              start again: same port, fleet and db; waits for /readyz
    proc.log()                  the process's output so far (stdout and stderr)
    proc.alert(worker, action="failover", status="firing", starts_at=None, fingerprint=None)
                                POST one Alertmanager-shaped alert; returns the httpx.Response

    unlimited_reports() -> args for ResponderProc.start: lift the responder's per-client report
        rate (where it has one) for tests that report faster than a switcher does

    make_fleet(workers=3, clients=4, *, capacity=None, hold_down_seconds=60, preempt=False,
               prefs=None, responder_url="http://127.0.0.1:8080") -> Generated
        Fast fleet for the responder (random keys: valid base64 of 32 bytes, not wg keypairs;
        use wg_failover.lab.gen.generate_fleet when a test needs real keys); tokens "alert",
        "admin", "read" and one per client. Worker i is w{i+1} with
        exporter 127.0.0.1:{9600+i}; client j is c{j+1} on 10.68.x.y/32 (any count up to
        60,000) and prefers all workers rotated by j (prefs="same": all in file order).

Fixtures: `responder` (a started ResponderProc with the defaults, stopped afterwards) and
`responder_factory` (call it like ResponderProc.start without the workdir; all are stopped at the
end of the test). tests/conftest.py registers this module as a plugin, so every test has them;
the names `responder_fixture, responder_factory_fixture` (and the first published `responder,
responder_factory`) stay importable for tests written when they had to be imported.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import os
import secrets
import signal
import ssl
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from wg_failover.fleet import Client, Fleet, ResponderSettings, Worker, dump_fleet
from wg_failover.lab import tlsca
from wg_failover.lab.gen import Generated, sha256_hex
from wg_failover.lab.procs import stop_process
from wg_failover.responder.store import describe_location, is_postgres
from wg_failover.tls import client_context

from .tools import WG_FAILOVER
from .wait import free_port, wait_started

__all__ = ["WG_FAILOVER", "ResponderProc", "alert_payload", "free_port", "make_fleet",
           "responder", "responder_factory", "responder_factory_fixture", "responder_fixture",
           "unlimited_reports"]

ROOT = Path(__file__).resolve().parents[2]


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def make_fleet(
    workers: int = 3,
    clients: int = 4,
    *,
    capacity: int | None = None,
    hold_down_seconds: float = 60,
    preempt: bool = False,
    prefs: str | None = None,
    responder_url: str = "http://127.0.0.1:8080",
) -> Generated:
    ws = [
        Worker(name=f"w{i + 1}", public_key=_key(), endpoint=f"198.18.0.{i + 10}:51820",
               tunnel_address=f"10.66.0.{i + 1}", exporter=f"127.0.0.1:{9600 + i}",
               capacity=capacity, region="lab")
        for i in range(workers)
    ]
    tokens: dict[str, str] = {}
    cs = []
    base = ipaddress.ip_address("10.68.0.0")
    for j in range(clients):
        name = f"c{j + 1}"
        tokens[name] = secrets.token_urlsafe(18)
        order = None if prefs == "same" else [ws[(j + k) % workers].name for k in range(workers)]
        cs.append(Client(name=name, public_key=_key(), address=f"{base + j + 2}/32",
                         routes=["10.99.0.0/24"], workers=order,
                         token_sha256=sha256_hex(tokens[name])))
    tokens["alert"] = secrets.token_urlsafe(18)
    tokens["admin"] = secrets.token_urlsafe(18)
    tokens["read"] = secrets.token_urlsafe(18)
    rs = ResponderSettings(url=responder_url, alert_token_sha256=sha256_hex(tokens["alert"]),
                           admin_token_sha256=sha256_hex(tokens["admin"]),
                           read_token_sha256=sha256_hex(tokens["read"]),
                           hold_down_seconds=hold_down_seconds, preempt=preempt)
    return Generated(Fleet(workers=ws, clients=cs, responder=rs), {}, tokens)


@functools.lru_cache(maxsize=1)
def unlimited_reports() -> tuple[str, ...]:
    """Arguments that lift the per-client report rate, if this responder has one: tests that
    send every kind of report in a burst are not testing the rate limit."""
    out = subprocess.run([WG_FAILOVER, "responder", "--help"], capture_output=True, text=True,
                         timeout=30).stdout
    if "--report-rate" not in out:
        return ()
    return ("--report-rate", "100000", "--report-burst", "100000")


def default_store() -> str:
    """The store of responders a test starts without naming one: WGFO_TEST_STORE, else sqlite."""
    return os.environ.get("WGFO_TEST_STORE", "sqlite")


def _store_args(db: object, store: str | None) -> tuple[str, ...]:
    """store "postgres" (None: default_store()): a responder started without `db` keeps its
    state in a fresh PostgreSQL database (tests/helpers/postgres.py) instead of SQLite, so any
    responder test can be run on that backend too. An explicit `--db` in `args` still wins (it
    comes later)."""
    if db is not None or (store or default_store()) != "postgres":
        return ()
    from .postgres import shared_server

    return ("--db", shared_server().create_db())


class ResponderProc:
    def __init__(self, workdir: Path, gen: Generated, port: int, db: Path):
        self.workdir = Path(workdir)
        self.gen = gen
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ca_file: Path | None = None
        self.client_cert: tuple[Path, Path] | None = None
        self.verify: ssl.SSLContext | bool = True
        self.db_path = Path(db)
        self.fleet_path = self.workdir / "fleet.yaml"
        self.log_path = self.workdir / f"responder-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def fleet(self) -> Fleet:
        return self.gen.fleet

    @property
    def tokens(self) -> dict[str, str]:
        return self.gen.tokens

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @classmethod
    def start(cls, workdir: str | os.PathLike[str], gen: Generated | None = None, *,
              workers: int = 3, clients: int = 4, capacity: int | None = None,
              hold_down_seconds: float = 60, preempt: bool = False,
              db: str | os.PathLike[str] | None = None, timeout: float = 30,
              env: dict[str, str] | None = None, args: Sequence[str] = (), tls: bool = False,
              mutual_tls: bool = False, standby: bool = False,
              store: str | None = None) -> ResponderProc:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        tls = tls or mutual_tls
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        if gen is None:
            gen = make_fleet(workers, clients, capacity=capacity,
                             hold_down_seconds=hold_down_seconds, preempt=preempt,
                             responder_url=url)
        else:
            rs = gen.fleet.responder.model_copy(update={"url": url})
            gen = Generated(gen.fleet.model_copy(update={"responder": rs}), gen.private_keys,
                            gen.tokens)
        p = cls(workdir, gen, port, Path(db) if db else workdir / "responder.db")
        p.env = env
        p.standby = standby
        p.args = (*_store_args(db, store), *args)
        if tls:
            p._make_tls(mutual_tls)
        p.fleet_path.write_text(dump_fleet(gen.fleet))
        p._launch(timeout)
        return p

    env: dict[str, str] | None = None  # extra environment for the process
    args: tuple[str, ...] = ()  # extra CLI arguments, appended so they can override the defaults

    def _make_tls(self, mutual: bool) -> None:
        pki = self.workdir / "tls"
        ca = tlsca.make_ca(pki)
        crt, key = tlsca.issue(ca, pki, "responder", ips=["127.0.0.1"], dns=["localhost"])
        tls_args = ["--tls-cert", str(crt), "--tls-key", str(key)]
        if mutual:
            self.client_cert = tlsca.issue(ca, pki, "test-client", client=True)
            tls_args += ["--tls-client-ca", str(ca.cert)]
        self.args = (*tls_args, *self.args)
        self.url = self.url.replace("http://", "https://", 1)
        self.ca_file = ca.cert
        pair = [str(f) for f in self.client_cert] if self.client_cert else [None, None]
        self.verify = client_context(str(ca.cert), *pair)

    def http(self, who: str | None = None, **kw: Any) -> httpx.Client:
        """An httpx.Client for this responder (TLS set up), with `who`'s token if given."""
        headers = {**(self.headers(who) if who else {}), **kw.pop("headers", {})}
        return httpx.Client(base_url=self.url, verify=self.verify, headers=headers,
                            timeout=kw.pop("timeout", 10), **kw)

    def _launch(self, timeout: float = 30) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [WG_FAILOVER, "responder", "--fleet", str(self.fleet_path),
                 "--db", str(self.db_path), "--listen", f"127.0.0.1:{self.port}",
                 "--log-level", os.environ.get("WGFO_TEST_RESPONDER_LOG_LEVEL", "warning"),
                 *self.args],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, **(self.env or {})},
            )
        finally:
            log.close()
        wait_started(self.proc, self._ready, timeout, "responder", self.log)

    standby: bool = False  # started as a replica that may wait as a standby (start(standby=))

    def _ready(self) -> bool:
        try:
            r = httpx.get(self.url + "/readyz", timeout=1, verify=self.verify)
            # A standby replica (PostgreSQL, another one leads) is up when it says so; any other
            # is up once it leads (restarted after kill -9 on PostgreSQL, it follows until the
            # old lease is over, and would refuse writes).
            if self.standby:
                return r.status_code == 200 or (
                    r.status_code == 503 and r.json().get("leader") is False)
            return r.status_code == 200 and r.json().get("leader", True) is True
        except (httpx.HTTPError, ValueError):
            return False

    @property
    def store_location(self) -> str:
        """Where its state is: a PostgreSQL URL in its arguments, else its SQLite file."""
        return next((a for a in self.args if is_postgres(a)), str(self.db_path))

    @property
    def on_postgres(self) -> bool:
        """Its state is in PostgreSQL (`--db postgresql://...`, or WGFO_TEST_STORE=postgres)."""
        return is_postgres(self.store_location)

    @property
    def store_shown(self) -> str:
        """Its store as its logs name it (a URL without its password)."""
        return describe_location(self.store_location)

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def metric(self, series: str) -> float:
        """The value of one series (name and labels exactly as exposed) on its /metrics page;
        AssertionError when the page does not have it."""
        page = httpx.get(self.url + "/metrics", timeout=10, verify=self.verify).text
        for line in page.splitlines():
            key, _, value = line.rpartition(" ")
            if key == series:
                return float(value)
        raise AssertionError(f"no {series} on {self.url}/metrics")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=5)

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def restart(self, timeout: float = 30) -> None:
        self.stop()
        self._launch(timeout)

    def alert(self, worker: str, action: str = "failover", status: str = "firing", *,
              starts_at: str | None = None, fingerprint: str | None = None,
              alertname: str = "WorkerDown") -> httpx.Response:
        return httpx.post(self.url + "/v1/alerts", headers=self.headers("alert"), timeout=10,
                          verify=self.verify,
                          json=alert_payload(worker, action, status, starts_at=starts_at,
                                             fingerprint=fingerprint, alertname=alertname))


def alert_payload(worker: str, action: str = "failover", status: str = "firing", *,
                  starts_at: str | None = None, fingerprint: str | None = None,
                  alertname: str = "WorkerDown") -> dict[str, Any]:
    """An Alertmanager webhook (version 4) body with one alert."""
    starts_at = starts_at or "2026-01-01T00:00:00Z"
    labels = {"alertname": alertname, "worker": worker, "action": action, "severity": "page"}
    return {
        "version": "4", "status": status, "receiver": "wg-failover", "groupKey": "{}:{}",
        "truncatedAlerts": 0, "groupLabels": {"worker": worker}, "commonLabels": labels,
        "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
        "alerts": [{
            "status": status, "labels": labels, "annotations": {"summary": f"{worker} {action}"},
            "startsAt": starts_at,
            "endsAt": datetime.now(UTC).isoformat() if status == "resolved"
            else "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "fingerprint": fingerprint or f"{alertname}-{worker}-{action}",
        }],
    }


@pytest.fixture(name="store_kind")
def store_kind_fixture() -> str:
    """The store of responders the factory starts: WGFO_TEST_STORE (sqlite | postgres); a module
    marked `both_stores` runs each test on both (tests/conftest.py parametrizes this)."""
    return default_store()


@pytest.fixture(name="responder_factory")
def responder_factory_fixture(tmp_path, store_kind):
    started: list[ResponderProc] = []

    def start(gen: Generated | None = None, **kw: Any) -> ResponderProc:
        kw.setdefault("store", store_kind)
        p = ResponderProc.start(tmp_path / f"responder{len(started)}", gen, **kw)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop()


@pytest.fixture(name="responder")
def responder_fixture(responder_factory) -> ResponderProc:
    return responder_factory()


# The first published names; tests written against them keep working.
responder = responder_fixture
responder_factory = responder_factory_fixture
