"""ResponderState over a store that fails, in process: memory and metrics change only after a
commit, the epoch reaches every notifier, retention prunes on the state's clock. On every store
backend (`store_backend`: SQLite and a real PostgreSQL)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from tests.helpers.responder import make_fleet
from wg_failover.responder import notify
from wg_failover.responder.state import ResponderState
from wg_failover.responder.store import Event, StoreError, Tx, open_store
from wg_failover.responder.store.base import DISK_FULL
from wg_failover.responder.upkeep import PRUNE_BATCH


class FlakyStore:
    """A real store whose commits fail with `fail` (a StoreError reason) when set."""

    def __init__(self, path: str):
        self.real = open_store(path)
        self.fail: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def commit(self, tx: Tx, durable: bool = True) -> list[int]:
        if self.fail:
            raise StoreError(f"cannot commit: {self.fail}", self.fail)
        return self.real.commit(tx, durable)

    def writable(self) -> None:
        if self.fail:
            raise StoreError(f"cannot write: {self.fail}", self.fail)
        self.real.writable()


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.assignments: list[dict] = []

    async def start(self, host: Any) -> None:
        self.assignments += host.all_assignments()

    async def stop(self) -> None:
        return None

    def assignment_changed(self, assignment: dict) -> None:
        self.assignments.append(assignment)

    def worker_changed(self, worker: dict) -> None:
        return None


def failover_count(st: ResponderState, worker: str) -> float:
    return st.metrics.failovers.labels(worker=worker)._value.get()


def down(name: str):
    def build(d):
        d.set_worker_state(name, "down", cause="test")
    return build


def test_every_notified_assignment_carries_the_epoch(store_backend):
    rec = Recorder()
    notify.register_factory("recorder-epoch", lambda fleet, settings: rec)
    try:
        async def run() -> None:
            store = FlakyStore(store_backend.location)
            st = ResponderState(make_fleet(2, 3).fleet, store)
            await st.start()
            await st.change(down("w1"))
            assert rec.assignments and {a["epoch"] for a in rec.assignments} == {store.epoch}
            assert {a["epoch"] for a in st.all_assignments()} == {store.epoch}
            assert st.current_assignment("c1")["epoch"] == store.epoch
            await st.stop()
            store.close()

        asyncio.run(run())
    finally:
        notify.unregister_factory("recorder-epoch")


def test_a_refused_commit_changes_neither_memory_nor_metrics(store_backend):
    async def run() -> None:
        store = FlakyStore(store_backend.location)
        st = ResponderState(make_fleet(2, 3).fleet, store)
        await st.start()
        assert st.readiness() == (True, None)
        before = {c: replace(a) for c, a in st.assignments.items()}
        store.fail = DISK_FULL
        for _ in range(20):
            try:
                await st.change(down("w1"))
            except StoreError as exc:
                assert exc.reason == DISK_FULL
            else:
                raise AssertionError("the commit should have failed")
        assert failover_count(st, "w1") == 0
        assert st.workers["w1"].state == "up" and st.assignments == before
        assert st.readiness() == (False, "state store: disk full")
        try:
            await st.upkeep.check_store()  # still full: still not ready
            raise AssertionError("the check should have failed")
        except StoreError:
            assert st.readiness() == (False, "state store: disk full")
        store.fail = None
        await st.upkeep.check_store()
        assert st.readiness() == (True, None)
        await st.change(down("w1"))
        assert failover_count(st, "w1") == 1 and st.workers["w1"].state == "down"
        await st.stop()
        store.close()

    asyncio.run(run())


def test_a_start_that_cannot_commit_serves_what_the_store_holds(store_backend):
    async def run() -> None:
        path = store_backend.location
        first = ResponderState(make_fleet(2, 3).fleet, open_store(path))
        await first.start()
        await first.change(down("w1"))
        await first.stop()
        first.store.close()

        store = FlakyStore(path)
        store.fail = DISK_FULL
        st = ResponderState(make_fleet(3, 3).fleet, store)  # a new worker, w3: not committed
        await st.start()
        assert st.start_pending and st.readiness() == (False, "state store: disk full")
        assert st.current_assignment("c1")["worker"] == "w2"  # what the store holds
        assert [w["name"] for w in st.all_workers()] == ["w1", "w2", "w3"]  # no KeyError
        try:
            await st.change(down("w2"))
            raise AssertionError("the change should have been refused")
        except StoreError:
            pass
        store.fail = None
        await st.upkeep.check_store()  # commits the start-up plan first
        assert not st.start_pending and "w3" in st.workers
        assert [e["kind"] for e in store.events(0, 1000)].count("start") == 2
        await st.stop()
        store.close()

    asyncio.run(run())


def test_retention_prunes_old_events_on_the_states_clock_and_keeps_assignments(store_backend):
    async def run() -> None:
        now = [1_000_000.0]
        gen = make_fleet(2, 3)
        settings = gen.fleet.responder.model_copy(update={"events_max_age_seconds": 3600,
                                                          "events_max_rows": 5000})
        fleet = gen.fleet.model_copy(update={"responder": settings})
        store = open_store(store_backend.location)
        st = ResponderState(fleet, store, clock=lambda: now[0])
        await st.start()
        await st.upkeep.stop()  # prune by hand below, not in the background at the same time
        # 3 hours of events, one a second, written straight into the store.
        for hour in range(3):
            store.commit(Tx(events=[Event("client-applied", client="c1", data={"i": i},
                                          ts=now[0] + hour * 3600 + i) for i in range(3600)]))
        now[0] += 3 * 3600
        deleted, more = await st.upkeep.prune()
        assert not more and deleted >= 2 * 3600  # two hours, and the start's own events
        rows = store.events(0, 10_000)
        assert min(e["ts"] for e in rows) >= now[0] - 3600
        assert len(rows) <= 3600
        # The row limit, over several batches.
        settings = settings.model_copy(update={"events_max_age_seconds": 10**8,
                                               "events_max_rows": 1000})
        st.settings = settings
        deleted, more = await st.upkeep.prune()
        assert deleted >= PRUNE_BATCH // 2 and len(store.events(0, 10_000)) == 1000
        assert st.metrics.events_pruned._value.get() >= 2 * 3600
        assert len(st.assignments) == 3 and store.load().assignments.keys() == {"c1", "c2",
                                                                                  "c3"}
        await st.stop()
        store.close()

    asyncio.run(run())
