"""The switcher's parts that talk to the responder, with several responder URLs (replicas,
DESIGN.md "How it grows past one machine"), against real responders (uvicorn + SQLite): the
assignment stream, the view fetch and the reporter pass over a dead URL and a standby (503) at
once, and go on with the other replica when the one they used is killed.

Two SQLite responders are two stores (two epochs), not replicas of one database; for moving
between URLs that is the same, and the switcher takes another store's epoch as it always does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import httpx
import pytest

from tests.helpers.wait import free_port
from wg_failover.backoff import Backoff
from wg_failover.client.reporter import Reporter
from wg_failover.client.sources import HttpAssignmentSource
from wg_failover.client.view import HttpViewSource
from wg_failover.wire import Assignment

pytestmark = [pytest.mark.timeout(90)]

# Were the backoff applied between URLs, nothing would arrive within the tests' bounds.
SLOW = dict(base=20.0, cap=20.0)


class _Standby(BaseHTTPRequestHandler):
    """Answers every request as a standby replica does: 503, Retry-After 1."""

    def _answer(self) -> None:
        self.send_response(503)
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def standby():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Standby)
    Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused


def client_events(p, client: str = "c1") -> set[tuple[str, object]]:
    r = httpx.get(f"{p.url}/v1/clients/{client}", headers=p.headers(client), timeout=10)
    assert r.status_code == 200, r.text
    return {(e["kind"], e["data"].get("version")) for e in r.json()["events"]}


async def until(pred, timeout: float, what: str) -> float:
    """Seconds until `pred()` held (AssertionError naming `what` after `timeout`)."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


def follow(src: HttpAssignmentSource, got: list[Assignment]) -> asyncio.Task:
    def last() -> int:
        return got[-1].version if got else 0

    return asyncio.create_task(src.run(got.append, last, lambda: got[-1].epoch if got else None))


async def stop(*tasks: asyncio.Task) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def following(urls: list[str], token: str, backoff: dict = SLOW):
    """c1's assignment source and reporter on `urls`, running: (source, delivered, reporter)."""
    src = HttpAssignmentSource(urls, "c1", token, backoff=Backoff(**backoff))
    reporter = Reporter(urls, "c1", token, backoff=Backoff(**backoff))
    got: list[Assignment] = []
    tasks = [follow(src, got), asyncio.create_task(reporter.run())]
    try:
        yield src, got, reporter
    finally:
        await stop(*tasks)


def test_a_dead_url_and_a_standby_are_passed_over_by_stream_fetch_and_reports(responder,
                                                                              standby):
    p = responder
    urls = [dead_url(), standby, p.url]
    token = p.tokens["c1"]

    async def scenario() -> None:
        async with following(urls, token) as (src, got, reporter):
            await until(lambda: got, 5, "the first assignment through [dead, standby, live]")
            assert src.base == p.url
            first = got[0]
            assert (first.client, first.version) == ("c1", 1)
            reporter.post({"type": "applied", "version": first.version, "worker": first.worker})
            await until(lambda: reporter.sent == 1, 5, "the report through [dead, standby, live]")
            assert reporter.url == f"{p.url}/v1/clients/c1/events"
            # A change on the live replica arrives on the stream that found it.
            r = httpx.post(f"{p.url}/v1/workers/{first.worker}/drain",
                           headers=p.headers("admin"), timeout=10)
            assert r.status_code == 200, r.text
            await until(lambda: got[-1].version == 2, 5, "the drain's assignment")
            assert got[-1].worker != first.worker

            # One-shot fetches (`--once`, the first view) take every URL in turn too.
            for cls in (HttpAssignmentSource, HttpViewSource):
                one = cls(urls, "c1", token)
                async with one.http_client() as http:
                    answer = await one.fetch_current(http)
                assert answer is not None and answer.client == "c1", cls
            # And the view stream (a switcher without a fleet file) finds the live one.
            views: list = []
            view_src = HttpViewSource(urls, "c1", token, backoff=Backoff(**SLOW))
            vtask = asyncio.create_task(view_src.run(views.append, lambda: 0, lambda: None))
            try:
                await until(lambda: views, 5, "a view through [dead, standby, live]")
            finally:
                await stop(vtask)
            assert views[0].client == "c1" and view_src.base == p.url

    asyncio.run(scenario())
    assert ("client-applied", 1) in client_events(p)


def test_only_dead_urls_back_off_instead_of_spinning(standby):
    """Every URL failing in a row is when the backoff applies: a round of refusals and 503s is
    a handful of requests per backoff period, not a busy loop."""
    urls = [dead_url(), standby]

    async def scenario() -> None:
        failures: dict[str, list[str]] = {"source": [], "reporter": []}

        def count(who: str, eps) -> None:  # before the tasks first run
            real = eps.failed
            eps.failed = lambda url=None: (failures[who].append(url), real(url))[1]

        async with following(urls, "t", dict(base=0.4, cap=0.4)) as (src, got, reporter):
            count("source", src.eps)
            count("reporter", reporter.eps)
            reporter.post({"type": "applied", "version": 1, "worker": "w1"})
            await asyncio.sleep(2.0)
        assert not got and reporter.sent == 0 and len(reporter.queue) == 1
        for who, seen in failures.items():
            # 2 s at 0.2-0.4 s a round after the first: at most ~2 URLs x 11 rounds.
            assert 4 <= len(seen) <= 24, (who, len(seen))
            assert {u.removesuffix("/v1/clients/c1/events") for u in seen} == set(urls), who

    asyncio.run(scenario())


