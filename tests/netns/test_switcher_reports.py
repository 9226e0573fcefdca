"""Change-only probe reports on real parts (issue #15 part 4): the real switcher against three
wireguard-go workers and the real responder. While nothing changes it sends heartbeats only (not
a report per check), its vote stands all along, and a worker that dies is voted down at once.
Namespaces are prefixed `wfrp`."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.tools import require_netns
from wg_failover.lab import kit, netns
from wg_failover.lab.procs import poll_until, stop_process

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

CHECK, HEARTBEAT = 1.0, 6.0  # checks every second; a report at least every 6 s


def metrics(sl: kit.SwitcherLab) -> str:
    status, body = sl.http("GET", "/metrics")
    assert status == 200, body
    assert isinstance(body, str)
    return body


def value(text: str, series: str) -> float | None:
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


@contextlib.contextmanager
def switcher_lab(tmp_path: Path, n: int,
                 *switcher_args: str) -> Iterator[tuple[kit.SwitcherLab, kit.SwitcherProc]]:
    """Three workers, the responder and one switcher with `switcher_args` that sees every
    worker up; torn down after. `n` keeps two tests' namespace prefixes apart."""
    require_netns()
    lab = netns.NetLab(f"wfrp{(os.getpid() + n) % 1000:03d}")
    lab.up()
    sw = None
    try:
        sl = kit.build(lab, tmp_path / "lab")
        sl.start_responder()
        assert sl.responder_url is not None
        sw = sl.start_switcher(tmp_path / "state", sl.responder_url, "--no-gray",
                               *switcher_args)
        for w in ("w1", "w2", "w3"):
            assert sw.wait_for(rf"probe: {w} is up", 30), sw.text()
        yield sl, sw
    finally:
        if sw is not None:
            sw.stop()
        lab.close()


def probes_received(sl: kit.SwitcherLab) -> float:
    return value(metrics(sl), 'wgfo_client_events_total{type="probe"}') or 0.0


def test_heartbeats_only_while_nothing_changes_and_a_death_at_once(tmp_path):
    with switcher_lab(tmp_path, 0, "--report-every", str(CHECK), "--report-heartbeat",
                  str(HEARTBEAT), "--log-level", "debug") as (sl, sw):
        assert poll_until(lambda: value(metrics(sl), 'wgfo_client_observed_reporters'
                                        '{worker="w3"}') == 1, 15, 0.5), metrics(sl)
        time.sleep(2 * CHECK)  # the first smoothed RTTs go out ("rtt known")

        n0, t0 = probes_received(sl), time.monotonic()
        seen = []
        while time.monotonic() - t0 < 2 * HEARTBEAT + 1:
            text = metrics(sl)
            seen.append((value(text, 'wgfo_client_observed_reporters{worker="w1"}'),
                         value(text, 'wgfo_client_observed_up{worker="w1"}')))
            time.sleep(1)
        sent = probes_received(sl) - n0
        # ~13 checks: a report at each would be 13; heartbeats every 6-7 s are 2 (one more if
        # an RTT moved by 20 ms, which these quiet namespaces do not do).
        assert 1 <= sent <= 3, (sent, sw.text()[-3000:])
        assert set(seen) == {(1.0, 1.0)}, seen  # the vote stood all along

        # A backup dies: the switcher says so at once, not at its next heartbeat.
        sl.kill_worker("w2")
        t_kill = time.monotonic()
        assert poll_until(lambda: value(metrics(sl), 'wgfo_client_observed_up{worker="w2"}')
                          == 0, 5, 0.2), sw.text()[-3000:]
        assert time.monotonic() - t_kill < HEARTBEAT - 1
        assert value(metrics(sl), 'wgfo_client_observed_up{worker="w1"}') == 1


def test_a_restarted_responder_has_the_votes_back_long_before_the_heartbeat(tmp_path):
    """The responder keeps probe reports in memory: after its restart the switcher's vote must
    not wait for a 60 s heartbeat. It comes at the first check after the stream reconnects."""
    args = ("--report-every", "1", "--report-heartbeat", "60")
    with switcher_lab(tmp_path, 1, *args) as (sl, sw):
        reporters = 'wgfo_client_observed_reporters{worker="w1"}'
        assert poll_until(lambda: value(metrics(sl), reporters) == 1, 15, 0.5), metrics(sl)
        time.sleep(3)  # past the start's reports (the first RTTs): the next is the heartbeat

        assert sl.responder_proc is not None
        stop_process(sl.responder_proc, 5)
        sl.start_responder()
        t_ready = time.monotonic()
        assert poll_until(lambda: value(metrics(sl), reporters) == 1, 20, 0.5), (
            metrics(sl), sw.text()[-3000:])
        assert time.monotonic() - t_ready < 20
