"""The alerting rules: promtool unit tests, the labels the responder relies on, and routing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.tools import run_tool
from wg_failover import promconfig

SHIPPED = promconfig.SHIPPED_DIR
ACTIONS = {"failover", "drain", "notify"}


def _alert_rules() -> list[dict]:
    rules = []
    for path in sorted((SHIPPED / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text()).get("groups") or []:
            rules += [dict(r, _file=path.name) for r in group["rules"] if "alert" in r]
    return rules


def _ours() -> list[dict]:
    # rules/awesome-wireguard.yml belongs to the exporter (ports of the Go exporter's alerts).
    return [r for r in _alert_rules() if r["_file"] != "awesome-wireguard.yml"]


def _test_files() -> list[Path]:
    return sorted((SHIPPED / "tests").glob("*.yml"))


def test_promtool_rule_unit_tests_pass():
    files = _test_files()
    assert files
    out = run_tool("promtool", "test", "rules", *map(str, files), cwd=SHIPPED / "tests")
    assert "FAILED" not in out


def test_every_alert_has_labels_and_annotations():
    rules = _ours()
    assert {r["alert"] for r in rules} >= {
        "WgWorkerDown", "WgExporterDown", "WgWorkerOverloaded", "WgHandshakesStale",
        "WgResponderDown", "WgAllWorkersDown"}
    for rule in rules:
        labels, notes = rule.get("labels") or {}, rule.get("annotations") or {}
        assert labels.get("action") in ACTIONS, rule["alert"]
        assert labels.get("severity") in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(notes), rule["alert"]
        assert "$value" in notes["description"], f"{rule['alert']}: description without value"
        assert rule.get("for"), f"{rule['alert']}: no `for:`, one bad sample would fire it"


def test_per_worker_alerts_keep_the_worker_label():
    # The responder acts on `worker`; every per-worker expression aggregates `by (worker)` or
    # works on recorded per-worker series, so the label survives.
    for rule in _ours():
        if rule["alert"] in {"WgAllWorkersDown", "WgResponderDown"}:
            continue
        assert "worker" in rule["expr"] or "wgfo:worker_" in rule["expr"], rule["alert"]


def test_every_alert_is_unit_tested_firing_and_quiet():
    tests = [t for f in _test_files() for t in yaml.safe_load(f.read_text())["tests"]]
    fired: set[str] = set()
    quiet: set[str] = set()
    for t in tests:
        for case in t.get("alert_rule_test") or []:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in _ours()}
    assert names <= fired, f"never tested firing: {names - fired}"
    assert names <= quiet, f"never tested quiet: {names - quiet}"


def test_failover_fires_on_two_bad_scrapes_not_one():
    rule = next(r for r in _ours() if r["alert"] == "WgWorkerDown")
    prom = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
    scrape = promconfig.duration_seconds(prom["global"]["scrape_interval"])
    # Longer than one scrape interval (a single bad sample), shorter than two.
    assert scrape < promconfig.duration_seconds(rule["for"]) < 2 * scrape


@pytest.mark.parametrize(("labels", "receiver"), [
    (["alertname=WgWorkerDown", "worker=w1", "action=failover", "severity=critical"],
     promconfig.RESPONDER_RECEIVER),
    (["alertname=WgWorkerOverloaded", "worker=w1", "action=drain", "severity=warning"],
     promconfig.RESPONDER_RECEIVER),
    (["alertname=WgExporterDown", "worker=w1", "action=notify", "severity=warning"], "default"),
    (["alertname=WgAllWorkersDown", "action=notify", "severity=critical"], "default"),
    (["alertname=Other"], "default"),
])
def test_alertmanager_routes(labels, receiver):
    out = run_tool("amtool", "config", "routes", "test",
                   f"--config.file={SHIPPED / 'alertmanager.yml'}", *labels)
    # amtool 0.25 prints a flag warning on stdout, glued to the answer.
    assert out.split("Warning:")[0].split() == [receiver]


def test_amtool_route_tree_shows_the_responder_route():
    out = run_tool("amtool", "config", "routes", "show",
                   f"--config.file={SHIPPED / 'alertmanager.yml'}")
    assert re.search(r"action=~\"?failover\|drain\"?.*receiver: wg-failover-responder", out), out


def test_promtool_reports_a_broken_rule(tmp_path):
    # The check really checks: a typo in a rule is caught with its location.
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: A\n        expr: up ==\n")
    proc = subprocess.run(["promtool", "check", "rules", str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "bad.yml" in proc.stdout + proc.stderr
