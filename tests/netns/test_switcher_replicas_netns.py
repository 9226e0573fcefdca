"""The whole switcher with several responder URLs, in a lab on real wireguard-go: the first URL
is dead (nothing listens there), the second is the responder. The switcher follows its
assignment and its reports land, through the second URL, without waiting on the first."""

from __future__ import annotations

import os

import pytest

from tests.helpers.tools import require_netns
from wg_failover.lab import kit, netns
from wg_failover.lab.procs import poll_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def wfmu_lab():
    """A NetLab with this suite's own prefix (wfmu), removed afterwards."""
    require_netns()
    lab = netns.NetLab(f"wfmu{os.getpid() % 100:02d}")
    lab.up()
    try:
        yield lab
    finally:
        lab.close()


def applied(sl: kit.SwitcherLab) -> set[int]:
    """The versions c1 reported applied, as the responder recorded them."""
    _status, body = sl.http("GET", "/v1/clients/c1", "c1")
    events = body.get("events", []) if isinstance(body, dict) else []
    return {e["data"].get("version") for e in events if e["kind"] == "client-applied"}


def test_a_switcher_whose_first_responder_url_is_dead_follows_and_reports(wfmu_lab, tmp_path):
    sl = kit.build(wfmu_lab, tmp_path / "lab")
    sl.start_responder()
    dead = "http://198.18.0.2:8081"  # the master's address, no process on the port
    sw = sl.start_switcher(tmp_path / "state", f"{dead},{sl.responder_url}")
    try:
        assert sw.wait_for(r"assignment v1: w1 is already active", 20), sw.text()
        status, _ = sl.http("POST", "/v1/workers/w1/drain", "admin")
        assert status == 200
        assert sw.wait_for(r"switch w1 -> w2 \(assignment\): responder v2", 15), sw.text()
        assert sl.route_holder() == "w2"

        assert poll_until(lambda: {1, 2} <= applied(sl), 15), applied(sl)
        text = sw.text()
        assert "Traceback" not in text, text
        assert sw.stop() == 0
    finally:
        sw.stop()
