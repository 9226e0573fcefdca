"""Active/active reads across responder replicas on one real PostgreSQL (issue 15, part 2): every
replica serves reads, SSE streams and long-polls from the change log it tails; a change on the
leader reaches a follower's stream within a second or two; a client resumes on another replica
with Last-Event-ID without a repeat; a follower cut from its database answers 503, ends its
streams and catches up; kill -9 of a follower sends its streams to the survivors; a follower
that becomes the leader keeps its streams open."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.helpers.postgres import PgServer
from tests.helpers.responder import ResponderProc, make_fleet
from tests.helpers.wait import wait_until
from tests.integration.test_responder_replicas import TcpRelay, clients, one_leader, readyz
from wg_failover.endpoints import Endpoints
from wg_failover.responder.follower import FRESH
from wg_failover.responder.leader import LEASE

ENV = {"WGFO_SSE_KEEPALIVE_SECONDS": "1"}  # stream readers notice a dead replica at once


class Stream:
    """One client's SSE follower over several replica URLs, in a thread: on an error, a 5xx or
    the stream's end, the next URL at once with Last-Event-ID (as the switcher does).
    `events`: (version, url, monotonic time) of every assignment received."""

    def __init__(self, urls: list[str], client: str, token: str, last_id: int | None = None,
                 move_on_end: bool = True):
        self.eps, self.client, self.token = Endpoints(urls), client, token
        self.last_id, self.move_on_end = last_id, move_on_end
        self.events: list[tuple[int, str, float]] = []
        self.connects: list[tuple[str, float]] = []
        self.ends = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(5, read=3)) as http:
            while not self.stop.is_set():
                url = self.eps.current()
                headers = {"Authorization": f"Bearer {self.token}"}
                if self.last_id is not None:
                    headers["Last-Event-ID"] = str(self.last_id)
                try:
                    with http.stream("GET", f"{url}/v1/clients/{self.client}/assignment/stream",
                                     headers=headers) as r:
                        if r.status_code == 200:
                            self.eps.ok(url)
                            self.connects.append((url, time.monotonic()))
                            for line in r.iter_lines():
                                if line.startswith("id: "):
                                    v = int(line[4:])
                                    self.events.append((v, url, time.monotonic()))
                                    self.last_id = v
                                if self.stop.is_set():
                                    return
                            self.ends += 1
                except httpx.HTTPError:
                    pass
                if self.move_on_end:
                    self.eps.failed(url)
                time.sleep(0.05)

    def versions(self) -> list[int]:
        return [v for v, _, _ in self.events]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def replicas(factory, url: str, n: int = 3, clients_n: int = 6, **kw: Any
             ) -> list[ResponderProc]:
    gen = make_fleet(3, clients_n, **kw)
    first = factory(gen, args=("--db", url), env=ENV)
    return [first, *(factory(gen, args=("--db", url), standby=True, env=ENV)
                     for _ in range(n - 1))]


def current(p: ResponderProc, client: str = "c1") -> dict[str, Any]:
    r = httpx.get(f"{p.url}/v1/clients/{client}/assignment", headers=p.headers(client),
                  timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_follower_serves_every_read_and_a_change_on_the_leader_reaches_its_streams(
        pg_url: str, responder_factory):
    ps = replicas(responder_factory, pg_url)
    lead = one_leader(ps)
    f1, f2 = ps[1:]
    for f in (f1, f2):
        body = readyz(f)
        assert body["ready"] is True and body["leader"] is False, body
    # The same answers as the leader's, for every kind of read.
    for path, who in (("/v1/workers", "read"), ("/v1/targets", "read"), ("/v1/clients", "admin"),
                      ("/v1/clients/c1/assignment", "c1"), ("/v1/clients/c1/view", "c1"),
                      ("/v1/workers/w1/peers", "admin"), ("/v1/fleet", "admin")):
        a, b = (httpx.get(p.url + path, headers=p.headers(who), timeout=5) for p in (lead, f1))
        assert a.status_code == b.status_code == 200, (path, b.text)
        assert a.json() == b.json(), path
    # Writes are the leader's: 503 with Retry-After, nothing changed.
    before = clients(lead)
    for r in (f1.alert("w1"),
              httpx.post(f1.url + "/v1/workers/w1/drain", headers=f1.headers("admin")),
              httpx.post(f1.url + "/v1/clients/c1/events", headers=f1.headers("c1"),
                         json={"type": "applied", "version": 1})):
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    assert clients(lead) == before

    v0 = current(lead)["version"]
    stream = Stream([f1.url], "c1", lead.tokens["c1"])
    got: list[httpx.Response] = []
    poll = threading.Thread(target=lambda: got.append(httpx.get(
        f"{f2.url}/v1/clients/c1/assignment", params={"after": v0, "wait": 20},
        headers=f2.headers("c1"), timeout=30)))
    try:
        wait_until("the follower's stream sent the assignment", lambda: stream.versions() == [v0],
                   10)
        poll.start()
        time.sleep(0.3)  # the long-poll waits on the other follower
        assert lead.alert("w1").status_code == 200
        t0 = time.monotonic()
        v1 = current(lead)["version"]
        assert v1 > v0
        wait_until("the change reached the follower's stream", lambda: v1 in stream.versions(), 5)
        took = stream.events[-1][2] - t0
        assert took < 2.0, took
        poll.join(10)
        assert got and got[0].status_code == 200 and got[0].json()["version"] == v1, got
        assert stream.versions() == [v0, v1] and stream.connects[0][0] == f1.url
        assert len(stream.connects) == 1  # one stream, never reconnected
        assert clients(f1) == clients(lead) == clients(f2)
    finally:
        stream.close()
    for p in ps:
        assert "Traceback" not in p.log()


def test_a_stream_resumes_on_another_replica_with_last_event_id_without_a_repeat(
        pg_url: str, responder_factory):
    # Hold-down 1 s with preemption: w1 back moves c1 home again (a change made by timers).
    ps = replicas(responder_factory, pg_url, hold_down_seconds=1, preempt=True)
    lead = one_leader(ps)
    f1, f2 = ps[1:]
    token = lead.tokens["c1"]
    s1 = Stream([f1.url], "c1", token)
    wait_until("first event", lambda: len(s1.events) == 1, 10)
    s1.close()
    a0 = s1.versions()[0]
    assert lead.alert("w1").status_code == 200  # c1 (on w1) moves while it is away
    a1 = current(lead)["version"]
    assert a1 > a0
    s2 = Stream([f2.url], "c1", token, last_id=a0)
    try:
        wait_until("resumed on the other follower", lambda: len(s2.events) >= 1, 10)
        assert s2.versions()[0] == a1  # the newest, nothing at or below Last-Event-ID
        assert lead.alert("w2").status_code == 200
        a2 = current(lead)["version"]
        wait_until("the next change", lambda: a2 in s2.versions(), 5)
    finally:
        s2.close()
    assert s2.versions() == [a1, a2]
    # On the leader with the newest id: nothing repeated, then the next change.
    s3 = Stream([lead.url], "c1", token, last_id=a2)
    try:
        wait_until("connected", lambda: s3.connects, 10)
        time.sleep(0.5)
        assert s3.events == []
        assert lead.alert("w1", status="resolved").status_code == 200
        wait_until("c1 back on w1 after the hold-down", lambda: current(lead)["worker"] == "w1",
                   15)
        a3 = current(lead)["version"]
        assert a3 > a2
        wait_until("the next change on the leader", lambda: s3.versions()[-1:] == [a3], 5)
        assert s3.versions() == sorted(set(s3.versions())) and s3.versions()[0] > a2
    finally:
        s3.close()


def test_a_follower_cut_from_the_database_answers_503_ends_its_streams_and_catches_up(
        pg_server: PgServer, pg_url: str, responder_factory):
    relay = TcpRelay(pg_server.port)
    try:
        gen = make_fleet(3, 6)
        lead = responder_factory(gen, args=("--db", pg_url), env=ENV)
        via_relay = pg_url.replace(f":{pg_server.port}/", f":{relay.port}/")
        f = responder_factory(gen, args=("--db", via_relay), standby=True, env=ENV)
        assert one_leader([lead, f]) is lead and readyz(f)["ready"] is True
        stream = Stream([f.url], "c1", lead.tokens["c1"], move_on_end=False)
        wait_until("streaming from the follower", lambda: stream.events, 10)
        relay.cut()
        t0 = time.monotonic()
        wait_until("the cut follower answers 503", lambda: httpx.get(
            f.url + "/v1/clients", headers=f.headers("admin"), timeout=5).status_code == 503,
            FRESH + 3)
        assert time.monotonic() - t0 < FRESH + 2
        body = readyz(f)
        assert body["ready"] is False and body["leader"] is False, body
        wait_until("its stream ended", lambda: stream.ends >= 1, 3)
        r = httpx.get(f.url + "/v1/clients/c1/assignment/stream", headers=f.headers("c1"),
                      timeout=5)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        # The leader goes on; the follower catches up when the database is back.
        assert lead.alert("w1").status_code == 200
        acked = clients(lead)
        relay.heal()
        wait_until("the follower serves again", lambda: readyz(f)["ready"], 15)
        assert clients(f) == acked
        v = current(lead)["version"]
        wait_until("its stream is back with the change made meanwhile",
                   lambda: v in stream.versions(), 10)
        assert readyz(lead)["leader"] and "Traceback" not in f.log()
        assert pg_server.password not in f.log()
        stream.close()
    finally:
        relay.cut()


def test_kill_9_of_a_follower_sends_its_streams_to_the_survivors(
        pg_url: str, responder_factory):
    ps = replicas(responder_factory, pg_url, clients_n=40)
    lead = one_leader(ps)
    victim, other = ps[1], ps[2]
    names = [f"c{i + 1}" for i in range(40)]
    order = [victim.url, other.url, lead.url]
    streams = [Stream(order, c, lead.tokens[c]) for c in names]
    try:
        wait_until("every stream on the victim", lambda: all(
            s.connects and s.connects[-1][0] == victim.url and s.events for s in streams), 20)
        victim.kill()
        t0 = time.monotonic()
        wait_until("every stream on a survivor", lambda: all(
            s.connects[-1][0] != victim.url for s in streams), 10)
        took = max(s.connects[-1][1] for s in streams) - t0
        assert took < 5, took
        assert lead.alert("w1").status_code == 200
        now = clients(lead)
        wait_until("every stream got its newest version", lambda: all(
            s.versions()[-1] == now[s.client][1] for s in streams), 10)
        for s in streams:
            vs = s.versions()
            assert vs == sorted(set(vs)), (s.client, vs)  # never a repeat, never back
    finally:
        for s in streams:
            s.stop.set()
        for s in streams:
            s.close()


def test_a_follower_that_becomes_the_leader_keeps_its_streams_open(
        pg_url: str, responder_factory):
    ps = replicas(responder_factory, pg_url, n=2)
    lead, f = ps
    assert one_leader(ps) is lead
    stream = Stream([f.url], "c1", lead.tokens["c1"], move_on_end=False)
    try:
        wait_until("streaming from the follower", lambda: stream.events, 10)
        lead.kill()
        assert one_leader([f], timeout=LEASE + 10) is f
        assert f.alert("w1").status_code == 200
        v = current(f)["version"]
        wait_until("the change on the stream", lambda: v in stream.versions(), 5)
        assert len(stream.connects) == 1 and stream.ends == 0  # the same stream throughout
    finally:
        stream.close()


def test_a_renewal_does_not_wait_for_the_leaders_own_long_commit(pg_url: str):
    from wg_failover.responder.store import open_store
    from wg_failover.responder.store.postgres_lease import check_fence, take_lease

    a, b = open_store(pg_url), open_store(pg_url)
    try:
        t1 = take_lease(a, "a", None, 30)
        assert t1 is not None
        with a._conn("test") as conn, conn.transaction():
            check_fence(conn, (t1, "a"))  # a commit under way, holding its lock on the row
            conn.execute("UPDATE workers SET state = 'down'")
            t0 = time.monotonic()
            assert take_lease(b, "a", t1, 30) == t1  # the renewal passes at once
            assert time.monotonic() - t0 < 1
            assert take_lease(b, "b", None, 30) is None  # the lease is live: no take-over
    finally:
        a.close()
        b.close()
