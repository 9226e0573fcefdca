"""Benchmark the two store backends side by side: SQLite (the embedded default) and PostgreSQL.

    .venv/bin/python bench/store_backends.py [--clients 10000] [--rounds 15]

Both on this machine's disk, both durable the same way: SQLite in WAL with synchronous=FULL,
PostgreSQL (Debian's, started here in a temporary folder like the tests' server, but with fsync
on) with synchronous_commit on; PostgreSQL over TCP on loopback, so a real network adds its
round trips (a handful per commit: one statement per table the change touches). Each round
commits, through the Store protocol the responder uses:
  - a failover of every client: `--clients` assignments with new versions, one event each;
  - the same assignments without events;
  - a small change (one worker, one assignment, one event): an Alertmanager webhook;
  - a client report (one event, durable=False);
and `load()` of the whole state (a responder's start). Prints the median and the slowest round
per operation and backend, and PostgreSQL's median as a multiple of SQLite's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.postgres import PgServer  # noqa: E402
from wg_failover.responder.store import (  # noqa: E402
    AssignmentRow,
    Event,
    Store,
    Tx,
    WorkerRow,
    open_store,
)


def failover(clients: int, version: int, events: bool) -> Tx:
    worker = "w1" if version % 2 else "w2"
    tx = Tx(assignments={f"c{i}": AssignmentRow(f"c{i}", worker, ["w3"], version, "failover",
                                                 time.time()) for i in range(clients)})
    if events:
        tx.events = [Event("assigned", worker, f"c{i}", {"version": version, "to": worker})
                     for i in range(clients)]
    return tx


def timed(store: Store, tx: Tx, durable: bool = True) -> float:
    """Milliseconds for one commit of `tx` (built beforehand: only the store is timed)."""
    t0 = time.perf_counter()
    store.commit(tx, durable)
    return (time.perf_counter() - t0) * 1000


def run(store: Store, clients: int, rounds: int) -> dict[str, list[float]]:
    store.commit(Tx(workers={w: WorkerRow(w, "up", time.time()) for w in ("w1", "w2", "w3")}))
    store.commit(failover(clients, 1, False))
    out: dict[str, list[float]] = {k: [] for k in (
        "failover + events", "failover", "small change", "client report", "load")}
    version = 2
    for _ in range(rounds):
        out["failover + events"].append(timed(store, failover(clients, version, True)))
        out["failover"].append(timed(store, failover(clients, version + 1, False)))
        small = Tx(workers={"w3": WorkerRow("w3", "down", time.time())},
                   assignments={"c0": AssignmentRow("c0", "w1", [], version + 2, "x",
                                                    time.time())},
                   events=[Event("worker-down", "w3")])
        out["small change"].append(timed(store, small))
        report = Tx(events=[Event("client-applied", client="c1", data={"v": version})])
        out["client report"].append(timed(store, report, durable=False))
        version += 3
        t0 = time.perf_counter()
        store.load()
        out["load"].append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    server = PgServer.start(fsync=True)
    try:
        with tempfile.TemporaryDirectory(prefix="wgfo-bench-store-") as tmp:
            results = {}
            for name, location in (("SQLite", str(Path(tmp) / "r.db")),
                                   ("PostgreSQL", server.create_db())):
                store = open_store(location)
                try:
                    results[name] = run(store, args.clients, args.rounds)
                finally:
                    store.close()
    finally:
        server.close()
    print(f"store commits, {args.clients} clients, {args.rounds} rounds (ms: median / slowest)")
    print(f"{'operation':<20}{'SQLite':>18}{'PostgreSQL':>18}{'PG/SQLite':>11}")
    for op in results["SQLite"]:
        s, p = results["SQLite"][op], results["PostgreSQL"][op]
        ratio = statistics.median(p) / statistics.median(s)
        print(f"{op:<20}{statistics.median(s):>9.1f} / {max(s):>6.1f}"
              f"{statistics.median(p):>9.1f} / {max(p):>6.1f}{ratio:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
