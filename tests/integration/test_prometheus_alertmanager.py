"""The shipped alertmanager.yml on the real Alertmanager: what reaches the responder's webhook.

A small HTTP server on 127.0.0.1 stands where the responder's /v1/alerts would be, so the test
sees exactly what Alertmanager sends (headers included); the full chain with the real responder
is in test_prometheus_integration.py.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.helpers.prom import start_alertmanager
from tests.helpers.wait import wait_until

TOKEN = "s3cret-alert-token"


class Hook:
    """Records every webhook POST: (path, Authorization header, JSON body)."""

    def __init__(self, status: int = 200) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.cond = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook.cond:
                    hook.calls.append((self.path, self.headers.get("Authorization", ""),
                                       json.loads(body)))
                    hook.cond.notify_all()
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, pred, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for _path, _auth, body in self.calls:
                    if pred(body):
                        return body
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no matching webhook within {timeout} s; got {self.calls}")
                self.cond.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def am(tmp_path):
    hook = Hook()
    server = None
    try:
        server = start_alertmanager(tmp_path, hook.url, TOKEN)
        yield server.url, hook
    finally:
        if server is not None:
            server.stop()
        hook.close()


def post_alerts(am_url: str, *alerts: dict[str, Any], starts: datetime | None = None) -> None:
    # Prometheus sends startsAt = when the alert began firing, i.e. just now: Alertmanager then
    # holds a new group for group_wait (an older startsAt would be flushed at once).
    starts = starts or datetime.now(UTC)
    body = [{"labels": a["labels"], "annotations": {"summary": "test"},
             "startsAt": starts.isoformat(), **({"endsAt": a["endsAt"]} if "endsAt" in a else {})}
            for a in alerts]
    httpx.post(f"{am_url}/api/v2/alerts", json=body, timeout=5).raise_for_status()


def failover(worker: str, **extra: str) -> dict[str, Any]:
    return {"labels": {"alertname": "WgWorkerDown", "worker": worker, "action": "failover",
                       "severity": "critical", **extra}}


def test_failover_reaches_responder_with_token_and_resolves(am):
    am_url, hook = am
    notify = {"labels": {"alertname": "WgExporterDown", "worker": "w2", "action": "notify",
                         "severity": "warning"}}
    post_alerts(am_url, notify)
    t0 = time.monotonic()
    started = datetime.now(UTC)
    post_alerts(am_url, failover("w1"), starts=started)
    body = hook.wait_for(lambda b: b["status"] == "firing")
    took = time.monotonic() - t0
    print(f"alert posted -> webhook received: {took:.2f} s (group_wait 1s)")
    path, auth, _ = hook.calls[0]
    assert path == "/v1/alerts"
    assert auth == f"Bearer {TOKEN}"
    assert body["groupLabels"] == {"worker": "w1"}
    assert [a["labels"]["worker"] for a in body["alerts"]] == ["w1"]
    assert body["alerts"][0]["labels"]["action"] == "failover"
    # The notify-only alert goes to the default receiver, never to the responder.
    assert all(a["labels"]["action"] != "notify" for _, _, b in hook.calls for a in b["alerts"])

    # Resolved: send_resolved delivers it within group_interval.
    ended = datetime.now(UTC).isoformat()
    post_alerts(am_url, {**failover("w1"), "endsAt": ended}, starts=started)
    hook.wait_for(lambda b: b["status"] == "resolved" and b["alerts"][0]["labels"]["worker"]
                  == "w1", timeout=30)


def test_drain_is_routed_to_responder_per_worker(am):
    am_url, hook = am
    post_alerts(am_url, {"labels": {"alertname": "WgWorkerOverloaded", "worker": "w3",
                                    "action": "drain", "severity": "warning"}},
                failover("w4"))
    hook.wait_for(lambda b: b["groupLabels"] == {"worker": "w3"})
    hook.wait_for(lambda b: b["groupLabels"] == {"worker": "w4"})


def test_all_workers_down_inhibits_per_worker_alerts(am):
    am_url, _hook = am
    all_down = {"labels": {"alertname": "WgAllWorkersDown", "action": "notify",
                           "severity": "critical"}}
    post_alerts(am_url, all_down, failover("w1"), failover("w2"))

    def inhibited() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{am_url}/api/v2/alerts", timeout=5).json()
        per_worker = [a for a in alerts if a["labels"].get("worker")]
        assert len(per_worker) == 2 and all(a["status"]["inhibitedBy"] for a in per_worker), \
            f"not inhibited: {alerts}"
        return alerts

    alerts = wait_until("both per-worker alerts inhibited", inhibited, 20)
    per_worker = [a for a in alerts if a["labels"].get("worker")]
    source = next(a for a in alerts if a["labels"]["alertname"] == "WgAllWorkersDown")
    assert source["status"]["state"] == "active"
    assert all(a["status"]["state"] == "suppressed" for a in per_worker)


def test_every_responder_replica_gets_the_alert(tmp_path):
    # Replicas: the rendered config delivers to every URL; a standby answers 503 (Alertmanager
    # retries it), the leader 200; the leader's copy is the one that acts.
    standby, leader = Hook(status=503), Hook()
    server = None
    try:
        server = start_alertmanager(tmp_path, f"{standby.url},{leader.url}", TOKEN)
        post_alerts(server.url, failover("w1"))
        for hook in (leader, standby):
            body = hook.wait_for(lambda b: b["status"] == "firing")
            assert [a["labels"]["worker"] for a in body["alerts"]] == ["w1"]
            assert hook.calls[0][:2] == ("/v1/alerts", f"Bearer {TOKEN}")
    finally:
        if server is not None:
            server.stop()
        standby.close()
        leader.close()
