"""The whole detection chain on real parts: a worker's wireguard-go dies, and the responder marks
it down through the shipped rules and routing.

    wireguard-go + `wg-failover exporter` in the worker's namespace
      -> Prometheus (shipped prometheus.yml + rules, addresses swapped, 1 s scrapes)
      -> Alertmanager (shipped alertmanager.yml) -> `wg-failover responder` /v1/alerts

Prometheus, Alertmanager and the responder run on the root namespace's loopback, as deployed:
the responder serves HTTPS (a throwaway CA), Alertmanager and Prometheus's http_sd send their
tokens from files and check its certificate against the CA. The exporter
must run inside the worker's namespace (it reads the interface's flags from that namespace's
/sys), listening on that namespace's 127.0.0.1; a small TCP relay in this process forwards a
root-namespace loopback port to it (the relay's connecting thread enters the namespace with
setns(2), which affects that thread only). The fleet's `exporter` addresses are the relay ports,
so the responder's http_sd points Prometheus at where the exporters really answer.

Then w1 comes back (the resolved alert reaches the responder), and w2's exporter alone is killed:
that notifies and must not fail w2 over.

Prints the detection time (kill -> responder says "down"). WGFO_PROM_INTERVAL=shipped runs the
shipped 5 s intervals instead of 1 s, to measure what a deployment gets.
"""

from __future__ import annotations

import ctypes
import os
import random
import selectors
import socket
import subprocess
import threading
import time
from datetime import datetime

import httpx
import pytest

from tests.helpers.exporter import start_worker
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
from tests.helpers.wait import wait_until
from wg_failover import promconfig
from wg_failover.fleet import dump_fleet
from wg_failover.lab.gen import Generated, generate_fleet
from wg_failover.lab.netns import WG_RUN_DIR
from wg_failover.lab.procs import stop_process
from wg_failover.wgquick import render_worker, strip

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace NAME."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsRelay:
    """127.0.0.1:PORT here -> `target` inside namespace `netns`, one thread per connection."""

    def __init__(self, netns: str, target: tuple[str, int]):
        self.netns = netns
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                _enter_netns(self.netns)  # this thread dies afterwards; nothing else moves
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                return  # the exporter is not there: Prometheus sees a failed scrape
            with upstream, selectors.DefaultSelector() as sel:
                sel.register(conn, selectors.EVENT_READ, upstream)
                sel.register(upstream, selectors.EVENT_READ, conn)
                while not self.stopping.is_set():
                    for key, _ in sel.select(0.2):
                        try:
                            data = key.fileobj.recv(65536)
                            if not data:
                                return
                            key.data.sendall(data)
                        except OSError:
                            return

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.thread.join(2)


