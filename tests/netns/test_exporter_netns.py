"""The exporter as a real process against real wireguard-go in network namespaces.

A worker namespace runs wireguard-go and the exporter (where it sees its interface's /sys); a
client namespace makes real handshakes and traffic and scrapes the exporter over the underlay,
as Prometheus would. Values are checked against `wg show` read just before and after a scrape.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.exporter import EXPORTER
from tests.helpers.tools import require_tool
from tests.helpers.wait import wait_until
from wg_failover import wg
from wg_failover.fleet import dump_fleet
from wg_failover.lab.gen import generate_fleet
from wg_failover.wgquick import render_client, render_worker, strip

pytestmark = [pytest.mark.netns, pytest.mark.slow]

WORKER_ADDR = "198.18.0.10"
PING_COUNT, PING_SIZE = 20, 1000


def scrape(host, url: str, attempts: int = 50) -> tuple[int, str]:
    """GET from inside `host`'s namespace; retries while the exporter is still starting."""
    for _ in range(attempts):
        proc = host.run(["curl", "-s", "-m", "10", "-w", "\n%{http_code}", url], check=False,
                        timeout=15)
        if proc.returncode == 0:
            body, _, code = proc.stdout.rpartition("\n")
            return int(code), body
        time.sleep(0.2)
    raise AssertionError(f"no answer from {url}")


