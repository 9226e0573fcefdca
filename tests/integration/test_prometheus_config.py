"""The shipped Prometheus/Alertmanager files pass the real tools, before and after rendering."""

from __future__ import annotations

import pytest
import yaml

from tests.helpers.tools import run_tool
from wg_failover import promconfig
from wg_failover.lab import procs

SHIPPED = promconfig.SHIPPED_DIR


def test_promtool_check_shipped_config():
    out = run_tool("promtool", "check", "config", str(SHIPPED / "prometheus.yml"))
    assert "SUCCESS" in out


def test_promtool_check_shipped_rules():
    files = sorted(str(p) for p in (SHIPPED / "rules").glob("*.yml"))
    assert files
    run_tool("promtool", "check", "rules", *files)


def test_amtool_check_shipped_config():
    run_tool("amtool", "check-config", str(SHIPPED / "alertmanager.yml"))


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_rendered_configs_pass_the_tools(tmp_path, scheme):
    token = tmp_path / "alert-token"
    token.write_text("secret\n")
    read = tmp_path / "read-token"
    read.write_text("secret\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")  # promtool and amtool do not read it
    prom = tmp_path / "prometheus.yml"
    prom.write_text(promconfig.render_prometheus_config(
        responder_url=f"{scheme}://127.0.0.1:18080", alertmanager_url="http://127.0.0.1:19093",
        rules_dir=SHIPPED / "rules", scrape_interval="1s",
        extra_static_exporters=["w9=127.0.0.1:19586"], blackbox_address="127.0.0.1:19115",
        sd_refresh_interval="2s", read_token_file=read, ca_file=ca))
    am = tmp_path / "alertmanager.yml"
    am.write_text(promconfig.render_alertmanager_config(
        responder_url=f"{scheme}://127.0.0.1:18080", token_file=token, ca_file=ca))
    out = run_tool("promtool", "check", "config", str(prom))
    assert "rule files found" in out
    run_tool("amtool", "check-config", str(am))


def test_shipped_configs_talk_https_to_the_responder_with_tokens_from_files():
    prom = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    for job in (promconfig.EXPORTER_JOB, promconfig.BLACKBOX_JOB):
        [sd] = jobs[job]["http_sd_configs"]
        assert sd["url"].startswith("https://")
        assert sd["authorization"] == {"type": "Bearer",
                                       "credentials_file": "/etc/wg-failover/read-token"}
        assert sd["tls_config"] == {"ca_file": "/etc/wg-failover/tls/ca.crt"}
    resp = jobs[promconfig.RESPONDER_JOB]
    assert resp["scheme"] == "https" and resp["tls_config"]["ca_file"].endswith("ca.crt")
    assert "authorization" not in resp  # /metrics is open
    am = yaml.safe_load((SHIPPED / "alertmanager.yml").read_text())
    [hook] = next(r for r in am["receivers"]
                  if r["name"] == promconfig.RESPONDER_RECEIVER)["webhook_configs"]
    assert hook["url"].startswith("https://")
    assert hook["http_config"]["tls_config"] == {"ca_file": "/etc/wg-failover/tls/ca.crt"}


def test_render_prometheus_swaps_only_addresses():
    shipped = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    text = promconfig.render_prometheus_text(
        (SHIPPED / "prometheus.yml").read_text(),
        responder_url="https://10.0.0.5:8443/wgfo/", alertmanager_url="http://10.0.0.6:9093",
        rules_dir="/opt/rules")
    cfg = yaml.safe_load(text)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {promconfig.EXPORTER_JOB, promconfig.RESPONDER_JOB}  # no blackbox asked
    sd = jobs[promconfig.EXPORTER_JOB]["http_sd_configs"][0]
    assert sd["url"] == "https://10.0.0.5:8443/wgfo/v1/targets"
    # The token file and CA stay the shipped ones unless given.
    shipped_sd = next(j for j in shipped["scrape_configs"]
                      if j["job_name"] == promconfig.EXPORTER_JOB)["http_sd_configs"][0]
    assert sd["authorization"] == shipped_sd["authorization"]
    assert sd["tls_config"] == shipped_sd["tls_config"]
    resp = jobs[promconfig.RESPONDER_JOB]
    assert resp["scheme"] == "https"
    assert resp["metrics_path"] == "/wgfo/metrics"
    assert resp["static_configs"] == [{"targets": ["10.0.0.5:8443"]}]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"] == [
        {"targets": ["10.0.0.6:9093"]}]
    assert cfg["rule_files"] == ["/opt/rules/*.yml"]
    # Intervals stay the shipped ones unless asked.
    assert cfg["global"] == shipped["global"]
    shipped_exporter = next(j for j in shipped["scrape_configs"]
                            if j["job_name"] == promconfig.EXPORTER_JOB)
    assert jobs[promconfig.EXPORTER_JOB]["scrape_timeout"] == shipped_exporter["scrape_timeout"]


