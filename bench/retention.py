"""Benchmark the event log's retention: a simulated week of churn, the database with and without it.

    .venv/bin/python bench/retention.py [--clients 1000] [--workers 4] [--days 7] [--flooders 1]

Drives the real ResponderState and SQLite store in process on a fake clock (one tick a simulated
minute), through the same intake functions the HTTP routes call, so every row is one the
responder writes:
  - each worker fails once a day (an Alertmanager failover alert; its clients move) and its alert
    resolves 10 minutes later (recovering, then up: hold-down 0 here; backups change);
  - each client switches on its own twice a day and changes its probe view of a worker six
    times a day; every new assignment version is followed by the client's `applied` report;
  - an hourly `notify` alert;
  - `--flooders` clients that send `applied` reports at the report rate limit all week (10 a
    second: what the limits still let one misbehaving switcher write). Their rows go straight into
    the store in one transaction per simulated minute, the rows the state would write for them.
Run twice: without retention, and with the defaults (7 days, 1,000,000 rows), pruning once a
simulated minute as the responder's upkeep does once a minute. Prints rows, the database file
size, what was pruned and the longest prune batch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAY = 86400
TICK = 60.0  # simulated seconds per step
REPORT_RATE = 10  # reports a second a flooding client may send (limits.REPORT_RATE)


class Applied:
    """A notifier that notes every new assignment version, for the clients' `applied` reports."""

    name = "bench-applied"

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] = []

    async def start(self, host: Any) -> None:
        return None

    async def stop(self) -> None:
        return None

    def assignment_changed(self, assignment: dict[str, Any]) -> None:
        self.pending.append(assignment)

    def worker_changed(self, worker: dict[str, Any]) -> None:
        return None


