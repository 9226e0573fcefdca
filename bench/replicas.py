"""Benchmark responder replicas on one PostgreSQL (issue 15): kill -9 of the leader until a new
leader serves writes.

    .venv/bin/python bench/replicas.py [--replicas 3] [--clients 1000] [--kills 5] [--streams 200]

Starts PostgreSQL (fsync on, like bench/store_backends.py) and `--replicas` real responder
processes on one database. Each round: an acknowledged change on the leader, kill -9 of it,
then every 50 ms a new change (an Alertmanager webhook with a new fingerprint, so each is a
real commit) to every surviving replica in turn, as Alertmanager delivers to every replica URL;
the figure is the time from the kill to the first 2xx. The killed replica is started again (a
standby) before the next round. Checks on the way: exactly one leader after each hand-over, and
every change acknowledged before the kill is there (versions never go backwards).

Meanwhile `--streams` switcher-like followers (one client each) hold an SSE assignment stream
with every replica's URL (wg_failover.endpoints: on an error or a 503 the next URL at once, a
0.1 s pause after a whole round failed); the second figure is the time from the kill until
every one of them has a stream open on the new leader that delivered its assignment.

Prints the median and slowest of both against the goal (< 5 s), and the lease settings that
bound them: lease (by the database's clock) minus the time since the last renewal, plus the
standby's next attempt, plus loading and planning the state.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.postgres import PgServer  # noqa: E402
from tests.helpers.responder import ResponderProc, make_fleet  # noqa: E402
from wg_failover.endpoints import Endpoints  # noqa: E402
from wg_failover.responder.leader import LEASE, MARGIN, RENEW_EVERY  # noqa: E402

GOAL = 5.0


def leader_of(ps: list[ResponderProc]) -> list[ResponderProc]:
    out = []
    for p in ps:
        try:
            if httpx.get(p.url + "/readyz", timeout=2).json().get("leader"):
                out.append(p)
        except (httpx.HTTPError, ValueError):
            pass
    return out


def versions(p: ResponderProc) -> dict[str, int]:
    r = httpx.get(p.url + "/v1/clients", headers=p.headers("admin"), timeout=30)
    r.raise_for_status()
    return {c["name"]: c["version"] for c in r.json()}


def wait_one_leader(ps: list[ResponderProc], timeout: float = 30) -> ResponderProc:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = leader_of(ps)
        if len(found) == 1:
            return found[0]
        time.sleep(0.1)
    raise SystemExit(f"no single leader within {timeout:g} s")


class Followers:
    """SSE followers in a thread of their own: `seen[client]` = (when, URL) of the newest
    assignment each received."""

    def __init__(self, urls: list[str], tokens: dict[str, str], clients: list[str]):
        self.urls, self.tokens, self.clients = urls, tokens, clients
        self.seen: dict[str, tuple[float, str]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=len(self.clients) * 2)
        async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=60), limits=limits) as http:
            await asyncio.gather(*(self._follow(http, c) for c in self.clients))

    async def _follow(self, http: httpx.AsyncClient, client: str) -> None:
        eps = Endpoints(self.urls)
        headers = {"Authorization": f"Bearer {self.tokens[client]}"}
        while not self.stop.is_set():
            url = eps.current()
            try:
                async with http.stream("GET", f"{url}/v1/clients/{client}/assignment/stream",
                                       headers=headers) as r:
                    if r.status_code == 200:
                        eps.ok(url)
                        async for line in r.aiter_lines():
                            if line.startswith("data: "):
                                self.seen[client] = (time.monotonic(), url)
                            if self.stop.is_set():
                                return
            except httpx.HTTPError:
                pass
            eps.failed(url)
            if eps.all_failed():
                await asyncio.sleep(0.1)

    def all_on(self, url: str, after: float) -> float | None:
        """When the last follower got an assignment from `url` after `after`, or None."""
        got = [self.seen.get(c) for c in self.clients]
        if all(g is not None and g[1] == url and g[0] > after for g in got):
            return max(g[0] for g in got if g is not None)
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--streams", type=int, default=200)
    args = ap.parse_args()
    server = PgServer.start(fsync=True)
    work = Path(tempfile.mkdtemp(prefix="wgfo-bench-replicas-"))
    ps: list[ResponderProc] = []
    try:
        url = server.create_db()
        gen = make_fleet(3, args.clients)
        for i in range(args.replicas):
            ps.append(ResponderProc.start(work / f"r{i}", gen, args=("--db", url),
                                          standby=i > 0, timeout=60))
        followers = Followers([p.url for p in ps], gen.tokens,
                              [c.name for c in gen.fleet.clients[:args.streams]])
        handovers: list[float] = []
        reconnects: list[float] = []
        n = 0
        for k in range(args.kills):
            lead = wait_one_leader(ps)
            deadline = time.monotonic() + 60
            while followers.all_on(lead.url, 0) is None:
                if time.monotonic() > deadline:
                    raise SystemExit("the followers did not all reach the leader in 60 s")
                time.sleep(0.1)
            n += 1
            r = lead.alert("w1", fingerprint=f"bench-{n}")
            r.raise_for_status()
            acked = versions(lead)
            lead.kill()
            t0 = time.monotonic()
            rest = [p for p in ps if p is not lead]
            took = None
            while took is None and time.monotonic() - t0 < 60:
                for p in rest:
                    n += 1
                    try:
                        r = httpx.post(p.url + "/v1/alerts", headers=p.headers("alert"),
                                       timeout=5, json=_payload(n))
                    except httpx.HTTPError:
                        continue
                    if r.status_code < 300:
                        took = time.monotonic() - t0
                        new = p
                        break
                else:
                    time.sleep(0.05)
            if took is None:
                raise SystemExit("no replica took over within 60 s")
            now = versions(new)
            lost = [c for c, v in acked.items() if now.get(c, -1) < v]
            if lost or len(leader_of(rest)) != 1:
                raise SystemExit(f"round {k + 1}: versions went back for {lost[:5]} or not one "
                                 "leader")
            handovers.append(took)
            deadline = time.monotonic() + 60
            while (done := followers.all_on(new.url, t0)) is None:
                if time.monotonic() > deadline:
                    raise SystemExit("the followers did not all reach the new leader in 60 s")
                time.sleep(0.05)
            reconnects.append(done - t0)
            print(f"  kill {k + 1}: a new leader served a write after {took:.2f} s; all "
                  f"{len(followers.clients)} streams on it after {done - t0:.2f} s", flush=True)
            lead.standby = True
            lead.restart(timeout=60)
        med, worst = statistics.median(handovers), max(handovers)
        print()
        print(f"{args.replicas} replicas, {args.clients} clients, {args.kills} kills of the "
              f"leader (lease {LEASE:g} s, renewed every {RENEW_EVERY:g} s, the leader stops "
              f"serving {MARGIN:g} s before its lease can pass on)")
        print(f"| leader kill -9 -> a new leader serving writes | median {med:.2f} s | "
              f"slowest {worst:.2f} s | goal < {GOAL:g} s: "
              f"{'met' if worst < GOAL else 'NOT met'} |")
        med, worst = statistics.median(reconnects), max(reconnects)
        print(f"| leader kill -9 -> all {len(followers.clients)} SSE followers streaming from "
              f"the new leader | median {med:.2f} s | slowest {worst:.2f} s | goal < {GOAL:g} s: "
              f"{'met' if worst < GOAL else 'NOT met'} |")
        print("every acknowledged change present after each hand-over; versions never went "
              "back")
        followers.stop.set()
    finally:
        for p in ps:
            p.stop()
        server.close()
        shutil.rmtree(work, ignore_errors=True)


def _payload(n: int) -> dict[str, object]:
    from tests.helpers.responder import alert_payload

    return alert_payload("w1", fingerprint=f"bench-{n}")


if __name__ == "__main__":
    main()