def test_render_prometheus_interval_static_targets_and_blackbox():
    text = promconfig.render_prometheus_text(
        (SHIPPED / "prometheus.yml").read_text(),
        responder_url="http://127.0.0.1:1", alertmanager_url="http://127.0.0.1:2",
        rules_dir="/r", scrape_interval="1s", blackbox_address="127.0.0.1:3",
        extra_static_exporters=["127.0.0.1:4", "w2=127.0.0.1:5"])
    cfg = yaml.safe_load(text)
    assert cfg["global"]["scrape_interval"] == cfg["global"]["evaluation_interval"] == "1s"
    assert cfg["global"]["scrape_timeout"] == "1s"  # capped: may not exceed the interval
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs[promconfig.EXPORTER_JOB]["static_configs"] == [
        {"targets": ["127.0.0.1:4"]}, {"targets": ["127.0.0.1:5"], "labels": {"worker": "w2"}}]
    relabel = jobs[promconfig.BLACKBOX_JOB]["relabel_configs"]
    assert [r["replacement"] for r in relabel if r.get("target_label") == "__address__"] == [
        "127.0.0.1:3"]
    # Plain http to the responder (the lab, a test): no tls_config anywhere.
    assert "tls_config" not in jobs[promconfig.RESPONDER_JOB]
    for job in (promconfig.EXPORTER_JOB, promconfig.BLACKBOX_JOB):
        assert "tls_config" not in jobs[job]["http_sd_configs"][0]


def test_render_prometheus_read_token_and_ca(tmp_path):
    text = promconfig.render_prometheus_text(
        (SHIPPED / "prometheus.yml").read_text(), responder_url="https://127.0.0.1:1",
        alertmanager_url="http://127.0.0.1:2", rules_dir="/r", blackbox_address="127.0.0.1:3",
        read_token_file=tmp_path / "read", ca_file=tmp_path / "ca.crt")
    jobs = {j["job_name"]: j for j in yaml.safe_load(text)["scrape_configs"]}
    for job in (promconfig.EXPORTER_JOB, promconfig.BLACKBOX_JOB):
        sd = jobs[job]["http_sd_configs"][0]
        assert sd["authorization"] == {"type": "Bearer",
                                       "credentials_file": str(tmp_path / "read")}
        assert sd["tls_config"] == {"ca_file": str(tmp_path / "ca.crt")}
    assert jobs[promconfig.RESPONDER_JOB]["tls_config"] == {"ca_file": str(tmp_path / "ca.crt")}


def test_render_rejects_bad_input():
    src = (SHIPPED / "prometheus.yml").read_text()
    with pytest.raises(promconfig.PromConfigError, match="responder_url"):
        promconfig.render_prometheus_text(src, responder_url="127.0.0.1:8080",
                                          alertmanager_url="http://a:1", rules_dir="/r")
    with pytest.raises(promconfig.PromConfigError, match="host:port"):
        promconfig.render_prometheus_text(src, responder_url="http://a:1",
                                          alertmanager_url="http://a:1", rules_dir="/r",
                                          extra_static_exporters=["nope"])
    with pytest.raises(promconfig.PromConfigError, match="receiver"):
        promconfig.render_alertmanager_text("receivers: []\n", responder_url="http://a:1",
                                            token_file="/t")


def test_render_alertmanager_points_at_responder(tmp_path):
    text = promconfig.render_alertmanager_config(responder_url="http://127.0.0.1:8123/",
                                                 token_file=tmp_path / "tok")
    cfg = yaml.safe_load(text)
    hook = next(r for r in cfg["receivers"]
                if r["name"] == promconfig.RESPONDER_RECEIVER)["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:8123/v1/alerts"
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"] == str(tmp_path / "tok")
    assert "tls_config" not in hook["http_config"]  # plain http: nothing to verify
    text = promconfig.render_alertmanager_config(responder_url="https://127.0.0.1:8123/",
                                                 token_file=tmp_path / "tok",
                                                 ca_file=tmp_path / "ca.crt")
    hook = next(r for r in yaml.safe_load(text)["receivers"]
                if r["name"] == promconfig.RESPONDER_RECEIVER)["webhook_configs"][0]
    assert hook["http_config"]["tls_config"] == {"ca_file": str(tmp_path / "ca.crt")}
    route = next(r for r in cfg["route"]["routes"]
                 if r["receiver"] == promconfig.RESPONDER_RECEIVER)
    assert route["group_by"] == ["worker"]
    assert route["matchers"] == ['action=~"failover|drain"']


def test_render_alertmanager_delivers_to_every_replica(tmp_path):
    for urls in ("http://a:1,https://b:2/", ["http://a:1", "https://b:2"]):
        text = promconfig.render_alertmanager_config(responder_url=urls,
                                                     token_file=tmp_path / "tok",
                                                     ca_file=tmp_path / "ca.crt")
        hooks = next(r for r in yaml.safe_load(text)["receivers"]
                     if r["name"] == promconfig.RESPONDER_RECEIVER)["webhook_configs"]
        assert [h["url"] for h in hooks] == ["http://a:1/v1/alerts", "https://b:2/v1/alerts"]
        assert "tls_config" not in hooks[0]["http_config"]
        assert hooks[1]["http_config"]["tls_config"] == {"ca_file": str(tmp_path / "ca.crt")}
        assert all(h["send_resolved"] and h["http_config"]["authorization"]["credentials_file"]
                   == str(tmp_path / "tok") for h in hooks)
    with pytest.raises(promconfig.PromConfigError, match="no URL"):
        promconfig.render_alertmanager_text("receivers: []\n", responder_url=" , ",
                                            token_file="/t")


def test_start_prometheus_reports_a_bad_config_with_its_log(tmp_path):
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: fast\n")
    with pytest.raises(RuntimeError, match="exited") as info:
        procs.start_prometheus(cfg, tmp_path / "prom", procs.find_free_port())
    assert "fast" in str(info.value)  # the log's tail says what is wrong


def test_seconds_parses_prometheus_durations():
    assert promconfig.duration_seconds("500ms") == 0.5
    assert promconfig.duration_seconds("5s") == 5
    assert promconfig.duration_seconds("2m") == 120
    with pytest.raises(promconfig.PromConfigError):
        promconfig.duration_seconds("5 seconds")
