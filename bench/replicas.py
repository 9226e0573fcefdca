"""Benchmark responder replicas on one PostgreSQL (issue 15).

    .venv/bin/python bench/replicas.py notify [--clients 10000,30000] [--replicas 1,3]
                                              [--rounds 3]
    .venv/bin/python bench/replicas.py handover [--replicas 3] [--clients 1000] [--kills 5]
                                                [--streams 200]
    .venv/bin/python bench/replicas.py reports      # bench/reports.py, its default figures
    .venv/bin/python bench/replicas.py --quick      # all, small: 1,000 clients, 1 and 3 replicas

With no step named, all three run, so one run prints every figure of issue 15's "done when".
notify and handover start PostgreSQL (fsync on, like bench/store_backends.py) and real
responder processes on one database (the first leads, the others follow and serve reads).

**notify** ("webhook -> clients notified"): for each replica count and client count, one SSE
assignment stream per client, spread round-robin over the replicas' URLs (each stream's URL list
starts at its own replica, then the others in one of two orders: what switchers with
`responder.urls` in their own order do), held by
holder processes of raw asyncio sockets (at most HOLD streams each: the open-file hard limit
here is 20,000 per process and cannot be raised). Each round: a webhook to the leader (a worker
fails: every client gets a new assignment version, its backups at least), then the figure per
client is (its stream's first event carrying that version - the webhook's 2xx), p50/p99/max over
every client; then the worker is resolved and the bench waits until the state is quiet again
(hold-down 1 s, preempt on: clients move home). With 3 replicas it then kills -9 a follower and
measures "streams reconnected on surviving replicas": per stream of the killed replica, the time
from the kill to a 200 from the next URL (with Last-Event-ID), p50/p99/max.
One responder cannot hold 30,000 streams under that limit either (its default --max-connections
is 90 % of it): with 1 replica the bench holds at most ONE_CAP streams and says so.

**handover** (kill -9 of the leader until a new leader serves writes): each round an
acknowledged change on the leader, kill -9 of it, then every 50 ms a new change to every
surviving replica in turn, as Alertmanager delivers to every replica URL; the figure is the time
from the kill to the first 2xx. `--streams` SSE followers (every replica's URL) must all stream
again; the second figure is the time from the kill until each has an assignment from a
survivor (followers serve streams too, so this is mostly reconnection). Checks on the way:
exactly one leader after each hand-over; every change acknowledged before the kill is there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.postgres import PgServer  # noqa: E402
from tests.helpers.responder import ResponderProc, make_fleet  # noqa: E402
from wg_failover.endpoints import Endpoints  # noqa: E402
from wg_failover.responder.leader import LEASE, MARGIN, RENEW_EVERY  # noqa: E402

GOAL = 5.0  # handover
NOTIFY_GOAL = 2.0  # webhook -> every client notified (issue 15: 30,000 clients, 3 replicas)
HOLD = 8000  # streams per holder process (the open-file hard limit is 20,000)
PACE = 300  # streams opened a second, per holder process
ONE_CAP = 15000  # streams one responder is given at most (its connection cap is ~18,000)


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
        if len(found) == 1 and httpx.get(found[0].url + "/readyz", timeout=2).json()["ready"]:
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
                        self.seen[client] = (time.monotonic(), url)
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

    def all_on(self, urls: set[str], after: float) -> float | None:
        """When the last follower got an assignment from one of `urls` after `after`, or None
        (a stream that resumes up to date gets no event: it counts once connected)."""
        got = [self.seen.get(c) for c in self.clients]
        if all(g is not None and g[1] in urls and g[0] > after for g in got):
            return max(g[0] for g in got if g is not None)
        return None


def handover(args: argparse.Namespace, server: PgServer) -> None:
    """kill -9 of the leader until a new leader serves writes (module docstring)."""
    print(f"== handover: {args.replicas} replicas, {args.clients} clients, {args.kills} kills",
          flush=True)
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
        wait_one_leader(ps)
        handovers: list[float] = []
        reconnects: list[float] = []
        n = 0
        for k in range(args.kills):
            lead = wait_one_leader(ps)
            deadline = time.monotonic() + 60
            while followers.all_on({p.url for p in ps}, 0) is None:
                if time.monotonic() > deadline:
                    raise SystemExit("the followers did not all stream in 60 s")
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
            survivors = {p.url for p in rest}
            while (done := followers.all_on(survivors, t0)) is None:
                if time.monotonic() > deadline:
                    raise SystemExit("the followers did not all reach a survivor in 60 s")
                time.sleep(0.05)
            reconnects.append(done - t0)
            print(f"  kill {k + 1}: a new leader served a write after {took:.2f} s; all "
                  f"{len(followers.clients)} streams on survivors after {done - t0:.2f} s",
                  flush=True)
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
              f"survivors | median {med:.2f} s | slowest {worst:.2f} s | goal < {GOAL:g} s: "
              f"{'met' if worst < GOAL else 'NOT met'} |")
        print("every acknowledged change present after each hand-over; versions never went "
              "back")
        followers.stop.set()
    finally:
        for p in ps:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- notify

ID_RE = re.compile(rb"id: (\d+)\n")


class Held:
    """One client's SSE stream in a holder process: raw HTTP/1.1 on an asyncio Protocol."""

    __slots__ = ("client", "token", "urls", "at", "last", "events", "connects", "transport",
                 "status", "closing")

    def __init__(self, client: str, token: str, urls: list[str]):
        self.client, self.token, self.urls = client, token, urls
        self.at = 0  # index of the URL in use
        self.last: int | None = None
        self.events: list[tuple[int, float]] = []
        self.connects: list[tuple[str, float]] = []
        self.transport: asyncio.Transport | None = None
        self.status = b""
        self.closing = False


