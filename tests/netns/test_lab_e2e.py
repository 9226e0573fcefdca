"""End to end: `wg-failover lab` as a user runs it (separate invocations), smaller than the demo.

3 workers, 4 clients (c1 and c4 prefer w1). Kill w1: every client of w1 ends on a healthy worker,
nobody else moves, the responder shows w1 down, Prometheus has the alert; after `lab down` no
namespace, process, interface, socket or file of the lab is left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_netns
from wg_failover.lab import build, netns
from wg_failover.lab.state import LabState

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def lab(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(build.wgfo_argv("lab", *args), env=env, capture_output=True,
                          text=True, timeout=timeout)


def json_tail(stdout: str) -> dict:
    """The JSON object a `--json` command prints after its text."""
    start = stdout.index("\n{") + 1 if not stdout.startswith("{") else 0
    return json.loads(stdout[start:])


@pytest.fixture
def lab_env(tmp_path):
    require_netns()
    missing = build.missing_components()
    if missing:
        pytest.skip("lab components not available yet: " + "; ".join(missing))
    n = os.getpid() % 10000
    prefix = f"e{n:04d}"
    env = dict(os.environ, WG_FAILOVER_LAB_ROOT=str(tmp_path / "labs"),
               WG_FAILOVER_LAB_PREFIX=prefix)
    # Its own /24 (the host gets .254 of it), so a user's lab on 198.18.0.0/24 is untouched.
    subnet = f"198.18.{100 + n % 150}.0/24"
    try:
        yield env, prefix, subnet, tmp_path / "labs" / prefix
    finally:
        lab(env, "down", timeout=60)
        netns.cleanup_prefix(prefix)


def test_lab_failover_end_to_end(lab_env):
    env, prefix, subnet, directory = lab_env
    up = lab(env, "up", "--workers", "3", "--clients", "4", "--subnet", subnet)
    assert up.returncode == 0, up.stdout + up.stderr
    state = LabState.load(directory)
    pids = list(state.processes)
    assert {p.role for p in pids} == {"wireguard", "exporter", "responder", "prometheus",
                                      "alertmanager", "blackbox", "switcher", "agent"}
    assert all(p.alive() for p in pids)

    before = json.loads(lab(env, "status", "--json").stdout)["active"]
    # Each client starts on its first preference (c1 and c4 on w1).
    assert set(before) == {"c1", "c2", "c3", "c4"} and set(before.values()) <= {"w1", "w2", "w3"}
    on_w1 = sorted(c for c, w in before.items() if w == "w1")
    assert on_w1

    fo = lab(env, "failover", "w1", "--json", "--timeout", "90")
    summary = json_tail(fo.stdout)
    assert fo.returncode == 0, fo.stdout + fo.stderr
    assert sorted(summary["affected"]) == on_w1
    assert summary["others_moved"] == []
    assert summary["control_path_s"] is not None

    after = json.loads(lab(env, "status", "--json").stdout)
    # Every client of w1 is on a live worker, on its interface and in the responder's plan.
    for c in on_w1:
        assert after["active"][c] in ("w2", "w3"), after
        assert after["assigned"][c] == after["active"][c], after
    # Nobody else moved.
    for c in set(before) - set(on_w1):
        assert after["active"][c] == before[c], after
    assert after["workers"]["w1"] == "down"
    assert not any(p.alive() for p in state.procs(host="w1"))

    alerts = httpx.get(f"{state.prometheus_url}/api/v1/alerts", timeout=5).json()
    mine = [a for a in alerts["data"]["alerts"]
            if a["labels"].get("worker") == "w1" and a["labels"].get("action") == "failover"]
    assert mine and mine[0]["state"] == "firing"

    # A planned drain of w2: its clients move to the only other live worker, w3.
    dr = lab(env, "drain", "w2", "--json")
    assert dr.returncode == 0, dr.stdout + dr.stderr
    drained = json_tail(dr.stdout)
    assert drained["affected"] and set(drained["moved"].values()) == {"w3"}
    after = json.loads(lab(env, "status", "--json").stdout)
    assert set(after["active"].values()) == {"w3"}, after
    assert after["workers"]["w2"] == "up draining"

    # Bring w1 back: its new processes must be found and stopped by `lab down` too.
    rv = lab(env, "revive", "w1")
    assert rv.returncode == 0, rv.stdout + rv.stderr
    state = LabState.load(directory)
    revived = state.procs(host="w1")
    assert {p.role for p in revived} == {"wireguard", "exporter", "agent"}
    assert all(p.alive() for p in revived)
    pids += revived

    down = lab(env, "down", timeout=60)
    assert down.returncode == 0, down.stderr
    assert not [ns for ns in netns.list_namespaces() if ns.startswith(prefix + "-")]
    assert not any(p.alive() for p in pids)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{prefix}-root" not in links
    assert not list(Path("/var/run/wireguard").glob(f"{prefix}*.sock"))
    assert not directory.exists()
    # The root namespace's route into the lab went with its link.
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert subnet not in routes


def test_lab_commands_without_a_lab_fail_clearly(tmp_path):
    env = dict(os.environ, WG_FAILOVER_LAB_ROOT=str(tmp_path))
    for args in (["status"], ["failover"], ["drain", "w1"]):
        r = lab(env, *args, "--prefix", "nolab", timeout=60)
        assert r.returncode == 2 and "lab up" in r.stderr and "Traceback" not in r.stderr


def test_lab_bad_prefix_is_a_clear_error(tmp_path):
    env = dict(os.environ, WG_FAILOVER_LAB_ROOT=str(tmp_path))
    r = lab(env, "up", "--prefix", "Bad-Prefix", timeout=60)
    assert r.returncode == 2 and "--prefix" in r.stderr and "Traceback" not in r.stderr


def test_lab_up_as_non_root_says_so(tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as another user")
    env = dict(os.environ, WG_FAILOVER_LAB_ROOT=str(tmp_path))
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            *build.wgfo_argv("lab", "up", "--prefix", "nroot")]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "must run as root" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_lab_up_without_wireguard_go_says_so(tmp_path):
    # A PATH with every tool the lab needs except wireguard-go.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("ip", "wg", "ping", "prometheus", "prometheus-alertmanager"):
        if shutil.which(tool):
            (bindir / tool).symlink_to(shutil.which(tool))
    env = dict(os.environ, PATH=str(bindir), WG_FAILOVER_LAB_ROOT=str(tmp_path / "labs"))
    r = lab(env, "up", "--prefix", "nowg", timeout=60)
    assert r.returncode == 2 and "wireguard-go" in r.stderr and "Traceback" not in r.stderr
    assert not [ns for ns in netns.list_namespaces() if ns.startswith("nowg-")]
