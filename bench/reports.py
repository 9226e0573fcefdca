"""Benchmark probe reports that scale (issue #15 part 4): what 100,000 switchers cost the responder
with a full report every `--report-every` seconds (before) and with change-only reports plus a
heartbeat (after, client/report_policy.py).

    .venv/bin/python bench/reports.py [--switchers 200] [--minutes 15] [--reports 4000]
                                      [--heartbeats 30,60] [--repeat 3]

1. Report rate per switcher, simulated: `--switchers` switchers of 3 workers each, probed every
   100 ms through the switcher's own health code (client/health.py: smoothed RTT, 50-probe loss
   window, K=3) and its report policy, for `--minutes` of simulated time, under a mix of paths:
     steady    60 %: RTT 5-60 ms +-20 % uniform jitter, 0.1-0.5 % loss;
     jittery   25 %: RTT 20-120 ms x lognormal(sigma 0.35) (spikes of 2x and more), 1-3 % loss;
     eventful  15 %: steady, plus per worker a route change (RTT x1.5-3 or back) every ~20 min
                     and an outage of 10-60 s every ~60 min, on average.
   Up/down reports go out at once under both policies (the decider's); before, one report every
   `--report-every` s on top; after, a report at a check only when the policy says so.
2. Responder CPU per report, measured: the real `wg-failover responder` (uvicorn, SQLite; with
   `--http httptools`, the default, and the old reports again with `--http h11`) with
   1,000 clients of 3 workers, 8 keep-alive raw HTTP senders, CPU from /proc: a report that changes
   nothing durable (a heartbeat, an RTT change: memory only), the same without `heartbeat_s` (the
   old switchers' report), one that flips a worker up/down (a store commit), and for scale
   `GET /healthz` (the HTTP stack alone). `--repeat` runs alternate; the median is used (the
   machine is shared: CPU per request grows with the load beside it).
3. Projection for 100,000 switchers: reports/s x CPU per report, before (a report every 5 s;
   on h11, as shipped before, and on httptools) and after (for each
   `--heartbeats`, and the heartbeat the responder advises a fleet of that size with its
   default `--report-budget`, which the switchers take: the default setup); goal < 0.5 core.
Every loop is bounded; the responder is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client.health import WorkerHealth  # noqa: E402
from client.report_policy import DEFAULT_HEARTBEAT, ReportPolicy, Summary, Tracker  # noqa: E402
from responder.limits import REPORT_BUDGET, advised_heartbeat  # noqa: E402

PROBE = 0.1  # s, the switcher's default --interval
FLEET = 100_000
GOAL_CORES = 0.5


# --------------------------------------------------------------------------- 1. the simulation


@dataclass
class PathModel:
    base: float  # s
    jitter: str  # "uniform" | "lognormal"
    loss: float
    events: bool = False
    down_until: float = -1.0
    next_route: float = math.inf
    next_outage: float = math.inf

    def sample(self, rng: random.Random, now: float) -> float | None:
        """One probe: its RTT, or None when lost."""
        if self.events:
            if now >= self.next_route:
                self.base *= rng.uniform(1.5, 3.0) if rng.random() < 0.5 else 1 / rng.uniform(
                    1.5, 3.0)
                self.base = min(0.3, max(0.003, self.base))
                self.next_route = now + rng.expovariate(1 / 1200)
            if now >= self.next_outage:
                self.down_until = now + rng.uniform(10, 60)
                self.next_outage = self.down_until + rng.expovariate(1 / 3600)
        if now < self.down_until or rng.random() < self.loss:
            return None
        if self.jitter == "uniform":
            return self.base * rng.uniform(0.8, 1.2)
        return self.base * rng.lognormvariate(0, 0.35)


def make_paths(profile: str, rng: random.Random, n: int) -> list[PathModel]:
    out = []
    for _ in range(n):
        if profile == "jittery":
            out.append(PathModel(rng.uniform(0.020, 0.120), "lognormal", rng.uniform(0.01, 0.03)))
        else:
            p = PathModel(rng.uniform(0.005, 0.060), "uniform", rng.uniform(0.001, 0.005))
            if profile == "eventful":
                p.events = True
                p.next_route = rng.expovariate(1 / 1200)
                p.next_outage = rng.expovariate(1 / 3600)
            out.append(p)
    return out


@dataclass
class SimResult:
    seconds: float
    switchers: int
    old: Counter = field(default_factory=Counter)  # "updown" (store commit) / "plain"
    new: Counter = field(default_factory=Counter)
    why: Counter = field(default_factory=Counter)  # the new policy's reasons at checks
    by_profile: dict[str, Counter] = field(default_factory=dict)


def simulate(switchers: int, seconds: float, report_every: float, heartbeat: float,
             seed: int = 1, warmup: float = 60.0) -> SimResult:
    """Reports counted after `warmup` s (the start's first answers and RTTs are not steady
    state); `seconds` is the counted time."""
    rng = random.Random(seed)
    res = SimResult(seconds, switchers)
    profiles = ["steady"] * 60 + ["jittery"] * 25 + ["eventful"] * 15
    steps = int((seconds + warmup) / PROBE)
    check_every = max(1, round(report_every / PROBE))
    for i in range(switchers):
        profile = profiles[i % len(profiles)]
        paths = make_paths(profile, rng, 3)
        hs = [WorkerHealth(f"w{j + 1}") for j in range(3)]
        tracker = Tracker(ReportPolicy(heartbeat=heartbeat))
        prof = res.by_profile.setdefault(profile, Counter())
        offset = rng.randrange(check_every)  # switchers do not check in step

        def summary() -> Summary:
            return Summary("w1", {h.name: h.summary() for h in hs})  # noqa: B023

        for step in range(steps):
            now = step * PROBE
            changed = False
            for path, h in zip(paths, hs, strict=True):
                rtt = path.sample(rng, now)
                changed |= h.record_miss(now, 3) if rtt is None else h.record_reply(rtt, now)
            counted = now >= warmup
            if changed:  # the decider reports an up/down change at once, under both policies
                if counted:
                    res.old["updown"] += 1
                    res.new["updown"] += 1
                    prof["updown"] += 1
                tracker.record(summary(), now)
            if (step + offset) % check_every == 0:
                res.old["plain"] += counted  # before: a full report at every check
                s = summary()
                d = tracker.due(s, now)
                if d.send:
                    if counted:
                        res.new["plain"] += 1
                        prof["plain"] += 1
                        res.why[_kind(d.why)] += 1
                    tracker.record(s, now)
        prof["switchers"] += 1
    return res


def _kind(why: str) -> str:
    """"w2 rtt 10.0 -> 31.0 ms" -> "rtt"; "heartbeat" -> "heartbeat"."""
    words = why.split()
    return words[1] if why.startswith("w") and len(words) > 1 else words[0]


# --------------------------------------------------------------------------- 2. the responder


def probe_body(w1_up: bool, heartbeat: float | None) -> bytes:
    ev: dict = {"type": "probe", "workers": {
        "w1": {"up": w1_up, "rtt_ms": 12.5 if w1_up else None, "loss": 0.0 if w1_up else 1.0},
        "w2": {"up": True, "rtt_ms": 21.0, "loss": 0.0},
        "w3": {"up": True, "rtt_ms": 33.0, "loss": 0.02}}}
    if heartbeat is not None:
        ev["heartbeat_s"] = heartbeat
    return json.dumps(ev).encode()


async def get_healthz(p, n: int, concurrency: int = 8) -> float:
    from bench.responder import read_response

    async def sender(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        try:
            for _ in range(k, n, concurrency):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                await read_response(reader, b" 200 ")
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(sender(k) for k in range(concurrency)))
    return n / (time.monotonic() - t0)


OLD, PLAIN, COMMIT, FLOOR = ("old report (no heartbeat_s)", "heartbeat / RTT change (memory)",
                             "up/down change (store commit)", "GET /healthz (HTTP alone)")


def measure_responder(n: int, heartbeat_s: float, repeat: int, http: str = "httptools",
                      only: tuple[str, ...] = ()) -> dict[str, list[tuple[float, float]]]:
    """kind -> [(requests/s, responder CPU us per request)] over `repeat` alternating runs, on
    the responder's `--http` parser; `only` these kinds, if given."""
    from bench.responder import cpu_seconds, send_reports
    from tests.helpers.responder import ResponderProc, unlimited_reports

    out: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="wgfo-bench-reports-") as tmp:
        p = ResponderProc.start(Path(tmp) / "r", workers=3, clients=1000,
                                args=(*unlimited_reports(), "--http", http), timeout=60)
        try:
            up_hb, up_old = probe_body(True, heartbeat_s), probe_body(True, None)
            asyncio.run(send_reports(p, [up_hb], 1000))  # every client's first report
            kinds = tuple((k, b) for k, b in (
                (OLD, [up_old]), (PLAIN, [up_hb]),
                (COMMIT, [probe_body(False, heartbeat_s), up_hb]), (FLOOR, None))
                if not only or k in only)
            for _ in range(repeat):
                for kind, bodies in kinds:
                    cpu0 = cpu_seconds(p.pid)
                    rate = asyncio.run(send_reports(p, bodies, n) if bodies is not None
                                       else get_healthz(p, n))
                    out.setdefault(kind, []).append(
                        (rate, 1e6 * (cpu_seconds(p.pid) - cpu0) / n))
        finally:
            p.stop()
    return out


