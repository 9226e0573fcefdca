"""The lab's live fleet as a user runs it: `lab up` enrolls its clients with `wg-failover join`
(no fleet file for their switchers), `lab add-worker` makes a warm peer on every switcher that
Prometheus scrapes, `lab add-client` lands on the worker it prefers, `lab remove-client` revokes:
no worker keeps its peer, its token gets 401, its pings stop.
"""

from __future__ import annotations

import json

import pytest

from tests.netns.test_lab_e2e import json_tail, lab, lab_env  # noqa: F401 - fixture
from wg_failover.lab.state import LabState

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_lab_add_worker_add_client_remove_client(lab_env):  # noqa: F811
    env, _prefix, subnet, directory = lab_env
    up = lab(env, "up", "--workers", "2", "--clients", "2", "--subnet", subnet)
    assert up.returncode == 0, up.stdout + up.stderr
    state = LabState.load(directory)
    node = json.loads((directory / "nodes" / "c1" / "node.json").read_text())
    assert node["kind"] == "client" and node["name"] == "c1"
    log = (directory / "logs" / "switcher-c1.log").read_text()
    assert "view: none cached" in log  # it started from the responder's view, not a file
    assert {p.role for p in state.processes} >= {"agent", "switcher"}

    added = lab(env, "add-worker", "--json")
    assert added.returncode == 0, added.stdout + added.stderr
    w = json_tail(added.stdout)
    assert w["worker"] == "w3" and not w["not_warm"] and set(w["warm_s"]) == {"c1", "c2"}
    assert max(w["warm_s"].values()) < 5, w
    assert w["scraped_s"] is not None and w["scraped_s"] < 15, w

    client = lab(env, "add-client", "--workers", "w3", "w1", "--json")
    assert client.returncode == 0, client.stdout + client.stderr
    c = json_tail(client.stdout)
    assert c["client"] == "c3" and c["reaches_service"]
    assert "c3       w3" in client.stdout  # assigned to the worker it prefers, the new one

    removed = lab(env, "remove-client", "c3", "--json")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    r = json_tail(removed.stdout)
    assert set(r["peers_gone_s"]) == {"w1", "w2", "w3"} and max(r["peers_gone_s"].values()) < 2
    assert r["token_status"] == 401 and r["pings_answered_before"] and not r["pings_answered"]
    sw = (directory / "logs" / "switcher-c3.log").read_text()
    assert "refused the token (401)" in sw or "HTTP 401" in sw, sw[-2000:]
