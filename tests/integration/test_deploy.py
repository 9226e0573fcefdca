"""The real deployment files: docker-compose.yml (validated with `docker-compose config`: every
mounted file exists, every referenced port matches across compose, the shipped Prometheus,
Alertmanager and Grafana configs and the generated fleet), the Dockerfile, and the systemd units
(hardening, and `systemd-analyze verify` where it is installed)."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from wg_failover.fleet import load_fleet, parse_host_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))


def port_of(address: str) -> int:
    """Port of `host:port`, `:port`, `0.0.0.0:port` or a URL."""
    if "://" in address:
        return urlsplit(address).port or {"http": 80, "https": 443}[urlsplit(address).scheme]
    return parse_host_port(("0.0.0.0" + address) if address.startswith(":") else address).port


def flag(argv: list[str], name: str) -> str:
    """The value of `--name=value` or `--name value` in a command."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return argv[i + 1]
    raise AssertionError(f"{name} not in {argv}")


@pytest.fixture(scope="module")
def compose():
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed (Debian package docker-compose; "
                    "scripts/bootstrap installs it)")
    proc = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """What the compose `init` service writes into the config volume."""
    out = tmp_path_factory.mktemp("etc-wg-failover")
    proc = subprocess.run([sys.executable, str(DEPLOY / "compose" / "init.py"), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return out


def published(service: dict) -> dict[tuple[int, str], int]:
    """{(container port, protocol): host port} of a normalised compose service."""
    out = {}
    for p in service.get("ports", []):
        out[(int(p["target"]), p.get("protocol", "tcp"))] = int(p["published"])
    return out


def mounts(service: dict) -> dict[str, str]:
    """{container path: source} of a service's volumes (bind sources are absolute paths)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out[v["target"]] = v["source"]
        else:
            src, dst = v.split(":")[:2]
            out[dst] = src
    return out


def test_compose_mounts_exist(compose):
    services = compose["services"]
    assert {"responder", "prometheus", "alertmanager", "grafana", "worker1"} <= set(services)
    for name, svc in services.items():
        for target, source in mounts(svc).items():
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source} (for {target}) is missing"
                assert Path(source).resolve().is_relative_to(ROOT), source
            else:
                assert source in compose["volumes"], f"{name}: unknown volume {source}"
        build = svc.get("build")
        if build:
            assert (Path(build["context"]) / build["dockerfile"]).is_file()
    # The shipped files, not copies.
    prom = mounts(services["prometheus"])
    assert Path(prom["/etc/prometheus/prometheus.yml"]) == ROOT / "prometheus/prometheus.yml"
    assert Path(prom["/etc/prometheus/rules"]) == ROOT / "prometheus/rules"
    am = mounts(services["alertmanager"])
    assert Path(am["/etc/alertmanager/alertmanager.yml"]) == ROOT / "prometheus/alertmanager.yml"
    bb = mounts(services["blackbox"])
    assert Path(bb["/etc/blackbox_exporter/config.yml"]) == ROOT / "prometheus/blackbox.yml"
    graf = mounts(services["grafana"])
    assert Path(graf["/etc/grafana/provisioning"]) == ROOT / "grafana/provisioning"
    assert Path(graf["/var/lib/grafana/dashboards"]) == ROOT / "grafana/dashboards"


def test_compose_ports_match_the_shipped_configs(compose, generated):
    s = compose["services"]
    master = published(s["responder"])
    # The master's processes share the responder's network namespace (the shipped configs say
    # 127.0.0.1), so their ports are published on the responder.
    for name in ("prometheus", "alertmanager", "blackbox"):
        assert s[name]["network_mode"] == "service:responder", name
    responder_port = port_of(flag(s["responder"]["command"], "--listen"))
    prom_port = port_of(flag(s["prometheus"]["command"], "--web.listen-address"))
    am_port = port_of(flag(s["alertmanager"]["command"], "--web.listen-address"))
    bb_port = port_of(flag(s["blackbox"]["command"], "--web.listen-address"))
    for port in (responder_port, prom_port, am_port):
        assert master.get((port, "tcp")) == port, f"{port} not published by the master"

    prom_cfg = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom_cfg["scrape_configs"]}
    am_targets = prom_cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert [port_of(t) for t in am_targets] == [am_port]
    assert [port_of(t) for t in jobs["wg-failover-responder"]["static_configs"][0]["targets"]] \
        == [responder_port]
    for job in ("wg-failover-exporter", "wg-failover-blackbox"):
        assert port_of(jobs[job]["http_sd_configs"][0]["url"]) == responder_port
    replacement = [r["replacement"] for r in jobs["wg-failover-blackbox"]["relabel_configs"]
                   if r.get("target_label") == "__address__"]
    assert [port_of(r) for r in replacement] == [bb_port]

    am_cfg = yaml.safe_load((ROOT / "prometheus/alertmanager.yml").read_text())
    hooks = [h for r in am_cfg["receivers"] for h in r.get("webhook_configs", [])]
    assert hooks and all(port_of(h["url"]) == responder_port for h in hooks)
    # The bearer token file sits in the config volume, where `init` writes it.
    token = Path(hooks[0]["http_config"]["authorization"]["credentials_file"])
    am_mounts = mounts(s["alertmanager"])
    assert am_mounts.get(str(token.parent)) == "config"
    assert (generated / token.name).is_file()

    # TLS and the read token: every file a config or command names is in the config volume,
    # where `init` writes it (the responder serves HTTPS: it refuses plain HTTP on 0.0.0.0).
    def in_config(service: str, path: str) -> None:
        p = Path(path)
        mount = mounts(s[service]).get("/etc/wg-failover")
        assert mount == "config" and p.is_relative_to("/etc/wg-failover"), (service, path)
        assert (generated / p.relative_to("/etc/wg-failover")).is_file(), (service, path)

    in_config("alertmanager", hooks[0]["http_config"]["tls_config"]["ca_file"])
    for job in ("wg-failover-exporter", "wg-failover-blackbox"):
        sd = jobs[job]["http_sd_configs"][0]
        assert urlsplit(sd["url"]).scheme == "https"
        in_config("prometheus", sd["authorization"]["credentials_file"])
        in_config("prometheus", sd["tls_config"]["ca_file"])
    assert jobs["wg-failover-responder"]["scheme"] == "https"
    in_config("prometheus", jobs["wg-failover-responder"]["tls_config"]["ca_file"])
    command = s["responder"]["command"]
    in_config("responder", flag(command, "--tls-cert"))
    in_config("responder", flag(command, "--tls-key"))
    assert "--insecure-http" not in command

    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    url = urlsplit(ds["datasources"][0]["url"])
    assert url.port == prom_port
    assert url.hostname in s["responder"]["networks"]["default"]["aliases"]
    dash = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/wg-failover.yml").read_text())
    assert dash["providers"][0]["options"]["path"] in mounts(s["grafana"])

    # The fleet `init` generates: its addresses are compose service names and these ports.
    fleet = load_fleet(generated / "fleet.yaml")
    r = urlsplit(fleet.responder.url)
    assert r.hostname in s and r.port == responder_port and r.scheme == "https"
    assert fleet.responder.read_token_sha256 is not None
    for w in fleet.workers:
        ep, ex = parse_host_port(w.endpoint), parse_host_port(w.exporter)
        svc = s[ep.host]
        assert ex.host == ep.host
        assert published(svc).get((ep.port, "udp")) == ep.port
        cmd = svc["command"]
        script = ROOT / cmd[0].removeprefix("/app/")
        assert script.is_file() and os.access(script, os.X_OK)
        assert f"--listen :{ex.port}" in script.read_text()
        assert w.name in cmd


def test_init_writes_secrets_only_its_owner_reads(generated):
    fleet = load_fleet(generated / "fleet.yaml")
    secrets = [generated / "admin-token", generated / "alert-token", generated / "read-token",
               generated / "tls" / "responder.key", generated / "postgres-password",
               generated / "pgpass",
               *[generated / "keys" / f"{n.name}.key" for n in (*fleet.workers, *fleet.clients)],
               *[generated / "tokens" / f"{c.name}.token" for c in fleet.clients]]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    text = (generated / "fleet.yaml").read_text()
    assert all(p.read_text().strip() not in text for p in secrets)
    # The responder's certificate: from the CA beside it, for its compose name and 127.0.0.1
    # (the shipped configs' address); the CA's key is not kept.
    tls = generated / "tls"
    assert sorted(p.name for p in tls.iterdir()) == ["ca.crt", "responder.crt", "responder.key"]
    proc = subprocess.run(["openssl", "verify", "-CAfile", str(tls / "ca.crt"),
                           str(tls / "responder.crt")], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text_crt = subprocess.run(["openssl", "x509", "-in", str(tls / "responder.crt"), "-noout",
                               "-ext", "subjectAltName"], capture_output=True, text=True,
                              timeout=30).stdout
    assert "IP Address:127.0.0.1" in text_crt and "DNS:responder" in text_crt
    # Run again: nothing is overwritten.
    before = (generated / "fleet.yaml").read_text()
    subprocess.run([sys.executable, str(DEPLOY / "compose" / "init.py"), str(generated)],
                   check=True, capture_output=True, timeout=60)
    assert (generated / "fleet.yaml").read_text() == before


def test_compose_postgres_profile_agrees_with_init_and_the_responder(generated):
    """The optional PostgreSQL: with WGFO_DB set, the responder's --db is that URL (no password
    in it), libpq finds the password in the pgpass file `init` writes, and that line names the
    `postgres` service's host, port, database, user and password."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed (Debian package docker-compose)")
    url = "postgresql://wgfo@postgres:5432/wgfo"
    proc = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--profile",
                           "postgres", "config"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, env={**os.environ, "WGFO_DB": url})
    assert proc.returncode == 0, proc.stderr
    s = yaml.safe_load(proc.stdout)["services"]
    responder, pg = s["responder"], s["postgres"]
    assert flag(responder["command"], "--db") == url
    pgpass = responder["environment"]["PGPASSFILE"]
    assert mounts(responder)["/etc/wg-failover"] == "config"
    assert mounts(pg)["/etc/wg-failover"] == "config"
    host, port, db, user, password = (generated / "pgpass").read_text().strip().split(":")
    assert pgpass == "/etc/wg-failover/pgpass"
    parts = urlsplit(url)
    assert (host, int(port), db, user) == (parts.hostname, parts.port, parts.path[1:],
                                            parts.username)
    env = pg["environment"]
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == (user, db)
    assert env["POSTGRES_PASSWORD_FILE"] == "/etc/wg-failover/postgres-password"
    assert (generated / "postgres-password").read_text().strip() == password
    assert pg["profiles"] == ["postgres"]


