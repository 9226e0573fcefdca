"""The real Prometheus discovers exporters from the real responder's http_sd, with the labels
the rules key on, and the blackbox job's relabelling probes each worker's host (IPv4 and IPv6).

As deployed: the responder serves HTTPS (a throwaway CA here) and lists the fleet only to its
read token, which Prometheus sends from a file (`authorization.credentials_file`), checking the
responder's certificate against the CA (`tls_config.ca_file`); it scrapes the responder's
/metrics over HTTPS too.

Every target is on loopback; only the responder needs to answer: the test reads Prometheus's own
view of its targets (/api/v1/targets), not scrape results.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.helpers.prom import start_prometheus
from tests.helpers.responder import ResponderProc, make_fleet
from tests.helpers.wait import free_port, wait_until
from wg_failover import promconfig
from wg_failover.lab.gen import Generated


def test_targets_from_http_sd_with_labels_and_blackbox_relabelling(tmp_path):
    base = make_fleet(2, 1)
    ws = [base.fleet.workers[0].model_copy(update={"exporter": "127.0.0.2:9586"}),
          base.fleet.workers[1].model_copy(update={"exporter": "[::1]:9587", "region": None})]
    gen = Generated(base.fleet.model_copy(update={"workers": ws}), {}, base.tokens)
    responder = ResponderProc.start(tmp_path / "responder", gen, tls=True)
    prom = None
    try:
        bb_port = free_port()  # nothing listens there: only the probe URLs are checked
        prom = start_prometheus(tmp_path / "prom", responder.url, "http://127.0.0.1:1",
                                scrape_interval="1s", sd_refresh_interval="1s",
                                blackbox_address=f"127.0.0.1:{bb_port}",
                                read_token=responder.tokens["read"],
                                ca_file=responder.ca_file)

        def all_targets() -> list[dict]:
            active = httpx.get(f"{prom.url}/api/v1/targets",
                               timeout=5).json()["data"]["activeTargets"]
            assert len(active) == 5, active  # 2 exporters, 2 probes, the responder
            # The responder's own scrape over HTTPS works.
            [resp] = [t for t in active if t["labels"]["job"] == promconfig.RESPONDER_JOB]
            assert resp["health"] == "up", resp
            return active

        active = wait_until("5 targets discovered, the responder scraped", all_targets, 30,
                            logs=[prom.log])
    finally:
        if prom is not None:
            prom.stop()
        responder.stop()

    by_job: dict[str, list[dict]] = {}
    for t in active:
        by_job.setdefault(t["labels"]["job"], []).append(t)
    exporters = {t["labels"]["worker"]: t for t in by_job[promconfig.EXPORTER_JOB]}
    assert exporters["w1"]["scrapeUrl"] == "http://127.0.0.2:9586/metrics"
    assert exporters["w1"]["labels"]["region"] == "lab"
    assert exporters["w2"]["scrapeUrl"] == "http://[::1]:9587/metrics"
    assert "region" not in exporters["w2"]["labels"]

    probes = {t["labels"]["worker"]: t for t in by_job[promconfig.BLACKBOX_JOB]}
    for worker, host in (("w1", "127.0.0.2"), ("w2", "::1")):
        url = urlsplit(probes[worker]["scrapeUrl"])
        assert url.netloc == f"127.0.0.1:{bb_port}"
        assert url.path == "/probe"
        assert parse_qs(url.query) == {"module": ["icmp"], "target": [host]}
        assert probes[worker]["labels"]["instance"] == host

    [resp] = by_job[promconfig.RESPONDER_JOB]
    assert resp["scrapeUrl"] == f"{responder.url}/metrics"
    assert resp["scrapeUrl"].startswith("https://")


def test_without_the_read_token_prometheus_discovers_nothing(tmp_path):
    responder = ResponderProc.start(tmp_path / "responder", make_fleet(2, 1))
    prom = None
    try:
        # A token that is not the read token (e.g. a client's): the responder lists nothing.
        prom = start_prometheus(tmp_path / "prom", responder.url, "http://127.0.0.1:1",
                                scrape_interval="1s", sd_refresh_interval="1s",
                                read_token=responder.tokens["c1"])
        wait_until("the responder scraped", lambda: any(
            t["health"] == "up" for t in httpx.get(f"{prom.url}/api/v1/targets", timeout=5)
            .json()["data"]["activeTargets"]), 30, logs=[prom.log])
        time.sleep(2)  # two more refreshes of the http_sd
        active = httpx.get(f"{prom.url}/api/v1/targets", timeout=5).json()["data"]
        jobs = {t["labels"]["job"] for t in active["activeTargets"]}
        assert jobs == {promconfig.RESPONDER_JOB}, active
    finally:
        if prom is not None:
            prom.stop()
        responder.stop()


def test_render_rejects_a_blackbox_job_missing(tmp_path):
    src = promconfig.PROMETHEUS_YML.read_text().replace("wg-failover-blackbox", "renamed")
    with pytest.raises(promconfig.PromConfigError, match="wg-failover-blackbox"):
        promconfig.render_prometheus_text(src, responder_url="http://a:1",
                                          alertmanager_url="http://a:2", rules_dir="/r",
                                          blackbox_address="127.0.0.1:9115")