def test_the_replica_in_use_killed_stream_and_reports_go_on_with_the_other_and_come_back(
        responder_factory):
    p1 = responder_factory()
    # The same fleet and tokens, its own store; keep-alives often, so the stream can be seen
    # going back to the first URL soon after it may.
    p2 = responder_factory(p1.gen, env={"WGFO_SSE_KEEPALIVE_SECONDS": "0.5"})
    urls = [p1.url, p2.url]
    token = p1.tokens["c1"]

    async def scenario() -> None:
        async with following(urls, token) as (src, got, reporter):
            await until(lambda: got, 5, "the first assignment")
            assert src.base == p1.url
            p1_epoch = got[-1].epoch
            reporter.post({"type": "applied", "version": 1, "worker": got[-1].worker})
            await until(lambda: reporter.sent == 1, 5, "a report to the first replica")

            p1.kill()
            took = await until(lambda: got[-1].epoch != p1_epoch, 5,
                               "the other replica's assignment after the kill")
            print(f"\nkill -9 of the replica in use -> the other's assignment: {took:.2f} s")
            assert src.base == p2.url
            # The other replica's changes come in on the stream that moved.
            r = p2.alert(got[-1].worker)
            assert r.status_code == 200, r.text
            was = got[-1].worker
            await until(lambda: got[-1].worker != was, 10, "the failover on the other replica")

            reporter.post({"type": "applied", "version": got[-1].version,
                           "worker": got[-1].worker})
            await until(lambda: reporter.sent == 2, 5, "a report after the kill")
            assert reporter.url == f"{p2.url}/v1/clients/c1/events"

            # The first replica back: after `home_after` away, stream and reports return to it.
            await asyncio.to_thread(p1.restart)
            src.eps.home_after = reporter.eps.home_after = 1.0
            took = await until(lambda: got[-1].epoch == p1_epoch, 10,
                               "the stream back on the first replica")
            print(f"first replica back -> the stream on it again: {took:.2f} s")
            assert src.base == p1.url
            reporter.post({"type": "applied", "version": 1, "worker": "w1"})
            await until(lambda: reporter.sent == 3, 5, "a report after the first came back")
            assert reporter.url == f"{p1.url}/v1/clients/c1/events"

    asyncio.run(scenario())
    assert any(kind == "client-applied" for kind, _ in client_events(p2))


# ------------------------------------------------------------------ the command line


@pytest.fixture
def argv(tmp_path) -> list[str]:
    from tests.helpers.fleets import VALID
    from tests.helpers.tools import WG_FAILOVER

    fleet = tmp_path / "fleet.yaml"
    assert 'url: "http://master.example.net:8080"' in VALID
    fleet.write_text(VALID.replace(
        'url: "http://master.example.net:8080"',
        'url: "http://127.0.0.1:9"\n  urls: ["http://127.0.0.1:9", "http://198.18.0.8:8080"]'))
    (tmp_path / "token").write_text("s3cret-token\n")
    return [WG_FAILOVER, "switcher", "--fleet", str(fleet), "--client", "bob-phone",
            "--interface", "wgfo-none0", "--token-file", str(tmp_path / "token"),
            "--state-dir", str(tmp_path / "state")]


def _run(argv: list[str]) -> tuple[int, str]:
    import subprocess

    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("extra, refused", [
    ([], "198.18.0.8"),  # the fleet's responder.urls, every one checked
    (["--responder", "http://127.0.0.1:9", "--responder", "http://198.18.0.1:8080"],
     "198.18.0.1"),
    (["--responder", "http://127.0.0.1:9,http://198.18.0.2:8080"], "198.18.0.2"),
])
def test_every_responder_url_passes_the_plain_http_check(argv, extra, refused):
    rc, out = _run([*argv, *extra])
    assert rc == 2, out
    assert f"refusing plain HTTP to {refused}" in out and "Traceback" not in out, out
    assert "s3cret" not in out


def test_loopback_urls_from_flags_pass_on_to_the_interface_check(argv):
    rc, out = _run([*argv, "--responder", "http://127.0.0.1:9, http://127.0.0.1:10",
                    "--responder", "http://[::1]:11"])
    assert rc == 2, out
    assert "interface wgfo-none0" in out and "clear text" not in out, out
    rc, out = _run([*argv, "--responder", " , "])
    assert rc == 2 and "--responder: no URL" in out, out


def test_node_json_may_list_the_replicas(tmp_path):
    import argparse
    import json

    from wg_failover.client.cli import node_defaults
    from wg_failover.endpoints import split_urls

    (tmp_path / "node.json").write_text(json.dumps({
        "kind": "client", "name": "c9", "interface": "wg7",
        "responder": ["https://r1:8443", "https://r2:8443"], "token_file": "/d/token"}))
    args = argparse.Namespace(state_dir=str(tmp_path), client=None, interface=None,
                              responder=None, token_file=None, ca_file=None, fleet=None)
    node_defaults(args)
    assert split_urls(args.responder) == ["https://r1:8443", "https://r2:8443"]