# --------------------------------------------------------------------------- 3. the figures


def rates(sim: SimResult) -> dict[str, dict[str, float]]:
    """Per switcher per second: "old"/"new" -> "updown" (a store commit) / "plain"."""
    return {k: {kind: c[kind] / (sim.switchers * sim.seconds) for kind in ("updown", "plain")}
            for k, c in (("old", sim.old), ("new", sim.new))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--switchers", type=int, default=200, help="simulated switchers")
    ap.add_argument("--minutes", type=float, default=15, help="simulated time")
    ap.add_argument("--reports", type=int, default=4000, help="requests per responder figure")
    ap.add_argument("--repeat", type=int, default=3, help="alternating responder runs")
    ap.add_argument("--report-every", type=float, default=5.0)
    ap.add_argument("--heartbeats", default="30,60", help="comma-separated heartbeats (s)")
    args = ap.parse_args()
    heartbeats = [float(h) for h in args.heartbeats.split(",") if h]
    # What 100,000 switchers run with by default: their own 30 s, or the responder's advice.
    default_hb = max(DEFAULT_HEARTBEAT, advised_heartbeat(FLEET, REPORT_BUDGET))
    if default_hb not in heartbeats:
        heartbeats.append(default_hb)
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average "
          f"{os.getloadavg()[0]:.1f}")

    sims = {}
    for hb in heartbeats:
        t0 = time.monotonic()
        sim = sims[hb] = simulate(args.switchers, args.minutes * 60, args.report_every, hb)
        per = rates(sim)
        old_rate, new_rate = sum(per["old"].values()), sum(per["new"].values())
        print(f"\n1. simulated {sim.switchers} switchers x 3 workers, {args.minutes:g} min "
              f"({time.monotonic() - t0:.0f} s to run), heartbeat {hb:g} s: reports per "
              "switcher per second")
        print(f"   before (a report every {args.report_every:g} s + up/down at once): "
              f"{old_rate:.4f}/s")
        print(f"   after  (change-only + heartbeat): {new_rate:.4f}/s "
              f"({old_rate / new_rate:.1f}x fewer); of which up/down "
              f"{per['new']['updown']:.5f}/s")
        print("   after, at checks, by why: " + ", ".join(
            f"{why} {n / (sim.switchers * sim.seconds):.5f}/s"
            for why, n in sim.why.most_common()))
        for prof, c in sorted(sim.by_profile.items()):
            rate = (c["updown"] + c["plain"]) / (c["switchers"] * sim.seconds)
            print(f"   {prof:<9} ({c['switchers']} switchers): {rate:.4f}/s "
                  f"(one every {1 / rate:.1f} s)")

    t0 = time.monotonic()
    cost = measure_responder(args.reports, heartbeats[0] + args.report_every, args.repeat)
    # The baseline as shipped before: h11, the parser the responder ran before httptools.
    h11 = measure_responder(args.reports, heartbeats[0] + args.report_every, args.repeat,
                            http="h11", only=(OLD, COMMIT, FLOOR))
    print(f"\n2. responder, 1,000 clients of 3 workers, {args.reports} requests per figure, 8 "
          f"keep-alive senders, {args.repeat} alternating runs ({time.monotonic() - t0:.0f} s):")
    us: dict[str, float] = {}
    us_h11: dict[str, float] = {}
    for parser, figs, into in (("httptools", cost, us), ("h11", h11, us_h11)):
        print(f"   --http {parser}:")
        for kind, runs in figs.items():
            into[kind] = statistics.median(u for _, u in runs)
            print(f"   {kind:<32} {statistics.median(r for r, _ in runs):5.0f}/s; CPU "
                  f"{into[kind]:4.0f} us per request (runs {min(u for _, u in runs):.0f}-"
                  f"{max(u for _, u in runs):.0f}), i.e. {1e6 / into[kind]:5.0f}/s per core")

    print(f"\n3. {FLEET:,} switchers (goal < {GOAL_CORES} core; the default setup: heartbeat "
          f"{default_hb:g} s, the responder's advice for {FLEET:,} clients at --report-budget "
          f"{REPORT_BUDGET:g}):")
    per = rates(sims[default_hb])
    old_rate = sum(per["old"].values())
    shipped = FLEET * (per["old"]["plain"] * us_h11[OLD]
                       + per["old"]["updown"] * us_h11[COMMIT]) / 1e6
    before = FLEET * (per["old"]["plain"] * us[OLD] + per["old"]["updown"] * us[COMMIT]) / 1e6
    print(f"   before, a report every {args.report_every:g} s: {FLEET * old_rate:.0f} "
          f"reports/s = {shipped:.2f} cores as shipped before (h11), {before:.2f} on httptools")
    for hb, sim in sims.items():
        per = rates(sim)
        new_rate = sum(per["new"].values())
        after = FLEET * (per["new"]["plain"] * us[PLAIN]
                         + per["new"]["updown"] * us[COMMIT]) / 1e6
        mix_us = 1e6 * after / (FLEET * new_rate)
        mark = " (default)" if hb == default_hb else ""
        print(f"   after, heartbeat {hb:g} s{mark}: {FLEET * new_rate:5.0f} reports/s x "
              f"{mix_us:.0f} us = {after:.2f} cores, {shipped / after:.1f}x less than before "
              f"({'goal met' if after < GOAL_CORES else 'goal NOT met'}); one core sustains "
              f"{1e6 / mix_us:.0f} reports/s of this mix = {1e6 / mix_us / new_rate:,.0f} "
              "switchers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