def test_dockerfile_copies_what_exists():
    text = (DEPLOY / "Dockerfile").read_text()
    copies = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), src
    packages = {"wg_failover", "exporter", "responder", "client"}
    assert packages <= {s for srcs in copies for s in srcs}


def test_worker_script_is_valid_sh():
    subprocess.run(["sh", "-n", str(DEPLOY / "compose" / "worker.sh")], check=True)


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values]}} (keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert section is not None, f"{path.name}: {line!r} outside a section"
        section.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("path", UNITS, ids=[p.name for p in UNITS])
def test_unit_is_hardened(path):
    svc = unit(path)["Service"]
    assert svc["ProtectSystem"] == ["strict"]
    assert svc["NoNewPrivileges"] == ["yes"]
    assert svc["DynamicUser"] == ["yes"]
    assert "ExecStart" in svc and "multi-user.target" in unit(path)["Install"]["WantedBy"]
    caps = set(" ".join(svc.get("CapabilityBoundingSet", [""])).split())
    if path.name == "wg-failover-switcher.service":
        assert caps == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    elif path.name == "wg-failover-responder.service":
        assert caps == set()  # no capabilities at all
    else:
        assert "CAP_SYS_ADMIN" not in caps


def test_responder_unit_serves_tls_with_the_key_as_a_credential():
    svc = unit(DEPLOY / "wg-failover-responder.service")["Service"]
    args = " ".join(svc["Environment"])
    assert "--tls-cert /etc/wg-failover/tls/responder.crt" in args
    # The key is root's (0600): the dynamic user gets it as a credential (%d).
    assert "--tls-key %d/tls-key" in args
    assert svc["LoadCredential"] == ["tls-key:/etc/wg-failover/tls/responder.key"]
    assert "--insecure-http" not in args


def test_all_three_units_exist():
    names = {p.name for p in UNITS}
    assert {"wg-failover-responder.service", "wg-failover-switcher.service"} <= names


def test_units_verify_with_systemd_analyze(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # `verify` checks that ExecStart's binary exists: point it at this checkout's wg-failover.
    exe = Path(sys.executable).parent / "wg-failover"
    if not exe.exists():
        pytest.skip(f"{exe} not installed")
    for path in UNITS:
        (tmp_path / path.name).write_text(
            path.read_text().replace("/usr/local/bin/wg-failover", str(exe)))
    proc = subprocess.run(["systemd-analyze", "verify", *map(str, sorted(tmp_path.iterdir()))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_units_parse_as_ini():
    for path in UNITS:
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.read_string(path.read_text())
        assert cp.has_section("Service")
