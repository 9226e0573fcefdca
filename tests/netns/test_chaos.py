"""A short seeded fault campaign on the full lab (bench/chaos.py, docs/chaos.md): it must end with
no invariant broken and nothing of the lab left behind.

Seed 4's first episodes, in about 3 minutes of faults: the responder crashed while the master
is cut off from a worker its clients reach (they must outvote the blind master), a worker's
exporter crashed with the responder again, a worker cut off one way while the master is cut off
from another, then Alertmanager, the responder's disk... as time allows (`--list 8 --seed 4`).
Kinds missing from this lab (mosquitto, replicas) are skipped with a line. A failure prints the
violations with their time and faults; `bench/chaos.py --seed 4` replays the schedule.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_netns
from wg_failover.lab import build, netns

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"
# Unique per run: two runs of the suite at once (or a campaign beside it) never share a lab.
PREFIX = f"ch{os.getpid() % 10000:04d}"
SUBNET = f"198.18.{120 + os.getpid() % 100}.0/24"
SEED = 4
MINUTES = 3.0
WALL = 280  # seconds: the run's own budget, under the suite's 300 s per-test timeout


@pytest.mark.timeout(320)
def test_seeded_campaign_breaks_no_invariant(tmp_path):
    require_netns()
    missing = build.missing_components()
    if missing:
        pytest.skip("; ".join(missing))
    out = tmp_path / "chaos.json"
    proc = subprocess.Popen(
        [sys.executable, str(CHAOS), "--seed", str(SEED), "--minutes", str(MINUTES),
         "--prefix", PREFIX, "--subnet", SUBNET, "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        stdout, _ = proc.communicate(timeout=WALL)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # heals and takes the lab down
        stdout, _ = proc.communicate(timeout=60)
        pytest.fail(f"the campaign overran {WALL} s:\n{stdout[-4000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
        netns.cleanup_prefix(PREFIX)
    assert proc.returncode == 0, stdout[-6000:]
    s = json.loads(out.read_text())
    assert s["violations_total"] == 0, stdout[-6000:]
    assert s["leftovers"] == [] and s["errors"] == []
    # the run did inject what seed 4 schedules, and checked the blind master on the way
    for kind in ("crash-responder", "master-cut", "crash-exporter", "cut-oneway"):
        assert s["faults_injected"].get(kind, 0) >= 1, s["faults_injected"]
    assert "skip crash-mosquitto(master): no mosquitto in this lab" in stdout
    assert 0 < s["worst_covered_gap_s"] < 1.0
    assert s["converge_s"]["n"] >= 3
    assert "VIOLATION" not in stdout
