"""docker-compose.yml with two responder replicas (`--profile postgres` and
deploy/compose/replicas.env): a second replica on the same database, and Prometheus and
Alertmanager on the shipped configs rendered by `init` for both replicas (checked with the real
promtool and amtool; the compose file with `docker-compose config`, no engine needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.helpers.tools import run_tool
from tests.integration.test_deploy import DEPLOY, ROOT, flag, mounts, published
from wg_failover.fleet import load_fleet

ENV_FILE = DEPLOY / "compose" / "replicas.env"


def _env_file() -> dict[str, str]:
    out = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def _init(out: Path, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(DEPLOY / "compose" / "init.py"), str(out)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc


def _compose(*args: str) -> dict:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed (Debian package docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WGFO_")}
    proc = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *args,
                           "config"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["services"]


@pytest.fixture(scope="module")
def replicas_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("etc-wg-failover")
    _init(out, WGFO_REPLICAS=_env_file()["WGFO_REPLICAS"])
    return out


def test_init_renders_the_shipped_configs_for_every_replica(replicas_dir):
    replicas = ["https://127.0.0.1:8080", _env_file()["WGFO_REPLICAS"]]
    prom = replicas_dir / "replicas" / "prometheus.yml"
    am = replicas_dir / "replicas" / "alertmanager.yml"
    assert "SUCCESS" in run_tool("promtool", "check", "config", str(prom))
    run_tool("amtool", "check-config", str(am))
    cfg = yaml.safe_load(prom.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    for job in ("wg-failover-exporter", "wg-failover-blackbox"):
        assert [sd["url"] for sd in jobs[job]["http_sd_configs"]] == [
            f"{u}/v1/targets" for u in replicas], job
    assert jobs["wg-failover-responder"]["static_configs"] == [
        {"targets": [urlsplit(u).netloc for u in replicas]}]
    assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    hooks = [h for r in yaml.safe_load(am.read_text())["receivers"]
             for h in r.get("webhook_configs", [])]
    assert [h["url"] for h in hooks] == [f"{u}/v1/alerts" for u in replicas]
    for h in hooks:  # the files the compose services find in the config volume
        assert h["http_config"]["authorization"]["credentials_file"] == \
            "/etc/wg-failover/alert-token"
        assert h["http_config"]["tls_config"]["ca_file"] == "/etc/wg-failover/tls/ca.crt"
    # Followers take every replica from the fleet; the certificate names the second replica.
    fleet = load_fleet(replicas_dir / "fleet.yaml")
    assert fleet.responder.replica_urls() == ["https://responder:8080",
                                              "https://responder2:8080"]
    san = subprocess.run(["openssl", "x509", "-in", str(replicas_dir / "tls" / "responder.crt"),
                          "-noout", "-ext", "subjectAltName"], capture_output=True, text=True,
                         timeout=30).stdout
    assert "DNS:responder2" in san and "DNS:responder," in san


def test_init_without_replicas_renders_nothing_and_keeps_one_url(tmp_path):
    _init(tmp_path, WGFO_REPLICAS="")
    assert not (tmp_path / "replicas").exists()
    assert load_fleet(tmp_path / "fleet.yaml").responder.urls is None


def test_compose_second_replica_on_the_same_database(replicas_dir):
    s = _compose("--env-file", str(ENV_FILE), "--profile", "postgres")
    r1, r2 = s["responder"], s["responder2"]
    assert r2["profiles"] == ["postgres"]
    for name in ("--db", "--fleet", "--tls-cert", "--tls-key", "--listen"):
        assert flag(r2["command"], name) == flag(r1["command"], name), name
    assert flag(r2["command"], "--db").startswith("postgresql://")
    assert r2["environment"]["PGPASSFILE"] == r1["environment"]["PGPASSFILE"]
    assert mounts(r2)["/etc/wg-failover"] == "config"
    assert published(r2) == {(8080, "tcp"): 8081}
    assert s["init"]["environment"]["WGFO_REPLICAS"] == _env_file()["WGFO_REPLICAS"]
    assert Path(mounts(s["init"])["/app/prometheus"]) == ROOT / "prometheus"
    # Prometheus and Alertmanager read init's renderings, from the config volume.
    for service, name in (("prometheus", "prometheus.yml"), ("alertmanager", "alertmanager.yml")):
        path = Path(flag(s[service]["command"], "--config.file"))
        assert mounts(s[service])["/etc/wg-failover"] == "config", service
        assert path == Path("/etc/wg-failover/replicas") / name, service
        assert (replicas_dir / path.relative_to("/etc/wg-failover")).is_file(), service
    # The replica named in the rendering is the compose service, on its container port.
    replica = urlsplit(_env_file()["WGFO_REPLICAS"])
    assert replica.hostname in s and replica.port == 8080


def test_compose_without_the_env_file_keeps_the_shipped_configs_and_one_responder():
    s = _compose()
    # `config` lists every service; one with a profile starts only with that profile.
    assert s["responder2"]["profiles"] == ["postgres"]
    assert "profiles" not in s["responder"]
    assert flag(s["prometheus"]["command"], "--config.file") == "/etc/prometheus/prometheus.yml"
    assert flag(s["alertmanager"]["command"], "--config.file") == \
        "/etc/alertmanager/alertmanager.yml"
    assert s["init"]["environment"]["WGFO_REPLICAS"] == ""
