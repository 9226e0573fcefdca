"""Responder replicas on one real PostgreSQL (issue 15): one leads, the others follow: they serve
reads but refuse writes (503, nothing changed); kill -9 of the leader hands over within seconds
with every acknowledged change; a leader paused past its lease cannot write when it wakes (the
fencing term); a leader cut from the database stops serving and a standby takes over;
PostgreSQL away: no replica is ready, none writes, one leads again after; kill -9 in a failover
storm loses no acknowledged alert; an outbound webhook is delivered once across a hand-over."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time
from typing import Any

import httpx
import pytest

from tests.helpers.ctl import run, token_file
from tests.helpers.postgres import PgServer
from tests.helpers.responder import ResponderProc, alert_payload, make_fleet
from tests.helpers.wait import free_port, wait_until
from wg_failover.endpoints import Endpoints
from wg_failover.responder.leader import LEASE
from wg_failover.responder.store import StoreError, Tx, WorkerRow, open_store
from wg_failover.responder.store.base import NOT_LEADER
from wg_failover.responder.store.postgres_lease import (
    Fenced,
    check_fence,
    lease_row,
    take_lease,
)


def readyz(p: ResponderProc) -> dict[str, Any]:
    try:
        r = httpx.get(p.url + "/readyz", timeout=2)
    except httpx.HTTPError:
        return {"ready": False, "leader": False, "down": True}
    body = r.json()
    assert (r.status_code == 200) == body["ready"], r.text
    return body


def leaders(ps: list[ResponderProc]) -> list[ResponderProc]:
    return [p for p in ps if readyz(p)["leader"]]


def one_leader(ps: list[ResponderProc], timeout: float = 15) -> ResponderProc:
    def ready_leader() -> ResponderProc | None:
        found = [p for p in ps if (r := readyz(p))["ready"] and r["leader"]]
        return found[0] if len(found) == 1 and len(leaders(ps)) == 1 else None

    lead = wait_until("one leader, ready", ready_leader, timeout)
    assert leaders(ps) == [lead]
    return lead


def clients(p: ResponderProc) -> dict[str, tuple[str | None, int]]:
    r = httpx.get(p.url + "/v1/clients", headers=p.headers("admin"), timeout=10)
    assert r.status_code == 200, r.text
    return {c["name"]: (c["worker"], c["version"]) for c in r.json()}


def db_state(server: PgServer, url: str) -> tuple[list[Any], list[Any], int]:
    return (server.sql(url, "SELECT name, state FROM workers ORDER BY name"),
            server.sql(url, "SELECT client, worker, version FROM assignments ORDER BY client"),
            server.sql(url, "SELECT COUNT(*) FROM events")[0][0])


def replicas(factory, url: str, n: int = 3, **kw: Any) -> list[ResponderProc]:
    gen = make_fleet(3, 6, **kw)
    first = factory(gen, args=("--db", url))
    return [first, *(factory(gen, args=("--db", url), standby=True) for _ in range(n - 1))]


def test_one_replica_leads_standbys_refuse_and_kill_9_hands_over_with_every_change(
        pg_server: PgServer, pg_url: str, responder_factory):
    ps = replicas(responder_factory, pg_url)
    lead = one_leader(ps)
    assert lead is ps[0]
    for s in ps[1:]:  # followers, caught up: ready, not the leader
        body = readyz(s)
        assert body["ready"] is True and body["leader"] is False, body
        assert body["epoch"] == readyz(lead)["epoch"]
    # A follower refuses writes (nothing changes) and serves reads.
    before = db_state(pg_server, pg_url)
    r = ps[1].alert("w1")
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    assert "standby" in r.json()["detail"]
    assert clients(ps[2]) == clients(lead)
    assert db_state(pg_server, pg_url) == before
    assert "wg_failover_responder_leader 0" in httpx.get(ps[1].url + "/metrics").text

    # ctl with every replica's URL passes over a dead one and the standbys.
    dead = f"http://127.0.0.1:{free_port()}"
    tf = str(token_file(lead))
    r = run("--responder", f"{dead},{ps[1].url}", "--responder", ps[2].url, "--responder",
            lead.url, "--token-file", tf, "--json", "workers")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 3, r.stderr

    # Acknowledged changes on the leader, then kill -9 of it.
    assert lead.alert("w1").status_code == 200
    acked = clients(lead)
    lead.kill()
    t0 = time.monotonic()
    rest = ps[1:]
    new = one_leader(rest, timeout=LEASE + 10)
    r = new.alert("w2")
    took = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert took < LEASE + 5, took  # the bench measures it; here only that it hands over at all
    now = clients(new)
    for c, (worker, version) in acked.items():
        # w1 stays failed on the new leader: its acknowledged move is there, versions only grow
        assert now[c][1] >= version, (c, acked[c], now[c])
        assert now[c][0] != "w1" and worker != "w1"
    assert sum(now[c][1] for c in now) > sum(acked[c][1] for c in acked)  # w2's failover moved
    assert len(leaders(rest)) == 1
    # The votes lived in the dead leader's memory: the new one says it rebuilds them (the rules
    # hold the unreachable signal meanwhile; the responder job never went down).
    assert "wgfo_responder_votes_rebuilding 1.0" in httpx.get(new.url + "/metrics").text
    r = run("--responder", ",".join(p.url for p in ps), "--token-file", tf, "drain", "w3")
    assert r.returncode == 0, r.stderr  # the killed one, a standby, the leader: in any order
    # The killed replica comes back as a standby.
    lead.standby = True
    lead.restart()
    assert readyz(lead)["leader"] is False and len(leaders(ps)) == 1
    for p in ps:
        assert pg_server.password not in p.log() and "Traceback" not in p.log()


def test_a_term_that_is_over_writes_nothing(pg_url: str, pg_server: PgServer):
    a, b = open_store(pg_url), open_store(pg_url)
    try:
        t1 = take_lease(a, "a", None, 0.5)
        assert t1 is not None and take_lease(b, "b", None, 0.5) is None  # a's lease is live
        Fenced(a, t1, "a").commit(Tx(workers={"w1": WorkerRow("w1", "up", 1.0)}))
        wait_until("the lease expired", lambda: lease_row(a)[2] < 0, 5)
        t2 = take_lease(b, "b", None, 30)
        assert t2 == t1 + 1
        # a, paused past its lease, wakes: its writes are refused and roll back entirely.
        with pytest.raises(StoreError) as info:
            Fenced(a, t1, "a").commit(Tx(workers={"w1": WorkerRow("w1", "down", 2.0),
                                                  "w9": WorkerRow("w9", "up", 2.0)}))
        assert info.value.reason == NOT_LEADER
        for op in (lambda: Fenced(a, t1, "a").writable(),
                   lambda: Fenced(a, t1, "a").prune_events(time.time(), 0, 10)):
            with pytest.raises(StoreError):
                op()
        assert pg_server.sql(pg_url, "SELECT name, state FROM workers") == [("w1", "up")]
        assert take_lease(a, "a", t1, 30) is None  # nor does it renew a term that is over
        # The share lock of a running commit holds a take-over back until it ends, so the new
        # leader's load sees it.
        assert take_lease(b, "b", t2, 0.5) == t2  # renewed, for half a second
        with b._conn("test") as conn, conn.transaction():
            check_fence(conn, (t2, "b"))
            conn.execute("UPDATE workers SET state = 'down' WHERE name = 'w1'")
            time.sleep(0.8)  # b's lease expires while its commit is still running
            got: list[int | None] = []
            th = threading.Thread(target=lambda: got.append(take_lease(a, "a", None, 30)))
            th.start()
            th.join(0.5)
            assert th.is_alive() and not got  # waits for b's transaction
        th.join(5)
        assert got == [t2 + 1]
        assert a.load().workers["w1"].state == "down"
    finally:
        a.close()
        b.close()


def test_a_leader_paused_past_its_lease_cannot_write_when_it_wakes(
        pg_server: PgServer, pg_url: str, responder_factory):
    # Hold-down 2 s: a worker coming back has a timer the paused leader would fire on waking.
    ps = replicas(responder_factory, pg_url, n=2, hold_down_seconds=2)
    old, other = ps
    assert one_leader(ps) is old
    assert old.alert("w1").status_code == 200
    assert old.alert("w1", status="resolved").status_code == 200  # w1 recovering: a timer
    os.kill(old.pid, signal.SIGSTOP)
    try:
        assert one_leader([other], timeout=LEASE + 10) is other
        wait_until("the new leader ended the hold-down (its own timer)",
                   lambda: pg_server.sql(pg_url, "SELECT state FROM workers WHERE name = 'w1'")
                   == [("up",)], 10)
        events = db_state(pg_server, pg_url)[2]
    finally:
        os.kill(old.pid, signal.SIGCONT)
    # Woken: it answers 503 (its own clock says the lease is over), and whatever its timers try
    # is refused by the term; it becomes a standby.
    r = old.alert("w2")
    assert r.status_code == 503, r.text
    wait_until("the woken one stands down", lambda: readyz(old)["leader"] is False, 5)
    time.sleep(1)
    assert db_state(pg_server, pg_url)[2] == events  # nothing it did landed
    assert leaders(ps) == [other] and other.alert("w2").status_code == 200
    assert "standing down" in old.log()
    # A clean stop gives the lease up: the standby leads sooner than the lease would expire.
    term = pg_server.sql(pg_url, "SELECT term FROM leader")[0][0]
    other.stop()
    t0 = time.monotonic()
    assert one_leader([old], timeout=LEASE) is old and time.monotonic() - t0 < LEASE - 0.5
    assert pg_server.sql(pg_url, "SELECT term FROM leader")[0][0] == term + 1
    assert "cannot give the leader lease up" not in other.log()


def test_postgresql_away_no_replica_is_ready_or_writes_and_one_leads_after(
        responder_factory):
    server = PgServer.start()  # its own: this test stops it
    try:
        url = server.create_db()
        ps = replicas(responder_factory, url, n=2)
        lead = one_leader(ps)
        assert lead.alert("w1").status_code == 200
        acked = clients(lead)
        server.stop()
        wait_until("no replica ready", lambda: not any(readyz(p)["ready"] for p in ps), 5)
        for p in ps:
            t0 = time.monotonic()
            assert p.alert("w2").status_code == 503 and time.monotonic() - t0 < 4
        # The lease ran out: nothing is served.
        wait_until("no leader", lambda: not leaders(ps), LEASE + 2)
        assert httpx.get(lead.url + "/v1/clients", headers=lead.headers("admin"),
                         timeout=5).status_code == 503
        server.start_again()
        lead = one_leader(ps, timeout=20)
        assert clients(lead) == acked
        assert lead.alert("w2").status_code == 200
        for p in ps:
            assert server.password not in p.log() and "Traceback" not in p.log()
    finally:
        server.close()


class TcpRelay:
    """127.0.0.1:port -> the database's port, for one replica's connections only. `cut()`
    resets every connection through it and refuses new ones (a network cut as a router with
    RST/ICMP unreachable sees it; a silent blackhole is libpq's tcp_user_timeout's); `heal()`
    listens again on the same port."""

    def __init__(self, upstream: int):
        self.upstream, self.port = upstream, free_port()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.heal()

    def heal(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                a, _ = ls.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.conns += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        assert self.listener is not None
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
        self.listener.close()
        with self.lock:
            for c in self.conns:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)  # wakes the pipe threads blocked on it
                c.close()
            self.conns.clear()


def test_a_leader_cut_from_the_database_stops_serving_and_a_standby_takes_over(
        pg_server: PgServer, pg_url: str, responder_factory):
    relay = TcpRelay(pg_server.port)
    try:
        gen = make_fleet(3, 6)
        via_relay = pg_url.replace(f":{pg_server.port}/", f":{relay.port}/")
        old = responder_factory(gen, args=("--db", via_relay))
        other = responder_factory(gen, args=("--db", pg_url), standby=True)
        assert one_leader([old, other]) is old
        assert old.alert("w1").status_code == 200
        acked = clients(old)
        relay.cut()
        t0 = time.monotonic()
        wait_until("the cut leader stops serving", lambda: httpx.get(
            old.url + "/v1/clients", headers=old.headers("admin"), timeout=5).status_code == 503,
            LEASE)
        assert time.monotonic() - t0 < LEASE  # before the database can give the lease on
        assert readyz(old)["ready"] is False
        assert one_leader([old, other], timeout=LEASE + 10) is other
        assert clients(other) == acked and other.alert("w2").status_code == 200
        relay.heal()
        time.sleep(2 * LEASE)  # the old one reaches the database again: a standby now
        assert leaders([old, other]) == [other] and old.alert("w3").status_code == 503
        assert "standing down" in old.log() and "Traceback" not in old.log()
    finally:
        relay.cut()


def test_kill_9_of_the_leader_in_a_failover_storm_loses_no_acknowledged_change(
        pg_server: PgServer, pg_url: str, responder_factory):
    ps = replicas(responder_factory, pg_url)
    lead = one_leader(ps)
    urls = [p.url for p in ps]
    acked: list[str] = []
    seen: dict[str, int] = {}  # the newest version a reader saw per client, on any replica
    went_back: list[str] = []
    stop = threading.Event()

    def storm() -> None:  # Alertmanager: every alert retried over the replicas until a 2xx
        eps = Endpoints(urls)
        for i in range(60):
            fp = f"storm-{i}"
            body = alert_payload(("w1", "w2")[i % 2], fingerprint=fp)
            for _ in range(400):
                url = eps.current()
                try:
                    r = httpx.post(url + "/v1/alerts", json=body, timeout=5,
                                   headers=lead.headers("alert"))
                    if r.status_code == 200:
                        eps.ok(url)
                        acked.append(fp)
                        break
                except httpx.HTTPError:
                    pass
                eps.failed(url)
                if eps.all_failed():
                    time.sleep(0.05)
            time.sleep(0.05)

    def reader() -> None:  # a follower's view: versions never go backwards
        # (A follower replica may lag the leader by its last read of the change log, a few ms:
        # a version lower than one seen counts only when it is still lower a second later.)
        eps = Endpoints(urls)
        while not stop.is_set():
            url = eps.current()
            try:
                r = httpx.get(url + "/v1/clients", headers=lead.headers("admin"), timeout=5)
            except httpx.HTTPError:
                r = None
            if r is None or r.status_code != 200:
                eps.failed(url)
                time.sleep(0.05)
                continue
            got = {c["name"]: c["version"] for c in r.json()}
            if any(v < seen.get(n, 0) for n, v in got.items()):
                time.sleep(1)
                try:
                    again = httpx.get(url + "/v1/clients", headers=lead.headers("admin"),
                                      timeout=5)
                    if again.status_code != 200:
                        continue
                    got = {c["name"]: c["version"] for c in again.json()}
                except (httpx.HTTPError, ValueError):
                    continue
            for n, v in got.items():
                if v < seen.get(n, 0):
                    went_back.append(f"{n}: {seen[n]} -> {v}")
                seen[n] = max(seen.get(n, 0), v)
            time.sleep(0.05)

    threads = [threading.Thread(target=storm), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    try:
        wait_until("the storm under way", lambda: len(acked) >= 10, 20)
        lead.kill()
        threads[0].join(120)
        assert not threads[0].is_alive()
    finally:
        stop.set()
        threads[1].join(10)
    assert len(acked) == 60 and not went_back, went_back[:5]
    stored = {r[0] for r in pg_server.sql(pg_url, "SELECT fingerprint FROM active_alerts")}
    assert set(acked) <= stored
    new = one_leader([p for p in ps if p is not lead])
    assert {w for w, _ in clients(new).values()} == {"w3"}  # every client on the healthy one


def test_an_outbound_webhook_is_delivered_once_across_a_kill_9_hand_over(
        pg_server: PgServer, pg_url: str, responder_factory, tmp_path):
    from tests.integration.test_notify_live import Receiver, current, notify_fleet

    hook = Receiver(fail_first=10**6)  # down until we say so
    try:
        gen = notify_fleet(tmp_path, hook_url=hook.url)
        old = responder_factory(gen, args=("--db", pg_url))
        other = responder_factory(gen, args=("--db", pg_url), standby=True)
        assert one_leader([old, other]) is old
        first = current(old)
        assert old.alert(first["worker"]).status_code == 200
        newest = current(old)
        assert hook.wait(lambda: any(r["json"]["version"] == newest["version"]
                                     for r in hook.requests))
        old.kill()  # its delivery was refused: nothing recorded as delivered
        with hook.lock:
            hook.fail_first = 0
        assert one_leader([other], timeout=LEASE + 10) is other  # the new leader's notifier
        assert hook.wait(lambda: hook.accepted(), timeout=20), other.log()
        assert [r["json"] for r in hook.accepted()] == [newest]
        # Handed back (a clean stop): the delivery log says it is delivered; nothing again.
        old.standby = True
        old.restart()
        other.stop()
        assert one_leader([old], timeout=LEASE + 10) is old
        time.sleep(1.5)
        assert [r["json"] for r in hook.accepted()] == [newest]
    finally:
        hook.close()
