"""Store faults on the real responder (hardening finding 6): a full disk, damaged files, a bad
page at run time. The adversarial pass saw "Application startup failed" with a traceback (exit 3)
on a full disk and for 4 of 6 byte-flipped files, webhook 500s from a damaged page, and
`wgfo_failovers_total` counting 20 failovers that were answered 503 and never committed."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.diskfull import fill, small_disk, unfill
from tests.helpers.responder import WG_FAILOVER, ResponderProc, alert_payload, free_port
from tests.helpers.wait import poll_until


def alive(p: ResponderProc) -> bool:
    try:
        return httpx.get(p.url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def readyz(p: ResponderProc) -> httpx.Response:
    return httpx.get(p.url + "/readyz", timeout=5)


def workers(p: ResponderProc) -> dict[str, dict]:
    r = httpx.get(p.url + "/v1/workers", headers=p.headers("read"), timeout=5)
    assert r.status_code == 200, r.text
    return {w["name"]: w for w in r.json()}


FAILOVERS = 'wgfo_failovers_total{worker="w2"}'


@pytest.fixture(name="responder")
def sqlite_responder(responder_factory, tmp_path) -> ResponderProc:
    """On SQLite whatever WGFO_TEST_STORE says: these tests damage and fill its file (the
    PostgreSQL faults: tests/integration/test_responder_postgres.py and _replicas.py)."""
    return responder_factory(db=tmp_path / "responder.db")


def test_503_when_the_store_cannot_commit(responder):
    p = responder
    db = sqlite3.connect(p.db_path, isolation_level=None, timeout=5)
    db.execute("BEGIN IMMEDIATE")  # holds the write lock longer than the responder waits
    try:
        r = p.alert("w1")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert workers(p)["w1"]["state"] == "up"  # memory untouched
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert p.metric('wgfo_webhook_deliveries_total{outcome="error"}') == 1
    r = p.alert("w1")  # Alertmanager retries: this time it applies
    assert r.status_code == 200 and r.json()["status"] == "applied"
    assert workers(p)["w1"]["state"] == "down"


# --------------------------------------------------------------------------- a full disk


def test_starts_on_a_full_disk_serves_reads_and_refuses_writes_with_the_reason(
        tmp_path, responder_factory):
    with small_disk(tmp_path / "disk", 2048) as disk:
        p = responder_factory(db=disk / "responder.db")
        try:
            epoch = httpx.get(p.url + "/healthz", timeout=5).json()["epoch"]
            assert p.alert("w1").status_code == 200  # state worth serving: c1 on w2
            p.stop()  # a clean stop: SQLite removes the -wal and -shm files
            fill(disk)
            p._ready = lambda: alive(p)  # type: ignore[method-assign]  # alive, not ready
            p.restart()

            r = readyz(p)
            assert r.status_code == 503
            assert r.json() == {"ready": False, "leader": True, "epoch": epoch,
                                "reason": "state store: disk full"}
            assert httpx.get(p.url + "/healthz", timeout=5).json() == {"ok": True,
                                                                        "epoch": epoch}
            # Reads: everything the store holds.
            a = httpx.get(p.url + "/v1/clients/c1/assignment", headers=p.headers("c1"),
                          timeout=5).json()
            assert (a["worker"], a["version"], a["epoch"]) == ("w2", 2, epoch)
            assert workers(p)["w1"]["state"] == "down"
            events = httpx.get(p.url + "/v1/events", headers=p.headers("admin"), timeout=5)
            assert events.status_code == 200 and events.json()["events"]
            with httpx.stream("GET", p.url + "/v1/clients/c1/assignment/stream",
                              headers=p.headers("c1"), timeout=5) as s:
                assert next(s.iter_lines()) == "id: 2"

            # Writes: 503 with the reason, and nothing counted (the regression: 20 failovers
            # answered 503 used to be counted in wgfo_failovers_total).
            for i in range(20):
                r = p.alert("w2", fingerprint=f"full-{i}")
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json() == {"detail": "state store unavailable (disk full); retry"}
            assert p.metric(FAILOVERS) == 0
            assert p.metric('wgfo_webhook_deliveries_total{outcome="error"}') == 20
            assert p.metric("wgfo_store_writable") == 0
            assert workers(p)["w2"]["state"] == "up"
            r = httpx.post(p.url + "/v1/clients/c1/events", headers=p.headers("c1"), timeout=5,
                           json={"type": "switch", "from_worker": "w2", "to_worker": "w3"})
            assert r.status_code == 503

            # Room again: ready within a few seconds, and the alert applies once.
            unfill(disk)
            poll_until(lambda: readyz(p).status_code == 200, 15, 0.2)
            assert p.alert("w2", fingerprint="full-0").status_code == 200
            assert p.metric(FAILOVERS) == 1 and workers(p)["w2"]["state"] == "down"
            assert p.metric("wgfo_store_writable") == 1
            log = p.log()
            assert "Traceback" not in log
            assert log.count("disk full") <= 6, log  # one line per kind per 10 s, not 20+
        finally:
            p.stop()


def test_a_disk_that_fills_while_running_refuses_writes_and_counts_nothing(
        tmp_path, responder_factory):
    with small_disk(tmp_path / "disk", 1024) as disk:
        p = responder_factory(db=disk / "responder.db")
        try:
            fill(disk)
            # One delivery larger than the room the WAL has left, with a failover in it.
            body = alert_payload("w2")
            extra = alert_payload("w3", "notify")["alerts"][0]
            body["alerts"] += [dict(extra, fingerprint=f"n{i:04d}",
                                    annotations={"summary": "x" * 180}) for i in range(1200)]
            r = httpx.post(p.url + "/v1/alerts", headers=p.headers("alert"), json=body,
                           timeout=30)
            assert r.status_code == 503 and "disk full" in r.json()["detail"], r.text
            assert p.metric(FAILOVERS) == 0 and workers(p)["w2"]["state"] == "up"
            assert readyz(p).json()["reason"] == "state store: disk full"
            unfill(disk)
            poll_until(lambda: readyz(p).status_code == 200, 15, 0.2)
            r = httpx.post(p.url + "/v1/alerts", headers=p.headers("alert"), json=body,
                           timeout=30)
            assert r.status_code == 200 and p.metric(FAILOVERS) == 1
            assert "Traceback" not in p.log()
        finally:
            p.stop()


# --------------------------------------------------------------------------- damaged files


def start_on(tmp_path: Path, fleet: Path, db: Path) -> tuple[int, str]:
    """Run the responder on `db`: (exit code, stderr); 0 when it came up (then stopped)."""
    port = free_port()
    proc = subprocess.Popen([WG_FAILOVER, "responder", "--fleet", str(fleet), "--db", str(db),
                             "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def done() -> bool:
            if proc.poll() is not None:
                return True
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code \
                    == 200
            except httpx.HTTPError:
                return False

        poll_until(done, 20, 0.1)
        code = proc.poll()
    finally:
        if proc.poll() is None:
            proc.terminate()
        _, err = proc.communicate(timeout=20)
    return (0 if code is None else code), err


def test_damaged_databases_are_one_clear_error(responder):
    p = responder
    assert p.alert("w1").status_code == 200
    p.stop()
    good = p.db_path.read_bytes()
    page = int.from_bytes(good[16:18], "big")
    db = sqlite3.connect(p.db_path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'assignments'").fetchone()
    db.close()
    variants = {
        "not a database": b"this is not a database\n" * 300,
        "truncated": good[: len(good) // 3],
        "bad header": good[:16] + b"\x00\x07" + good[18:],
        "bad b-tree page": _flip(good, (root[0] - 1) * page),
    }
    rng = random.Random(19)  # the finding's 6 byte-flipped files, reproducibly
    for i in range(6):
        at = rng.randrange(100, len(good))
        variants[f"byte {at} flipped ({i})"] = _flip(good, at)
    outcomes = {}
    for name, data in variants.items():
        db_file = p.workdir / f"variant-{len(outcomes)}.db"
        db_file.write_bytes(data)
        code, err = start_on(p.workdir, p.fleet_path, db_file)
        outcomes[name] = code
        assert "Traceback" not in err and code in (0, 2), (name, code, err)
        if code == 2:
            assert f"cannot open --db {db_file}: the state store {db_file} is damaged" in err
            assert "Restore it from a backup, or move it aside" in err and "new epoch" in err
            assert len(err.strip().splitlines()) == 1, err
    assert all(outcomes[k] == 2 for k in list(variants)[:4]), outcomes
    print(outcomes)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def test_a_damaged_page_at_run_time_is_503_not_500(responder):
    p = responder
    body = alert_payload("w3", "notify")
    one = body["alerts"][0]
    body["alerts"] = [dict(one, fingerprint=f"p{i:04d}", annotations={"summary": "y" * 150})
                      for i in range(300)]
    assert httpx.post(p.url + "/v1/alerts", headers=p.headers("alert"), json=body,
                      timeout=30).status_code == 200
    db = sqlite3.connect(p.db_path, isolation_level=None)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    leaves = [r[0] for r in db.execute(
        "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY pageno")]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    assert len(leaves) > 5
    with open(p.db_path, "r+b") as f:  # the oldest events' page: not a b-tree page any more
        f.seek((leaves[0] - 1) * size)
        f.write(b"\x00" * 16)
    r = p.alert("w3", "notify", fingerprint="after")  # a commit: caches see the file again
    assert r.status_code in (200, 503), r.text
    for path, who in (("/v1/events", "admin"), ("/v1/clients/c1", "c1")):
        r = httpx.get(p.url + path, headers=p.headers(who), timeout=10)
        assert r.status_code in (200, 503), (path, r.status_code, r.text)
    r = httpx.get(p.url + "/v1/events", headers=p.headers("admin"), timeout=10)
    assert r.status_code == 503 and r.json() == {
        "detail": "state store unavailable (database damaged); retry"}
    assert "Traceback" not in p.log()
    time.sleep(0.1)
