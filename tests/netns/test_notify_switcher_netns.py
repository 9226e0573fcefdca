"""The whole switcher following its assignment over MQTT (`--mqtt URL`) instead of SSE, in a lab
on real wireguard-go: responder and mosquitto in a `master` namespace on the underlay, the
switcher in the client's namespace."""

from __future__ import annotations

import pytest

from tests.helpers.mosquitto import Mosquitto
from wg_failover.fleet import MqttSettings, dump_fleet
from wg_failover.lab import kit
from wg_failover.lab.gen import Generated
from wg_failover.lab.procs import poll_until

MASTER = "198.18.0.2"


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_switcher_follows_mqtt_instead_of_sse(netlab, tmp_path):
    sl = kit.build(netlab, tmp_path / "lab")
    broker_url = f"mqtt://{MASTER}:1883"
    fleet = sl.gen.fleet
    rs = fleet.responder.model_copy(update={"mqtt": MqttSettings(url=broker_url)})
    sl.gen = Generated(fleet.model_copy(update={"responder": rs}), sl.gen.private_keys,
                       sl.gen.tokens)
    assert sl.fleet_file is not None
    sl.fleet_file.write_text(dump_fleet(sl.gen.fleet))
    sl.start_responder(address=MASTER)
    broker = Mosquitto.start(tmp_path / "mqtt", netns_host=sl.master, host=MASTER)
    try:
        sw = sl.start_switcher(tmp_path / "state", sl.responder_url, "--mqtt", broker_url)
        assert sw.wait_for(r"mqtt: connected", 30), sw.text()
        assert sw.wait_for(r"assignment v1: w1 is already active", 30), sw.text()

        status, _ = sl.http("POST", "/v1/workers/w1/drain", "admin")
        assert status == 200
        assert sw.wait_for(r"switch w1 -> w2 \(assignment\): responder v2", 20), sw.text()
        assert sl.route_holder() == "w2"

        # It came over MQTT: no SSE stream is open for c1, and the broker took v2.
        status, body = sl.http("GET", "/v1/clients/c1", "c1")
        assert status == 200
        assert body["delivery"]["sse"]["subscribers"] == 0
        assert body["delivery"]["mqtt"]["connected"] is True
        assert body["delivery"]["mqtt"]["published_version"] == 2
        # Its reports still reach the responder over HTTP.
        assert poll_until(lambda: any(
            e["kind"] == "client-applied" and e["data"].get("version") == 2
            for e in sl.http("GET", "/v1/clients/c1", "c1")[1]["events"]), 10)
        assert sw.stop() == 0
    finally:
        broker.stop()