def metrics(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def one(series: dict[tuple, float], **labels) -> float:
    hits = [v for k, v in series.items() if set(labels.items()) <= set(k)]
    assert len(hits) == 1, (labels, series)
    return hits[0]


@pytest.fixture
def lab(netlab, tmp_path):
    gen = generate_fleet(1, 2, worker_host=lambda i: WORKER_ADDR)
    fleet = gen.fleet
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(dump_fleet(fleet))
    w = fleet.workers[0]
    worker = netlab.add_host("w1", address=WORKER_ADDR)
    wif = worker.wireguard("w1", strip(render_worker(fleet, w, gen.private_keys[w.name])),
                           [w.tunnel_host_cidr])
    # Only c1 runs; c2 stays configured on the worker but never connects (handshake 0).
    c1 = fleet.clients[0]
    client = netlab.add_host("c1")
    client.wireguard("c1", strip(render_client(fleet, c1, gen.private_keys[c1.name],
                                               keepalive=1)), [c1.address])
    return gen, fleet_file, worker, wif, client


def test_exporter_against_real_wireguard(lab, tmp_path):
    gen, fleet_file, worker, wif, client = lab
    fleet = gen.fleet
    w, c1, c2 = fleet.workers[0], fleet.clients[0], fleet.clients[1]
    worker.popen([*EXPORTER, "--listen", ":9586", "--interface", wif.name,
                  "--fleet", str(fleet_file)])
    url = f"http://{WORKER_ADDR}:9586/metrics"

    ping = client.run(["ping", "-n", "-q", "-c", str(PING_COUNT), "-i", "0.05", "-s",
                       str(PING_SIZE), "-W", "2", w.tunnel_address], check=False, timeout=30)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    before = {p.public_key: p for p in wg.show_dump(wif.name).peers}
    code, body = scrape(client, url)
    after = {p.public_key: p for p in wg.show_dump(wif.name).peers}
    assert code == 200
    m = metrics(body)
    dev = wif.name

    assert one(m["wgfo_scrape_success"]) == 1
    assert gen.private_keys[w.name] not in body  # the dump's private key never gets out
    assert one(m["wireguard_device_info"], device=dev, public_key=w.public_key) == 1

    # Bytes: between the two `wg show` readings, and at least the traffic sent.
    rx = one(m["wireguard_peer_receive_bytes_total"], device=dev, public_key=c1.public_key)
    tx = one(m["wireguard_peer_transmit_bytes_total"], device=dev, public_key=c1.public_key)
    pk = c1.public_key
    assert before[pk].rx_bytes <= rx <= after[pk].rx_bytes
    assert before[pk].tx_bytes <= tx <= after[pk].tx_bytes
    assert rx >= PING_COUNT * PING_SIZE and tx >= PING_COUNT * PING_SIZE

    hs = one(m["wireguard_peer_last_handshake_seconds"], device=dev, public_key=pk)
    assert 0 < before[pk].latest_handshake <= hs <= after[pk].latest_handshake
    assert abs(hs - time.time()) < 180
    assert one(m["wireguard_peer_last_handshake_seconds"], public_key=c2.public_key) == 0

    # Names from the fleet and endpoints on the info series only.
    info = m["wireguard_peer_info"]
    endpoint = after[pk].endpoint
    assert endpoint and endpoint.startswith(client.address + ":")
    assert one(info, public_key=pk) == 1
    assert dict(next(k for k in info if ("public_key", pk) in k))["name"] == c1.name
    assert dict(next(k for k in info if ("public_key", pk) in k))["endpoint"] == endpoint
    assert dict(next(k for k in info if ("public_key", c2.public_key) in k)) == {
        "device": dev, "public_key": c2.public_key, "endpoint": "", "name": c2.name}
    allowed = {dict(k)["allowed_ips"] for k in m["wireguard_peer_allowed_ips_info"]
               if ("public_key", pk) in k}
    assert allowed == set(after[pk].allowed_ips) == {c1.host_cidr}

    # Worker signals; the worker is found by its public key, no --worker needed.
    assert one(m["wgfo_interface_up"], device=dev) == 1
    assert one(m["wgfo_active_peers"], device=dev) == 1
    assert one(m["wgfo_configured_peers"], device=dev) == 2
    assert one(m["wgfo_worker_info"], worker=w.name, region="lab") == 1
    assert one(m["wgfo_interface_receive_bytes_total"], device=dev) >= PING_COUNT * PING_SIZE
    assert one(m["wgfo_interface_transmit_bytes_total"], device=dev) >= PING_COUNT * PING_SIZE
    assert 0 <= one(m["wgfo_cpu_usage_ratio"]) <= 1
    assert set(m["wgfo_load_average"]) == {(("period", p),) for p in ("1m", "5m", "15m")}
    assert one(m["wgfo_scrape_duration_seconds"]) > 0

    # Counters only grow: more traffic, a second scrape.
    client.run(["ping", "-n", "-q", "-c", "5", "-i", "0.05", "-s", str(PING_SIZE), "-W", "2",
                w.tunnel_address], check=False, timeout=30)
    m2 = metrics(scrape(client, url)[1])
    assert one(m2["wireguard_peer_receive_bytes_total"], public_key=pk) >= rx + 5 * PING_SIZE

    # Administratively down: not up, still a 200 with the peers.
    worker.run(["ip", "link", "set", dev, "down"])
    code, body = scrape(worker, "http://127.0.0.1:9586/metrics")
    assert code == 200
    m3 = metrics(body)
    assert one(m3["wgfo_interface_up"], device=dev) == 0
    assert one(m3["wgfo_configured_peers"], device=dev) == 2


def test_peer_metrics_off(lab):
    gen, fleet_file, worker, wif, client = lab
    worker.popen([*EXPORTER, "--listen", "127.0.0.1:9586", "-i", wif.name,
                  "--fleet", str(fleet_file), "--peer-metrics", "off"])
    code, body = scrape(worker, "http://127.0.0.1:9586/metrics")
    assert code == 200
    m = metrics(body)
    assert not any(name.startswith("wireguard_peer_") for name in m)
    assert one(m["wgfo_configured_peers"], device=wif.name) == 2
    assert one(m["wgfo_scrape_success"]) == 1


def test_failed_reads_give_success_0_and_200(lab, tmp_path):
    gen, fleet_file, worker, wif, client = lab
    slow_wg = tmp_path / "slow-wg"
    slow_wg.write_text("#!/bin/sh\nsleep 5\n")
    slow_wg.chmod(0o755)
    env = dict(os.environ)
    cases = {
        # A missing interface beside a working one: the working one is still reported.
        9586: (["-i", "wgfonosuch0", "-i", wif.name], {}),
        9587: (["-i", wif.name], {"WG_FAILOVER_WG": "/bin/false"}),
        9588: (["-i", wif.name, "--wg-timeout", "0.5"], {"WG_FAILOVER_WG": str(slow_wg)}),
        9589: ([], {"WG_FAILOVER_WG": "/nonexistent/wg"}),
    }
    for port, (args, extra) in cases.items():
        worker.popen([*EXPORTER, "--listen", f"127.0.0.1:{port}", "--fleet", str(fleet_file),
                      *args], env={**env, **extra})
    results = {port: scrape(worker, f"http://127.0.0.1:{port}/metrics") for port in cases}
    for port, (code, body) in results.items():
        assert code == 200, port
        m = metrics(body)
        assert one(m["wgfo_scrape_success"]) == 0, port
        assert "wgfo_load_average" in m, port  # the rest of the page is still there
    m = metrics(results[9586][1])
    assert one(m["wgfo_interface_up"], device="wgfonosuch0") == 0
    assert one(m["wgfo_interface_up"], device=wif.name) == 1
    assert one(m["wgfo_configured_peers"], device=wif.name) == 2
    for port in (9587, 9588):
        assert one(metrics(results[port][1])["wgfo_interface_up"], device=wif.name) == 0
    # And the exporters are all still alive after failing reads.
    assert all(scrape(worker, f"http://127.0.0.1:{port}/metrics")[0] == 200 for port in cases)


def test_runs_without_root_given_capabilities(lab):
    """As the systemd unit runs it: an unprivileged user with ambient capabilities only.

    wireguard-go's control socket is root's with mode 0700, so CAP_NET_ADMIN alone is refused
    (a clean success 0) and CAP_DAC_OVERRIDE is needed as well (the unit's comment says so).
    """
    gen, fleet_file, worker, wif, client = lab
    for port, caps in ((9586, "+net_admin,+dac_override"), (9587, "+net_admin")):
        worker.popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                      f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
                      f"--bounding-set=-all,{caps}", *EXPORTER,
                      "--listen", f"127.0.0.1:{port}", "-i", wif.name])
    code, body = scrape(worker, "http://127.0.0.1:9586/metrics")
    m = metrics(body)
    assert code == 200 and one(m["wgfo_scrape_success"]) == 1
    assert one(m["wgfo_configured_peers"], device=wif.name) == 2
    assert gen.private_keys[gen.fleet.workers[0].name] not in body
    code, body = scrape(worker, "http://127.0.0.1:9587/metrics")
    assert code == 200 and one(metrics(body)["wgfo_scrape_success"]) == 0


