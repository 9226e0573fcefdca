"""Control path and fast path, end to end, in the full lab (`wg-failover lab`).

Builds a lab (real wireguard-go, exporters, responder, Prometheus, Alertmanager, switchers),
then kills workers one after another (`lab failover`: SIGKILL of wireguard-go and exporter) and
prints, per kill and overall:
  fast path     the switcher's own figure: last probe reply from the dead worker to its switch
  detect        kill -> Prometheus alert firing; webhook: kill -> the responder received it
  control path  kill -> the responder marked the worker down and every client of it confirmed
                an assignment to a healthy worker
  suspect       kill -> the responder marked the worker suspect (a quorum of its clients
                reported fast-path switches away from it; issue 18)
  plan          kill -> every client of it confirmed (`applied`) an assignment from the
                responder to a healthy worker: its capacity-aware plan (an accepted fast-path
                switch or a re-plan), whether or not Prometheus has said down yet (goal <= 2 s)
With --revive, each killed worker is brought back and waited for (about 45 s each: the alert's
keep_firing_for plus the hold-down), so every kill happens in a full fleet.

Needs root.  Example:  sudo .venv/bin/python bench/lab_failover.py --workers 5 --clients 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wg_failover.lab import build, ops  # noqa: E402
from wg_failover.lab.state import LabError  # noqa: E402


def quiet(_msg: str) -> None:
    pass


def plan_s(s: dict) -> float | None:
    """Kill -> the last client of the killed worker confirmed a responder assignment elsewhere
    (None when one never did)."""
    times = s.get("confirmed_s", {})
    final = s.get("final", {})
    if not s["affected"] or any(c not in times or final.get(c) == s["worker"]
                                for c in s["affected"]):
        return None
    return max(times[c] for c in s["affected"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=5)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--kills", type=int, default=0, help="default: workers - 1 (or 5 with "
                    "--revive)")
    ap.add_argument("--revive", action="store_true", help="revive each worker before the next")
    ap.add_argument("--prefix", default="wgb")
    ap.add_argument("--subnet", default="198.18.250.0/24")
    ap.add_argument("--scrape-interval", type=float, default=1.0)
    ap.add_argument("-v", "--verbose", action="store_true", help="print every timeline")
    args = ap.parse_args()
    kills = args.kills or (5 if args.revive else args.workers - 1)
    if not args.revive and kills >= args.workers:
        ap.error("without --revive, kill at most workers - 1")
    try:
        state = build.up(args.prefix, args.workers, args.clients, args.subnet,
                         args.scrape_interval, say=print)
    except LabError as exc:
        print(f"lab_failover: {exc}", file=sys.stderr)
        return 2
    fast: list[int] = []
    control: list[float] = []
    firing: list[float] = []
    webhook: list[float] = []
    suspect: list[float] = []
    planned: list[float] = []
    try:
        print(f"\n{kills} kills, scrape/eval interval {args.scrape_interval:g} s, "
              f"{args.workers} workers, {args.clients} clients")
        print(f"{'kill':<5} {'worker':<7} {'clients':>7} {'fast path ms (each)':<36} "
              f"{'firing s':>8} {'webhook s':>9} {'control s':>9} {'suspect s':>9} "
              f"{'plan s':>7} {'others moved':>12}")
        for i in range(kills):
            s = ops.failover(state, None, say=print if args.verbose else quiet, timeout=90)
            ms = [v for v in s["fast_path_reported_ms"].values() if v is not None]
            m = s["milestones_s"]
            fast += ms
            if s["control_path_s"] is not None:
                control.append(s["control_path_s"])
            if "prom_firing" in m:
                firing.append(m["prom_firing"])
            if "webhook" in m:
                webhook.append(m["webhook"])
            cp = s["control_path_s"]
            ps = plan_s(s)
            if ps is not None:
                planned.append(ps)
            if "suspect" in m:
                suspect.append(m["suspect"])
            print(f"{i + 1:<5} {s['worker']:<7} {len(s['affected']):>7} "
                  f"{' '.join(map(str, ms)) or '-':<36} {m.get('prom_firing', float('nan')):>8.2f} "
                  f"{m.get('webhook', float('nan')):>9.2f} "
                  f"{cp if cp is not None else float('nan'):>9.2f} "
                  f"{m.get('suspect', float('nan')):>9.2f} "
                  f"{ps if ps is not None else float('nan'):>7.2f} "
                  f"{len(s['others_moved']):>12}", flush=True)
            if args.revive:
                final = ops.revive(state, s["worker"], say=quiet, wait=120)
                if final != "up":
                    print(f"  {s['worker']} not up again after 120 s ({final})")
    finally:
        build.down(state, say=quiet)

    def line(name: str, values: list[float], unit: str) -> None:
        if values:
            print(f"  {name:<28} p50 {statistics.median(values):8.3f} {unit}   max "
                  f"{max(values):8.3f} {unit}   n={len(values)}")

    print("\nsummary (sudo .venv/bin/python bench/lab_failover.py "
          + " ".join(sys.argv[1:]) + "):")
    line("fast path (switcher)", [float(v) for v in fast], "ms")
    line("kill -> alert firing", firing, "s ")
    line("kill -> webhook at responder", webhook, "s ")
    line("control path", control, "s ")
    line("kill -> suspect", suspect, "s ")
    line("kill -> all on the plan", planned, "s ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
