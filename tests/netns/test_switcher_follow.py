"""The follow path against the real responder (`wg-failover responder`, uvicorn + SQLite).

First the assignment source alone (SSE with Last-Event-ID, long-poll, a refused token) against a
responder on loopback; then the whole switcher in a lab, with the responder in a `master`
namespace on the underlay: a planned drain moves the routes, an assignment onto a worker the
probes see dead is rejected (and the responder hears why), a restart resumes from the cache.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.helpers.responder import responder, responder_factory  # noqa: F401 - fixtures
from wg_failover.backoff import Backoff
from wg_failover.client.cache import cache_path
from wg_failover.client.sources import HttpAssignmentSource
from wg_failover.lab import kit
from wg_failover.lab.procs import poll_until


async def _collect(src: HttpAssignmentSource, got: list, want: int, timeout: float,
                   after: int = 0) -> None:
    def deliver(a) -> None:
        got.append(a)

    def last() -> int:
        return max([after, *(a.version for a in got)])

    task = asyncio.create_task(src.run(deliver, last))
    try:
        async with asyncio.timeout(timeout):
            while len(got) < want:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _drain(resp, worker: str) -> None:
    r = httpx.post(f"{resp.url}/v1/workers/{worker}/drain", headers=resp.headers("admin"),
                   timeout=10)
    assert r.status_code == 200, r.text


@pytest.mark.timeout(60)
def test_source_follows_sse_resumes_and_long_polls(responder):  # noqa: F811
    token = responder.tokens["c1"]

    async def scenario() -> None:
        src = HttpAssignmentSource(responder.url, "c1", token)
        got: list = []
        await _collect(src, got, 1, 10)
        first = got[0]
        assert first.client == "c1" and first.worker == "w1" and first.version >= 1

        # Resume after the version we have: nothing old again, only the next one.
        await asyncio.to_thread(_drain, responder, first.worker)
        again: list = []
        await _collect(HttpAssignmentSource(responder.url, "c1", token), again, 1, 10,
                       after=first.version)
        assert again[0].version > first.version and again[0].worker != first.worker

        # Long-poll (the fallback) delivers the next version too.
        lp = HttpAssignmentSource(responder.url, "c1", token, longpoll_wait=5)
        lp.mode = "longpoll"
        polled: list = []
        waiter = asyncio.create_task(_collect(lp, polled, 1, 10, after=again[0].version))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(_drain, responder, again[0].worker)
        await waiter
        assert polled[0].version > again[0].version

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_source_with_a_refused_token_delivers_nothing(responder, caplog):  # noqa: F811
    async def scenario() -> None:
        src = HttpAssignmentSource(responder.url, "c1", "not-the-token",
                                   backoff=Backoff(base=0.05, cap=0.1))
        got: list = []
        with pytest.raises(TimeoutError):
            await _collect(src, got, 1, 1.5)
        assert got == []

    caplog.set_level("INFO", logger="wg_failover.switcher")
    asyncio.run(scenario())
    assert "refused the token (401)" in caplog.text
    assert "not-the-token" not in caplog.text


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_switcher_follows_drains_rejects_dead_workers_and_resumes(netlab, tmp_path):
    sl = kit.build(netlab, tmp_path / "lab")
    sl.start_responder()
    state = tmp_path / "state"
    sw = sl.start_switcher(state, sl.responder_url)
    assert sw.wait_for(r"assignment v1: w1 is already active", 20), sw.text()

    ping = sl.start_ping(0.01)
    try:
        assert poll_until(lambda: len(ping.snapshot()) > 20, 10)
        # A planned drain through the responder: the routes move with one `wg set`.
        status, _ = sl.http("POST", "/v1/workers/w1/drain", "admin")
        assert status == 200
        assert sw.wait_for(r"switch w1 -> w2 \(assignment\): responder v2", 15), sw.text()
        assert sl.route_holder() == "w2"
        n = len(ping.snapshot())
        assert poll_until(lambda: len(ping.snapshot()) > n + 20, 10)

        # An assignment onto a worker the probes see dead is refused, and the responder is told.
        sl.kill_worker("w3")
        assert sw.wait_for(r"probe: w3 is down", 10), sw.text()
        status, _ = sl.http("POST", "/v1/workers/w2/drain", "admin")
        assert status == 200
        assert sw.wait_for(r"assignment v3: rejected w3: probes see w3 dead", 15), sw.text()
        assert sl.route_holder() == "w2"

        def responder_events() -> list:
            _status, body = sl.http("GET", "/v1/clients/c1", "c1")
            return body["events"] if isinstance(body, dict) else []

        def kinds() -> set:
            return {(e["kind"], e["data"].get("version")) for e in responder_events()}

        assert poll_until(lambda: {("client-applied", 1), ("client-applied", 2),
                                          ("client-rejected", 3)} <= kinds(), 10), kinds()
        assert sw.stop() == 0
        cached = json.loads(cache_path(state, "c1").read_text())
        assert cached["active"] == "w2" and cached["version"] == 3

        # A restart resumes after version 3: nothing is applied twice, the active peer stays.
        before = sl.client_peers()
        sw2 = sl.start_switcher(state, sl.responder_url)
        assert sw2.wait_for(r"resume: last responder version 3", 15), sw2.text()
        assert sw2.wait_for(r"probe: w2 is up", 15), sw2.text()
        n = len(ping.snapshot())
        assert poll_until(lambda: len(ping.snapshot()) > n + 50, 10)
        text = sw2.text()
        assert "switch " not in text and "assignment v" not in text, text
        assert sl.client_peers() == before
        assert sw2.stop() == 0
    finally:
        ping.stop()
