"""Every dashboard query against a real Prometheus that scraped a real exporter and responder.

The lab: two workers in network namespaces, each running wireguard-go and `wg-failover
exporter` on its underlay address; one client namespace with every worker as a peer (real
handshakes and traffic); the responder (`tests/helpers/responder.py`) and Prometheus (the shipped
config and rules, via `wg_failover.promconfig`, 1 s scrapes) on 127.0.0.1 in the root namespace,
which reaches the exporters through a veth into the lab's bridge. Prometheus finds the exporters
through the responder's http_sd, as in a deployment.

Each query (panel targets, annotations, template variables), with its variables filled in for
every value the variable offers, must parse and return data, except those in MAY_BE_EMPTY, whose
reason is given. Then a failover (the switcher's fast-path report, then an Alertmanager webhook
for w1, with a client long-polling its assignment) and every query, those included, must return
data. With WGFO_GRAFANA_PNG=path the test also draws the overview there (grafana/render_png.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.helpers.exporter import start_worker
from tests.helpers.grafana import DASHBOARDS, rp
from tests.helpers.netlab import add_root_link, del_link, free_subnet
from tests.helpers.prom import start_prometheus
from tests.helpers.responder import ResponderProc, alert_payload
from tests.helpers.tools import require_netns, require_tool
from tests.helpers.wait import wait_until
from wg_failover import promconfig
from wg_failover.lab import netns
from wg_failover.lab.gen import generate_fleet
from wg_failover.wgquick import render_client, strip

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXPORTER_PORT = 9586

# (dashboard uid, panel title or annotation name, refId or "") -> why it may be empty before the
# first failover. After the failover every one of them must return data.
NO_FAILOVER_YET = "the counter is created at the first failover / client move"
MAY_BE_EMPTY = {
    ("wgfo-overview", "Failovers and client moves", "A"): NO_FAILOVER_YET,
    ("wgfo-overview", "Failovers and client moves", "B"): NO_FAILOVER_YET,
    ("wgfo-overview", "Alert delivery and client notification (p95)", "A"):
        "no alert delivered yet: the histogram has no observations (quantile is NaN)",
    ("wgfo-overview", "Alert delivery and client notification (p95)", "B"):
        "no client notified of a new assignment yet (quantile is NaN)",
    ("wgfo-overview", "Failovers", ""): NO_FAILOVER_YET,
    ("wgfo-overview", "Client moves", ""): NO_FAILOVER_YET,
    ("wgfo-worker", "Failovers", ""): NO_FAILOVER_YET,
    ("wgfo-worker", "Client moves", ""): NO_FAILOVER_YET,
    ("wgfo-client", "Failovers", ""): NO_FAILOVER_YET,
    ("wgfo-client", "Switches", "A"): "the client has reported no fast-path switch yet",
    ("wgfo-client", "Switches", ""): "the client has reported no fast-path switch yet",
}
# Annotation queries show events only: before the failover they are empty by design, and after it
# an annotation for another worker or client (e.g. Failovers with worker=w2) stays empty.
FAILED_WORKER, MOVED_CLIENT = "w1", "c1"
MAY_STAY_EMPTY_FOR_OTHER_VALUES = {
    ("wgfo-worker", "Failovers", ""): ("worker", FAILED_WORKER),
    ("wgfo-client", "Switches", ""): ("client", MOVED_CLIENT),
    ("wgfo-client", "Switches", "A"): ("client", MOVED_CLIENT),
}


def key_of(q: rp.Query) -> tuple[str, str, str]:
    if q.kind == "annotation":
        return (q.dashboard, q.where.split(" ", 1)[1].strip("'\""), "")
    title = q.where.split(" ", 2)[2].rsplit(" ", 1)[0].strip("'\"")
    return (q.dashboard, title, q.ref_id)


@pytest.fixture
def stack(tmp_path):
    require_netns()
    require_tool("prometheus")
    prefix = f"gf{os.getpid() % 10000:04d}"
    # 198.19.0.0/16 (benchmarking range): clear of the other labs' 198.18.
    subnet = free_subnet("198.19", range(40, 240), os.getpid())
    hosts = list(subnet.hosts())
    lab = netns.NetLab(prefix, subnet=str(subnet))
    lab.up()
    stops: list = []
    root_if = None
    try:
        # The root namespace joins the lab's bridge, so Prometheus here scrapes the exporters.
        root_if = add_root_link(lab, str(hosts[-1]), subnet.prefixlen)

        gen = generate_fleet(2, 2, worker_host=lambda i: str(hosts[9 + i]),
                             exporter_port=EXPORTER_PORT, capacity=5)
        responder = ResponderProc.start(tmp_path / "responder", gen)
        stops.append(responder.stop)
        fleet = responder.fleet
        ifaces = {}
        for i, w in enumerate(fleet.workers):
            host = lab.add_host(w.name, address=str(hosts[9 + i]))
            ifaces[w.name], _ = start_worker(host, responder.gen, w, w.name,
                                             listen=f"{host.address}:{EXPORTER_PORT}",
                                             fleet_path=responder.fleet_path)
        # c1 runs (handshakes with both workers); c2 stays configured but never connects.
        c1 = fleet.clients[0]
        client = lab.add_host("c1", address=str(hosts[19]))
        client.wireguard("c1", strip(render_client(fleet, c1, gen.private_keys[c1.name],
                                                   keepalive=1)), [c1.address])
        for w in fleet.workers:
            assert client.ping(w.tunnel_address, count=5, timeout=2), f"no tunnel to {w.name}"

        prom = start_prometheus(tmp_path / "prometheus", responder.url, "http://127.0.0.1:9",
                                scrape_interval="1s", sd_refresh_interval="1s",
                                read_token=responder.tokens["read"])
        stops.append(prom.stop)
        yield {"prom": prom.url, "responder": responder, "lab": lab, "client": client,
               "fleet": fleet, "tmp": tmp_path, "logs": [prom.log, responder.log_path]}
    finally:
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                stop()
        lab.close()
        if root_if:
            del_link(root_if)


def targets_up(prom: str, workers: list[str]) -> bool:
    data = rp.prom_get(prom, "/api/v1/targets", {"state": "active"})["activeTargets"]
    up = {(t["labels"]["job"], t["labels"].get("worker")) for t in data
          if t["health"] == "up"}
    return ({(promconfig.EXPORTER_JOB, w) for w in workers} | {(promconfig.RESPONDER_JOB, None)}
            <= up)


def post_probes(responder: ResponderProc, client: str, results: dict) -> None:
    r = httpx.post(f"{responder.url}/v1/clients/{client}/events", timeout=10,
                   headers=responder.headers(client), json={"type": "probe", "workers": results})
    assert r.status_code == 202, r.text


def run_all(prom: str, variable_values: dict[str, list[str]]) -> dict[tuple, dict]:
    """Every query of every dashboard for every variable value: {(key, values): outcome}."""
    end = time.time()
    start = end - 120
    outcomes: dict[tuple, dict] = {}
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        used = {v["name"] for v in d["templating"]["list"] if v["type"] == "query"}
        combos = [{}]
        for name in sorted(used):
            combos = [{**c, name: v} for c in combos for v in variable_values[name]]
        for q in rp.dashboard_queries(d):
            if q.kind == "variable":
                continue
            for values in combos:
                filled = {"datasource": "prometheus", "__range": "120s", **values}
                expr = rp.substitute(q.expr, filled)
                try:
                    if q.instant:
                        result = rp.run_instant(prom, expr, end)
                    else:
                        result = rp.run_range(prom, expr, start, end, 1)
                    outcome = {"error": None, "data": rp.has_finite_value(result),
                               "result": result}
                except ValueError as e:
                    outcome = {"error": str(e), "data": False, "result": []}
                outcomes[(key_of(q), tuple(sorted(values.items())))] = {
                    **outcome, "where": f"{q.dashboard} {q.where} {values}", "expr": expr}
    return outcomes


def variable_values(prom: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for path in DASHBOARDS:
        for q in rp.dashboard_queries(json.loads(path.read_text())):
            if q.kind == "variable":
                name = q.where.split(" ", 1)[1].strip("'\"")
                values[name] = rp.label_values(prom, q.expr)
    return values


def exempt(key: tuple, values: tuple, before_failover: bool) -> bool:
    if before_failover and key in MAY_BE_EMPTY:
        return True
    other = MAY_STAY_EMPTY_FOR_OTHER_VALUES.get(key)
    return other is not None and dict(values).get(other[0]) != other[1]


def test_every_dashboard_query_on_real_prometheus(stack):
    prom, responder, fleet = stack["prom"], stack["responder"], stack["fleet"]
    workers = [w.name for w in fleet.workers]
    logs = stack["logs"]
    wait_until("every exporter and the responder scraped", lambda: targets_up(prom, workers),
               30, every=0.5, logs=logs)
    for c in ("c1", "c2"):
        post_probes(responder, c, {w: {"up": True, "rtt_ms": 2.0 + i, "loss": 0.0}
                                   for i, w in enumerate(workers)})
    # Rates and the recording rules need a few samples.
    wait_until("recording rules", lambda: rp.run_instant(prom, "wgfo:worker_receive_bytes:rate1m")
               and rp.run_instant(prom, "wgfo_client_observed_up"), 30, every=0.5, logs=logs)
    time.sleep(3)
    history = float(os.environ.get("WGFO_GRAFANA_HISTORY", "0"))
    if history:  # drawing the PNG: some history before the failover makes a readable picture
        stack["client"].run(["ping", "-q", "-c", str(int(history * 5)), "-i", "0.2", "-s", "1200",
                             fleet.workers[0].tunnel_address], check=False, timeout=history + 30)

    values = variable_values(prom)
    assert set(values) == {"worker", "client"}
    assert set(values["worker"]) == set(workers)
    assert set(values["client"]) == {"c1", "c2"}

    before = run_all(prom, values)
    errors = [f"{o['where']}: {o['error']}\n  {o['expr']}" for o in before.values() if o["error"]]
    assert not errors, "queries Prometheus refused:\n" + "\n".join(errors)
    missing = [f"{o['where']}\n  {o['expr']}" for (k, v), o in before.items()
               if not o["data"] and not exempt(k, v, True)]
    assert not missing, "queries without data (and not in MAY_BE_EMPTY):\n" + "\n".join(missing)
    unused = set(MAY_BE_EMPTY) - {k for k, _ in before}
    assert not unused, f"MAY_BE_EMPTY names queries no dashboard has: {unused}"

    # --- a failover: c1's switcher sees w1 die and switches on its own (fast path), the clients
    # report w1 unreachable, and Alertmanager's webhook tells the responder to fail w1 over while
    # c1 long-polls its assignment.
    a = httpx.get(f"{responder.url}/v1/clients/{MOVED_CLIENT}/assignment", timeout=10,
                  headers=responder.headers(MOVED_CLIENT)).json()
    assert a["worker"] == FAILED_WORKER
    polled: dict = {}

    def long_poll() -> None:
        with contextlib.suppress(httpx.HTTPError):
            polled["r"] = httpx.get(
                f"{responder.url}/v1/clients/{MOVED_CLIENT}/assignment",
                params={"after": a["version"], "wait": 20}, timeout=30,
                headers=responder.headers(MOVED_CLIENT)).json()

    poller = threading.Thread(target=long_poll, daemon=True)
    poller.start()
    time.sleep(0.5)
    r = httpx.post(f"{responder.url}/v1/clients/{MOVED_CLIENT}/events", timeout=10,
                   headers=responder.headers(MOVED_CLIENT),
                   json={"type": "switch", "from_worker": FAILED_WORKER, "to_worker": "w2",
                         "reason": "probe loss", "elapsed_ms": 800})
    assert r.status_code == 202, r.text
    for c in ("c1", "c2"):
        post_probes(responder, c, {FAILED_WORKER: {"up": False, "loss": 1.0},
                                   "w2": {"up": True, "rtt_ms": 2.5, "loss": 0.0}})
    starts = (datetime.now(UTC) - timedelta(seconds=4)).isoformat().replace("+00:00", "Z")
    r = httpx.post(f"{responder.url}/v1/alerts", headers=responder.headers("alert"), timeout=10,
                   json=alert_payload(FAILED_WORKER, starts_at=starts))
    assert r.status_code < 300, r.text
    poller.join(25)
    assert polled.get("r", {}).get("worker") == "w2", polled

    wait_until("the failover in Prometheus", lambda: rp.has_finite_value(rp.run_instant(
        prom, "histogram_quantile(0.95, sum by (le, channel) "
              "(rate(wgfo_notification_latency_seconds_bucket[1m])))"))
        and rp.run_instant(prom, f'wgfo_failovers_total{{worker="{FAILED_WORKER}"}}'), 40,
        every=0.5, logs=logs)
    time.sleep(2)  # a couple more samples of the new state for the range queries
    if history:
        time.sleep(history / 2)

    after = run_all(prom, variable_values(prom))
    errors = [f"{o['where']}: {o['error']}" for o in after.values() if o["error"]]
    assert not errors, "queries Prometheus refused:\n" + "\n".join(errors)
    missing = [f"{o['where']}\n  {o['expr']}" for (k, v), o in after.items()
               if not o["data"] and not exempt(k, v, False)]
    assert not missing, "queries without data after the failover:\n" + "\n".join(missing)
    # The exempted ones were really exercised: each has data now for the failed worker / client.
    for key in MAY_BE_EMPTY:
        assert any(o["data"] for (k, _), o in after.items() if k == key), key

    # And they say what they mean (latest value per worker, "" for a single series).
    def last(uid: str, title: str, ref: str, **values: str) -> dict[str, float]:
        o = after[((uid, title, ref), tuple(sorted(values.items())))]
        return {s["metric"].get("worker", ""): float((s.get("values") or [s.get("value")])[-1][1])
                for s in o["result"]}

    assert last("wgfo-overview", "Failovers", "A") == {"": 1.0}
    assert last("wgfo-overview", "Worker state", "A") == {"w1": 3.0, "w2": 0.0}  # down, up
    assert last("wgfo-overview", "Data-plane vote: clients reaching each worker", "A") == \
        {"w1": 0.0, "w2": 1.0}
    assert last("wgfo-worker", "Responder state", "A", worker="w1") == {"w1": 3.0}
    assert last("wgfo-client", "Assigned worker", "A", client="c1") == {"w2": 1.0}
    assert last("wgfo-client", "Switches", "A", client="c1") == {"": 1.0}

    out = os.environ.get("WGFO_GRAFANA_PNG")
    if out:
        minutes = max(2.0, (history * 1.6 + 30) / 60)
        subprocess.run([sys.executable, str(ROOT / "grafana" / "render_png.py"), "--prometheus",
                        prom, "--dashboard", str(ROOT / "grafana/dashboards/overview.json"),
                        "--minutes", f"{minutes:g}", "-o", out], check=True, timeout=120)