def test_worker_death_reaches_responder(netlab, tmp_path):
    scrape_interval = scrape_interval_from_env()

    # Two workers with real keys; one client so each worker has a peer configured.
    gen0 = generate_fleet(2, 1, worker_host=lambda i: f"198.18.0.{i + 10}")
    relays: list[NetnsRelay] = []
    running: list[subprocess.Popen] = []
    cleanups: list = []
    try:
        hosts = {w.name: netlab.add_host(w.name, address=f"198.18.0.{i + 10}")
                 for i, w in enumerate(gen0.fleet.workers)}
        for host in hosts.values():
            relays.append(NetnsRelay(host.netns, ("127.0.0.1", 9586)))
        workers = [w.model_copy(update={"exporter": f"127.0.0.1:{relay.port}"})
                   for w, relay in zip(gen0.fleet.workers, relays, strict=True)]
        gen = Generated(gen0.fleet.model_copy(update={"workers": workers}), gen0.private_keys,
                        gen0.tokens)
        fleet_path = tmp_path / "fleet.yaml"
        fleet_path.write_text(dump_fleet(gen.fleet))

        ifaces = {}
        exporters: dict[str, subprocess.Popen] = {}
        for i, w in enumerate(gen.fleet.workers):
            ifaces[w.name], exporters[w.name] = start_worker(
                hosts[w.name], gen, w, f"w{i}", listen="127.0.0.1:9586", fleet_path=fleet_path,
                log=tmp_path / f"exporter-{w.name}.log")
            running.append(exporters[w.name])

        # As deployed: HTTPS to the responder, tokens from files, the CA pinned.
        responder = ResponderProc.start(tmp_path / "responder", gen, hold_down_seconds=60,
                                        tls=True)
        cleanups.append(responder.stop)
        am = start_alertmanager(tmp_path / "am", responder.url, gen.tokens["alert"],
                                ca_file=responder.ca_file)
        running.append(am.proc)
        prom = start_prometheus(tmp_path / "prom", responder.url, am.url,
                                scrape_interval=scrape_interval, sd_refresh_interval="1s",
                                read_token=gen.tokens["read"], ca_file=responder.ca_file)
        running.append(prom.proc)
        prom_url = prom.url
        logs = [prom.log, am.log, responder.log_path,
                *(tmp_path / f"exporter-{n}.log" for n in hosts)]

        # Healthy first: both exporters scraped through http_sd with their labels, the
        # interfaces up, the rules quiet, the responder's workers up.
        wait_until("both exporters up with interfaces up", lambda: len(prom_query(
            prom_url, 'wgfo:worker_interface_up:min == 1 and on (worker) '
            'wgfo:worker_exporter_up:max == 1')) == 2, 60, logs=logs)
        # The responder is another target with its own scrape phase.
        wait_until("the responder scraped", lambda: prom_query(
            prom_url, 'up{job="wg-failover-responder"} == 1'), 30, logs=logs)
        sd = prom_query(prom_url, 'up{job="wg-failover-exporter"}')
        assert {(s["metric"]["worker"], s["metric"]["region"]) for s in sd} == {
            ("w1", "lab"), ("w2", "lab")}
        assert prom_query(prom_url, 'ALERTS{alertname="WgWorkerDown"}') == []
        assert worker_states(responder) == {"w1": "up", "w2": "up"}

        # Kill w1's wireguard-go as a crash would, at a random phase of the scrape cycle (the
        # wait above ends just after a scrape, which would always measure the worst case).
        time.sleep(random.uniform(0, promconfig.duration_seconds(scrape_interval or "5s")))
        t0, wall0 = time.monotonic(), time.time()
        ifaces["w1"].kill()
        wait_until("w1 marked down by the responder",
                   lambda: worker_states(responder)["w1"] == "down", 90, every=0.05, logs=logs)
        detected = time.monotonic() - t0
        down = alerts(prom_url, "WgWorkerDown")
        assert [a["labels"]["worker"] for a in down] == ["w1"]
        pending = datetime.fromisoformat(down[0]["activeAt"].replace("Z", "+00:00")).timestamp()
        label = "shipped 5 s" if scrape_interval is None else f"{scrape_interval}"
        print(f"\nworker killed -> responder marks it down: {detected:.2f} s "
              f"(scrape interval {label}; the rule saw the first bad scrape after "
              f"{pending - wall0:.2f} s, then for: 6s, group_wait 1s)")

        # The alert that did it is the failover rule, with the labels the responder needs; w2
        # was never touched, and the webhook was accepted with the token from the file.
        assert down[0]["labels"]["action"] == "failover"
        assert down[0]["state"] == "firing"
        # The description's template query ran in the real Prometheus and named the signal.
        assert down[0]["annotations"]["description"] == (
            "1 of 3 signals say worker w1 is dead: interface.")
        assert worker_states(responder)["w2"] == "up"
        metrics = httpx.get(f"{responder.url}/metrics", timeout=5, verify=responder.verify).text
        assert sample(metrics, 'wgfo_webhook_deliveries_total{outcome="applied"}') >= 1
        assert sample(metrics, 'wgfo_webhook_deliveries_total{outcome="unauthorized"}') == 0

        # Bring w1 back: the alert resolves (after keep_firing_for), Alertmanager sends the
        # resolved notification, and the responder starts its hold-down ("recovering").
        old = ifaces["w1"]
        (WG_RUN_DIR / f"{old.name}.sock").unlink(missing_ok=True)  # SIGKILL left it behind
        w1 = gen.fleet.workers[0]
        t1 = time.monotonic()
        hosts["w1"].wireguard(old.name, strip(render_worker(gen.fleet, w1,
                                                            gen.private_keys["w1"])),
                              [w1.tunnel_host_cidr])
        wait_until("w1 recovering at the responder",
                   lambda: worker_states(responder)["w1"] == "recovering", 90, every=0.1,
                   logs=logs)
        print(f"worker restarted -> responder starts its hold-down: "
              f"{time.monotonic() - t1:.2f} s (keep_firing_for 15s, group_interval 5s)")

        # An exporter crash on a healthy worker: people are told (WgExporterDown, for: 30s),
        # clients are not moved. By the time the notify alert fires, a failover would long have.
        exporters["w2"].kill()
        exporters["w2"].wait(5)
        wait_until("WgExporterDown for w2", lambda: prom_query(
            prom_url, 'ALERTS{alertname="WgExporterDown",worker="w2",alertstate="firing"}'),
            90, every=0.5, logs=logs)
        assert prom_query(prom_url, 'ALERTS{alertname="WgWorkerDown",worker="w2"}') == []
        assert worker_states(responder)["w2"] == "up"
    finally:
        for p in running:
            stop_process(p)
        for cleanup in cleanups:
            cleanup()
        for relay in relays:
            relay.close()