class HeldProtocol(asyncio.Protocol):
    def __init__(self, h: Held, holder: Holder):
        self.h, self.holder = h, holder

    def connection_made(self, transport: Any) -> None:
        h = self.h
        h.transport, h.status = transport, b""
        lei = f"Last-Event-ID: {h.last}\r\n" if h.last is not None else ""
        transport.write(f"GET /v1/clients/{h.client}/assignment/stream HTTP/1.1\r\n"
                        f"Host: 127.0.0.1\r\nAuthorization: Bearer {h.token}\r\n{lei}"
                        "\r\n".encode())

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        h = self.h
        if not h.status:
            h.status = data[9:12]
            if h.status != b"200":
                h.transport.close()  # type: ignore[union-attr]  # a 503: the next URL
                return
            h.connects.append((h.urls[h.at], now))
        for m in ID_RE.finditer(data):
            v = int(m.group(1))
            h.events.append((v, now))
            h.last = v

    def connection_lost(self, exc: Exception | None) -> None:
        h = self.h
        h.transport = None
        if not h.closing:
            # Refused, a 503 or the replica went away: the next URL at once (as Endpoints).
            h.at = (h.at + 1) % len(h.urls)
            self.holder.reconnect(h, 0.0 if h.status == b"200" else 0.1)


