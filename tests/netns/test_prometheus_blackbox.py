"""Signal (a) on real parts: a worker's whole host drops off the network (its link is cut), its
exporter AND a real blackbox exporter's ICMP probe fail, and the responder marks it down; a
crashed exporter on a host that still answers pings only notifies.

    wireguard-go + `wg-failover exporter` in each worker's namespace, on its underlay address
      -> Prometheus (shipped prometheus.yml + rules, addresses swapped, 1 s scrapes), with the
         `wg-failover-blackbox` job kept, scraping Debian's `prometheus-blackbox-exporter`
         (shipped prometheus/blackbox.yml, module icmp) which pings each worker's host
      -> Alertmanager (shipped alertmanager.yml) -> `wg-failover responder` /v1/alerts

The blackbox job derives the ping target from the exporter's address, so that address must be
the worker's real underlay address (no loopback relay as in test_prometheus_integration.py): the
root namespace gets a veth into the lab's bridge, on a /24 of its own, as `wg-failover lab`
does. Prometheus, Alertmanager, the blackbox exporter and the responder run on the root
namespace's loopback.

Three workers, so that one cut plus one blind exporter never looks like "all workers down"
(WgAllWorkersDown would inhibit the failover): w2's exporter is killed (ICMP still answers),
then w1's eth0 is cut. Prints the detection time (link cut -> responder says "down").
WGFO_PROM_INTERVAL=shipped runs the shipped 5 s intervals instead of 1 s, to measure what a
deployment gets.
"""

from __future__ import annotations

import random
import subprocess
import time
from datetime import datetime

import httpx
import pytest

from tests.helpers.exporter import start_worker
from tests.helpers.netlab import add_root_link, del_link, free_subnet
from tests.helpers.prom import (
    alerts,
    prom_query,
    sample,
    scrape_interval_from_env,
    start_alertmanager,
    start_prometheus,
    worker_states,
)
from tests.helpers.responder import ResponderProc
from tests.helpers.tools import require_tool
from tests.helpers.wait import free_port, wait_until
from wg_failover import promconfig
from wg_failover.fleet import dump_fleet
from wg_failover.lab import procs
from wg_failover.lab.gen import generate_fleet

pytestmark = [pytest.mark.netns, pytest.mark.slow]

EXPORTER_PORT = 9586


