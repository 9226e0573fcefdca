"""`--compat mindflavor` on real parts: the queries and alert rules that the community's
dashboards and the awesome-prometheus-alerts WireGuard rules run against the Rust exporter's
names work against ours, in a real Prometheus scraping real exporters on real wireguard-go.

Two workers (each wireguard-go + `wg-failover exporter --compat mindflavor --compat-remote` in
its own namespace) and one client c1 with both workers as peers (keepalive 1 s, so handshakes
and bytes on both); c2 is configured on both workers but never connects. Prometheus runs in a
master namespace on the same bridge and scrapes both exporters (gzip, as it always asks), with a
rule file of our own in the shape of those rules.

The expressions here are written for this test in the shape those dashboards and rules use
(their metric names and labels, `rate()` over the counters, the handshake age from the
timestamp, `sum by (friendly_name)`, joins on `public_key`); no dashboard or rule file of
another project is copied.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from wg_failover import wg
from wg_failover.fleet import dump_fleet
from wg_failover.lab.gen import generate_fleet
from wg_failover.lab.procs import poll_until
from wg_failover.wgquick import render_client, render_worker, strip

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXPORTER = [str(ROOT / ".venv" / "bin" / "wg-failover"), "exporter"]
WORKER_ADDRS = ("198.18.0.10", "198.18.0.11")
EXTRA_ROUTE = "10.77.0.0/24"  # a second allowed IP for c1 on w1: allowed_ips is a joined list
C2_ENDPOINT_V6 = ("fd00::c2", 51820)  # set on w2 only: never used, but wg prints it
PROM = "http://127.0.0.1:9090"

RULES = """\
groups:
  - name: compat-shape
    interval: 1s
    rules:
      - record: friendly_name:wireguard_bytes:rate6s
        expr: >
          sum by (friendly_name) (
            rate(wireguard_sent_bytes_total[6s]) + rate(wireguard_received_bytes_total[6s]))
      - alert: PeerNeverShookHands
        expr: wireguard_latest_handshake_seconds == 0
        labels: {severity: warning}
        annotations:
          summary: "{{ $labels.friendly_name }} never shook hands with {{ $labels.instance }}"
      - alert: PeerHandshakeTooOld
        expr: >
          (time() - wireguard_latest_handshake_seconds > 300)
          and wireguard_latest_handshake_seconds > 0
        labels: {severity: warning}
      - alert: PeerQuietDespiteHandshake
        expr: >
          (rate(wireguard_sent_bytes_total[6s]) + rate(wireguard_received_bytes_total[6s]) == 0)
          and (time() - wireguard_latest_handshake_seconds < 300)
          and wireguard_latest_handshake_seconds > 0
        labels: {severity: warning}
