"""Store epochs on the real responder (hardening finding 3, the responder's half).

A database that is lost or replaced (a 0-byte file starts fresh) restarts versions at 1; a
follower resuming with its old `Last-Event-ID` would wait for a version past the old store's, so
it silently stopped following. Every assignment now carries the store's epoch, and a follower
that sends the epoch it knows (`?epoch=E`) gets the current assignment at once when it differs.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.helpers.responder import ResponderProc

LINE = "starting a new store at {db}: epoch {epoch}; followers will re-sync"


def longpoll(p: ResponderProc, **params: object) -> tuple[dict, float]:
    t0 = time.monotonic()
    r = httpx.get(p.url + "/v1/clients/c1/assignment", headers=p.headers("c1"), timeout=70,
                  params=params)
    assert r.status_code == 200, r.text
    return r.json(), time.monotonic() - t0


def first_sse_event(p: ResponderProc, headers: dict[str, str], params: dict[str, str],
                    timeout: float = 5) -> tuple[list[str], dict | None]:
    """The stream's lines up to its first assignment (or its first comment when the version
    filter holds everything back, then None)."""
    lines: list[str] = []
    with httpx.stream("GET", p.url + "/v1/clients/c1/assignment/stream", params=params,
                      headers={**p.headers("c1"), **headers}, timeout=timeout) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("data: "):
                return lines, json.loads(line[6:])
            if line.startswith(":"):
                return lines, None
    raise AssertionError(lines)


def test_every_answer_carries_the_store_epoch(responder):
    p = responder
    epoch = httpx.get(p.url + "/healthz", timeout=5).json()["epoch"]
    assert len(epoch) == 16 and int(epoch, 16) >= 0
    ready = httpx.get(p.url + "/readyz", timeout=5).json()
    assert ready == {"ready": True, "leader": True, "epoch": epoch, "reason": None}
    a, _ = longpoll(p)
    assert a["epoch"] == epoch
    _, sse = first_sse_event(p, {}, {})
    assert sse is not None and sse["epoch"] == epoch
    status = httpx.get(p.url + "/v1/clients/c1", headers=p.headers("c1"), timeout=5).json()
    assert status["assignment"]["epoch"] == epoch
    assert LINE.format(db=p.store_shown, epoch=epoch) in p.log()
    # A restart on the same database keeps the epoch, and says nothing about a new store.
    p.restart()
    assert httpx.get(p.url + "/healthz", timeout=5).json()["epoch"] == epoch
    assert p.log().count("starting a new store") == 1


def test_a_replaced_database_is_a_new_epoch_and_resuming_followers_resync(responder):
    p = responder
    if p.on_postgres:  # a new database's epoch there: tests/unit/test_responder_store.py
        pytest.skip("replaces the SQLite file")
    assert p.alert("w1").status_code == 200  # c1 prefers w1: it moves (version 2)
    old, _ = longpoll(p)
    assert old["version"] == 2
    old_epoch = old["epoch"]
    p.kill()
    p.db_path.write_bytes(b"")  # the database is lost: an empty file where it was
    for extra in ("-wal", "-shm"):
        p.db_path.with_name(p.db_path.name + extra).unlink(missing_ok=True)
    p.restart()
    new, _ = longpoll(p)
    epoch = new["epoch"]
    assert epoch != old_epoch and new["version"] == 1
    assert p.log().count(LINE.format(db=p.db_path, epoch=epoch)) == 1

    # The finding: a stream resumed with the old Last-Event-ID. With the old epoch it gets
    # version 1 of the new store at once...
    lines, a = first_sse_event(p, {"Last-Event-ID": str(old["version"])}, {"epoch": old_epoch})
    assert a is not None, lines
    assert lines[:2] == ["id: 1", "event: assignment"]
    assert (a["version"], a["epoch"], a["worker"]) == (1, epoch, "w1")
    # ... without an epoch the version filter still holds it back (what followers saw before).
    lines, a = first_sse_event(p, {"Last-Event-ID": str(old["version"])}, {})
    assert a is None and lines == [": connected"]
    # With the store's own epoch Last-Event-ID applies as always.
    lines, a = first_sse_event(p, {"Last-Event-ID": "1"}, {"epoch": epoch})
    assert a is None and lines == [": connected"]

    # Long-poll: an old epoch answers at once, whatever `after` says...
    a, took = longpoll(p, after=old["version"], wait=30, epoch=old_epoch)
    assert (a["version"], a["epoch"]) == (1, epoch) and took < 5
    # ... the store's own epoch waits for a newer version as usual.
    a, took = longpoll(p, after=1, wait=1, epoch=epoch)
    assert a["version"] == 1 and took >= 0.9

    for bad in ("XYZ", "ABCDEF0123456789", "abc", "0" * 33):
        r = httpx.get(p.url + "/v1/clients/c1/assignment", headers=p.headers("c1"), timeout=5,
                      params={"epoch": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "epoch"]
        r = httpx.get(p.url + "/v1/clients/c1/assignment/stream", headers=p.headers("c1"),
                      timeout=5, params={"epoch": bad})
        assert r.status_code == 422
