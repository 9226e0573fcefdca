"""The real responder on a real PostgreSQL (issue 15): `--db postgresql://...` serves, keeps
assignments and their versions across a restart, and `responder migrate` moves a SQLite store the
responder wrote into PostgreSQL as it is. The URL's password is never printed."""

from __future__ import annotations

import sqlite3
import subprocess
import time

import httpx

from tests.helpers.postgres import PgServer
from tests.helpers.responder import WG_FAILOVER, ResponderProc
from tests.helpers.wait import wait_until
from wg_failover.responder.leader import LEASE
from wg_failover.responder.store import Loaded, SQLiteStore, open_store


def clients(p: ResponderProc) -> dict[str, tuple[str | None, int, str | None]]:
    r = httpx.get(p.url + "/v1/clients", headers=p.headers("admin"), timeout=10)
    assert r.status_code == 200, r.text
    return {c["name"]: (c["worker"], c["version"], c["epoch"]) for c in r.json()}


def test_the_responder_on_postgresql_keeps_assignments_and_versions_across_a_restart(
        responder_factory, pg_server: PgServer, pg_url: str):
    p = responder_factory(args=("--db", pg_url), clients=6)
    before = clients(p)
    epoch = httpx.get(p.url + "/healthz", timeout=5).json()["epoch"]
    assert {e for _, _, e in before.values()} == {epoch}
    on_w1 = {c for c, (w, _, _) in before.items() if w == "w1"}
    assert on_w1
    r = p.alert("w1", action="drain")
    assert r.status_code == 200, r.text
    drained = clients(p)
    for c in on_w1:
        assert drained[c][0] != "w1" and drained[c][1] > before[c][1]
    # Committed in PostgreSQL, not only served from memory.
    rows = dict(pg_server.sql(pg_url, "SELECT client, version FROM assignments"))
    assert rows == {c: v for c, (_, v, _) in drained.items()}
    p.restart()
    assert clients(p) == drained
    assert httpx.get(p.url + "/healthz", timeout=5).json()["epoch"] == epoch
    r = p.alert("w1", action="drain")  # the same alert again: already drained, no new versions
    assert r.status_code == 200 and clients(p) == drained
    log = p.log()
    assert "starting a new store at postgresql://wgfo@127.0.0.1" in log
    assert pg_server.password not in log


def same_state(a: Loaded, b: Loaded) -> None:
    assert a.workers == b.workers and a.assignments == b.assignments
    assert a.alerts == b.alerts and a.unusable == b.unusable
    assert a.last_event_id == b.last_event_id and a.fleet == b.fleet and a.keys == b.keys


def migrate(sqlite_path: object, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WG_FAILOVER, "responder", "migrate", "--from-sqlite",
                           str(sqlite_path), "--db", url], capture_output=True, text=True,
                          timeout=120)


def test_migrate_moves_a_store_the_responder_wrote_into_postgresql_as_it_is(
        responder_factory, pg_server: PgServer, pg_url: str, tmp_path):
    p = responder_factory(clients=6, db=tmp_path / "source.db")  # SQLite, the source
    assert p.alert("w1").status_code == 200
    assert p.alert("w2", action="drain").status_code == 200
    r = httpx.post(p.url + "/v1/enroll-keys", headers=p.headers("admin"), timeout=10,
                   json={"kind": "client", "reusable": True})
    assert r.status_code == 201, r.text
    served = clients(p)
    p.stop()
    src = SQLiteStore(p.db_path)
    src.open_delivery_log().record("hook:audit", "c1", 3)
    src_state, src_events = src.load(), src.events(0, 10_000)
    src_deliveries = src.open_delivery_log().load()
    src.close()
    db = sqlite3.connect(p.db_path)  # the Store protocol reads de-duplication keys by key only
    dedup = db.execute("SELECT key, ts FROM dedup ORDER BY key").fetchall()
    db.close()
    assert dedup and src_events and src_state.alerts and src_state.keys
    assert src_state.fleet is not None and src_state.fleet.version >= 1

    r = migrate(p.db_path, pg_url)
    assert r.returncode == 0, r.stderr
    assert pg_server.password not in r.stdout + r.stderr
    assert f"epoch {src.epoch}" in r.stdout and "6 assignments" in r.stdout

    dst = open_store(pg_url)
    try:
        assert dst.epoch == src.epoch and not dst.created
        same_state(dst.load(), src_state)
        assert dst.events(0, 10_000) == src_events
        assert dst.open_delivery_log().load() == src_deliveries
        assert dst.seen([k for k, _ in dedup]) == {k for k, _ in dedup}
    finally:
        dst.close()
    assert pg_server.sql(pg_url, "SELECT key, ts FROM dedup ORDER BY key") == dedup

    # Into a database that holds state: refused, nothing written, no password, no traceback.
    again = migrate(p.db_path, pg_url)
    assert again.returncode == 2 and "already holds a responder's state" in again.stderr
    assert "Traceback" not in again.stderr and pg_server.password not in again.stderr
    missing = migrate(tmp_path / "nothing.db", pg_url)
    assert missing.returncode == 2 and "no SQLite store there" in missing.stderr

    # The responder on the migrated database serves the same assignments, versions and epoch,
    # and its event ids continue above the SQLite store's.
    q = ResponderProc.start(tmp_path / "on-pg", p.gen, args=("--db", pg_url))
    try:
        assert clients(q) == served
        assert q.alert("w3").status_code == 200
        page = httpx.get(q.url + "/v1/events", headers=q.headers("admin"), timeout=10,
                         params={"after": src_events[-1]["id"]}).json()
        ids = [e["id"] for e in page["events"]]
        assert ids and min(ids) > src_events[-1]["id"]
    finally:
        q.stop()


def test_while_postgresql_is_away_changes_answer_503_within_seconds_and_reads_stop_past_the_lease(
        responder_factory):
    server = PgServer.start()  # its own: this test stops it
    try:
        p = responder_factory(args=("--db", server.create_db()), clients=4)
        before = clients(p)
        server.stop()
        for worker in ("w1", "w2"):
            t0 = time.monotonic()
            r = p.alert(worker)
            assert r.status_code == 503 and time.monotonic() - t0 < 4, r.text
            # the store's own 503, or (past the leader lease) the replica's: both say why
            assert r.json()["detail"].startswith("state store"), r.text
        # Past its leader lease it serves nothing, rather than what may be stale (leader.py).
        wait_until("reads refused", lambda: httpx.get(
            p.url + "/v1/clients", headers=p.headers("admin"), timeout=5).status_code == 503,
            LEASE + 2)
        server.start_again()
        wait_until("it leads again", p._ready, 20)  # a new term, the state loaded afresh
        assert clients(p) == before  # nothing half-applied
        r = p.alert("w1")  # Alertmanager's retry, the first change after the database is back
        assert r.status_code == 200, r.text
        assert clients(p) != before
        assert server.password not in p.log() and "Traceback" not in p.log()
        p.stop()
    finally:
        server.close()
