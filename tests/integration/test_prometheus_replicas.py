"""Prometheus with several responder URLs (replicas): the rendered config has one http_sd config
per replica in each discovering job and every replica as a target of the responder job; the
real Prometheus keeps one target per worker (a target found through two replicas with the same
labels is one target), and keeps them when the replica it found them through dies."""

from __future__ import annotations

import pytest
import yaml

from tests.helpers.prom import sample, start_prometheus
from tests.helpers.tools import run_tool
from tests.helpers.wait import wait_until
from wg_failover import promconfig

SHIPPED = promconfig.SHIPPED_DIR

pytestmark = pytest.mark.timeout(120)


def _render(urls, **kw) -> dict:
    return yaml.safe_load(promconfig.render_prometheus_text(
        (SHIPPED / "prometheus.yml").read_text(), responder_url=urls,
        alertmanager_url="http://127.0.0.1:9093", rules_dir=SHIPPED / "rules",
        blackbox_address="127.0.0.1:9115", **kw))


def _job(cfg: dict, name: str) -> dict:
    return next(j for j in cfg["scrape_configs"] if j["job_name"] == name)


def test_one_http_sd_config_per_replica_and_every_replica_scraped(tmp_path):
    for urls in ("https://r1:8080, https://r2:8080/", ["https://r1:8080", "https://r2:8080"]):
        cfg = _render(urls, read_token_file=tmp_path / "read", ca_file=tmp_path / "ca.crt",
                      sd_refresh_interval="5s")
        for job in (promconfig.EXPORTER_JOB, promconfig.BLACKBOX_JOB):
            sds = _job(cfg, job)["http_sd_configs"]
            assert [sd["url"] for sd in sds] == ["https://r1:8080/v1/targets",
                                                 "https://r2:8080/v1/targets"], job
            for sd in sds:
                assert sd["refresh_interval"] == "5s"
                assert sd["authorization"] == {"type": "Bearer",
                                               "credentials_file": str(tmp_path / "read")}
                assert sd["tls_config"] == {"ca_file": str(tmp_path / "ca.crt")}
        responder = _job(cfg, promconfig.RESPONDER_JOB)
        assert responder["static_configs"] == [{"targets": ["r1:8080", "r2:8080"]}]
        assert responder["scheme"] == "https"
    # One URL renders as it always did.
    one = _render("http://127.0.0.1:8080")
    assert [sd["url"] for sd in _job(one, promconfig.EXPORTER_JOB)["http_sd_configs"]] == [
        "http://127.0.0.1:8080/v1/targets"]


def test_replicas_must_share_scheme_and_path():
    for urls in (["https://r1:8080", "http://r2:8080"], ["http://r1:8080/a", "http://r2:8080"]):
        with pytest.raises(promconfig.PromConfigError, match="same scheme and path"):
            _render(urls)
    with pytest.raises(promconfig.PromConfigError, match="no URL"):
        _render(" , ")


def test_rendered_replica_configs_pass_promtool_and_amtool(tmp_path):
    urls = ["https://127.0.0.1:18080", "https://127.0.0.2:18080"]
    (tmp_path / "tok").write_text("secret\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    prom = tmp_path / "prometheus.yml"
    prom.write_text(promconfig.render_prometheus_config(
        responder_url=urls, alertmanager_url="http://127.0.0.1:19093",
        rules_dir=SHIPPED / "rules", read_token_file=tmp_path / "tok",
        ca_file=tmp_path / "ca.crt"))
    assert "rule files found" in run_tool("promtool", "check", "config", str(prom))
    am = tmp_path / "alertmanager.yml"
    am.write_text(promconfig.render_alertmanager_config(
        responder_url=urls, token_file=tmp_path / "tok", ca_file=tmp_path / "ca.crt"))
    run_tool("amtool", "check-config", str(am))


def test_real_prometheus_keeps_one_target_per_worker_through_two_replicas(responder_factory,
                                                                          tmp_path):
    p1 = responder_factory()
    p2 = responder_factory(p1.gen)  # the same fleet: the same targets with the same labels
    workers = {w.name for w in p1.gen.fleet.workers}
    prom = start_prometheus(tmp_path / "prom", [p1.url, p2.url], "http://127.0.0.1:1",
                            scrape_interval="1s", sd_refresh_interval="1s",
                            read_token=p1.tokens["read"])
    try:
        import httpx

        def targets(want_up: set[str]) -> dict[str, list[dict]] | None:
            active = httpx.get(f"{prom.url}/api/v1/targets",
                               timeout=5).json()["data"]["activeTargets"]
            by_job: dict[str, list[dict]] = {}
            for t in active:
                by_job.setdefault(t["labels"]["job"], []).append(t)
            exporters = by_job.get(promconfig.EXPORTER_JOB, [])
            responders = by_job.get(promconfig.RESPONDER_JOB, [])
            up = {t["scrapeUrl"] for t in responders if t["health"] == "up"}
            if {t["labels"]["worker"] for t in exporters} != workers or up != want_up:
                return None
            return by_job

        both = {f"{p.url}/metrics" for p in (p1, p2)}
        by_job = wait_until("every worker discovered, both replicas scraped",
                            lambda: targets(both), 30, logs=[prom.log])
        # Found through both replicas (discovered twice), each worker is one target.
        def discovered() -> float:
            text = httpx.get(f"{prom.url}/metrics", timeout=5).text
            return sample(text, 'prometheus_sd_discovered_targets{config="'
                          f'{promconfig.EXPORTER_JOB}",name="scrape"}}')

        wait_until("both replicas' lists discovered", lambda: discovered() == 2 * len(workers),
                   30, logs=[prom.log])
        assert len(by_job[promconfig.EXPORTER_JOB]) == len(workers), by_job
        assert len(by_job[promconfig.RESPONDER_JOB]) == 2

        p1.kill()
        by_job = wait_until("the killed replica's target down, the workers kept",
                            lambda: targets({f"{p2.url}/metrics"}), 30, logs=[prom.log])
        assert len(by_job[promconfig.EXPORTER_JOB]) == len(workers), by_job
    finally:
        prom.stop()
