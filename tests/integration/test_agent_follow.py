"""The agent's follower against the real responder (no interface): SSE resumed with
Last-Event-ID, the long-poll fallback, a refused token, and the worker's own peers only."""

from __future__ import annotations

import asyncio
import base64
import os

import httpx
import pytest

from wg_failover.agent.follow import PeersFollower
from wg_failover.backoff import Backoff
from wg_failover.lab.gen import Generated, sha256_hex
from wg_failover.wire import WorkerPeers

pytestmark = [pytest.mark.timeout(60)]


def _fleet() -> Generated:
    from tests.helpers.responder import make_fleet

    gen = make_fleet(workers=2, clients=3)
    tokens = dict(gen.tokens, w1="w1-" + base64.urlsafe_b64encode(os.urandom(12)).decode())
    ws = [gen.fleet.workers[0].model_copy(update={"token_sha256": sha256_hex(tokens["w1"])}),
          *gen.fleet.workers[1:]]
    # c1 may use only w2: it is never among w1's peers.
    cs = [gen.fleet.clients[0].model_copy(update={"workers": ["w2"]}), *gen.fleet.clients[1:]]
    return Generated(gen.fleet.model_copy(update={"workers": ws, "clients": cs}), {}, tokens)


async def _follow(src: PeersFollower, want, timeout: float, position=lambda: (None, 0)):
    got: list[WorkerPeers] = []
    task = asyncio.create_task(src.run(got.append, position))
    try:
        async with asyncio.timeout(timeout):
            while not want(got):
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return got


def _enroll(p, name: str) -> str:
    with p.http("admin") as http:
        r = http.post("/v1/enroll-keys", json={"kind": "client", "address": None})
        assert r.status_code == 201, r.text
        key = r.json()["key"]
    pub = base64.b64encode(os.urandom(32)).decode()
    r = httpx.post(p.url + "/v1/enroll", headers={"Authorization": f"Bearer {key}"},
                   json={"name": name, "public_key": pub, "address": "10.83.0.9/32"}, timeout=10)
    assert r.status_code == 201, r.text
    return pub


@pytest.mark.parametrize("mode", ["sse", "longpoll"])
def test_follower_gets_its_peers_then_each_change(responder_factory, mode):
    p = responder_factory(_fleet())

    async def scenario() -> None:
        src = PeersFollower(p.url, "w1", p.tokens["w1"], longpoll_wait=10)
        src.mode = mode
        got = await _follow(src, lambda g: len(g) >= 1, 10)
        first = got[0]
        assert first.worker == "w1" and first.version >= 1
        names = {e.name for e in first.peers}
        assert names == {"c2", "c3"}  # c1 is w2's only
        # Resume from what we have (Last-Event-ID, or ?version=): the change comes. A stream
        # opens with the current state (the agent drops a version it has); a long-poll waits.
        pos = (first.epoch, first.version)
        src = PeersFollower(p.url, "w1", p.tokens["w1"], longpoll_wait=10)
        src.mode = mode
        task = asyncio.create_task(_follow(
            src, lambda g: any(e.name == "n9" for w in g for e in w.peers), 10, lambda: pos))
        await asyncio.sleep(0.5)
        pub = await asyncio.to_thread(_enroll, p, "n9")
        later = await task
        assert all(w.version >= first.version and w.epoch == first.epoch for w in later)
        assert later[-1].version > first.version
        assert pub in {e.public_key for e in later[-1].peers}
        if mode == "longpoll":
            assert len(later) == 1

    asyncio.run(scenario())


def test_follower_with_a_refused_token_delivers_nothing(responder_factory):
    p = responder_factory(_fleet())

    async def scenario() -> None:
        src = PeersFollower(p.url, "w1", "not-the-token", backoff=Backoff(base=0.05, cap=0.2))
        with pytest.raises(TimeoutError):
            await _follow(src, lambda g: len(g) >= 1, 1.5)
        # A client's token does not read a worker's peers either.
        src = PeersFollower(p.url, "w1", p.tokens["c2"], backoff=Backoff(base=0.05, cap=0.2))
        with pytest.raises(TimeoutError):
            await _follow(src, lambda g: len(g) >= 1, 1.0)

    asyncio.run(scenario())


def test_follower_passes_over_a_dead_replica_and_a_standby(responder_factory):
    """Replicas: a URL where nothing listens and one that answers 503 (as a standby does) are
    passed over at once, without the back-off that applies only when every URL failed."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from tests.helpers.wait import free_port

    class Standby(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(503)
            self.send_header("Retry-After", "1")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    standby = ThreadingHTTPServer(("127.0.0.1", 0), Standby)
    Thread(target=standby.serve_forever, daemon=True).start()
    p = responder_factory(_fleet())
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{standby.server_port}", p.url]

    async def scenario() -> None:
        # A slow back-off: were it applied between URLs, the peers would not come in time.
        src = PeersFollower(urls, "w1", p.tokens["w1"], backoff=Backoff(base=20, cap=20))
        got = await _follow(src, lambda g: len(g) >= 1, 5)
        assert {e.name for e in got[0].peers} == {"c2", "c3"}
        assert src.base == p.url

    try:
        asyncio.run(scenario())
    finally:
        standby.shutdown()


def test_follower_backs_off_when_every_replica_hangs_up_at_once():
    """Two replicas that accept the stream and close it at once, with nothing in it: the
    follower must not loop between them; the back-off applies once both failed in a row."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    hits = [0]

    class HangUp(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits[0] += 1
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), HangUp) for _ in range(2)]
    for s in servers:
        Thread(target=s.serve_forever, daemon=True).start()
    urls = [f"http://127.0.0.1:{s.server_port}" for s in servers]

    async def scenario() -> None:
        src = PeersFollower(urls, "w1", "t", backoff=Backoff(base=0.5, cap=0.5))
        with pytest.raises(TimeoutError):
            await _follow(src, lambda g: False, 2.0)

    try:
        asyncio.run(scenario())
    finally:
        for s in servers:
            s.shutdown()
    # Both URLs once, then 0.5 s (+ jitter) before each next pair: at most ~10 in 2 s; a
    # loop without the back-off makes hundreds.
    assert 2 <= hits[0] <= 12, hits[0]
