"""The real Alertmanager (the shipped alertmanager.yml) delivering to the real responder.

Two Alertmanagers without gossip stand for an HA pair that cannot see each other: both deliver
the same alert, and the responder applies it once. As deployed, over HTTPS: each Alertmanager
checks the responder's certificate against its CA (`http_config.tls_config.ca_file`) before it
sends the alert token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.helpers.prom import sample, start_alertmanager, worker_states
from tests.helpers.responder import ResponderProc
from tests.helpers.tools import require_tool
from tests.helpers.wait import wait_until
from wg_failover import promconfig


def _metric(p: ResponderProc, series: str) -> float:
    return sample(httpx.get(p.url + "/metrics", timeout=5, verify=p.verify).text, series)


def test_ha_pair_delivers_twice_responder_applies_once(tmp_path):
    require_tool(promconfig.ALERTMANAGER_BIN)
    p = ResponderProc.start(tmp_path / "responder", hold_down_seconds=3600, tls=True)
    ams = []
    try:
        for i in range(2):
            ams.append(start_alertmanager(tmp_path / f"am{i}", p.url, p.tokens["alert"],
                                          ca_file=p.ca_file))
        logs = [p.log_path, *(am.log for am in ams)]
        starts = datetime.now(UTC)
        alert = {"labels": {"alertname": "WgWorkerDown", "worker": "w1", "action": "failover",
                            "severity": "critical"},
                 "annotations": {"summary": "w1 down"}, "startsAt": starts.isoformat()}
        for am in ams:
            httpx.post(f"{am.url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()

        applied = 'wgfo_webhook_deliveries_total{outcome="applied"}'
        dup = 'wgfo_webhook_deliveries_total{outcome="duplicate"}'
        wait_until("both deliveries", lambda: _metric(p, applied) + _metric(p, dup) >= 2, 30,
                   logs=logs)
        assert _metric(p, applied) == 1 and _metric(p, dup) == 1
        assert _metric(p, 'wgfo_failovers_total{worker="w1"}') == 1
        assert worker_states(p)["w1"] == "down"
        a = httpx.get(p.url + "/v1/clients/c1/assignment", headers=p.headers("c1"),
                      verify=p.verify).json()
        assert a["worker"] != "w1" and a["version"] == 2
        ev = [e for e in httpx.get(p.url + "/v1/events", headers=p.headers("admin"),
                                   verify=p.verify,
                                   timeout=5).json()["events"] if e["kind"] == "alert"]
        assert len(ev) == 1 and ev[0]["data"]["alertname"] == "WgWorkerDown"
        assert _metric(p, "wgfo_alert_delivery_delay_seconds_count") == 1

        # Resolved (endsAt in the past) from both: recovering once.
        alert["endsAt"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        for am in ams:
            httpx.post(f"{am.url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()
        wait_until("w1 recovering", lambda: worker_states(p)["w1"] == "recovering", 60,
                   logs=logs)
        wait_until("the second resolved delivery", lambda: _metric(p, dup) >= 2, 60, logs=logs)
        kinds = [e["kind"] for e in httpx.get(p.url + "/v1/events", headers=p.headers("admin"),
                                              timeout=5, verify=p.verify).json()["events"]]
        assert kinds.count("worker-state") == 2  # down, then recovering: once each
    finally:
        for am in ams:
            am.stop()
        p.stop()
