"""Latency placement (issue 18) through the pure planner on simulated RTT series.

    .venv/bin/python bench/placement.py [--workers 6] [--regions 3] [--clients 300] [--hours 2]
                                        [--jitter 0.3] [--headroom 1.5] [--seed 1]

A fleet of workers spread over regions (capacity = headroom x clients / workers) and clients in
random regions; a client's base RTT is 5-25 ms to a worker in its region and 60-180 ms elsewhere.
Preference lists are random (they know nothing of regions). Every client reports every 5 s, each
figure its base RTT times 1 +/- U(jitter), and 1 % of them a 5x spike. The responder's own code
runs: `LatencyMemory` (smoothing, the sustain memory) and `planner.plan` with the default rule
(20 ms and 25 %, 60 s, one move per client per 10 min, 10 a plan), one plan per report round.
The fleet is first placed before any report (preference order, as at a responder's start); each
client then settles once on its fastest worker after its first reports (reason `settle`).

Prints, each against a baseline computed in the same run:
  mean RTT        preference placement, latency placement once settled, and the best feasible
                  assignment (minimum mean RTT within every capacity, solved exactly); ratio of
                  latency to best (goal: within 10 %)
  moves/client/h  while settling (first hour), afterwards, and starting from the best feasible
                  assignment under jitter alone (goal 0)
  lasting change  a worker's path to 10 % of the clients gets 150 ms slower: how long until they
                  moved (the sustain time plus smoothing)
  failover        the worker with most clients fails: its clients spread by free capacity (none
                  over capacity), not onto each one's fastest worker
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wg_failover.responder import planner  # noqa: E402
from wg_failover.responder.latency import LatencyMemory  # noqa: E402
from wg_failover.responder.planner import ClientView, LatencyRule, WorkerView  # noqa: E402
from wg_failover.wire import ProbeResult  # noqa: E402

REPORT = 5.0  # seconds between a client's probe reports
RULE = LatencyRule()


class Sim:
    def __init__(self, args: argparse.Namespace) -> None:
        rng = self.rng = random.Random(args.seed)
        self.jitter = args.jitter
        names = [f"w{i}" for i in range(args.workers)]
        region = {n: f"r{i % args.regions}" for i, n in enumerate(names)}
        cap = math.ceil(args.headroom * args.clients / args.workers)
        self.workers = {n: WorkerView(n, capacity=cap, region=region[n]) for n in names}
        self.clients = [ClientView(f"c{i}", tuple(rng.sample(names, len(names))))
                        for i in range(args.clients)]
        self.base: dict[str, dict[str, float]] = {}
        for c in self.clients:
            home = f"r{rng.randrange(args.regions)}"
            self.base[c.name] = {n: rng.uniform(5, 25) if region[n] == home
                                 else rng.uniform(60, 180) for n in names}

    def report(self, client: str) -> dict[str, ProbeResult]:
        out = {}
        for n, ms in self.base[client].items():
            v = ms * (1 + self.rng.uniform(-self.jitter, self.jitter))
            if self.rng.random() < 0.01:
                v *= 5
            out[n] = ProbeResult(up=True, rtt_ms=v)
        return out

    def mean_rtt(self, assign: Mapping[str, str | None]) -> float:
        return statistics.fmean(self.base[c][w] for c, w in assign.items() if w is not None)

    def run(self, assign: dict[str, str | None], seconds: float, t0: float = 0.0,
            mem: LatencyMemory | None = None, workers: dict[str, WorkerView] | None = None,
            ) -> tuple[dict[str, str | None], list[tuple[float, planner.Move]], LatencyMemory]:
        """Report rounds and plans for `seconds`; returns the assignment, the moves, the memory."""
        mem = mem or LatencyMemory()
        workers = workers or self.workers
        last_latency: dict[str, float] = {}
        moves: list[tuple[float, planner.Move]] = []
        t = t0
        while t < t0 + seconds:
            for c in self.clients:
                mem.observe(c.name, self.report(c.name), assign[c.name], t, RULE,
                            last_latency.get(c.name))
            p = planner.plan(workers, self.clients, assign, latency=mem.inputs(assign, t),
                             rule=RULE, now=t)
            for m in p.moves.values():
                moves.append((t, m))
                assign[m.client] = m.to_worker
                if m.reason == planner.R_LATENCY:
                    last_latency[m.client] = t
            t += REPORT
        return assign, moves, mem


def best_feasible(sim: Sim) -> dict[str, str | None]:
    """The assignment of least total RTT within every worker's capacity: successive shortest
    augmenting paths, each a Bellman-Ford over the workers (an edge w -> w' is the cheapest
    client on w to move to w'). Exact for this transportation problem."""
    names = list(sim.workers)
    cap = {n: sim.workers[n].capacity or len(sim.clients) for n in names}
    assign: dict[str, str | None] = {}
    on: dict[str, set[str]] = {n: set() for n in names}
    for c in sim.clients:
        rtt = sim.base[c.name]
        dist = {n: rtt[n] for n in names}
        pred: dict[str, tuple[str, str] | None] = {n: None for n in names}  # (from w, client)
        edge = {}
        for w in names:
            for w2 in names:
                if w2 != w and on[w]:
                    cc = min(on[w], key=lambda x, w=w, w2=w2: sim.base[x][w2] - sim.base[x][w])
                    edge[w, w2] = (sim.base[cc][w2] - sim.base[cc][w], cc)
        for _ in range(len(names)):
            changed = False
            for (w, w2), (cost, cc) in edge.items():
                if dist[w] + cost < dist[w2] - 1e-9:
                    dist[w2], pred[w2], changed = dist[w] + cost, (w, cc), True
            if not changed:
                break
        end = min((n for n in names if len(on[n]) < cap[n]), key=lambda n: dist[n])
        node: str | None = end
        while node is not None:
            p = pred[node]
            if p is None:
                on[node].add(c.name)
                assign[c.name] = node
                break
            w, cc = p
            on[w].discard(cc)
            on[node].add(cc)
            assign[cc] = node
            node = w
    return assign


def per_hour(n: int, clients: int, seconds: float) -> float:
    return n / clients / (seconds / 3600)


def main() -> int:
    global RULE  # Sim.run and the report read the rule the options set
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--regions", type=int, default=3)
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--hours", type=float, default=2.0, help="simulated, after the first hour")
    ap.add_argument("--jitter", type=float, default=0.3)
    ap.add_argument("--headroom", type=float, default=1.5, help="total capacity / clients")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-gain-ms", type=float, default=LatencyRule().min_gain_ms,
                    help="the rule's latency_min_gain_ms (the rest stays at the defaults)")
    args = ap.parse_args()
    RULE = LatencyRule(min_gain_ms=args.min_gain_ms)
    started = time.monotonic()
    sim = Sim(args)
    n = len(sim.clients)
    print(f"{args.workers} workers in {args.regions} regions (capacity "
          f"{sim.workers['w0'].capacity} each), {n} clients, jitter +/-{args.jitter:.0%} and 1 % "
          f"5x spikes, a report every {REPORT:g} s, seed {args.seed}, min gain "
          f"{RULE.min_gain_ms:g} ms and {RULE.min_gain_ratio:.0%}")

    # The fleet is placed before any report (preference order), as the responder does at start;
    # the memory remembers these clients were placed blind, so each may settle once.
    initial: dict[str, str | None] = {c.name: None for c in sim.clients}
    mem0 = LatencyMemory()
    initial.update({m.client: m.to_worker for m in planner.plan(
        sim.workers, sim.clients, initial, latency=mem0.inputs(initial, 0), rule=RULE,
        now=0).moves.values()})
    best = best_feasible(sim)
    fastest = {c.name: min(sim.base[c.name], key=sim.base[c.name].__getitem__)
               for c in sim.clients}
    assert all(planner.loads(best).get(w, 0) <= v.capacity for w, v in sim.workers.items())

    # Settling from the preference placement, then the rest of the series.
    assign, moves1, mem = sim.run(dict(initial), 3600, mem=mem0)
    settled = sim.mean_rtt(assign)
    assign, moves2, mem = sim.run(assign, args.hours * 3600, t0=3600, mem=mem)
    # Jitter alone from the best feasible assignment.
    _, moves3, _ = sim.run(dict(best), args.hours * 3600)
    pref, opt = sim.mean_rtt(initial), sim.mean_rtt(best)
    print("\nmean client RTT (true base RTT of the assignment)")
    print(f"  preference placement        {pref:7.1f} ms   {pref / opt:5.2f} x best")
    print(f"  latency, after 1 h          {settled:7.1f} ms   {settled / opt:5.2f} x best")
    print(f"  latency, at the end         {sim.mean_rtt(assign):7.1f} ms   "
          f"{sim.mean_rtt(assign) / opt:5.2f} x best   (goal <= 1.10)")
    print(f"  best feasible assignment    {opt:7.1f} ms   1.00")
    print(f"  each on its fastest (over capacity allowed) {sim.mean_rtt(fastest):.1f} ms")
    settle = sum(1 for _, m in moves1 if m.reason == planner.R_SETTLE)
    print("\nmoves per client per hour (latency placement)")
    print(f"  settling, first hour        {per_hour(len(moves1), n, 3600):7.3f}   "
          f"({settle} settle moves of blind placements, {len(moves1) - settle} latency moves)")
    print(f"  afterwards ({args.hours:g} h)          "
          f"{per_hour(len(moves2), n, args.hours * 3600):7.3f}   (goal 0)")
    print(f"  from the best, jitter only  {per_hour(len(moves3), n, args.hours * 3600):7.3f}   "
          "(goal 0)")

    # A lasting change: one worker's path to 10 % of its clients gets 150 ms slower.
    victims = [c for c, w in assign.items() if w == max(planner.loads(assign),
                                                         key=planner.loads(assign).get)]
    victims = victims[:max(1, n // 10)]
    worker = assign[victims[0]]
    for c in victims:
        sim.base[c][worker] += 150
    t0 = 3600 * (1 + args.hours)
    assign, moves4, mem = sim.run(assign, 900, t0=t0, mem=mem)
    moved_at = {m.client: t - t0 for t, m in moves4 if m.client in victims}
    if moved_at:
        print(f"\nlasting change: {worker} +150 ms for {len(victims)} clients; moved "
              f"{len(moved_at)} within 15 min, after {min(moved_at.values()):.0f}-"
              f"{max(moved_at.values()):.0f} s (sustain {RULE.sustain_seconds:g} s)")
    else:
        print(f"\nlasting change: {worker} +150 ms for {len(victims)} clients; none moved")

    # A failover: the worker with most clients goes down.
    loads = planner.loads(assign)
    dead = max(loads, key=loads.get)
    workers = {**sim.workers, dead: WorkerView(dead, planner.DOWN,
                                               capacity=sim.workers[dead].capacity)}
    p = planner.plan(workers, sim.clients, assign, latency=mem.inputs(assign, t0 + 900),
                     rule=RULE, now=t0 + 900)
    after = dict(assign)
    after.update({m.client: m.to_worker for m in p.moves.values()})
    load2 = planner.loads(after)
    movers = [c for c, w in assign.items() if w == dead]
    want = {c: min((w for w in sim.base[c] if w != dead), key=sim.base[c].__getitem__)
            for c in movers}
    over = [w for w, v in workers.items() if w != dead and load2.get(w, 0) > v.capacity]
    got_fastest = sum(1 for c in movers if after[c] == want[c])
    spread = {w: sum(1 for c in movers if after[c] == w) for w in workers if w != dead}
    print(f"\nfailover of {dead} ({len(movers)} clients): spread {spread}, "
          f"{got_fastest}/{len(movers)} on their fastest remaining worker, "
          f"over capacity: {over or 'none'}")
    print(f"\n({time.monotonic() - started:.0f} s; .venv/bin/python bench/placement.py "
          + " ".join(sys.argv[1:]) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
