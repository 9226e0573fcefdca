"""Grafana dashboards: valid for provisioning, and every query parses (promtool) and names only
metrics that exist (the agreed names and the recording rules). tests/netns/test_grafana_live.py runs
every query against a real Prometheus that scraped a real exporter and responder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers.grafana import DASHBOARDS, GRAFANA, rp
from tests.helpers.tools import run_tool

ROOT = Path(__file__).resolve().parents[2]

# The agreed metric names (the README's metrics table). Dashboards may use these, Prometheus's
# own `up` and `scrape_duration_seconds`, and the recording rules in prometheus/rules/.
AGREED = {
    "wireguard_device_info", "wireguard_peer_info", "wireguard_peer_allowed_ips_info",
    "wireguard_peer_receive_bytes_total", "wireguard_peer_transmit_bytes_total",
    "wireguard_peer_last_handshake_seconds", "wgfo_interface_up", "wgfo_active_peers",
    "wgfo_configured_peers", "wgfo_worker_info", "wgfo_worker_capacity", "wgfo_cpu_usage_ratio",
    "wgfo_load_average", "wgfo_interface_receive_bytes_total",
    "wgfo_interface_transmit_bytes_total", "wgfo_scrape_success", "wgfo_scrape_duration_seconds",
    "wgfo_worker_up", "wgfo_worker_state", "wgfo_worker_assigned_clients", "wgfo_failovers_total",
    "wgfo_client_moves_total", "wgfo_webhook_deliveries_total",
    "wgfo_alert_delivery_delay_seconds", "wgfo_notification_latency_seconds",
    "wgfo_client_streams_open", "wgfo_client_observed_up", "wgfo_client_observed_reporters",
    "wgfo_unplaceable_clients", "wgfo_client_assigned", "wgfo_client_probe_rtt_seconds",
    "wgfo_client_probe_loss_ratio", "wgfo_client_switches_total",
}
HISTOGRAMS = {"wgfo_alert_delivery_delay_seconds", "wgfo_notification_latency_seconds"}
PROMETHEUS_OWN = {"up", "scrape_duration_seconds"}
# Values the static checks fill in for template variables (any valid name would do).
SAMPLE_VALUES = {"datasource": "prometheus", "worker": "w1", "client": "c1"}


def recording_rule_names() -> set[str]:
    names = set()
    for path in (ROOT / "prometheus" / "rules").glob("*.yml"):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            names.update(r["record"] for r in group.get("rules", []) if "record" in r)
    return names


def known_metrics() -> set[str]:
    hist = {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
    return AGREED | hist | PROMETHEUS_OWN | recording_rule_names()


def metric_names(expr: str) -> set[str]:
    """Metric-looking names in a PromQL expression: ours (wgfo_, wireguard_), recording rules
    (with a colon) and Prometheus's own, after dropping strings, matchers and ranges."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    return {t for t in tokens
            if t.startswith(("wgfo_", "wireguard_")) or ":" in t or t in PROMETHEUS_OWN}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_three_dashboards():
    uids = {load(p)["uid"] for p in DASHBOARDS}
    assert uids == {"wgfo-overview", "wgfo-worker", "wgfo-client"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_for_provisioning(path: Path):
    d = load(path)
    assert isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 36
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", d["uid"]), "uid: letters, digits, - and _"
    assert d.get("title")
    assert "id" not in d or d["id"] is None, "a provisioned dashboard must not carry a db id"

    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus"

    ids = [p["id"] for p in rp.iter_panels(d)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    assert all(isinstance(i, int) for i in ids)

    for panel in rp.iter_panels(d):
        where = f"panel {panel['id']} {panel.get('title')!r}"
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, where
        if panel["type"] in ("row", "text"):
            continue
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{where}: no unit"
        steps = defaults.get("thresholds", {}).get("steps", [])
        assert steps and steps[0]["value"] is None, f"{where}: thresholds need a base step"
        assert panel.get("description"), f"{where}: say what the panel shows"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), where
        assert all(t.get("expr") for t in panel["targets"]), where


def _datasource_refs(node, path="$"):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                yield path, v
            yield from _datasource_refs(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _datasource_refs(v, f"{path}[{i}]")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_no_hard_coded_datasource(path: Path):
    for where, ref in _datasource_refs(load(path)):
        assert ref == {"type": "prometheus", "uid": "${datasource}"}, where


def test_panels_do_not_overlap():
    for path in DASHBOARDS:
        taken: dict[tuple[int, int], int] = {}
        for panel in rp.iter_panels(load(path)):
            g = panel["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in taken, f"{path.name}: panels {taken[x, y]} and " \
                                                f"{panel['id']} overlap"
                    taken[x, y] = panel["id"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_use_defined_variables_and_known_metrics(path: Path):
    d = load(path)
    defined = {v["name"] for v in d["templating"]["list"]} | set(rp.BUILTINS)
    known = known_metrics()
    queries = rp.dashboard_queries(d)
    assert queries
    for q in queries:
        assert rp.variables_used(q.expr) <= defined, q.where
        unknown = metric_names(q.expr) - known
        assert not unknown, f"{q.where}: unknown metrics {sorted(unknown)}"


def test_metric_name_extraction():
    expr = ('sum by (worker) (rate(wgfo_x_total{job="a:b",worker=~"w.*"}[5m])) '
            '/ on (worker) wgfo:y:sum + up')
    assert metric_names(expr) == {"wgfo_x_total", "wgfo:y:sum", "up"}


def test_substitute_fills_grafana_variables():
    assert rp.substitute("a{w=\"$worker\"}[$__rate_interval] ${client} [[worker]]",
                         {"worker": "w1", "client": "c1"}) == 'a{w="w1"}[1m] c1 w1'
    with pytest.raises(KeyError):
        rp.substitute("$nope", {})
    assert rp.parse_label_values("label_values(wgfo_worker_up, worker)") == \
        ("wgfo_worker_up", "worker")
    assert rp.parse_label_values("label_values(client)") == (None, "client")


def test_every_query_parses_with_promtool(tmp_path: Path):
    """Every panel and annotation query, variables filled in, parses as PromQL (promtool parses
    rule expressions with Prometheus's own parser)."""
    rules = []
    for path in DASHBOARDS:
        for q in rp.dashboard_queries(load(path)):
            if q.kind == "variable":
                rp.parse_label_values(q.expr)  # Grafana's function, not PromQL
                continue
            rules.append({"record": f"check:q{len(rules)}",
                          "expr": rp.substitute(q.expr, SAMPLE_VALUES)})
    f = tmp_path / "queries.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run_tool("promtool", "check", "rules", str(f))


def test_datasource_provisioning():
    data = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert data["apiVersion"] == 1
    (ds,) = data["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert ds["access"] == "proxy" and ds["isDefault"] is True
    prom = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    # Grafana's $__rate_interval is only right when it knows the scrape interval.
    assert ds["jsonData"]["timeInterval"] == prom["global"]["scrape_interval"]


def test_dashboard_provisioning():
    data = yaml.safe_load((GRAFANA / "provisioning/dashboards/wg-failover.yml").read_text())
    assert data["apiVersion"] == 1
    (provider,) = data["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_docker_compose_mounts_the_provisioning():
    compose = ROOT / "docker-compose.yml"
    if not compose.exists():
        pytest.skip("docker-compose.yml not written yet")
    services = yaml.safe_load(compose.read_text())["services"]
    grafana = next(s for name, s in services.items() if "grafana" in name)
    targets = {}
    for v in grafana.get("volumes", []):
        src, dst = (v.split(":")[:2] if isinstance(v, str) else (v["source"], v["target"]))
        targets[dst] = src.rstrip("/")
    assert targets.get("/etc/grafana/provisioning", "").endswith("grafana/provisioning")
    assert targets.get("/var/lib/grafana/dashboards", "").endswith("grafana/dashboards")
