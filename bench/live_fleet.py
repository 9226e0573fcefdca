"""The live fleet, end to end, in the full lab (`wg-failover lab`): workers and clients that join
and a client that is revoked, while the fleet runs.

Builds a lab (clients enrolled with `wg-failover join`, switchers following their view, an
agent on every worker), then per round:
  add-worker  a worker joins (`lab add-worker`): seconds from the moment the clients may use it
              (`PUT /v1/fleet` appends it to their lists) until each client's switcher has it
              as a warm peer (a handshake), and from its join until Prometheus scrapes it
  add-client  a client joins preferring the new worker: where the responder places it, and
              whether it reaches the service
  revoke      that client is removed (`DELETE /v1/clients/NAME`): seconds until no worker has
              its peer, the status its token gets, whether its pings still get through
and a summary (p50 / max over the rounds). The baseline for the warm time is WireGuard's own
retry: a first handshake that finds no peer on the worker is retried after 5 s (REKEY_TIMEOUT).

Needs root.  Example:  sudo .venv/bin/python bench/live_fleet.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wg_failover.fleet import load_fleet  # noqa: E402
from wg_failover.lab import build, fleetops, ops  # noqa: E402
from wg_failover.lab.state import LabError  # noqa: E402


def quiet(_msg: str) -> None:
    pass


def stats(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    return f"p50 {statistics.median(xs):.2f} s, max {max(xs):.2f} s (n={len(xs)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefix", default="wgf")
    ap.add_argument("--subnet", default="198.18.251.0/24")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every timeline")
    args = ap.parse_args()
    say = print if args.verbose else quiet
    t0 = time.monotonic()
    try:
        state = build.up(args.prefix, args.workers, args.clients, args.subnet, say=say)
    except LabError as exc:
        print(f"lab up failed: {exc}", file=sys.stderr)
        return 2
    print(f"lab up ({args.workers} workers, {args.clients} clients joined) in "
          f"{time.monotonic() - t0:.1f} s")
    warm: list[float] = []
    scraped: list[float] = []
    gone: list[float] = []
    failures = 0
    try:
        for r in range(1, args.rounds + 1):
            w = fleetops.add_worker(state, say=say)
            others = [n for n in state.workers if n != w["worker"]]
            c = fleetops.add_client(state, say=say, workers=[w["worker"], *others])
            holder = ops.active_workers(state, load_fleet(state.fleet_path)).get(c["client"])
            rm = fleetops.remove_client(state, c["client"], say=say)
            wmax = max(w["warm_s"].values(), default=None)
            gmax = max(rm["peers_gone_s"].values(), default=None)
            ok = (not w["not_warm"] and c["reaches_service"] and holder == w["worker"]
                  and not rm["not_gone"] and rm["token_status"] == 401
                  and rm["pings_answered_before"] and not rm["pings_answered"])
            failures += not ok
            if wmax is not None:
                warm += list(w["warm_s"].values())
            if w["scraped_s"] is not None:
                scraped.append(w["scraped_s"])
            if gmax is not None:
                gone += list(rm["peers_gone_s"].values())
            print(f"round {r}: {w['worker']} warm on {len(w['warm_s'])} switchers, slowest "
                  f"{wmax if wmax is None else f'{wmax:.2f}'} s, scraped "
                  f"{w['scraped_s']} s after join; {c['client']} placed on {holder}; revoked: "
                  f"peers gone from {len(rm['peers_gone_s'])} workers, slowest "
                  f"{gmax if gmax is None else f'{gmax:.2f}'} s, token HTTP "
                  f"{rm['token_status']}, pings {'answered' if rm['pings_answered'] else 'stop'}"
                  f"{'' if ok else '  FAILED'}")
    finally:
        build.down(state, say=quiet)
    print("\nsummary:")
    print(f"  added worker -> warm peer (handshake) on each switcher: {stats(warm)}  "
          "(WireGuard alone would retry a missed first handshake after 5 s)")
    print(f"  added worker joined -> scraped by Prometheus:          {stats(scraped)}")
    print(f"  revoked client -> its peer gone from each worker:      {stats(gone)}")
    print(f"  rounds failed: {failures} of {args.rounds}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
