"""Failover benchmark: how long traffic stops when the active worker dies (and more).

Builds a lab on real wireguard-go in network namespaces (3 workers, each with the service
address 10.99.0.1 behind its tunnel; 1 client), runs `wg-failover switcher` as a real process in
the client's namespace, pings the service every 10 ms, and measures:

  kills (default): kill the active worker's wireguard-go N times (restarting each killed one with
      the same config, so the kills rotate); the traffic gap is the longest silence from the last
      reply before the kill to the first reply 0.2 s after it (an echo already on its way back at
      the kill does not end it). Prints every gap, then p50, p95, max.
  --soak SECONDS: a healthy lab left alone; counts false switches and lost echoes.
  --drains N: planned drains through the real responder (in a `master` namespace): drain the
      active worker, wait for the switch, undrain; counts lost echoes around each drain.

Needs root. Example:  sudo .venv/bin/python bench/failover.py --kills 20 --drains 5
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wg_failover.lab import kit  # noqa: E402
from wg_failover.lab.netns import NetLab, preflight  # noqa: E402
from wg_failover.lab.procs import poll_until  # noqa: E402

CUT_OFF = "http://198.18.0.254:9"  # no host there: the fast path alone


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))]


def gap_after_kill(replies: list[float], t: float, grace: float = 0.2) -> float | None:
    """The longest silence from the last reply before the kill at `t` to the first reply later
    than `t + grace` (None: none that late). Echoes already in flight when wireguard-go dies
    still come back for a moment, so the first reply after `t` is not the recovery."""
    before = [r for r in replies if r <= t]
    late = [r for r in replies if r > t + grace]
    if not before or not late:
        return None
    window = [r for r in replies if before[-1] <= r <= late[0]]
    return max(b - a for a, b in zip(window, window[1:], strict=False))


def wait_worker_answers(sl: kit.SwitcherLab, worker: str, timeout: float = 20) -> bool:
    assert sl.client_host is not None
    addr = sl.fleet.worker(worker).tunnel_address
    return poll_until(lambda: sl.client_host.ping(addr, count=1, timeout=0.5), timeout, step=0.1)


def run_kills(sl: kit.SwitcherLab, sw: kit.SwitcherProc, ping: kit.Pinger, kills: int,
              settle: float) -> list[float]:
    gaps: list[float] = []
    decided: list[int] = []
    for i in range(kills):
        active = sl.route_holder()
        assert active is not None, "routes on no peer"
        offset = len(sw.text())
        killed_at = time.time()
        sl.kill_worker(active)
        m = sw.wait_for(rf"switch {active} -> (\S+) \(failover\) after (\d+) ms", 10, offset)
        if not m:
            print(f"kill {i + 1}: no switch within 10 s\n{sw.text()[offset:]}", file=sys.stderr)
            sys.exit(1)
        poll_until(lambda t=killed_at: ping.replies_after(t + 0.25), 5, step=0.02)
        gap = gap_after_kill(ping.snapshot(), killed_at)
        if gap is None:
            print(f"kill {i + 1}: traffic did not come back", file=sys.stderr)
            sys.exit(1)
        gaps.append(gap)
        decided.append(int(m.group(2)))
        print(f"kill {i + 1:2d}: {active} -> {m.group(1)}  traffic gap {gap * 1000:6.1f} ms  "
              f"(switcher: silence {m.group(2)} ms when it switched)", flush=True)
        sl.restart_worker(active)
        if not wait_worker_answers(sl, active):
            print(f"kill {i + 1}: restarted {active} does not answer", file=sys.stderr)
            sys.exit(1)
        time.sleep(settle)
    ms = [g * 1000 for g in gaps]
    print(f"\ntraffic gap over {len(ms)} kills (ms): p50 {pct(ms, 50):.0f}  p95 {pct(ms, 95):.0f}"
          f"  max {max(ms):.0f}  mean {statistics.mean(ms):.0f}  min {min(ms):.0f}")
    print(f"switcher's silence at decision (ms): p50 {pct(decided, 50)}  max {max(decided)}")
    # Other test runs share these cores: the figures are only comparable at a similar load.
    print("load average (1, 5, 15 min) after the kills: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return gaps


def run_soak(sw: kit.SwitcherProc, ping: kit.Pinger, seconds: float) -> int:
    offset = len(sw.text())
    t0 = time.time()
    time.sleep(seconds)
    t1 = time.time()
    text = sw.text()[offset:]
    switches = re.findall(r"switch \S+ -> \S+ \(failover\)", text)
    downs = re.findall(r"probe: (\S+) is down", text)
    answered, lost = ping.lost_between(t0, t1)
    print(f"\nsoak {seconds:g} s, healthy lab: false switches {len(switches)}, workers seen "
          f"down {len(downs)}, echoes answered {answered}, lost {lost}")
    for line in text.splitlines():
        if "switch " in line or "is down" in line:
            print("  " + line)
    return len(switches)


def log_time(stamp: str) -> float:
    """Wall-clock seconds of a switcher log timestamp (local time, milliseconds)."""
    base, _, ms = stamp.partition(".")
    return time.mktime(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(ms or 0) / 1000


def run_drains(sl: kit.SwitcherLab, sw: kit.SwitcherProc, ping: kit.Pinger,
               drains: int) -> int:
    total_lost = 0
    for i in range(drains):
        active = sl.route_holder()
        offset = len(sw.text())
        t0 = time.time()
        status, body = sl.http("POST", f"/v1/workers/{active}/drain", "admin")
        if status != 200:
            print(f"drain {i + 1}: responder said {status}: {body}", file=sys.stderr)
            sys.exit(1)
        m = sw.wait_for(rf"(\S+) INFO switch {active} -> (\S+) \(assignment\)", 10, offset)
        if not m:
            print(f"drain {i + 1}: no switch\n{sw.text()[offset:]}", file=sys.stderr)
            sys.exit(1)
        time.sleep(1.0)
        answered, lost = ping.lost_between(t0 - 1.0, time.time())
        total_lost += lost
        switched_at = log_time(m.group(1))
        where = ", ".join(f"seq {q} sent {(t - switched_at) * 1000:+.1f} ms"
                          for q, t in ping.lost_seqs(t0 - 1.0, time.time()))
        print(f"drain {i + 1}: {active} -> {m.group(2)}  echoes answered {answered}, "
              f"lost {lost}" + (f" ({where} from the switch)" if where else ""), flush=True)
        sl.http("POST", f"/v1/workers/{active}/undrain", "admin")
        time.sleep(0.5)
    print(f"\nplanned drains through the responder: {drains}, lost echoes in total {total_lost}")
    return total_lost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=12, help="active-worker kills (default 12)")
    ap.add_argument("--soak", type=float, default=0, metavar="SECONDS",
                    help="also leave a healthy lab alone this long, counting false switches")
    ap.add_argument("--drains", type=int, default=0, metavar="N",
                    help="also do N planned drains through the real responder")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds between a restarted worker answering and the next kill")
    ap.add_argument("--switcher-arg", action="append", default=[],
                    help="extra switcher argument (repeat), e.g. --switcher-arg=--interval=50")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    problems = preflight()
    if problems:
        print("cannot run the lab: " + "; ".join(problems), file=sys.stderr)
        return 2
    prefix = f"bf{os.getpid() % 10000:04d}"
    workdir = Path(tempfile.mkdtemp(prefix="wgfo-bench-"))
    with NetLab(prefix) as lab:
        sl = kit.build(lab, workdir / "lab")
        responder = CUT_OFF
        if args.drains:
            sl.start_responder()
            assert sl.responder_url is not None
            responder = sl.responder_url
        sw = sl.start_switcher(workdir / "state", responder, *args.switcher_arg)
        for w in sl.prefs():
            if not sw.wait_for(rf"probe: {w} is up", 20):
                print(sw.text(), file=sys.stderr)
                return 1
        ping = sl.start_ping(0.01)
        poll_until(lambda: len(ping.snapshot()) > 50, 10)
        print("load average (1, 5, 15 min) at start: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        print(f"lab {prefix}: 3 workers, 1 client; switcher defaults "
              f"{' '.join(args.switcher_arg) or '(interval 100 ms, K=3, burst 10 ms)'}; "
              f"responder {'in the lab' if args.drains else 'cut off (fast path only)'}; "
              "ping every 10 ms\n", flush=True)
        try:
            if args.soak:
                run_soak(sw, ping, args.soak)
            if args.drains:
                run_drains(sl, sw, ping, args.drains)
            if args.kills:
                run_kills(sl, sw, ping, args.kills, args.settle)
        finally:
            ping.stop()
            sw.stop()
            if args.keep:
                print(f"\nswitcher log: {sw.log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