class Holder:
    """A holder process: streams for the clients it is given; commands on stdin (JSON lines),
    answers on stdout: "dump" -> every stream's events and connects since the last dump."""

    def __init__(self, job: list[tuple[str, str, list[str]]]):
        self.streams = [Held(c, t, u) for c, t, u in job]
        self.sem = asyncio.Semaphore(200)  # connect in waves; listen backlogs are finite

    async def connect(self, h: Held, delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        async with self.sem:
            for _ in range(len(h.urls) * 50):
                host, port = h.urls[h.at].rsplit("/", 1)[1].split(":")
                try:
                    await loop.create_connection(lambda: HeldProtocol(h, self), host, int(port))
                    return
                except OSError:
                    h.at = (h.at + 1) % len(h.urls)
                    await asyncio.sleep(0.1)

    def reconnect(self, h: Held, delay: float) -> None:
        asyncio.ensure_future(self.connect(h, delay))

    async def main(self) -> None:
        # Paced (PACE streams a second per holder): 10,000 at once starve a responder's event
        # loop on this busy 2-CPU machine, long enough for a lone leader to miss its lease.
        for k in range(0, len(self.streams), 100):
            await asyncio.gather(*(self.connect(h) for h in self.streams[k:k + 100]))
            await asyncio.sleep(100 / PACE)
        deadline = time.monotonic() + 300
        while not all(h.events for h in self.streams) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        _say({"ready": sum(1 for h in self.streams if h.events)})
        loop = asyncio.get_running_loop()
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "dump":
            out = {h.client: [h.events, h.connects, h.urls[h.at]] for h in self.streams}
            for h in self.streams:
                h.events, h.connects = [], []
            _say(out)
        for h in self.streams:
            h.closing = True
            if h.transport is not None:
                h.transport.close()


def _say(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def hold_main() -> None:
    raise_nofile()
    job = json.loads(sys.stdin.readline())
    asyncio.run(Holder(job).main())


class Holders:
    """The holder processes of one run."""

    def __init__(self, job: list[tuple[str, str, list[str]]]):
        self.procs = []
        for k in range(0, len(job), HOLD):
            p = subprocess.Popen([sys.executable, __file__, "--hold"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, cwd=ROOT)
            assert p.stdin is not None
            p.stdin.write(json.dumps(job[k:k + HOLD]) + "\n")
            p.stdin.flush()
            self.procs.append(p)
        try:
            ready = sum(self._read(p)["ready"] for p in self.procs)
        except BaseException:
            for p in self.procs:
                p.kill()
            raise
        if ready != len(job):
            self.close()
            raise SystemExit(f"only {ready} of {len(job)} streams got their first event")

    @staticmethod
    def _read(p: subprocess.Popen[str]) -> Any:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise SystemExit("a stream holder process died")
        return json.loads(line)

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("dump\n")
            p.stdin.flush()
        for p in self.procs:
            out.update(self._read(p))
        return out

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError, ValueError):
                assert p.stdin is not None
                p.stdin.write("quit\n")
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def figures(values: list[float]) -> str:
    return (f"p50 {1000 * pct(values, 50):.0f} ms | p99 {1000 * pct(values, 99):.0f} ms | "
            f"max {1000 * max(values):.0f} ms")


def spread(urls: list[str], i: int) -> list[str]:
    """Client i's URL list: its own replica first (round-robin), then the others in one of two
    orders, so the streams of a replica that dies move to every survivor, not all to one."""
    own = urls[i % len(urls)]
    rest = [u for u in urls if u != own]
    if (i // len(urls)) % 2:
        rest.reverse()
    return [own, *rest]


def quiet(lead: ResponderProc, timeout: float = 120) -> dict[str, int]:
    """The leader's versions once they stop changing for 1.5 s (timers, preempt batches)."""
    deadline = time.monotonic() + timeout
    before = versions(lead)
    while time.monotonic() < deadline:
        time.sleep(1.5)
        now = versions(lead)
        if now == before:
            return now
        before = now
    raise SystemExit(f"the state did not settle within {timeout:g} s")


def notify_run(server: PgServer, n_replicas: int, clients: int, rounds: int) -> list[str]:
    """One configuration of the notify bench; its table rows."""
    url = server.create_db()
    work = Path(tempfile.mkdtemp(prefix="wgfo-bench-replicas-"))
    gen = make_fleet(3, clients, hold_down_seconds=1)
    os.environ.setdefault("WGFO_TEST_RESPONDER_LOG_LEVEL", "info")  # the "slow change" lines
    ps: list[ResponderProc] = []
    rows: list[str] = []
    holders: Holders | None = None
    try:
        t0 = time.monotonic()
        for i in range(n_replicas):
            ps.append(ResponderProc.start(work / f"r{i}", gen, args=("--db", url),
                                          standby=i > 0, timeout=300))
        lead = wait_one_leader(ps, 120)
        for p in ps:  # every follower caught up
            deadline = time.monotonic() + 120
            while not httpx.get(p.url + "/readyz", timeout=5).json()["ready"]:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{p.url} not ready")
                time.sleep(0.2)
        urls = [p.url for p in ps]
        held = clients if n_replicas > 1 else min(clients, ONE_CAP)
        job = [(c.name, gen.tokens[c.name], spread(urls, i))
               for i, c in enumerate(gen.fleet.clients[:held])]
        t1 = time.monotonic()
        holders = Holders(job)
        print(f"  {n_replicas} replica(s), {clients} clients: started in {t1 - t0:.0f} s, "
              f"{held} streams open in {time.monotonic() - t1:.0f} s", flush=True)
        lats: list[float] = []
        from_send: list[float] = []
        webhook: list[float] = []
        for k in range(rounds):
            quiet(lead)
            holders.dump()  # forget what came before
            t_send = time.monotonic()
            worker = f"w{k % 3 + 1}"
            r = lead.alert(worker, fingerprint=f"bench-notify-{k}")
            t_ok = time.monotonic()
            r.raise_for_status()
            webhook.append(t_ok - t_send)
            time.sleep(5)  # notifications land; then what the webhook made, and when it came
            after = versions(lead)
            got = holders.dump()
            this: list[float] = []
            missing = 0
            for c, (events, _, _) in got.items():
                first = next((t for v, t in events if v >= after[c]), None)
                if first is None:
                    missing += 1
                else:
                    this.append(first - t_ok)
                    from_send.append(first - t_send)
            if missing:
                print(f"    round {k + 1}: {missing} streams without the new version within "
                      "5 s", flush=True)
            lats += this
            print(f"    round {k + 1}: webhook answered in {1000 * (t_ok - t_send):.0f} ms; "
                  f"{figures(this or [0.0])} after its 2xx; the last "
                  f"{1000 * (t_ok - t_send + max(this or [0.0])):.0f} ms after it was sent",
                  flush=True)
            assert lead.alert(worker, status="resolved",
                              fingerprint=f"bench-notify-{k}").status_code == 200
        for line in lead.log().splitlines():  # the leader's own part: plan, commit, notify
            if "slow change" in line and f"{clients} assignments" in line:
                print("    leader: " + line.split("slow change: ", 1)[-1], flush=True)
        cap = "" if held == clients else f" ({held} streams: see ONE_CAP)"
        # The goal counts from the webhook's send: the leader's plan and commit come first
        # (nothing is told before it is committed), then every replica's streams.
        met = "met" if max(from_send) < NOTIFY_GOAL else "NOT met"
        rows.append(f"| webhook -> clients notified | {n_replicas} replica(s) | {clients} "
                    f"clients{cap} | after the 2xx: {figures(lats)} | webhook 2xx median "
                    f"{1000 * statistics.median(webhook):.0f} ms | from the send: max "
                    f"{1000 * max(from_send):.0f} ms | goal all < {NOTIFY_GOAL:g} s from the "
                    f"send: {met} |")
        if n_replicas > 1:
            rows.append(kill_follower(ps, lead, holders, clients))
    finally:
        if holders is not None:
            holders.close()
        for p in ps:
            p.stop()
            if sys.exc_info()[0] is not None:  # failed: what each replica said, before removal
                print(f"--- {p.url}:\n" + "\n".join(p.log().splitlines()[-8:]), flush=True)
        shutil.rmtree(work, ignore_errors=True)
        server.drop_db(url)
    for row in rows:
        print(row, flush=True)
    return rows


def kill_follower(ps: list[ResponderProc], lead: ResponderProc, holders: Holders,
                  clients: int) -> str:
    """kill -9 of a follower: how long until each of its streams has a 200 from a survivor."""
    quiet(lead)
    victim = next(p for p in ps if p is not lead)
    time.sleep(1)
    before = holders.dump()
    on_victim = {c for c, (_, _, u) in before.items() if u == victim.url}
    victim.kill()
    t_kill = time.monotonic()
    deadline = t_kill + 60
    seen: dict[str, float] = {}
    while len(seen) < len(on_victim) and time.monotonic() < deadline:
        time.sleep(1)
        for c, (_, connects, _) in holders.dump().items():
            if c in on_victim and c not in seen:
                t = next((t for u, t in connects if u != victim.url), None)
                if t is not None:
                    seen[c] = t
    waits = [t - t_kill for t in seen.values()]
    lost = len(on_victim) - len(seen)
    if not waits:
        return "| streams reconnected after a follower's kill -9 | none moved |"
    return (f"| streams reconnected on survivors after kill -9 of a follower | {len(ps)} "
            f"replicas | {clients} clients, {len(waits)} streams moved"
            f"{f', {lost} NOT within 60 s' if lost else ''} | {figures(waits)} |")


def notify(args: argparse.Namespace, server: PgServer) -> None:
    print(f"== notify: clients {args.clients}, replicas {args.replicas_list}, {args.rounds} "
          "rounds", flush=True)
    rows = []
    for clients in args.clients_list:
        for n in args.replicas_list:
            rows += notify_run(server, n, clients, args.rounds)
    print()
    for row in rows:
        print(row)


def main() -> None:
    if sys.argv[1:2] == ["--hold"]:
        hold_main()
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", choices=("notify", "handover", "reports"), default=None)
    ap.add_argument("--quick", action="store_true",
                    help="every bench, small (1,000 clients, 1 and 3 replicas, 2 rounds; "
                    "reports: 50 switchers, 5 min, one run)")
    ap.add_argument("--replicas", default=None,
                    help="notify: counts, comma-separated (default 1,3); handover: one (3)")
    ap.add_argument("--clients", default=None,
                    help="notify: counts, comma-separated (default 10000,30000); handover: "
                    "one (1000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--streams", type=int, default=200)
    args = ap.parse_args()
    whats = [args.what] if args.what else ["notify", "handover", "reports"]
    if args.quick:
        args.clients = args.clients or "1000"
        args.rounds, args.kills, args.streams = 2, 2, 100
    args.replicas_list = [int(x) for x in (args.replicas or "1,3").split(",")]
    args.clients_list = [int(x) for x in (args.clients or "10000,30000").split(",")]
    if "reports" in whats:
        whats.remove("reports")
        reports(args.quick)
        if not whats:
            return
    raise_nofile()  # inherited by the responders
    server = PgServer.start(fsync=True)
    try:
        for what in whats:
            if what == "notify":
                notify(args, server)
            else:
                args.replicas = int((args.replicas or "3").split(",")[-1])
                args.clients = int((args.clients or "1000").split(",")[0])
                handover(args, server)
    finally:
        server.close()


def reports(quick: bool) -> None:
    """Reports/s and CPU per report before and after change-only reporting: bench/reports.py
    (the real responder on SQLite: reports go to the leader alone, whatever the store)."""
    print("== reports: bench/reports.py" + (" (quick)" if quick else ""), flush=True)
    small = ["--switchers", "50", "--minutes", "5", "--repeat", "1"] if quick else []
    subprocess.run([sys.executable, str(ROOT / "bench" / "reports.py"), *small], check=True,
                   timeout=1800)


def _payload(n: int) -> dict[str, object]:
    from tests.helpers.responder import alert_payload

    return alert_payload("w1", fingerprint=f"bench-{n}")


if __name__ == "__main__":
    main()