"""


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):  # where it must run, a missing tool is a failure
            pytest.fail(f"{name} not installed")
        pytest.skip(f"{name} not installed")
    return path


@pytest.fixture
def fleet_lab(netlab, tmp_path):
    require_tool("prometheus")
    gen = generate_fleet(2, 2, worker_host=lambda i: WORKER_ADDRS[i])
    fleet = gen.fleet
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(dump_fleet(fleet))
    c1, c2 = fleet.clients
    ifaces = {}
    for w, addr in zip(fleet.workers, WORKER_ADDRS, strict=True):
        host = netlab.add_host(w.name, address=addr)
        iface = host.wireguard(w.name, strip(render_worker(fleet, w, gen.private_keys[w.name])),
                               [w.tunnel_host_cidr])
        ifaces[w.name] = iface
        host.popen([*EXPORTER, "--listen", f"{addr}:9586", "-i", iface.name,
                    "--fleet", str(fleet_file), "--compat", "mindflavor", "--compat-remote"],
                   stdout=subprocess.DEVNULL, stderr=(tmp_path / f"{w.name}.log").open("wb"))
    w1, w2 = (ifaces[w.name].name for w in fleet.workers)
    wg.run_wg(["set", w1, "peer", c1.public_key, "allowed-ips", f"{c1.host_cidr},{EXTRA_ROUTE}"])
    ip6, port6 = C2_ENDPOINT_V6
    wg.run_wg(["set", w2, "peer", c2.public_key, "endpoint", f"[{ip6}]:{port6}"])
    client = netlab.add_host("c1")
    client_if = client.wireguard("c1", strip(render_client(fleet, c1, gen.private_keys[c1.name],
                                                           keepalive=1)), [c1.address])

    master = netlab.add_host("m")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{tmp_path / 'compat-rules.yml'}']\n"
        "scrape_configs:\n"
        "  - job_name: wireguard\n"
        "    static_configs:\n"
        f"      - targets: [{', '.join(f'{a}:9586' for a in WORKER_ADDRS)}]\n")
    (tmp_path / "compat-rules.yml").write_text(RULES)
    (tmp_path / "tsdb").mkdir()
    master.popen(["prometheus", f"--config.file={config}",
                  f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                  "--web.listen-address=127.0.0.1:9090"],
                 stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
    return gen, ifaces, client_if, master, tmp_path


def get(host, url: str) -> tuple[int, str]:
    proc = host.run(["curl", "-s", "-m", "10", "-w", "\n%{http_code}", url], check=False,
                    timeout=15)
    if proc.returncode != 0:
        return 0, proc.stderr
    body, _, code = proc.stdout.rpartition("\n")
    return int(code), body


def query(host, expr: str) -> list[dict]:
    code, body = get(host, f"{PROM}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert code == 200, (expr, code, body)
    return json.loads(body)["data"]["result"]


def query_error(host, expr: str) -> str:
    code, body = get(host, f"{PROM}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert code != 200, (expr, body)
    return json.loads(body)["error"]


def labels(result: list[dict], *drop: str) -> list[dict]:
    return sorted(({k: v for k, v in r["metric"].items() if k not in drop} for r in result),
                  key=lambda m: sorted(m.items()))


def test_dashboard_and_alert_queries_on_the_compat_names(fleet_lab):
    gen, ifaces, client_if, master, tmp_path = fleet_lab
    fleet = gen.fleet
    c1, c2 = fleet.clients
    w1, w2 = (w.name for w in fleet.workers)
    inst = {w: f"{a}:9586" for w, a in zip((w1, w2), WORKER_ADDRS, strict=True)}

    def ready():
        if get(master, f"{PROM}/-/ready")[0] != 200:
            return False
        up = query(master, 'up{job="wireguard"} == 1')
        # Both exporters scraped, c1 shook hands with both workers, and rate() has two samples
        # of every peer on both workers (the second exporter may start a little later).
        hs = query(master, f'wireguard_latest_handshake_seconds{{friendly_name="{c1.name}"}} > 0')
        rates = [query(master, f"rate({name}[6s])") for name in (
            "wireguard_received_bytes_total", "wireguard_peer_receive_bytes_total")]
        return len(up) == 2 and len(hs) == 2 and all(len(r) == 4 for r in rates)

    assert poll_until(ready, 60, 0.5), (tmp_path / "prometheus.log").read_text()[-3000:]
    dumps = {w: {p.public_key: p for p in wg.show_dump(ifaces[w].name).peers} for w in (w1, w2)}

    # Prometheus asks for gzip: every sample the exporter serves arrived, decoded.
    for w, instance in inst.items():
        page = get(master.lab.hosts[w], f"http://{instance}/metrics")[1]
        served = sum(1 for line in page.splitlines() if line and not line.startswith("#"))
        [scraped] = query(master, f'scrape_samples_scraped{{instance="{instance}"}}')
        assert float(scraped["value"][1]) == served

    # The three families, with the Rust exporter's label set (and -r's), one series per peer
    # and worker. Empty labels are absent to Prometheus, as the Rust exporter leaves them out.
    for name in ("wireguard_sent_bytes_total", "wireguard_received_bytes_total",
                 "wireguard_latest_handshake_seconds"):
        got = labels(query(master, name))
        expected = []
        for w, instance in inst.items():
            for c in (c1, c2):
                peer = dumps[w][c.public_key]
                series = {"__name__": name, "instance": instance, "job": "wireguard",
                          "interface": ifaces[w].name, "public_key": c.public_key,
                          "allowed_ips": ",".join(peer.allowed_ips), "friendly_name": c.name}
                if peer.endpoint:
                    ip, _, port = peer.endpoint.rpartition(":")
                    series |= {"remote_ip": ip.strip("[]"), "remote_port": port}
                expected.append(series)
        assert got == labels([{"metric": m} for m in expected]), name
    c1_w1 = next(m for m in labels(query(master, "wireguard_sent_bytes_total"))
                 if m["instance"] == inst[w1] and m["friendly_name"] == c1.name)
    # Joined with commas as wg prints them (compared with `wg show` above).
    assert set(c1_w1["allowed_ips"].split(",")) == {c1.host_cidr, EXTRA_ROUTE}
    assert c1_w1["remote_ip"] == client_if.host.address
    c2_w2 = next(m for m in labels(query(master, "wireguard_latest_handshake_seconds"))
                 if m["instance"] == inst[w2] and m["friendly_name"] == c2.name)
    assert (c2_w2["remote_ip"], c2_w2["remote_port"]) == (C2_ENDPOINT_V6[0],
                                                         str(C2_ENDPOINT_V6[1]))

    # Traffic by client, as a dashboard's "per peer" graph sums it.
    by_name = {r["metric"]["friendly_name"]: float(r["value"][1]) for r in query(
        master, "sum by (friendly_name) (rate(wireguard_sent_bytes_total[6s]) "
                "+ rate(wireguard_received_bytes_total[6s]))")}
    assert set(by_name) == {c1.name, c2.name}
    assert by_name[c1.name] > 0 and by_name[c2.name] == 0

    # Handshake age from the timestamp (the name says seconds, the value is a time).
    ages = query(master, "time() - wireguard_latest_handshake_seconds"
                         f'{{friendly_name="{c1.name}"}}')
    assert {r["metric"]["instance"] for r in ages} == set(inst.values())
    assert all(0 <= float(r["value"][1]) < 180 for r in ages)
    never = query(master, "wireguard_latest_handshake_seconds == 0")
    assert {(r["metric"]["friendly_name"], r["metric"]["instance"]) for r in never} == {
        (c2.name, i) for i in inst.values()}

    # A join on public_key with the worker in it: the compat counters equal ours, peer by peer.
    diff = query(master, "wireguard_sent_bytes_total - on (instance, public_key) "
                         "wireguard_peer_transmit_bytes_total")
    assert len(diff) == 4 and all(float(r["value"][1]) == 0 for r in diff)
    # On the key alone it cannot work with two workers: every client is a peer of both.
    err = query_error(master, "wireguard_sent_bytes_total - on (public_key) "
                              "wireguard_peer_transmit_bytes_total")
    assert "many-to-many" in err or "duplicate series" in err, err

    # The Go-exporter dashboard's name join (docs/grafana.md): broken on the key alone, fixed
    # with the worker and device in the match, or with the info side aggregated first.
    broken = ("rate(wireguard_peer_receive_bytes_total[6s]) * on (public_key) group_left (name) "
              "wireguard_peer_info")
    err = query_error(master, broken)
    assert "duplicate series" in err or "many-to-many" in err, err
    for fixed in ("rate(wireguard_peer_receive_bytes_total[6s]) * on (instance, device, "
                  "public_key) group_left (name) wireguard_peer_info",
                  "rate(wireguard_peer_receive_bytes_total[6s]) * on (public_key) group_left "
                  "(name) max by (public_key, name) (wireguard_peer_info)"):
        joined = query(master, fixed)
        assert sorted((r["metric"]["instance"], r["metric"]["name"]) for r in joined) == sorted(
            (i, c.name) for i in inst.values() for c in (c1, c2)), (
            fixed, joined, labels(query(master, "wireguard_peer_info")))

    # Alert rules in the published shape, evaluated by this Prometheus: c2 never shook hands
    # (on both workers); nothing is too old; c1's keepalives are traffic, so it is not quiet.
    def firing(alertname: str) -> set[tuple[str, str]]:
        return {(r["metric"]["friendly_name"], r["metric"]["instance"]) for r in query(
            master, f'ALERTS{{alertname="{alertname}", alertstate="firing"}}')}

    assert poll_until(lambda: firing("PeerNeverShookHands"), 10, 0.5) == {
        (c2.name, i) for i in inst.values()}
    assert firing("PeerHandshakeTooOld") == set()
    assert firing("PeerQuietDespiteHandshake") == set()

    # c1 goes silent (its wireguard-go dies): a recent handshake, no bytes -> the "no traffic
    # despite a handshake" rule fires for c1 once the rate window has passed. (Not always on
    # both workers: one that was last to send keeps sending handshake initiations for a while,
    # and those are bytes too.)
    client_if.kill()
    quiet = poll_until(lambda: firing("PeerQuietDespiteHandshake"), 20, 0.5)
    assert quiet and quiet <= {(c1.name, i) for i in inst.values()}, quiet


def test_promtool_accepts_the_rules():
    promtool = require_tool("promtool")
    proc = subprocess.run([promtool, "check", "rules", "/dev/stdin"], input=RULES,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout
