"""The real Alertmanager (the shipped alertmanager.yml) delivering to the real responder.

Two Alertmanagers without gossip stand for an HA pair that cannot see each other: both deliver
the same alert, and the responder applies it once.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from wg_failover.lab import procs

from tests.helpers.responder import ResponderProc
from wg_failover import promconfig


def _metric(p: ResponderProc, line_start: str) -> float:
    for line in httpx.get(p.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait(what: str, fn, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_ha_pair_delivers_twice_responder_applies_once(tmp_path):
    if not shutil.which(promconfig.ALERTMANAGER_BIN):
        if os.environ.get("CI"):
            pytest.fail("prometheus-alertmanager is not installed")
        pytest.skip("prometheus-alertmanager is not installed")
    p = ResponderProc.start(tmp_path / "responder", hold_down_seconds=3600)
    ams = []
    try:
        token = tmp_path / "alert-token"
        token.write_text(p.tokens["alert"] + "\n")
        cfg = tmp_path / "alertmanager.yml"
        cfg.write_text(promconfig.render_alertmanager_config(responder_url=p.url,
                                                             token_file=token))
        urls = []
        for i in range(2):
            port = procs.find_free_port()
            ams.append(procs.start_alertmanager(cfg, tmp_path / f"am{i}", port))
            urls.append(f"http://127.0.0.1:{port}")
        starts = datetime.now(UTC)
        alert = {"labels": {"alertname": "WgWorkerDown", "worker": "w1", "action": "failover",
                            "severity": "critical"},
                 "annotations": {"summary": "w1 down"}, "startsAt": starts.isoformat()}
        for url in urls:
            httpx.post(f"{url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()

        applied = 'wgfo_webhook_deliveries_total{outcome="applied"}'
        dup = 'wgfo_webhook_deliveries_total{outcome="duplicate"}'
        _wait("both deliveries", lambda: _metric(p, applied) + _metric(p, dup) >= 2)
        assert _metric(p, applied) == 1 and _metric(p, dup) == 1
        assert _metric(p, 'wgfo_failovers_total{worker="w1"}') == 1
        workers = {w["name"]: w for w in httpx.get(p.url + "/v1/workers", timeout=5).json()}
        assert workers["w1"]["state"] == "down"
        a = httpx.get(p.url + "/v1/clients/c1/assignment", headers=p.headers("c1")).json()
        assert a["worker"] != "w1" and a["version"] == 2
        ev = [e for e in httpx.get(p.url + "/v1/events", headers=p.headers("admin"),
                                   timeout=5).json()["events"] if e["kind"] == "alert"]
        assert len(ev) == 1 and ev[0]["data"]["alertname"] == "WgWorkerDown"
        assert _metric(p, "wgfo_alert_delivery_delay_seconds_count") == 1

        # Resolved (endsAt in the past) from both: recovering once.
        alert["endsAt"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        for url in urls:
            httpx.post(f"{url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()
        _wait("w1 recovering", lambda: {w["name"]: w["state"] for w in httpx.get(
            p.url + "/v1/workers", timeout=5).json()}["w1"] == "recovering", timeout=60)
        _wait("the second resolved delivery", lambda: _metric(p, dup) >= 2, timeout=60)
        kinds = [e["kind"] for e in httpx.get(p.url + "/v1/events", headers=p.headers("admin"),
                                              timeout=5).json()["events"]]
        assert kinds.count("worker-state") == 2  # down, then recovering: once each
    finally:
        for am in ams:
            procs.stop_process(am)
        p.stop()