def db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def simulate(work: Path, clients: int, workers: int, days: int, flooders: int,
                   retention: bool, seed: int = 19) -> dict[str, Any]:
    from tests.helpers.responder import alert_payload, make_fleet
    from wg_failover.responder import notify
    from wg_failover.responder.intake.alerts import take_delivery
    from wg_failover.responder.intake.clients import take_report
    from wg_failover.responder.models import AMPayload
    from wg_failover.responder.state import ResponderState
    from wg_failover.responder.store import Event, Tx, open_store
    from wg_failover.wire import ClientEvent

    gen = make_fleet(workers, clients, hold_down_seconds=0)
    settings = gen.fleet.responder
    if not retention:
        settings = settings.model_copy(update={"events_max_age_seconds": 3650 * DAY,
                                               "events_max_rows": 1_000_000_000})
    fleet = gen.fleet.model_copy(update={"responder": settings})
    rng = random.Random(seed)
    now = [1_800_000_000.0]
    applied = Applied()
    notify.register_factory(applied.name, lambda f, s: applied)
    path = work / ("with.db" if retention else "without.db")
    store = open_store(str(path))
    st = ResponderState(fleet, store, clock=lambda: now[0])
    prune_times: list[float] = []  # seconds, for each batch that deleted rows
    real_prune = store.prune_events

    def timed_prune(*args: Any) -> int:
        t0 = time.perf_counter()
        n = real_prune(*args)
        if n:
            prune_times.append(time.perf_counter() - t0)
        return n

    store.prune_events = timed_prune  # type: ignore[method-assign]
    try:
        await st.start()
        await st.upkeep.stop()  # pruned below, on the simulated clock
        names = [c.name for c in fleet.clients]
        worker_names = [w.name for w in fleet.workers]
        flood = names[:flooders]
        counts = {"failovers": 0, "switches": 0, "probe changes": 0, "applied": 0,
                  "notify alerts": 0, "flood rows": 0}
        view: dict[str, dict[str, bool]] = {c: dict.fromkeys(worker_names, True) for c in names}
        # Each worker fails once a day at a random minute, its alert resolving 10 minutes later.
        ticks = int(days * DAY / TICK)
        fail_at = {(d * 1440 + rng.randrange(1430)): w for d in range(days)
                   for w in worker_names}
        resolve_at = {t + 10: w for t, w in fail_at.items()}
        per_tick = TICK / DAY * clients
        episode = 0
        pruned = 0

        async def report(client: str, body: dict[str, Any]) -> None:
            await take_report(st, client, ClientEvent.validate_python(body))

        async def alert(worker: str, action: str, status: str, fp: str) -> None:
            body = alert_payload(worker, action, status, fingerprint=fp,
                                 starts_at=f"2027-01-01T00:00:{episode % 60:02d}Z")
            await take_delivery(st, AMPayload.model_validate(body))

        async def settle() -> None:
            # Every client that got a new version reports it applied (not the flooders: their
            # reports are the flood).
            while applied.pending:
                batch, applied.pending = applied.pending, []
                for a in batch:
                    if a["client"] not in flood:
                        await report(a["client"], {"type": "applied", "version": a["version"],
                                                   "worker": a["worker"]})
                        counts["applied"] += 1

        t_start = time.monotonic()
        for tick in range(ticks):
            now[0] += TICK
            if (w := fail_at.get(tick)) is not None:
                episode += 1
                await alert(w, "failover", "firing", f"down-{w}-{episode}")
                counts["failovers"] += 1
            if (w := resolve_at.get(tick)) is not None:
                await alert(w, "failover", "resolved", f"down-{w}-{episode}")
                await asyncio.sleep(0)  # the hold-down timer (0 s) brings it up
                await asyncio.sleep(0)
            if tick % 60 == 0:
                counts["notify alerts"] += 1
                await alert(worker_names[0], "notify", "firing", f"hourly-{tick}")
            for _ in range(_poisson(rng, 2 * per_tick)):  # switches, twice a client a day
                c = rng.choice(names)
                a = st.assignments[c]
                if a.backups:
                    await report(c, {"type": "switch", "from_worker": a.worker,
                                     "to_worker": a.backups[0], "reason": "probe misses"})
                    counts["switches"] += 1
            for _ in range(_poisson(rng, 6 * per_tick)):  # probe views, six a client a day
                c = rng.choice(names)
                w = rng.choice(worker_names)
                view[c][w] = not view[c][w]
                await report(c, {"type": "probe", "workers": {
                    x: {"up": up, "rtt_ms": 1.0} for x, up in view[c].items()}})
                counts["probe changes"] += 1
            await settle()
            if flood:
                rows = [Event("client-applied", worker=worker_names[0], client=c,
                              data={"version": 1}, ts=now[0] - TICK + i / REPORT_RATE)
                        for c in flood for i in range(int(TICK * REPORT_RATE))]
                store.commit(Tx(events=rows), durable=False)
                counts["flood rows"] += len(rows)
            if retention:
                n, _ = await st.upkeep.prune()
                pruned += n
        wall = time.monotonic() - t_start
        await st.stop()
    finally:
        store.close()
        notify.unregister_factory(applied.name)
    size = db_bytes(path)
    db = sqlite3.connect(path)
    rows = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assignments = db.execute("SELECT COUNT(*) FROM assignments").fetchone()[0]
    db.close()
    return {"rows": rows, "assignments": assignments, "bytes": size, "pruned": pruned,
            "counts": counts, "wall": wall, "prune_max_ms": 1000 * max(prune_times, default=0),
            "prune_batches": len(prune_times), "settings": settings}


def _poisson(rng: random.Random, mean: float) -> int:
    """A small Poisson draw (Knuth): how many of a rare event fall in one tick."""
    limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--flooders", type=int, default=1,
                    help="clients sending reports at the rate limit all week (default 1)")
    args = ap.parse_args()
    import logging
    logging.basicConfig(level=logging.ERROR)
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
          f"{args.clients:,} clients, {args.workers} workers, {args.days} simulated days, "
          f"{args.flooders} client(s) at {REPORT_RATE} reports/s")
    with tempfile.TemporaryDirectory(prefix="wgfo-retention-") as tmp:
        for retention in (False, True):
            r = asyncio.run(simulate(Path(tmp), args.clients, args.workers, args.days,
                                     args.flooders, retention))
            s = r["settings"]
            what = (f"with retention ({s.events_max_age_seconds // DAY} days, "
                    f"{s.events_max_rows:,} rows)" if retention else "without retention")
            c = r["counts"]
            print(f"\n{what}:")
            print(f"  churn: {c['failovers']} failovers, {c['switches']:,} switches, "
                  f"{c['probe changes']:,} probe-view changes, {c['applied']:,} applied "
                  f"reports, {c['notify alerts']} notify alerts; flood {c['flood rows']:,} rows")
            print(f"  event log: {r['rows']:,} rows; database {r['bytes'] / 2**20:,.1f} MB "
                  f"(file and WAL); assignments: {r['assignments']:,} rows")
            if retention:
                print(f"  pruned {r['pruned']:,} rows in {r['prune_batches']:,} batches; "
                      f"longest batch {r['prune_max_ms']:.1f} ms")
            print(f"  simulated in {r['wall']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
