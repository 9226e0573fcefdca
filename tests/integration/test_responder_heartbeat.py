"""A real responder keeps a client's data-plane vote while the client only heartbeats, and drops
it once the client falls silent past its heartbeat + 15 s; a report without a heartbeat (an
older switcher) keeps the old 30 s. Takes about 40 s: the windows are real seconds."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.helpers.responder import ResponderProc, make_fleet, unlimited_reports

HEARTBEAT = 20.0  # the responder keeps the vote max(30, 20 + 15) = 35 s


def post(p: ResponderProc, client: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{p.url}/v1/clients/{client}/events", json=body,
                      headers=p.headers(client), timeout=10, verify=p.verify)


def reporters(p: ResponderProc, worker: str) -> tuple[float | None, float | None]:
    """(wgfo_client_observed_up, wgfo_client_observed_reporters) for `worker`."""
    text = httpx.get(f"{p.url}/metrics", timeout=10, verify=p.verify).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("wgfo_client_observed_up", "wgfo_client_observed_reporters"):
            if line.startswith(f'{name}{{worker="{worker}"}} '):
                found[name] = float(line.rsplit(" ", 1)[1])
    return found.get("wgfo_client_observed_up"), found.get("wgfo_client_observed_reporters")


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def test_heartbeats_keep_the_vote_silence_loses_it(tmp_path):
    p = ResponderProc.start(tmp_path / "r", make_fleet(2, 3), args=unlimited_reports())
    try:
        vote = {"type": "probe", "workers": {"w1": {"up": False, "rtt_ms": None, "loss": 1.0},
                                             "w2": {"up": True, "rtt_ms": 3.0, "loss": 0.0}}}
        # A heartbeat the wire does not allow is refused with its field path, never kept.
        for bad in (0, -5, 301, "20", None.__class__.__name__):
            r = post(p, "c1", {**vote, "heartbeat_s": bad})
            assert r.status_code == 422, r.text
            assert "heartbeat_s" in r.text
        assert reporters(p, "w1") == (None, 0.0)

        sent = {}
        for client, extra in (("c1", {"heartbeat_s": HEARTBEAT}),
                              ("c2", {"heartbeat_s": HEARTBEAT}), ("c3", {})):
            sent[client] = time.monotonic()
            assert post(p, client, {**vote, **extra}).status_code == 202
        assert reporters(p, "w1") == (0.0, 3.0)  # three clients vote w1 down

        # c1 only heartbeats (the same summary again); c2 and c3 fall silent.
        sleep_until(sent["c1"] + HEARTBEAT)
        assert post(p, "c1", {**vote, "heartbeat_s": HEARTBEAT}).status_code == 202

        # Past 30 s: the older switcher's vote (no heartbeat) is gone as it always was; the
        # heartbeating clients' votes hold.
        sleep_until(sent["c3"] + 30.5)
        assert time.monotonic() < sent["c2"] + 34, "the machine is too slow for this check"
        assert reporters(p, "w1") == (0.0, 2.0)

        # Past c2's heartbeat + 15 s in silence: its vote is gone; c1's (heard 16 s ago) holds.
        sleep_until(sent["c2"] + HEARTBEAT + 15 + 0.5)
        assert reporters(p, "w1") == (0.0, 1.0)
        assert reporters(p, "w2") == (1.0, 1.0)
    finally:
        p.stop()


def test_the_answer_advises_a_heartbeat_for_the_fleets_size_and_the_reporter_takes_it(tmp_path):
    """50 clients and a budget of 2 heartbeats a second: 25 s each, said in every accepted
    report's answer (wire.ReportAccepted), read by the switcher's reporter."""
    import asyncio

    from client.reporter import Reporter
    from wg_failover.wire import ReportAccepted

    p = ResponderProc.start(tmp_path / "r", make_fleet(2, 50),
                            args=(*unlimited_reports(), "--report-budget", "2"))
    try:
        vote = {"type": "probe", "workers": {"w1": {"up": True, "rtt_ms": 3.0, "loss": 0.0}}}
        r = post(p, "c1", vote)
        assert r.status_code == 202
        assert ReportAccepted.model_validate_json(r.content).heartbeat_s == 25.0
        # Refused reports carry no advice (the error shape stands).
        assert "heartbeat_s" not in post(p, "c1", {"type": "probe"}).json()

        async def scenario() -> list[float | None]:
            got: list[float | None] = []
            rep = Reporter([p.url], "c2", p.tokens["c2"], on_advice=got.append)
            task = asyncio.create_task(rep.run())
            rep.post({"type": "applied", "version": 1, "worker": "w1"})  # no advice: not probe
            rep.post({**vote, "heartbeat_s": 35.0})
            for _ in range(100):
                if rep.sent == 2:
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return got

        assert asyncio.run(scenario()) == [25.0]
    finally:
        p.stop()
    out = ResponderProc.start(tmp_path / "r2", make_fleet(2, 3))  # the default budget
    try:
        assert post(out, "c1", vote).json() == {"accepted": True, "heartbeat_s": 0.1}
    finally:
        out.stop()


def test_the_advice_grows_with_the_fleet_within_its_bounds():
    from responder.limits import ADVICE_CAP, REPORT_BUDGET, advised_heartbeat

    assert advised_heartbeat(100_000, REPORT_BUDGET) == 50.0  # 2,000 heartbeats a second
    assert advised_heartbeat(60_000, REPORT_BUDGET) == 30.0  # the switchers' own default
    assert advised_heartbeat(3, REPORT_BUDGET) == 0.1  # never 0: the wire wants > 0
    assert advised_heartbeat(100_001, REPORT_BUDGET) == 50.1  # rounded up: within the budget
    assert advised_heartbeat(10**7, REPORT_BUDGET) == ADVICE_CAP


def test_after_a_restart_the_responder_says_it_rebuilds_the_votes(tmp_path):
    """A first start has no votes to rebuild; a restart lost them (memory only) and says so for
    a heartbeat + 15 s (metrics.rebuild_window), which the rules read: a restart faster than a
    scrape never shows as `up == 0`."""
    p = ResponderProc.start(tmp_path / "r", make_fleet(2, 3))
    try:
        def gauge() -> str:
            text = httpx.get(f"{p.url}/metrics", timeout=10).text
            return next(line for line in text.splitlines()
                        if line.startswith("wgfo_responder_votes_rebuilding "))

        assert gauge() == "wgfo_responder_votes_rebuilding 0.0"
        p.restart()
        assert gauge() == "wgfo_responder_votes_rebuilding 1.0"
    finally:
        p.stop()
