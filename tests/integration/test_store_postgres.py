"""What only the PostgreSQL store has: a database that is unreachable, lost while running, read-
only, or of another schema version; the URL's password in none of its messages. (What every
backend must do is in the store tests parametrized by `store_backend`.)"""

from __future__ import annotations

import logging
import subprocess
import threading
import time

import pytest

from tests.helpers.postgres import PgServer
from tests.helpers.responder import WG_FAILOVER, make_fleet
from tests.helpers.wait import free_port
from wg_failover.fleet import dump_fleet
from wg_failover.responder.store import Event, StoreError, Tx, WorkerRow, open_store
from wg_failover.responder.store.base import LOCKED, READ_ONLY, UNAVAILABLE
from wg_failover.responder.store.postgres_tables import MIGRATIONS, SCHEMA_VERSION

SECRET = "s3cr3t-Pa55"


def test_an_unreachable_database_is_one_clear_error_within_seconds(tmp_path):
    url = f"postgresql://wgfo:{SECRET}@127.0.0.1:{free_port()}/wgfo"
    t0 = time.monotonic()
    with pytest.raises(StoreError) as info:
        open_store(url)
    assert time.monotonic() - t0 < 6
    text = str(info.value)
    assert info.value.reason == UNAVAILABLE and SECRET not in text
    assert f"postgresql://wgfo@127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/wgfo" in text
    # The responder itself: exit 2, one line, no traceback, no password.
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(dump_fleet(make_fleet(2, 2).fleet))
    r = subprocess.run([WG_FAILOVER, "responder", "--fleet", str(fleet), "--db", url,
                        "--listen", f"127.0.0.1:{free_port()}"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "cannot open --db postgresql://wgfo@127.0.0.1" in r.stderr
    assert SECRET not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_a_wrong_password_or_a_bad_url_never_shows_the_password(pg_server: PgServer):
    wrong = pg_server.url().replace(pg_server.password, SECRET)
    with pytest.raises(StoreError) as info:
        open_store(wrong)
    assert "password authentication failed" in str(info.value)
    assert SECRET not in str(info.value)
    # libpq quotes a malformed part of the URL back; here that part is the password.
    bad = f"postgresql://wgfo:{SECRET}%zz@127.0.0.1:{pg_server.port}/postgres"
    with pytest.raises(StoreError) as info:
        open_store(bad)
    assert SECRET not in str(info.value)


def test_a_lost_database_fails_writes_within_seconds_and_the_store_recovers():
    server = PgServer.start()
    try:
        url = server.create_db()
        store = open_store(url)
        store.commit(Tx(workers={"w1": WorkerRow("w1", "up", 1.0)}))
        server.stop()  # immediate: as if the database host died
        # The first finds its pooled connection broken and waits for the pool (2 s); while the
        # pool's attempts fail, the next ones answer at once, with libpq's words.
        for bound in (4, 1.5):
            t0 = time.monotonic()
            with pytest.raises(StoreError) as info:
                store.commit(Tx(events=[Event("x")]))
            assert info.value.reason == UNAVAILABLE and time.monotonic() - t0 < bound
            assert server.password not in str(info.value)
        assert "Connection refused" in str(info.value)
        with pytest.raises(StoreError):
            store.events(0, 10)
        server.start_again()
        store.commit(Tx(events=[Event("after")]))  # the first change after it is back
        assert [e["kind"] for e in store.events(0, 10)] == ["after"]
        assert store.load().workers["w1"].state == "up"
        store.close()
    finally:
        server.close()


def test_a_read_only_database_serves_reads_and_refuses_writes_until_it_can_write(
        pg_server: PgServer, pg_url: str, caplog):
    store = open_store(pg_url)
    store.commit(Tx(workers={"w1": WorkerRow("w1", "up", 1.0)}, events=[Event("x")]))
    epoch = store.epoch
    store.close()
    name = pg_url.rsplit("/", 1)[1]
    pg_server.sql(pg_server.url(),
                  f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    with caplog.at_level(logging.ERROR, logger="wg_failover.responder"):
        store = open_store(pg_url)
    try:
        assert store.degraded == READ_ONLY and store.epoch == epoch
        assert "read-only" in caplog.text
        assert list(store.load().workers) == ["w1"] and len(store.events(0, 10)) == 1
        with pytest.raises(StoreError) as info:
            store.commit(Tx(events=[Event("y")]))
        assert info.value.reason == READ_ONLY
        with pytest.raises(StoreError) as info:
            store.writable()
        assert info.value.reason == READ_ONLY and store.degraded == READ_ONLY
        # Writable again (a promoted standby drops its sessions): the store takes commits.
        pg_server.sql(pg_server.url(),
                      f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
        pg_server.sql(pg_server.url(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s", (name,))
        store.writable()
        assert store.degraded is None
        store.commit(Tx(events=[Event("y")]))
    finally:
        store.close()


def test_a_lock_held_elsewhere_is_locked_not_a_hang(pg_server: PgServer, pg_url: str):
    from wg_failover.responder.store.postgres import PostgresStore

    store = PostgresStore(pg_url, lock_timeout=0.3)
    import psycopg

    with psycopg.connect(pg_url) as other:
        other.execute("LOCK TABLE workers IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        with pytest.raises(StoreError) as info:
            store.commit(Tx(workers={"w1": WorkerRow("w1", "up", 1.0)}))
        assert info.value.reason == LOCKED and time.monotonic() - t0 < 3
        other.rollback()
    store.commit(Tx(workers={"w1": WorkerRow("w1", "up", 1.0)}))
    store.close()


def test_an_older_schema_is_upgraded_in_place_and_a_newer_one_refused(
        pg_server: PgServer, pg_url: str, caplog):
    # A database as the first release made it: version 1, with state.
    pg_server.sql(pg_url, "CREATE TABLE schema_version (version INTEGER NOT NULL)")
    pg_server.sql(pg_url, MIGRATIONS[0])
    pg_server.sql(pg_url, "INSERT INTO schema_version VALUES (1)")
    pg_server.sql(pg_url, "INSERT INTO meta VALUES ('epoch', '0123456789abcdef')")
    pg_server.sql(pg_url, "INSERT INTO workers VALUES ('w1', 'down', 5.0, false)")
    with caplog.at_level(logging.WARNING, logger="wg_failover.responder"):
        store = open_store(pg_url)
    assert f"schema upgraded from version 1 to {SCHEMA_VERSION}" in caplog.text
    assert store.epoch == "0123456789abcdef" and not store.created
    assert store.load().workers["w1"].state == "down"
    store.verify()
    store.close()
    assert pg_server.sql(pg_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    pg_server.sql(pg_url, "UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema is version 99; this responder knows up to"):
        open_store(pg_url)


def test_replicas_starting_together_on_a_new_database_agree_on_one_epoch(pg_url: str):
    stores: list[object] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(open_store(pg_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(stores) == 4
    assert len({s.epoch for s in stores}) == 1  # type: ignore[attr-defined]
    assert sum(s.created for s in stores) == 1  # type: ignore[attr-defined]
    for s in stores:
        s.close()  # type: ignore[attr-defined]
