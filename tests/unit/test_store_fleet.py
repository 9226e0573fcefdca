"""The live fleet in the store: the fleet document and enrollment keys survive a reopen, commit
atomically with the rest of a change, and a damaged row is a clear error. On every store backend
(`store_backend`: SQLite and a real PostgreSQL)."""

from __future__ import annotations

import pytest

from wg_failover.responder.store import (
    EnrollKeyRow,
    Event,
    FleetDoc,
    StoreCorrupt,
    Tx,
    open_store,
)

DATA = {"workers": [{"name": "w1", "public_key": "x", "endpoint": "h:1",
                     "tunnel_address": "10.0.0.1", "exporter": "h:2"}]}


def key(id_: str = "k1", **kw: object) -> EnrollKeyRow:
    base = dict(id=id_, sha256="a" * 64, kind="client", reusable=False, created=1.0,
                expires=2.0)
    base.update(kw)
    return EnrollKeyRow(**base)  # type: ignore[arg-type]


def test_a_new_store_has_no_fleet(store_backend):
    s = open_store(store_backend.location)
    loaded = s.load()
    assert loaded.fleet is None and loaded.keys == {}
    s.close()


def test_fleet_and_keys_survive_a_reopen_and_update_in_place(store_backend):
    s = open_store(store_backend.location)
    s.commit(Tx(fleet=FleetDoc(1, DATA, ["client:c9"]), keys={"k1": key()},
                events=[Event("fleet-applied")]))
    s.commit(Tx(fleet=FleetDoc(2, DATA, []), keys={"k1": key(uses=1, revoked=True)}))
    s.close()
    s = open_store(store_backend.location)
    loaded = s.load()
    assert loaded.fleet == FleetDoc(2, DATA, [])
    assert loaded.keys["k1"].uses == 1 and loaded.keys["k1"].revoked
    assert loaded.keys["k1"].sha256 == "a" * 64
    s.close()


def test_a_failed_commit_keeps_the_previous_fleet(store_backend):
    s = open_store(store_backend.location)
    s.commit(Tx(fleet=FleetDoc(1, DATA, [])))
    # Two keys with one sha256 break the UNIQUE constraint: the whole change is refused.
    with pytest.raises(Exception):  # noqa: B017 - StoreError of some reason
        s.commit(Tx(fleet=FleetDoc(2, {"workers": []}, []),
                    keys={"a": key("a"), "b": key("b")}))
    assert s.load().fleet == FleetDoc(1, DATA, [])
    s.close()


def test_a_malformed_fleet_row_is_a_damaged_store(store_backend):
    s = open_store(store_backend.location)
    s.commit(Tx(fleet=FleetDoc(1, DATA, [])))
    s.close()
    store_backend.sql("UPDATE fleet SET data = '[1, 2]'")
    s = open_store(store_backend.location)
    with pytest.raises(StoreCorrupt, match="malformed"):
        s.load()
    s.close()