def test_real_prometheus_scrapes_the_exporter(lab, tmp_path):
    """The real consumer: Prometheus (gzip, its own parser) scrapes the exporter in the worker's
    namespace, with the http_sd-style target labels; the series arrive as the rules expect."""
    import json
    import urllib.parse

    prometheus = require_tool("prometheus")
    gen, fleet_file, worker, wif, client = lab
    fleet = gen.fleet
    worker.popen([*EXPORTER, "--listen", "127.0.0.1:9586", "-i", wif.name,
                  "--fleet", str(fleet_file)])
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: wg-failover-exporter\n"
        "    static_configs:\n"
        "      - targets: ['127.0.0.1:9586']\n"
        "        labels: {worker: w1, region: lab}\n"
    )
    data = tmp_path / "tsdb"
    data.mkdir()
    worker.popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={data}",
                  "--web.listen-address=127.0.0.1:9090"],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client.ping(fleet.workers[0].tunnel_address, count=3, timeout=2)

    def query(expr: str) -> list[dict]:
        url = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.parse.quote(expr)
        code, body = scrape(worker, url)
        assert code == 200, body
        return json.loads(body)["data"]["result"]

    wait_until("Prometheus scraping the exporter successfully",
               lambda: query('up{job="wg-failover-exporter"} == 1')
               and query("wgfo_scrape_success == 1"), 30, every=0.5)
    assert query('scrape_samples_scraped{job="wg-failover-exporter"} > 10')
    names = {r["metric"]["name"] for r in query("wireguard_peer_info")}
    assert names == {c.name for c in fleet.clients}
    [info] = query("wgfo_worker_info")
    # Target labels win; ours arrive as exported_* (see docs/exporter.md).
    assert info["metric"]["worker"] == "w1" and info["metric"]["exported_worker"] == "w1"
    joined = query("wireguard_peer_receive_bytes_total * on (instance, device, public_key) "
                   "group_left (name) wireguard_peer_info")
    assert {r["metric"]["name"] for r in joined} == {c.name for c in fleet.clients}
