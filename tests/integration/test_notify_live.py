"""MQTT and outbound webhooks on real parts: mosquitto on loopback, the real responder
(`wg-failover responder` on uvicorn), a real HTTP receiver (http.server) and paho subscribers."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.mosquitto import MOSQUITTO, Mosquitto, Subscriber
from tests.helpers.responder import (
    ResponderProc,
    make_fleet,
    responder_factory_fixture,  # noqa: F401 - registers it
)
from wg_failover.client.mqtt_source import MqttAssignmentSource
from wg_failover.fleet import MqttSettings, WebhookTarget
from wg_failover.lab.gen import Generated
from wg_failover.responder.notify.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    verify_signature,
)

pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto not installed")

SECRET = b"s3cret-hmac-key-for-tests"
PREFIX = "wg-failover"


def topic(client: str) -> str:
    return f"{PREFIX}/clients/{client}/assignment"


class Receiver:
    """A webhook receiver on 127.0.0.1 that fails the first `fail_first` requests (HTTP 500)."""

    def __init__(self, fail_first: int = 0):
        self.fail_first = fail_first
        self.arrived = threading.Event()  # set when the first request is in
        self.release = threading.Event()  # the first request waits for this (up to 8 s)
        self.release.set()
        self.requests: list[dict[str, Any]] = []  # every request, with the status answered
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                first = not outer.arrived.is_set()
                outer.arrived.set()
                if first:
                    outer.release.wait(8)
                with outer.lock:
                    fail = len(outer.requests) < outer.fail_first
                    status = 500 if fail else 200
                    outer.requests.append({
                        "body": body, "json": json.loads(body), "status": status,
                        "signature": self.headers.get(SIGNATURE_HEADER),
                        "delivery": self.headers.get(DELIVERY_HEADER),
                        "path": self.path})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self, client: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["status"] == 200
                    and (client is None or r["json"]["client"] == client)]

    def wait(self, pred, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.05)
        return pred()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto.start(tmp_path / "mqtt")
    yield b
    b.stop()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(fail_first: int = 0) -> Receiver:
        r = Receiver(fail_first)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def notify_fleet(tmp_path: Path, *, mqtt: MqttSettings | None = None,
                 hook_url: str | None = None, hook_client: str = "c1",
                 clients: int = 4) -> Generated:
    gen = make_fleet(3, clients)
    fleet = gen.fleet
    if hook_url:
        secret_file = tmp_path / "hook.secret"
        secret_file.write_bytes(SECRET + b"\n")
        cs = [c.model_copy(update={"notify_url": hook_url, "notify_secret_file": str(secret_file)})
              if c.name == hook_client else c for c in fleet.clients]
        fleet = fleet.model_copy(update={"clients": cs})
    if mqtt:
        fleet = fleet.model_copy(update={
            "responder": fleet.responder.model_copy(update={"mqtt": mqtt})})
    return Generated(fleet, gen.private_keys, gen.tokens)


def current(proc: ResponderProc, client: str = "c1") -> dict[str, Any]:
    r = httpx.get(f"{proc.url}/v1/clients/{client}/assignment", headers=proc.headers(client),
                  timeout=5)
    r.raise_for_status()
    return r.json()


def client_info(proc: ResponderProc, client: str = "c1") -> dict[str, Any]:
    r = httpx.get(f"{proc.url}/v1/clients/{client}", headers=proc.headers(client), timeout=5)
    r.raise_for_status()
    return r.json()


def metric(proc: ResponderProc, name: str, **labels: str) -> float:
    text = httpx.get(proc.url + "/metrics", timeout=5).text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                   if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def test_failover_reaches_mqtt_subscriber_and_webhook(tmp_path, broker, receivers,
                                                      responder_factory):
    hook = receivers()
    gen = notify_fleet(tmp_path, mqtt=MqttSettings(url=broker.url), hook_url=hook.url)
    proc = responder_factory(gen)
    sub = Subscriber(broker, f"{PREFIX}/#")
    try:
        before = current(proc)
        assert sub.wait_for(lambda s: (s.json(topic("c1")) or {}).get("version")
                            == before["version"]), proc.log()
        assert hook.wait(lambda: any(r["json"]["version"] == before["version"]
                                     for r in hook.accepted()))
        assert proc.alert(before["worker"]).status_code == 200
        after = current(proc)
        assert after["worker"] != before["worker"] and after["version"] > before["version"]

        # MQTT: the same JSON as the API, retained; the worker's health too.
        assert sub.wait_for(lambda s: s.json(topic("c1")) == after), sub.json(topic("c1"))
        assert sub.wait_for(lambda s: (s.json(f"{PREFIX}/workers/{before['worker']}") or {})
                            .get("state") == "down")
        assert sub.latest[f"{PREFIX}/responder"] == b"online"

        # Webhook: the new version, signed; a tampered body fails verification.
        assert hook.wait(lambda: any(r["json"] == after for r in hook.accepted()))
        req = next(r for r in hook.accepted() if r["json"] == after)
        assert req["delivery"] == f"c1:{after['version']}:{after['epoch']}"
        assert verify_signature(SECRET, req["signature"], req["body"])
        tampered = req["body"].replace(after["worker"].encode(), b"w9")
        assert not verify_signature(SECRET, req["signature"], tampered)
        assert not verify_signature(b"another key", req["signature"], req["body"])
        # Only c1 has a notify_url.
        assert {r["json"]["client"] for r in hook.requests} == {"c1"}

        info = client_info(proc)["delivery"]
        assert info["mqtt"]["connected"] is True
        assert info["webhook"]["targets"][0]["delivered_version"] == after["version"]
        assert "s3cret" not in json.dumps(info)
        assert metric(proc, "wgfo_notification_latency_seconds_count", channel="mqtt") >= 1
        assert metric(proc, "wgfo_notification_latency_seconds_count", channel="webhook") >= 1
        assert metric(proc, "wgfo_mqtt_connected") == 1
    finally:
        sub.close()


def test_broker_restart_ends_with_newest_assignment_retained(tmp_path, broker,
                                                             responder_factory):
    gen = notify_fleet(tmp_path, mqtt=MqttSettings(url=broker.url))
    proc = responder_factory(gen)
    first = current(proc)
    sub = Subscriber(broker, topic("c1"))
    try:
        assert sub.wait_for(lambda s: (s.json(topic("c1")) or {}).get("version")
                            == first["version"])
    finally:
        sub.close()

    broker.stop()  # no persistence: the restarted broker has no retained messages at all
    assert proc.alert(first["worker"]).status_code == 200  # changes while the broker is away
    newest = current(proc)
    assert newest["version"] > first["version"]
    time.sleep(0.5)
    broker.start_again()

    # A subscriber that connects afterwards reads the newest assignment from the retained store.
    deadline = time.monotonic() + 40
    seen = None
    while time.monotonic() < deadline:
        late = Subscriber(broker, topic("c1"))
        try:
            if late.wait_for(lambda s: s.json(topic("c1")) == newest, timeout=2):
                seen = late.json(topic("c1"))
                break
        finally:
            late.close()
    assert seen == newest, proc.log()
    assert metric(proc, "wgfo_mqtt_connects_total") >= 2


def test_receiver_failing_three_times_gets_newest_exactly_once(tmp_path, receivers,
                                                               responder_factory):
    hook = receivers(fail_first=3)
    hook.release.clear()  # hold the first request (v1, sent at start) while we change things
    gen = notify_fleet(tmp_path, hook_url=hook.url)
    proc = responder_factory(gen)
    assert hook.arrived.wait(20)
    first = current(proc)
    assert proc.alert(first["worker"]).status_code == 200  # v2 ...
    other = next(w.name for w in proc.fleet.workers
                 if w.name not in (first["worker"], current(proc)["worker"]))
    r = httpx.post(f"{proc.url}/v1/workers/{other}/drain", headers=proc.headers("admin"),
                   timeout=5)
    assert r.status_code == 200  # ... and v3 arrive while v1 is in flight (one per target)
    newest = current(proc)
    assert newest["version"] >= first["version"] + 2
    hook.release.set()

    assert hook.wait(lambda: hook.accepted(), timeout=30), hook.requests
    time.sleep(1.5)  # nothing more may arrive
    assert [(r["json"]["version"], r["status"]) for r in hook.requests] == [
        (first["version"], 500), (newest["version"], 500), (newest["version"], 500),
        (newest["version"], 200)]
    assert [r["json"] for r in hook.accepted()] == [newest]
    assert all(verify_signature(SECRET, r["signature"], r["body"]) for r in hook.requests)

    target = client_info(proc)["delivery"]["webhook"]["targets"][0]
    assert target["failures_total"] == 3 and target["failures_in_a_row"] == 0
    assert target["delivered_version"] == newest["version"]
    assert target["pending_version"] is None and target["last_error"] is None
    assert metric(proc, "wgfo_webhook_notify_failures_total", client="c1") == 3
    assert metric(proc, "wgfo_webhook_notify_delivered_total") == 1


def test_broker_down_when_the_responder_starts(tmp_path, broker, responder_factory):
    broker.stop()
    gen = notify_fleet(tmp_path, mqtt=MqttSettings(url=broker.url))
    proc = responder_factory(gen)  # starts and serves without its broker
    assert client_info(proc)["delivery"]["mqtt"]["connected"] is False
    want = current(proc)
    broker.start_again()
    sub = Subscriber(broker, topic("c1"))
    try:
        assert sub.wait_for(lambda s: s.json(topic("c1")) == want, timeout=40), proc.log()
    finally:
        sub.close()


def test_pending_delivery_survives_a_responder_kill(tmp_path, receivers, responder_factory):
    hook = receivers(fail_first=10**6)  # down until we say so
    gen = notify_fleet(tmp_path, hook_url=hook.url)
    proc = responder_factory(gen)
    first = current(proc)
    assert proc.alert(first["worker"]).status_code == 200
    newest = current(proc)
    assert hook.wait(lambda: any(r["json"]["version"] == newest["version"]
                                 for r in hook.requests))
    target = client_info(proc)["delivery"]["webhook"]["targets"][0]
    assert target["pending_version"] == newest["version"]
    assert target["last_error"] == "HTTP 500"
    assert target["delivered_version"] is None

    proc.kill()  # kill -9: pending deliveries live only in what SQLite says was delivered
    with hook.lock:
        hook.fail_first = 0
    proc.restart()
    assert hook.wait(lambda: hook.accepted(), timeout=20), proc.log()
    assert [r["json"] for r in hook.accepted()] == [newest]

    proc.restart()  # delivered is on disk: a second restart sends nothing again
    time.sleep(1.0)
    assert [r["json"] for r in hook.accepted()] == [newest]


def test_acl_each_client_reads_only_its_own_topic_and_switcher_follows(tmp_path,
                                                                       responder_factory):
    pw = {"wgfo-responder": "rpw", "c1": "c1pw", "c2": "c2pw"}
    acl = (f"user wgfo-responder\ntopic readwrite {PREFIX}/#\n\n"
           f"pattern read {PREFIX}/clients/%u/assignment\n")
    b = Mosquitto.start(tmp_path / "acl-mqtt", users=pw, acl=acl)
    try:
        pwfile = tmp_path / "mqtt.pw"
        pwfile.write_text("rpw\n")
        gen = notify_fleet(tmp_path, mqtt=MqttSettings(
            url=b.url, username="wgfo-responder", password_file=str(pwfile)))
        proc = responder_factory(gen)
        want = current(proc, "c1")

        own = Subscriber(b, topic("c1"), username="c1", password="c1pw")
        other = Subscriber(b, topic("c2"), username="c1", password="c1pw")
        try:
            assert own.wait_for(lambda s: s.json(topic("c1")) == want), proc.log()
            time.sleep(0.5)
            assert other.json(topic("c2")) is None  # the ACL keeps c2's assignment from c1
        finally:
            own.close()
            other.close()
        bad = Subscriber(b, topic("c1"), username="c1", password="wrong")
        try:
            assert bad.refused is not None
        finally:
            bad.close()

        # The switcher's MQTT source, as c1, delivers the retained assignment and the next one.
        got = asyncio.run(_follow(b.url, want, proc))
        assert got[0] == want["version"] and got[-1] > want["version"], got
    finally:
        b.stop()


async def _follow(url: str, want: dict[str, Any], proc: ResponderProc) -> list[int]:
    src = MqttAssignmentSource(url, "c1", username="c1", password="c1pw")
    versions: list[int] = []
    arrived = asyncio.Event()

    def deliver(a: Any) -> None:
        versions.append(a.version)
        arrived.set()

    task = asyncio.create_task(src.run(deliver, lambda: 0))
    try:
        await asyncio.wait_for(arrived.wait(), 15)
        arrived.clear()
        r = await asyncio.to_thread(proc.alert, want["worker"])
        assert r.status_code == 200
        await asyncio.wait_for(arrived.wait(), 15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return versions


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    d.mkdir(parents=True, exist_ok=True)
    p = {n: d / n for n in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt", "cli.key",
                            "cli.csr", "cli.crt", "san.ext")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=wgfo test CA", "-keyout", str(p["ca.key"]), "-out", str(p["ca.crt"]))
    p["san.ext"].write_text("subjectAltName=IP:127.0.0.1\n")
    for who, cn in (("srv", "127.0.0.1"), ("cli", "wgfo-responder")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                 "-keyout", str(p[f"{who}.key"]), "-out", str(p[f"{who}.csr"]))
        extra = ["-extfile", str(p["san.ext"])] if who == "srv" else []
        _openssl("x509", "-req", "-in", str(p[f"{who}.csr"]), "-CA", str(p["ca.crt"]),
                 "-CAkey", str(p["ca.key"]), "-CAcreateserial", "-days", "2",
                 "-out", str(p[f"{who}.crt"]), *extra)
    return p


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_mqtt_over_mutual_tls_and_an_integration_webhook(tmp_path, receivers,
                                                         responder_factory):
    pki = make_pki(tmp_path / "pki")
    b = Mosquitto.start(tmp_path / "tls-mqtt", tls={
        "cafile": str(pki["ca.crt"]), "certfile": str(pki["srv.crt"]),
        "keyfile": str(pki["srv.key"]), "require_certificate": "true"})
    ops = receivers()
    try:
        gen = notify_fleet(tmp_path, mqtt=MqttSettings(
            url=b.tls_url, tls_ca_file=str(pki["ca.crt"]), tls_cert_file=str(pki["cli.crt"]),
            tls_key_file=str(pki["cli.key"])))
        secret = tmp_path / "ops.secret"
        secret.write_bytes(SECRET)
        rs = gen.fleet.responder.model_copy(update={"webhooks": [WebhookTarget(
            name="ops", url=ops.url, secret_file=str(secret), clients=["c1", "c2"])]})
        gen = Generated(gen.fleet.model_copy(update={"responder": rs}), {}, gen.tokens)
        proc = responder_factory(gen)
        first = current(proc)
        assert proc.alert(first["worker"]).status_code == 200
        want = {c: current(proc, c) for c in ("c1", "c2")}

        def acked() -> bool:
            st = client_info(proc)["delivery"]["mqtt"]
            return st["connected"] and st["published_version"] == want["c1"]["version"]

        assert ops.wait(acked, timeout=20), proc.log()
        # The integration gets the newest assignment of each of its clients, and only those.
        assert ops.wait(lambda: {r["json"]["client"]: r["json"] for r in ops.accepted()}
                        .items() >= want.items())
        assert {r["json"]["client"] for r in ops.requests} == {"c1", "c2"}
        assert all(verify_signature(SECRET, r["signature"], r["body"]) for r in ops.requests)
        assert client_info(proc, "c1")["delivery"]["webhook"]["targets"][0]["target"] == \
            "hook:ops"
    finally:
        b.stop()
