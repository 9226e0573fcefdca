"""The switcher follows its view (no fleet file) against the real responder, on real
wireguard-go in namespaces: it starts from the responder's view, a worker added to the fleet
becomes a warm peer, a removed one loses its peer without costing a client on another worker a
packet, with the responder gone it still fails over from its cached view, and a revoked client's
switcher says so and keeps its last view instead of exiting.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml

from wg_failover import wg
from wg_failover.backoff import Backoff
from wg_failover.client.cache import view_path
from wg_failover.client.view import HttpViewSource
from wg_failover.fleet import Fleet, dump_fleet
from wg_failover.lab import kit
from wg_failover.lab.procs import poll_until, stop_process, wgfo_argv


def _fleet(full: Fleet, workers: list[str]) -> Fleet:
    """The lab's fleet with only `workers`, the client allowed on those in that order."""
    ws = [w for w in full.workers if w.name in workers]
    cs = [c.model_copy(update={"workers": list(workers)}) for c in full.clients]
    return full.model_copy(update={"workers": ws, "clients": cs})


def _put(sl: kit.SwitcherLab, fleet: Fleet) -> dict:
    status, body = sl.http("PUT", "/v1/fleet?dry_run=false", "admin",
                           yaml.safe_load(dump_fleet(fleet)))
    assert status == 200, body
    assert isinstance(body, dict) and body["applied"], body
    return body


def _argv(sl: kit.SwitcherLab, state: Path, *extra: str) -> list[str]:
    """The switcher with only --responder, --token-file and --interface (and its name)."""
    assert sl.client_iface and sl.token_file and sl.responder_url
    return [*wgfo_argv("switcher"), "--client", sl.client.name,
            "--interface", sl.client_iface.name, "--responder", sl.responder_url,
            "--token-file", str(sl.token_file), "--state-dir", str(state), "--insecure-http",
            *extra]


def _start(sl: kit.SwitcherLab, state: Path) -> kit.SwitcherProc:
    assert sl.client_host
    log = sl.workdir / f"switcher-{time.monotonic_ns()}.log"
    argv = _argv(sl, state)
    with open(log, "w") as fh:
        proc = sl.client_host.popen(argv, stdout=fh, stderr=fh)
    return kit.SwitcherProc(proc, log)


def _handshaken(sl: kit.SwitcherLab, worker: str) -> bool:
    assert sl.client_iface is not None
    key = sl.fleet.worker(worker).public_key
    return any(p.public_key == key and p.latest_handshake > 0
               for p in sl.client_iface.dump().peers)


def _has_peer(sl: kit.SwitcherLab, worker: str) -> bool:
    assert sl.client_iface is not None
    key = sl.fleet.worker(worker).public_key
    return any(p.public_key == key for p in sl.client_iface.dump().peers)


async def _views(src: HttpViewSource, got: list, want: int, timeout: float,
                 after: int = 0) -> None:
    task = asyncio.create_task(src.run(got.append, lambda: max([after, *(v.version for v in got)]),
                                       lambda: got[-1].epoch if got else None))
    try:
        async with asyncio.timeout(timeout):
            while len(got) < want:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.timeout(60)
def test_view_source_streams_long_polls_and_names_a_revoked_token(responder, caplog):
    token = responder.tokens["c1"]
    admin = responder.headers("admin")

    async def scenario() -> None:
        got: list = []
        await _views(HttpViewSource(responder.url, "c1", token), got, 1, 10)
        first = got[0]
        assert first.client == "c1" and [w.name for w in first.workers] == ["w1", "w2", "w3"]
        # Nothing about other clients: no other client's name or key (a substring test on the
        # JSON failed once on a random key that happened to contain "c2").
        others = [c for c in responder.fleet.clients if c.name != "c1"]
        values = set(_strings(first.model_dump()))
        assert not values & {c.name for c in others} and \
            not values & {c.public_key for c in others}

        # Long-poll (the fallback) answers the next fleet version that changes the view.
        lp = HttpViewSource(responder.url, "c1", token, longpoll_wait=5)
        lp.mode = "longpoll"
        polled: list = []
        waiter = asyncio.create_task(_views(lp, polled, 1, 15, after=first.version))
        await asyncio.sleep(0.5)
        fleet = responder.fleet
        c1 = fleet.client("c1").model_copy(update={"workers": ["w2", "w1"]})
        fleet = fleet.model_copy(update={"clients": [c1, *fleet.clients[1:]]})
        async with httpx.AsyncClient() as http:
            r = await http.put(f"{responder.url}/v1/fleet", headers=admin, timeout=10,
                               json=yaml.safe_load(dump_fleet(fleet)))
            assert r.status_code == 200, r.text
        await waiter
        assert polled[0].version > first.version
        assert [w.name for w in polled[0].workers] == ["w2", "w1"]

        # Revoked: the stream ends, the next request gets 401, and the log says what it means.
        async with httpx.AsyncClient() as http:
            r = await http.delete(f"{responder.url}/v1/clients/c1", headers=admin, timeout=10)
            assert r.status_code == 200, r.text
        src = HttpViewSource(responder.url, "c1", token, backoff=Backoff(base=0.05, cap=0.1))
        with pytest.raises(TimeoutError):
            await _views(src, [], 1, 1.5)

    caplog.set_level("INFO", logger="wg_failover.switcher")
    asyncio.run(scenario())
    assert "refused the token (401): the client was revoked" in caplog.text
    assert token not in caplog.text


