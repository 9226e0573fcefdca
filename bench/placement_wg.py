"""Latency placement on real wireguard-go, the full scenario of issue 18.

    .venv/bin/python bench/placement_wg.py [--clients 5] [--capacity 2] [--minutes 10]
        [--raise-minutes 2] [--watch-minutes 2] [--jitter-ms 15] [--sustain S] [--interval S]

Three workers behind userspace UDP relays (lab/relay.py) at 80, 40 and 5 ms RTT (w1, w2, w3; the
clients' preference lists are rotated, so most first choices are slow), the fast one with room
for --capacity clients; --clients clients, each with its own namespace, wireguard-go and real
switcher (`--no-gray --probe-timeout 400`: the switcher's own rules would leave a worker whose
RTT steps from 5 to 150 ms by themselves, as dead (every probe late past the 100 ms timeout
learned on a 5 ms path) or gray (5x a backup), and this measures the responder's placement); the
real responder with `placement: latency` and
the default rule (20 ms and 25 %, sustained 60 s, one latency move per client per 10 min) unless
--sustain/--interval say otherwise.

Phases, each printed with the moves the responder made (event log) and its per-worker RTT
figures (GET /v1/workers):
  1. placement   clients land on the 5 ms worker until its capacity is full, the rest on the
                 40 ms one (goal), and how long that took
  2. jitter      +/- --jitter-ms on every path for --minutes: latency moves (goal 0)
  3. raise       the 5 ms worker at 150 ms for --raise-minutes: its clients move (goal: all,
                 each within the sustain time plus smoothing)
  4. back        the 5 ms worker at 5 ms again, watched --watch-minutes: no client that left it
                 comes back before its hold time (the move interval) is over (goal 0)
Every phase also checks the data plane: each client's routes are on the worker the responder
assigned.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wg_failover.lab import placement_lab  # noqa: E402
from wg_failover.lab.netns import NetLab, preflight  # noqa: E402

RTT = {"w1": 80.0, "w2": 40.0, "w3": 5.0}
FAST, MID = "w3", "w2"


def figures(pl: placement_lab.PlacementLab) -> str:
    out = []
    for name, w in sorted(pl.workers().items()):
        med = w.get("rtt_ms_median")
        out.append(f"{name} {med if med is not None else '-'} ms ({w.get('rtt_clients', 0)} "
                   f"clients, {w.get('assigned')} assigned)")
    return "responder's figures (median of clients' smoothed RTT): " + "; ".join(out)


def show_moves(moves: list[dict], t0: float) -> str:
    if not moves:
        return "    none"
    return "\n".join(f"    +{m['ts'] - t0:6.1f} s  {m['client']}: {m['data'].get('from_worker')} "
                     f"-> {m['data'].get('to_worker')} ({m['data'].get('reason')})"
                     for m in moves)


def by_worker(a: dict[str, str | None]) -> str:
    inv: dict[str, list[str]] = {}
    for c, w in sorted(a.items()):
        inv.setdefault(w or "-", []).append(c)
    return ", ".join(f"{w}: {' '.join(cs)}" for w, cs in sorted(inv.items()))


def data_plane(pl: placement_lab.PlacementLab, timeout: float = 20) -> str:
    """Wait until every client's routes are on its assigned worker; say how it ended."""
    t0 = time.monotonic()
    a, r = {}, {}
    while time.monotonic() - t0 < timeout:
        a, r = pl.assignments(), pl.route_holders()
        if a == r:
            return "routes on the assigned worker for every client"
        time.sleep(1)
    return f"ROUTES DIFFER: assigned {a}, routes {r}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--capacity", type=int, default=2, help="of the 5 ms worker")
    ap.add_argument("--minutes", type=float, default=10, help="of jitter")
    ap.add_argument("--raise-minutes", type=float, default=2)
    ap.add_argument("--watch-minutes", type=float, default=2)
    ap.add_argument("--jitter-ms", type=float, default=15)
    ap.add_argument("--sustain", type=float, default=None, help="latency_sustain_seconds")
    ap.add_argument("--interval", type=float, default=None,
                    help="latency_move_interval_seconds (the hold time)")
    ap.add_argument("--place-timeout", type=float, default=300)
    ap.add_argument("--switcher-arg", action="append", default=[])
    ap.add_argument("--prefix", default=f"wfpl{os.getpid() % 1000:03d}")
    args = ap.parse_args()
    problems = preflight()
    if problems:
        print("cannot run: " + "; ".join(problems))
        return 2
    settings: dict = {}
    if args.sustain is not None:
        settings["latency_sustain_seconds"] = args.sustain
    if args.interval is not None:
        settings["latency_move_interval_seconds"] = args.interval
    workdir = Path(tempfile.mkdtemp(prefix="wgfo-bench-placement-wg-"))
    started = time.monotonic()
    ok = True
    try:
        with NetLab(args.prefix) as lab:
            pl = placement_lab.build(lab, workdir / "lab", RTT, args.clients,
                                     capacity={FAST: args.capacity}, responder=settings)
            rs = pl.fleet.responder
            hold = rs.latency_move_interval_seconds
            paths = ", ".join(f"{w} {ms:g} ms" for w, ms in RTT.items())
            print(f"lab {args.prefix}: workers {paths} RTT ({FAST} capacity {args.capacity}), "
                  f"{args.clients} clients with real "
                  f"switchers; rule {rs.latency_min_gain_ms:g} ms and "
                  f"{rs.latency_min_gain_ratio:.0%}, sustained {rs.latency_sustain_seconds:g} s, "
                  f"hold {hold:g} s")
            try:
                pl.start_responder()
                blind = pl.assignments()
                t0 = time.time()
                pl.start_switchers("--no-gray", "--probe-timeout", "400", *args.switcher_arg)
                print(f"\n1. placement (blind, preference order: {by_worker(blind)})")
                want = {FAST: min(args.capacity, args.clients),
                        MID: max(0, args.clients - args.capacity)}
                reached, a, took = placement_lab.wait_for_placement(pl, want, args.place_timeout)
                ok &= reached
                print(f"  {'reached' if reached else 'NOT reached'} after {took:.0f} s: "
                      f"{by_worker(a)} (goal {want})")
                print(show_moves(pl.moves(), t0))
                print("  " + data_plane(pl))
                print("  " + figures(pl))

                print(f"\n2. jitter +/-{args.jitter_ms:g} ms on every path for "
                      f"{args.minutes:g} min")
                mark, t1 = pl.last_event_id(), time.time()
                for w in RTT:
                    pl.set_path(w, jitter_ms=args.jitter_ms)
                time.sleep(args.minutes * 60)
                moves = pl.moves(mark)
                ok &= not moves
                print(f"  moves: {len(moves)} (goal 0)")
                print(show_moves(moves, t1))
                print("  " + data_plane(pl))
                print("  " + figures(pl))
                for w in RTT:
                    pl.set_path(w, jitter_ms=0)

                on_fast = sorted(c for c, w in pl.assignments().items() if w == FAST)
                print(f"\n3. {FAST} at 150 ms for {args.raise_minutes:g} min (its clients: "
                      f"{' '.join(on_fast)})")
                mark, t2 = pl.last_event_id(), time.time()
                pl.set_path(FAST, rtt_ms=150)
                time.sleep(args.raise_minutes * 60)
                moves = pl.moves(mark)
                left = {m["client"]: m["ts"] for m in moves
                        if m["data"].get("from_worker") == FAST}
                ok &= set(left) == set(on_fast)
                times = sorted(ts - t2 for ts in left.values())
                print(f"  moved off {FAST}: {len(left)}/{len(on_fast)}"
                      + (f", after {times[0]:.0f}-{times[-1]:.0f} s" if times else ""))
                print(show_moves(moves, t2))
                print("  " + data_plane(pl))
                print("  " + figures(pl))

                print(f"\n4. {FAST} at 5 ms again, watched {args.watch_minutes:g} min")
                mark, t3 = pl.last_event_id(), time.time()
                pl.set_path(FAST, rtt_ms=RTT[FAST])
                time.sleep(args.watch_minutes * 60)
                moves = pl.moves(mark)
                back = [m for m in moves if m["client"] in left
                        and m["data"].get("to_worker") == FAST
                        and m["ts"] - left[m["client"]] < hold]
                ok &= not back
                print(f"  clients that left {FAST} and came back before the hold time: "
                      f"{len(back)} (goal 0)")
                print(show_moves(moves, t3))
                print("  " + data_plane(pl))
                print("  " + figures(pl))
            finally:
                pl.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'all goals met' if ok else 'GOALS MISSED'} ({time.monotonic() - started:.0f} s; "
          ".venv/bin/python bench/placement_wg.py " + " ".join(sys.argv[1:]) + ")")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