def test_cut_host_fails_over_blind_exporter_only_notifies(netlab, tmp_path):
    require_tool(promconfig.BLACKBOX_BIN)
    scrape_interval = scrape_interval_from_env()
    # Not 198.18.0 (a user's lab) nor 100..249 (the lab e2e test).
    net = free_subnet("198.18", range(20, 100), int(netlab.prefix[1:]))
    base = net.network_address
    addrs = [str(base + 10 + i) for i in range(3)]
    gen = generate_fleet(3, 1, worker_host=lambda i: addrs[i], exporter_port=EXPORTER_PORT)
    fleet_path = tmp_path / "fleet.yaml"
    fleet_path.write_text(dump_fleet(gen.fleet))

    running: list[subprocess.Popen] = []
    cleanups: list = []
    root_link = None
    try:
        hosts = {w.name: netlab.add_host(w.name, address=addrs[i])
                 for i, w in enumerate(gen.fleet.workers)}
        root_link = add_root_link(netlab, str(base + 254), net.prefixlen)

        exporters: dict[str, subprocess.Popen] = {}
        for i, w in enumerate(gen.fleet.workers):
            _, exporters[w.name] = start_worker(
                hosts[w.name], gen, w, f"w{i}", fleet_path=fleet_path,
                listen=f"{hosts[w.name].address}:{EXPORTER_PORT}",
                log=tmp_path / f"exporter-{w.name}.log")
            running.append(exporters[w.name])

        responder = ResponderProc.start(tmp_path / "responder", gen, hold_down_seconds=60)
        cleanups.append(responder.stop)
        bb_port = free_port()
        running.append(procs.start_blackbox_exporter(bb_port, tmp_path / "blackbox"))
        am = start_alertmanager(tmp_path / "am", responder.url, gen.tokens["alert"])
        running.append(am.proc)
        prom = start_prometheus(tmp_path / "prom", responder.url, am.url,
                                scrape_interval=scrape_interval, sd_refresh_interval="1s",
                                blackbox_address=f"127.0.0.1:{bb_port}",
                                read_token=gen.tokens["read"])
        running.append(prom.proc)
        prom_url = prom.url
        logs = [prom.log, am.log, tmp_path / "blackbox" / "blackbox.log", responder.log_path,
                *(tmp_path / f"exporter-{n}.log" for n in hosts)]

        # Healthy first: every exporter scraped on its underlay address, every host answering
        # the real ICMP probe, the responder scraped, no alert, every worker up.
        wait_until("3 exporters up and 3 hosts answering pings", lambda: len(prom_query(
            prom_url, 'wgfo:worker_exporter_up:max == 1 and on (worker) '
            'wgfo:worker_probe_success:max == 1')) == 3, 60, logs=logs)
        wait_until("the responder scraped", lambda: prom_query(
            prom_url, 'up{job="wg-failover-responder"} == 1'), 30, logs=logs)
        probes = prom_query(prom_url, 'probe_success{job="wg-failover-blackbox"}')
        # The relabelling turned each exporter address into its host: the probe pings that.
        assert {(p["metric"]["worker"], p["metric"]["instance"]) for p in probes} == {
            (w.name, addrs[i]) for i, w in enumerate(gen.fleet.workers)}
        assert prom_query(prom_url, 'ALERTS{alertname=~"WgWorkerDown|WgAllWorkersDown"}') == []
        assert worker_states(responder) == {"w1": "up", "w2": "up", "w3": "up"}

        # (ii) w2's exporter crashes; its host still answers pings.
        t_kill = time.monotonic()
        exporters["w2"].kill()
        exporters["w2"].wait(5)

        # (i) w1's host drops off the network, at a random phase of the scrape cycle.
        time.sleep(random.uniform(0, promconfig.duration_seconds(scrape_interval or "5s")))
        t0, wall0 = time.monotonic(), time.time()
        hosts["w1"].run(["ip", "link", "set", "eth0", "down"])
        wait_until("w1 marked down by the responder",
                   lambda: worker_states(responder)["w1"] == "down", 60, every=0.05, logs=logs)
        detected = time.monotonic() - t0
        down = alerts(prom_url, "WgWorkerDown")
        assert [a["labels"]["worker"] for a in down] == ["w1"]
        pending = datetime.fromisoformat(down[0]["activeAt"].replace("Z", "+00:00")).timestamp()
        label = "shipped 5 s" if scrape_interval is None else scrape_interval
        print(f"\nlink cut -> responder marks the worker down: {detected:.2f} s (scrape interval "
              f"{label}; the rule saw exporter and ICMP both failing after "
              f"{pending - wall0:.2f} s, then for: 6s, group_wait 1s)")
        assert down[0]["state"] == "firing"
        assert down[0]["labels"]["action"] == "failover"
        # Only the exporter-and-ICMP signal said so: no client votes run here, and an
        # unreachable exporter reports no interface state.
        assert down[0]["annotations"]["description"] == (
            "1 of 3 signals say worker w1 is dead: unreachable.")
        assert [s["metric"]["signal"] for s in prom_query(
            prom_url, 'wgfo:worker_dead_signal{worker="w1"}')] == ["unreachable"]
        metrics = httpx.get(f"{responder.url}/metrics", timeout=5).text
        assert sample(metrics, 'wgfo_webhook_deliveries_total{outcome="applied"}') >= 1

        # (ii) continued: w2 gets the notify alert once its `for: 30s` has run, and nothing
        # else: never a dead signal, never a failover alert, still up at the responder.
        wait_until("WgExporterDown for w2", lambda: prom_query(
            prom_url, 'ALERTS{alertname="WgExporterDown",worker="w2",alertstate="firing"}'),
            45, every=0.5, logs=logs)
        print(f"exporter killed on a pinging host -> WgExporterDown firing: "
              f"{time.monotonic() - t_kill:.2f} s (for: 30s); no failover")
        window = f"{int(time.monotonic() - t_kill) + 5}s"
        for expr in (f'ALERTS{{alertname="WgWorkerDown",worker="w2"}}[{window}]',
                     f'wgfo:worker_dead_signal{{worker="w2"}}[{window}]',
                     f'ALERTS{{alertname="WgAllWorkersDown"}}[{window}]'):
            assert prom_query(prom_url, f"count_over_time({expr})") == [], expr
        # The host answered every probe meanwhile.
        assert [s["value"][1] for s in prom_query(
            prom_url, f'min_over_time(probe_success{{worker="w2"}}[{window}])')] == ["1"]
        assert alerts(prom_url, "WgExporterDown")[0]["labels"]["action"] == "notify"
        assert worker_states(responder) == {"w1": "down", "w2": "up", "w3": "up"}
    finally:
        for p in running:
            procs.stop_process(p)
        for cleanup in cleanups:
            cleanup()
        if root_link:
            del_link(root_link)
