"""The responder's store on its own: the epoch, damaged files, a full disk, pruning.

Tests that take `store_backend` run on every backend (SQLite and a real PostgreSQL,
tests/helpers/postgres.py); the others are about SQLite's file (byte flips, a full disk)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest

from tests.helpers.diskfull import fill, small_disk, unfill
from wg_failover.responder.store import (
    AssignmentRow,
    Event,
    StoreCorrupt,
    StoreError,
    Tx,
    WorkerRow,
    check_store,
    open_store,
)
from wg_failover.responder.store.base import DAMAGED, DISK_FULL, LOCKED

HEX16 = re.compile(r"^[0-9a-f]{16}$")


def some_state(path, clients: int = 3, events: int = 0, ts: float = 1000.0) -> None:
    """Commit a worker and `clients` assignments (over any rows of the same names)."""
    store = open_store(str(path))
    tx = Tx(workers={"w1": WorkerRow("w1", "up", ts)},
            assignments={f"c{i}": AssignmentRow(f"c{i}", "w1", [], 1, "initial", ts)
                         for i in range(clients)},
            events=[Event("plan", data={"n": i}, ts=ts + i) for i in range(events)])
    store.commit(tx)
    store.close()


# --------------------------------------------------------------------------- the epoch


def test_a_new_store_has_an_epoch_kept_in_it_and_says_so_once(store_backend, caplog):
    path = store_backend.location
    with caplog.at_level(logging.INFO, logger="wg_failover.responder"):
        store = open_store(path)
    assert HEX16.match(store.epoch) and store.created
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"starting a new store at {store_backend.shown}: epoch {store.epoch}; "
                        "followers will re-sync"]
    store.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wg_failover.responder"):
        again = open_store(path)
    assert again.epoch == store.epoch and not again.created
    assert not caplog.records
    again.close()


def test_a_zero_byte_file_is_a_new_store_with_a_new_epoch(tmp_path):
    path = tmp_path / "r.db"
    some_state(path)
    old = open_store(str(path))
    first = old.epoch
    old.close()
    for suffix in ("", "-wal", "-shm"):
        p = tmp_path / f"r.db{suffix}"
        if p.exists():
            p.write_bytes(b"")
    store = open_store(str(path))
    assert store.created and store.epoch != first and store.load().assignments == {}
    store.close()


def test_a_store_from_before_epochs_gets_one_and_keeps_it(store_backend, caplog):
    path = store_backend.location
    some_state(path)
    store_backend.sql("DELETE FROM meta")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wg_failover.responder"):
        store = open_store(str(path))
    assert not store.created and HEX16.match(store.epoch)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # not a new store
    assert len(store.load().assignments) == 3
    store.close()
    assert open_store(str(path)).epoch == store.epoch


def test_a_damaged_epoch_is_a_damaged_store(store_backend):
    path = store_backend.location
    some_state(path)
    store_backend.sql("UPDATE meta SET value = 'not hex!' WHERE key = 'epoch'")
    with pytest.raises(StoreCorrupt, match="epoch") as info:
        open_store(path)
    assert_clear(info.value, store_backend.shown)


# --------------------------------------------------------------------------- damaged files


def assert_clear(exc: StoreError, path) -> None:
    text = str(exc)
    assert exc.reason == DAMAGED and str(path) in text
    assert "backup" in text and "move it aside" in text and "new epoch" in text


def test_not_a_database_is_one_clear_error(tmp_path):
    path = tmp_path / "r.db"
    path.write_bytes(b"this is a text file, not a database\n" * 200)
    with pytest.raises(StoreCorrupt) as info:
        check_store(str(path))
    assert_clear(info.value, path)


def test_a_truncated_database_is_one_clear_error(tmp_path):
    path = tmp_path / "r.db"
    some_state(path, clients=400, events=2000)
    data = path.read_bytes()
    assert len(data) > 40_000
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreCorrupt) as info:
        check_store(str(path))
    assert_clear(info.value, path)


def test_a_row_no_commit_could_write_is_a_damaged_store(store_backend):
    path = store_backend.location
    for bad, args in (("UPDATE assignments SET backups = '[\"w1' WHERE client = 'c1'", ()),
                      ("UPDATE assignments SET version = 9007199254740993 WHERE client = 'c1'",
                       ()),
                      ("UPDATE assignments SET worker = ? WHERE client = 'c1'", ("w\n",)),
                      ("UPDATE workers SET state = 'uq'", ())):
        some_state(path)  # writes over the row the last round damaged
        store_backend.sql(bad, args)
        with pytest.raises(StoreCorrupt) as info:
            check_store(path)
        assert_clear(info.value, store_backend.shown)


def test_every_byte_flip_is_a_clear_error_or_a_working_store(tmp_path):
    """Flip bytes all over a real database: each copy either works or is StoreCorrupt, never
    another exception (the adversarial pass saw tracebacks for 4 of 6)."""
    good = tmp_path / "good.db"
    some_state(good, clients=50, events=300)
    data = good.read_bytes()
    outcomes = {"ok": 0, "damaged": 0}
    step = max(1, len(data) // 60)
    for i, at in enumerate(range(0, len(data), step)):
        path = tmp_path / f"flip{i}.db"
        flipped = bytearray(data)
        flipped[at] ^= 0xFF
        path.write_bytes(bytes(flipped))
        try:
            check_store(str(path))
            outcomes["ok"] += 1
        except StoreCorrupt as exc:
            assert_clear(exc, path)
            outcomes["damaged"] += 1
    assert outcomes["damaged"] >= 5, outcomes  # the header, the schema, b-tree pages


def test_a_damaged_event_row_is_a_store_error_not_a_crash(store_backend):
    path = store_backend.location
    some_state(path, events=3)
    store_backend.sql("UPDATE events SET data = '{\"n\": ' WHERE id = 2")
    store = open_store(path)
    with pytest.raises(StoreCorrupt, match="event 2"):
        store.events(0, 10)
    assert [e["id"] for e in store.events(2, 10)] == [3]
    store.close()


def test_a_locked_database_is_a_store_error_with_its_reason(store_backend):
    path = store_backend.location
    some_state(path)
    store = open_store(path)
    with store_backend.write_lock():  # another writer holds it past the store's lock wait
        with pytest.raises(StoreError) as info:
            store.commit(Tx(events=[Event("x")]))
        assert info.value.reason == LOCKED
    store.commit(Tx(events=[Event("x")]))
    store.close()


# --------------------------------------------------------------------------- a full disk


def test_a_full_disk_serves_reads_refuses_writes_and_recovers(tmp_path):
    with small_disk(tmp_path / "disk", 512) as disk:
        path = disk / "r.db"
        some_state(path, events=5)
        first = open_store(str(path))
        epoch = first.epoch
        first.close()  # a clean stop removes the -wal and -shm files
        fill(disk)
        store = open_store(str(path))  # after a clean stop: the -shm cannot be made
        try:
            assert store.degraded == DISK_FULL and store.epoch == epoch
            assert len(store.load().assignments) == 3
            assert len(store.events(0, 100)) == 5
            with pytest.raises(StoreError) as info:
                store.commit(Tx(events=[Event("x")]))
            assert info.value.reason == DISK_FULL and "c1" not in str(info.value)
            with pytest.raises(StoreError):
                store.writable()
            assert store.degraded == DISK_FULL
            unfill(disk)
            store.writable()
            assert store.degraded is None
            store.commit(Tx(events=[Event("x")]))
            assert len(store.events(0, 100)) == 6
        finally:
            store.close()


def test_a_full_disk_while_running_refuses_commits_with_the_reason(tmp_path):
    with small_disk(tmp_path / "disk", 1024) as disk:
        path = disk / "r.db"
        store = open_store(str(path))
        try:
            fill(disk)
            big = Tx(events=[Event("x", data={"pad": "p" * 2000}) for _ in range(100)])
            with pytest.raises(StoreError) as info:
                store.commit(big)
            assert info.value.reason == DISK_FULL
            unfill(disk)
            store.commit(big)
        finally:
            store.close()


def test_a_new_store_on_a_full_disk_is_one_clear_error(tmp_path):
    with small_disk(tmp_path / "disk", 256) as disk:
        fill(disk)
        with pytest.raises(StoreError) as info:
            open_store(str(disk / "r.db"))
        assert info.value.reason == DISK_FULL and "cannot create" in str(info.value)


# --------------------------------------------------------------------------- large changes


def big_tx(n: int, version: int, last_data: dict | None = None) -> Tx:
    lists = (["w2"], ["w3", "w2"], [])  # rows share a few backup lists (stored text once each)
    tx = Tx(assignments={f"c{i}": AssignmentRow(f"c{i}", "w1", list(lists[(i + version) % 3]),
                                                 version, "failover", float(version))
                         for i in range(n)},
            unusable_add={(f"c{i}", "w2") for i in range(n)},
            dedup={f"k{version}-{i}" for i in range(n)},
            events=[Event("assigned", "w1", f"c{i}", {"v": version}) for i in range(n)])
    if last_data is not None:
        tx.events[-1].data = last_data
    return tx


def test_a_large_change_commits_whole_or_not_at_all(store_backend):
    """Hundreds of rows per table (PostgreSQL then copies them through staging tables): all of
    them land, in order; a change that fails on its very last row leaves nothing behind, and
    the next one commits as if it had never been tried."""
    store = open_store(store_backend.location)
    n = 600
    ids = store.commit(big_tx(n, 1))
    assert ids == list(range(1, n + 1))
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate: UTF-8 cannot encode it
        store.commit(big_tx(n, 2, last_data={"bad": "\udc80"}))
    loaded = store.load()
    assert {a.version for a in loaded.assignments.values()} == {1}
    assert loaded.last_event_id == n and len(loaded.unusable) == n
    assert store.seen([f"k2-{i}" for i in range(n)]) == set()
    ids = store.commit(big_tx(n, 3))
    assert len(ids) == n and ids == sorted(ids) and ids[0] > n
    rows = store.events(ids[0] - 1, 2 * n)
    assert [r["id"] for r in rows] == ids and [r["client"] for r in rows] == [
        f"c{i}" for i in range(n)]
    assert store.load().assignments == big_tx(n, 3).assignments
    assert store.seen([f"k3-{i}" for i in range(n)]) == {f"k3-{i}" for i in range(n)}
    # New rows and rewritten ones in one change (clients that joined, and a failover).
    mixed = big_tx(n + 300, 4)
    store.commit(Tx(assignments=mixed.assignments))
    assert store.load().assignments == mixed.assignments
    store.close()


# --------------------------------------------------------------------------- pruning


def test_pruning_takes_old_events_in_batches_and_never_assignments(store_backend):
    path = store_backend.location
    some_state(path, events=1000, ts=1000.0)  # ts 1000 .. 1999
    store = open_store(path)
    assert store.prune_events(before=1100.0, keep_rows=10**6, limit=30) == 30  # one batch
    assert store.prune_events(before=1100.0, keep_rows=10**6, limit=1000) == 70
    assert store.prune_events(before=1100.0, keep_rows=10**6, limit=1000) == 0
    assert min(e["ts"] for e in store.events(0, 10)) == 1100.0
    assert store.prune_events(before=0, keep_rows=100, limit=10_000) == 800  # the row limit
    rows = store.events(0, 10_000)
    assert len(rows) == 100 and rows[-1]["data"] == {"n": 999}
    loaded = store.load()
    assert len(loaded.assignments) == 3 and loaded.last_event_id == 1000
    store.commit(Tx(events=[Event("after")]))
    assert store.events(1000, 10)[0]["id"] == 1001  # ids never come back
    store.close()


def test_the_store_is_only_ever_one_clear_error_in_a_subprocess(tmp_path):
    """check_store from a fresh interpreter on a non-database: the message, no traceback."""
    path = tmp_path / "r.db"
    path.write_bytes(b"\x00garbage" * 1000)
    code = ("import sys\nfrom wg_failover.responder.store import check_store, StoreError\n"
            "try:\n    check_store(sys.argv[1])\nexcept StoreError as e:\n"
            "    print(e.reason)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.strip() == DAMAGED and "Traceback" not in r.stderr