@pytest.mark.netns
@pytest.mark.timeout(150)
def test_switcher_follows_its_view_without_a_fleet_file(netlab, tmp_path, monkeypatch):
    monkeypatch.delenv("WG_FAILOVER_FLEET", raising=False)
    sl = kit.build(netlab, tmp_path / "lab")
    full = sl.fleet
    # The responder starts with w1 and w2; w3 runs already (its config has the client as a
    # peer) but is not in the fleet yet, and the client's interface does not have it.
    assert sl.fleet_file and sl.client_iface
    sl.fleet_file.write_text(dump_fleet(_fleet(full, ["w1", "w2"])))
    wg.set_peer(sl.client_iface.name, full.worker("w3").public_key, remove=True)
    sl.start_responder()
    state = tmp_path / "state"
    sw = _start(sl, state)
    assert sw.wait_for(r"view: none cached", 15), sw.text()
    assert sw.wait_for(r"assignment v\d+: w1 is already active", 20), sw.text()
    cached = json.loads(view_path(state, "c1").read_text())
    assert [w["name"] for w in cached["workers"]] == ["w1", "w2"]
    assert set(cached) >= {"client", "address", "routes", "workers"}
    assert not _has_peer(sl, "w3")

    ping = sl.start_ping(0.01)
    try:
        assert poll_until(lambda: len(ping.snapshot()) > 20, 10)

        # A worker joins: a warm peer (handshake) on the switcher within seconds.
        t0 = time.monotonic()
        _put(sl, _fleet(full, ["w1", "w2", "w3"]))
        assert sw.wait_for(r"view v\d+ \(was v\d+\): added w3", 10), sw.text()
        assert poll_until(lambda: _handshaken(sl, "w3"), 10, 0.05), sw.text()
        warm = time.monotonic() - t0
        assert warm < 5, f"w3 warm after {warm:.1f} s"
        assert sw.wait_for(r"probe: w3 is up", 5), sw.text()

        # A worker leaves (not the active one): its peer goes, the traffic on w1 loses nothing.
        t1 = time.time()
        _put(sl, _fleet(full, ["w1", "w3"]))
        assert sw.wait_for(r"removed w2", 10), sw.text()
        assert poll_until(lambda: not _has_peer(sl, "w2"), 5), sl.client_peers()
        n = len(ping.snapshot())
        assert poll_until(lambda: len(ping.snapshot()) > n + 50, 10)
        answered, lost = ping.lost_between(t1, time.time())
        assert answered > 50 and lost == 0, (answered, lost)
        assert sl.route_holder() == "w1"
        assert [w["name"] for w in json.loads(view_path(state, "c1").read_text())["workers"]] \
            == ["w1", "w3"]

        # --once follows the view too: the current one from the responder, applied, exit 0.
        assert sl.client_host is not None
        once = sl.client_host.run(_argv(sl, tmp_path / "once", "--once"), check=False,
                                  timeout=30)
        assert once.returncode == 0, once.stderr
        assert re.search(r"view: v\d+ from the responder: w1, w3", once.stderr), once.stderr
        assert sl.route_holder() == "w1"

        # The responder goes away; a restarted switcher runs on its cached view and still
        # fails over on its own.
        assert sw.stop() == 0
        assert sl.responder_proc is not None
        stop_process(sl.responder_proc, 5)
        sw = _start(sl, state)
        assert sw.wait_for(r"view: v\d+ from .*: w1, w3", 15), sw.text()
        assert sw.wait_for(r"probe: w3 is up", 15), sw.text()
        sl.kill_worker("w1")
        assert sw.wait_for(r"switch w1 -> w3 \(failover\)", 10), sw.text()
        assert sl.route_holder() == "w3"
        n = len(ping.snapshot())
        assert poll_until(lambda: len(ping.snapshot()) > n + 20, 10), "no traffic via w3"

        # Revoked: its token gets 401; the switcher says so and keeps its last view running.
        sl.fleet_file.write_text(dump_fleet(_fleet(full, ["w1", "w3"])))
        sl.start_responder()
        status, _ = sl.http("DELETE", "/v1/clients/c1", "admin")
        assert status in (200, 204), status
        status, _ = sl.http("GET", "/v1/clients/c1/view", "c1")
        assert status == 401, status
        assert sw.wait_for(r"refused the token \(401\)", 40), sw.text()
        time.sleep(1)
        assert sw.proc.poll() is None, sw.text()
        assert [w["name"] for w in json.loads(view_path(state, "c1").read_text())["workers"]] \
            == ["w1", "w3"]
        assert "Traceback" not in sw.text()
        assert sw.stop() == 0
    finally:
        ping.stop()


def _strings(value: object) -> list[str]:
    """Every string in a JSON-like value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
