"""The fault campaign's alert timers (lab.faults.prepare_alerting; docs/chaos.md): the responder
route of the shipped alertmanager.yml repeats every ALERT_REPEAT and stays a valid config for the
real amtool, and the responder's expiry keeps to the rule its setting states (above twice the
real gap between repeats), so a still-firing alert never expires between two repeats."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.helpers.tools import require_tool, run_tool
from wg_failover import promconfig
from wg_failover.fleet import ResponderSettings
from wg_failover.lab import faults
from wg_failover.lab.state import LabError


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)", text)
    assert m, text
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def test_responder_route_repeats_often_and_nothing_else_changes(tmp_path):
    shipped = promconfig.ALERTMANAGER_YML.read_text()
    out = faults.responder_repeat(shipped, faults.ALERT_REPEAT)
    before, after = yaml.safe_load(shipped), yaml.safe_load(out)
    (route,) = [r for r in after["route"]["routes"]
                if r["receiver"] == promconfig.RESPONDER_RECEIVER]
    assert route["repeat_interval"] == faults.ALERT_REPEAT
    route["repeat_interval"] = next(r["repeat_interval"] for r in before["route"]["routes"]
                                    if r["receiver"] == promconfig.RESPONDER_RECEIVER)
    assert after == before
    require_tool("amtool", "prometheus-alertmanager")
    path = tmp_path / "alertmanager.yml"
    path.write_text(out)
    run_tool("amtool", "check-config", str(path))


def test_expiry_outlasts_two_repeats_and_fits_the_convergence_bound():
    route = next(r for r in yaml.safe_load(promconfig.ALERTMANAGER_YML.read_text())["route"][
        "routes"] if r["receiver"] == promconfig.RESPONDER_RECEIVER)
    # Alertmanager repeats at its group_interval ticks: up to repeat + group_interval apart.
    gap = seconds(faults.ALERT_REPEAT) + seconds(route["group_interval"])
    assert 2 * gap <= faults.ALERT_EXPIRE
    ResponderSettings(alert_expire_seconds=faults.ALERT_EXPIRE)  # a valid setting
    # A lost resolve: the alert keeps firing 15 s after the heal (keep_firing_for), expires
    # ALERT_EXPIRE after its last repeat, then the lab's 20 s hold-down: inside the 90 s bound.
    assert 15 + faults.ALERT_EXPIRE + 2 + 20 < 90


def test_an_alertmanager_config_without_the_responder_route_is_refused():
    with pytest.raises(LabError, match="no route"):
        faults.responder_repeat("route:\n  receiver: default\n", "10s")
