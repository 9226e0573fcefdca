"""The notifier seam, in process: a registered notifier sees every committed change."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from tests.helpers.responder import make_fleet
from wg_failover.responder import notify
from wg_failover.responder.state import ResponderState
from wg_failover.responder.store import open_store


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.assignments: list[dict] = []
        self.workers: list[dict] = []
        self.started_with: list[dict] | None = None
        self.stopped = False

    async def start(self, host) -> None:
        self.started_with = host.all_assignments()

    async def stop(self) -> None:
        self.stopped = True

    def assignment_changed(self, assignment: dict) -> None:
        self.assignments.append(assignment)

    def worker_changed(self, worker: dict) -> None:
        self.workers.append(worker)

    def client_status(self, client: str) -> dict:
        return {"seen": sum(1 for a in self.assignments if a["client"] == client)}


def test_registered_notifier_sees_committed_changes(tmp_path):
    rec = Recorder()
    notify.register_factory("recorder-test", lambda fleet, settings: rec)
    try:
        gen = make_fleet(2, 3)

        async def run() -> None:
            st = ResponderState(gen.fleet, open_store(str(tmp_path / "db")))
            assert isinstance(rec, notify.Notifier)
            await st.start()
            assert rec.started_with == []  # notifiers start before the first plan...
            assert {a["client"] for a in rec.assignments} == {"c1", "c2", "c3"}  # ...and see it
            rec.assignments.clear()
            rec.workers.clear()

            def down(d):
                d.set_worker(replace(d.worker("w1"), state="down", since=d.now))

            await st.change(down)
            assert [w["name"] for w in rec.workers] == ["w1"]
            assert rec.workers[0]["state"] == "down"
            moved = {a["client"]: a for a in rec.assignments}
            assert moved["c1"]["worker"] == "w2" and moved["c1"]["version"] == 2
            assert st.notifiers.client_status("c1") == {"sse": {"subscribers": 0},
                                                       "recorder": {"seen": 1}}
            await st.stop()
            st.store.close()
            assert rec.stopped

        asyncio.run(run())
    finally:
        notify.unregister_factory("recorder-test")
