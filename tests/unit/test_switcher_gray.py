"""Issue 18 on the switcher's side, as plain logic: the burst after a missed probe, the
gray-failure rule (loss and RTT) with its hysteresis, ICMPv6 echoes, and the prober's schedule.

`simulate` drives the real Decider with a seeded model of the prober (same deadlines, same burst
schedule) over many simulated minutes in well under a second: the no-false-switch and
detection-time claims are checked here on the logic, and measured on real parts by bench/gray.py.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import socket
from collections.abc import Callable

import pytest

from wg_failover.client.decisions import (
    BACKUP_BURST,
    DOWN,
    UP,
    Decider,
    GraySettings,
    Note,
    Report,
    Settings,
    Switch,
)
from wg_failover.client.probe import IcmpProber, echo_request, parse_echo_reply
from wg_failover.wire import Assignment, ClientEvent

W = ["w1", "w2", "w3"]
BURST = Settings(k=3, burst_interval=0.01, burst_misses=3)
GRAY = Settings(k=3, burst_interval=0.01, burst_misses=3, gray=GraySettings())


def switches(actions) -> list[Switch]:
    return [a for a in actions if isinstance(a, Switch)]


def warm(d: Decider, now: float = 0.0, n: int = 30, rtt: dict | None = None) -> float:
    """n answered probes per worker, 100 ms apart; returns the time after them."""
    for i in range(n):
        for w in d.workers:
            d.on_reply(w, (rtt or {}).get(w, 0.001), now + i * 0.1)
    return now + n * 0.1


# --------------------------------------------------------------------------- the burst


def test_a_first_miss_on_the_active_worker_starts_a_burst_that_a_reply_ends():
    d = Decider(W, BURST, active="w1")
    t = warm(d)
    assert d.probe_interval("w1") is None
    d.on_miss("w1", t)
    assert d.probe_interval("w1") == 0.01
    # The backups faster too, but not as fast: each must answer before a verdict can take it.
    assert d.probe_interval("w2") == BACKUP_BURST > d.probe_interval("w1")
    d.on_reply("w1", 0.001, t + 0.02)
    assert d.probe_interval("w1") is None and d.probe_interval("w2") is None


def test_the_active_worker_is_down_after_its_first_miss_and_three_burst_misses():
    d = Decider(W, BURST, active="w1")
    t = warm(d)
    assert switches(d.on_miss("w1", t) + d.on_miss("w1", t + 0.02)
                    + d.on_miss("w1", t + 0.04)) == []
    assert d.health["w1"].state == UP, "3 misses in a row are not enough while bursting"
    d.on_reply("w2", 0.001, t + 0.05)  # a backup heard since w1 went quiet (see test_chaos_units)
    acts = d.on_miss("w1", t + 0.06)
    [sw] = switches(acts)
    assert (sw.to, sw.kind, sw.cause) == ("w2", "failover", "dead")
    [ev] = [a.event for a in acts if isinstance(a, Report) and a.event["type"] == "switch"]
    assert ev["cause"] == "dead" and "w1 missed 4 probes" in ev["reason"]
    assert d.probe_interval("w1") is None, "a dead worker is probed at the normal rate"


def test_backups_are_judged_on_k_misses_without_a_burst():
    d = Decider(W, BURST, active="w1")
    t = warm(d)
    for i in range(3):
        d.on_miss("w2", t + i * 0.1)
    assert d.health["w2"].state == DOWN


# --------------------------------------------------------------------------- gray failure


def lose_in_trial(d: Decider, worker: str, t: float, lost: int, answered: int,
                  rtt: float = 0.001) -> tuple[list, float]:
    """A first miss, then a burst with `lost` misses spread among `answered` answers."""
    acts = d.on_miss(worker, t)
    total = lost + answered
    misses = set(range(1, total, total // lost)[:lost]) if lost else set()
    for i in range(total):
        t += 0.02
        acts += d.on_miss(worker, t) if i in misses else d.on_reply(worker, rtt, t)
    return acts, t


def test_ten_percent_loss_in_a_trial_leaves_for_a_clean_backup_and_says_why():
    d = Decider(W, GRAY, active="w1")
    t = warm(d)
    acts, t = lose_in_trial(d, "w1", t, lost=10, answered=40)
    [sw] = switches(acts)
    assert (sw.from_, sw.to, sw.kind, sw.cause) == ("w1", "w2", "gray", "gray-loss")
    assert "w1 lost 10 of" in sw.reason and "w2 lost 0 of its last" in sw.reason
    [ev] = [a.event for a in acts if isinstance(a, Report) and a.event["type"] == "switch"]
    assert ev["cause"] == "gray-loss" and ev["elapsed_ms"] is None
    assert ClientEvent.validate_python(ev).model_dump(mode="json") == ev
    assert d.health["w1"].held_down(t + 5, 10), "the worker left is held down like a dead one"


def test_a_gray_move_goes_only_where_the_responder_agrees():
    """Chaos campaign (seed 1, 30 minutes): a gray move onto a worker the responder held down
    after its heal (not in the assignment's backups) was refused and bounced back: three moves
    for one fault. A gray move is no emergency: it takes the assignment's backups only."""
    d = Decider(W, GRAY, active="w1")
    t = warm(d)
    d.on_assignment(Assignment(client="c1", worker="w1", version=1, backups=("w3",)), t)
    acts, t = lose_in_trial(d, "w1", t, lost=10, answered=40)
    [sw] = switches(acts)
    assert (sw.from_, sw.to, sw.kind) == ("w1", "w3", "gray"), "w2 is not a backup now"

    d = Decider(W, GRAY, active="w1")
    t = warm(d)
    d.on_assignment(Assignment(client="c1", worker="w1", version=1, backups=()), t)
    acts, t = lose_in_trial(d, "w1", t, lost=10, answered=40)
    assert switches(acts) == [], "no backup the responder calls usable: stay"
    # ... while a dead active still fails over to any worker that answers (the fast path).
    acts = []
    for _ in range(8):
        t += 0.1
        acts += d.on_reply("w2", 0.001, t) + d.on_reply("w3", 0.001, t) + d.on_miss("w1", t)
    [sw] = switches(acts)
    assert sw.kind == "failover" and sw.to == "w2"


def stall(d: Decider, t: float, seconds: float) -> float:
    """Every worker silent at once (the client's WireGuard starved of CPU): each misses its
    probes, 40 ms apart, for `seconds`."""
    for _ in range(int(seconds / 0.04)):
        t += 0.04
        for w in W:
            assert switches(d.on_miss(w, t)) == []
    return t


def test_a_silence_of_every_worker_at_once_is_local_and_waits_for_the_active():
    """Chaos campaign under CPU starvation: all three workers silent for 150-400 ms, then the
    backups' answers processed a moment before the active's made a false failover."""
    d = Decider(W, BURST, active="w1")
    t = stall(d, warm(d), 0.3)
    assert d.health["w1"].state == DOWN
    acts = d.on_reply("w2", 0.3, t + 0.005) + d.on_reply("w3", 0.3, t + 0.006)
    assert switches(acts) == [], "the backups came back together with the active's silence"
    acts = d.on_reply("w1", 0.3, t + 0.02)
    assert switches(acts) == [] and d.active == "w1" and d.health["w1"].state == UP

    # The active stays silent after the others answered again: it is dead, fail over.
    d = Decider(W, BURST, active="w1")
    t = stall(d, warm(d), 0.3)
    d.on_reply("w2", 0.3, t + 0.005)
    assert switches(d.on_miss("w1", t + 0.1)) == []
    [sw] = switches(d.on_reply("w2", 0.001, t + 0.21) + d.on_miss("w1", t + 0.22))
    assert (sw.from_, sw.to, sw.kind) == ("w1", "w2", "failover")


def test_an_active_dead_alone_fails_over_at_once():
    d = Decider(W, BURST, active="w1")
    t = warm(d)
    acts = []
    for _ in range(6):
        t += 0.04
        acts += d.on_reply("w2", 0.001, t) + d.on_reply("w3", 0.001, t) + d.on_miss("w1", t)
        if switches(acts):
            break
    [sw] = switches(acts)
    assert sw.to == "w2" and sw.kind == "failover"


def test_a_trial_with_little_loss_ends_and_the_burst_stops():
    d = Decider(W, GRAY, active="w1")
    t = warm(d)
    acts, t = lose_in_trial(d, "w1", t, lost=3, answered=97)
    assert switches(acts) == []
    assert not d.health["w1"].trial and d.probe_interval("w1") is None


def test_no_gray_switch_without_a_clean_backup():
    d = Decider(W, GRAY, active="w1")
    t = warm(d)
    for w in ("w2", "w3"):  # 2 of their last 50 lost: 4 %, over the 2 % a backup may lose
        d.on_miss(w, t)
        d.on_reply(w, 0.001, t + 0.05)
        d.on_miss(w, t + 0.1)
        d.on_reply(w, 0.001, t + 0.15)
    acts, t = lose_in_trial(d, "w1", t + 0.2, lost=20, answered=30)
    assert switches(acts) == [] and d.active == "w1"
    notes = [a.message for a in acts if isinstance(a, Note) and "no backup is clean" in a.message]
    assert len(notes) == 1, "said once"


def test_hold_time_stops_flapping_between_two_mediocre_workers():
    d = Decider(W[:2], GRAY, active="w1")
    t = warm(d)
    acts, t = lose_in_trial(d, "w1", t, lost=12, answered=30)
    assert [s.to for s in switches(acts)] == ["w2"]
    # w2 turns out no better at once: the fast path does not go back to w1 within the hold,
    # and w1 is held down anyway.
    acts, t = lose_in_trial(d, "w2", t + 0.1, lost=12, answered=30)
    assert switches(acts) == [] and d.active == "w2"


def test_rtt_ten_times_a_clean_backup_is_gray_but_a_small_absolute_rise_is_not():
    d = Decider(W, GRAY, active="w1")
    t = warm(d, rtt={"w1": 0.0003, "w2": 0.0003, "w3": 0.0003})
    # 0.3 ms -> 3 ms: ten times, but 2.7 ms more is nothing a user feels
    acts = []
    for i in range(25):
        acts += d.on_reply("w1", 0.003, t + i * 0.1)
        acts += d.on_reply("w2", 0.0003, t + i * 0.1)
    assert switches(acts) == []
    t += 3
    for i in range(25):
        acts += d.on_reply("w1", 0.100, t + i * 0.1)
        acts += d.on_reply("w2", 0.001, t + i * 0.1)
    [sw] = switches(acts)
    # As soon as the median of the last 20 moves: half of them slow (51.5 ms between 3 and 100)
    assert (sw.to, sw.cause) == ("w2", "gray-rtt") and "w1 median RTT 51.5 ms" in sw.reason


# --------------------------------------------------------------------------- seeded simulation


def simulate(settings: Settings, loss: Callable[[str, float], float], seconds: float,
             seed: int, interval: float = 0.1, rtt: float = 0.001, jitter: float = 0.0,
             late: bool = True) -> list[tuple[float, Switch]]:
    """The Decider fed by a model of the prober: per-worker schedules, the burst, the same
    deadlines as the switcher; each probe lost with probability loss(worker, t) (the round trip),
    else answered after rtt + two uniform +-jitter (one each way), late answers passed on as the
    prober does (unless late=False). Returns (time, switch) for every switch."""
    rng = random.Random(seed)
    d = Decider(W, settings, active="w1")
    due = dict.fromkeys(W, 0.0)
    last = dict.fromkeys(W, 0.0)
    events: list = []  # (time, n, kind, worker)
    n = 0
    out = []

    def step(w: str) -> float:
        b = d.probe_interval(w)
        return interval if b is None else b

    def after(w: str, t: float, acts: list) -> None:
        out.extend((t, a) for a in acts if isinstance(a, Switch))
        nd = last[w] + step(w)
        if nd < due[w]:
            due[w] = max(nd, t)

    t = 0.0
    while t < seconds:
        t_send = min(due.values())
        t_ev = events[0][0] if events else float("inf")
        if t_ev <= t_send:
            t, _, kind, w = heapq.heappop(events)
            if kind == "miss":
                after(w, t, d.on_miss(w, t))
            elif isinstance(kind, tuple):
                after(w, t, d.on_late(w, kind[1], t))
            else:
                after(w, t, d.on_reply(w, kind, t))
            continue
        t = t_send
        for w in W:
            if due[w] > t:
                continue
            dl = d.probe_deadline(w, interval, interval / 2)
            r = max(0.0, rtt + rng.uniform(-jitter, jitter) + rng.uniform(-jitter, jitter))
            n += 1
            if rng.random() < loss(w, t):
                heapq.heappush(events, (t + dl, n, "miss", w))
            elif r >= dl:
                heapq.heappush(events, (t + dl, n, "miss", w))
                if late:
                    heapq.heappush(events, (t + r, n, ("late", r), w))
            else:
                heapq.heappush(events, (t + r, n, r, w))
            last[w] = t
            due[w] = t + step(w)
    return out


def test_two_percent_probe_loss_everywhere_never_switches_in_ten_simulated_minutes():
    """bench/gray.py's soak: 1 % loss and 20 +- 15 ms each way on every worker (RTT 40 +- 30)."""
    for seed in range(2):
        sw = simulate(GRAY, lambda w, t: 0.02, 600, seed, rtt=0.040, jitter=0.015)
        assert sw == [], (seed, sw)


def test_a_late_answer_proves_the_worker_alive_and_reaches_the_rtt_estimate():
    """Without late answers the deadline is learnt from the answers that beat it only, and
    jitter alone makes runs of misses (the first 10-minute soak of bench/gray.py had two false
    switches)."""
    d = Decider(W, GRAY, active="w1")
    t = warm(d, rtt={"w1": 0.040, "w2": 0.040, "w3": 0.040})
    h = d.health["w1"]
    before = h.timeout(0.02, 0.02)
    for i in range(8):  # every burst probe misses its deadline, and its answer comes after
        acts = d.on_miss("w1", t + i * 0.02) + d.on_late("w1", 0.090, t + i * 0.02 + 0.001)
        assert switches(acts) == []
    assert h.state == UP and h.consecutive_misses == 0
    assert h.trial and h.trial_lost == 0, "late is not lost"
    assert h.timeout(0.02, 0.02) > before + 0.02, "the deadline follows the late answers"
    # A dead worker answers nothing late: the first miss and three burst misses, after at least
    # 150 ms of silence (burst_silence), still make it down.
    t += 1.0
    acts = []
    for i in range(4):
        acts += d.on_miss("w1", t + i * 0.02)
    acts += d.on_reply("w2", 0.001, t + 0.07)  # a backup heard since w1 went quiet
    [sw] = switches(acts)
    assert sw.cause == "dead"


def test_a_short_stall_is_not_a_death():
    """Four misses within 150 ms of the last answer (a loaded host or path stalling for a
    moment) wait for more silence; the next miss after 150 ms decides."""
    d = Decider(W, BURST, active="w1")
    t = warm(d)
    d.on_reply("w1", 0.001, t)
    acts = [a for i in range(4) for a in d.on_miss("w1", t + 0.03 + i * 0.02)]
    assert switches(acts) == [] and d.health["w1"].state == UP
    d.on_reply("w2", 0.001, t + 0.1)  # a backup heard since w1 went quiet
    [sw] = switches(d.on_miss("w1", t + 0.16))
    assert sw.cause == "dead"


def test_two_percent_loss_on_the_active_worker_alone_never_switches():
    for seed in range(2):
        sw = simulate(GRAY, lambda w, t: 0.02 if w == "w1" else 0.0, 600, 100 + seed)
        assert sw == [], (seed, sw)


def test_twenty_percent_loss_on_the_active_worker_is_left_within_three_seconds():
    times, causes = [], []
    for seed in range(20):
        sw = simulate(GRAY, lambda w, t: 0.2 if w == "w1" and t >= 5 else 0.0, 15, seed)
        assert sw, seed
        t, first = sw[0]
        # Four misses in a row (0.2**4 a try) can come first: then it is left as dead.
        assert first.from_ == "w1" and first.cause in ("gray-loss", "dead"), (seed, first)
        times.append(t - 5)
        causes.append(first.cause)
    # The tail is the wait for the first lost probe at the slow rate (0.8**n for n probes): 20
    # seeds include one that waits 2.4 s for it.
    assert pct95(times) < 3.0 and max(times) < 4.0, sorted(times)
    assert causes.count("gray-loss") >= 15, causes


def pct95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * len(values)) - 1]


def test_an_rtt_jump_past_the_deadline_is_left_as_gray_rtt_not_as_dead():
    """1 ms -> 101 ms at once: every probe is late (a miss), but its late answer keeps w1 alive
    and reaches the RTT median."""
    rng = random.Random(3)
    d = Decider(W, GRAY, active="w1")
    t = warm(d)
    acts = []
    for i in range(40):
        now = t + i * 0.1
        for w in ("w2", "w3"):
            acts += d.on_reply(w, 0.001 + rng.uniform(0, 0.0002), now)
        acts += d.on_miss("w1", now + 0.05) + d.on_late("w1", 0.101, now + 0.101)
        if switches(acts):
            break
    [sw] = switches(acts)
    assert sw.cause == "gray-rtt" and d.health["w1"].state == UP, sw


def test_a_dead_worker_is_left_within_about_200_ms_of_silence():
    for seed in range(10):
        kill = 5 + seed * 0.0137
        sw = simulate(GRAY, lambda w, t, k=kill: 1.0 if w == "w1" and t >= k else 0.0, 8, seed)
        t, first = sw[0]
        assert first.cause == "dead" and t - kill < 0.21, (seed, t - kill)


# --------------------------------------------------------------------------- ICMPv6 and the prober


def test_icmpv6_echo_request_and_reply():
    req = echo_request(0x1234, 7, v6=True)
    assert req[0] == 128 and req[2:4] == b"\0\0", "the kernel fills in an ICMPv6 checksum"
    reply = bytes([129]) + req[1:]
    assert parse_echo_reply(reply, True, v6=True) == (0x1234, 7)
    assert parse_echo_reply(req, True, v6=True) is None
    assert parse_echo_reply(reply, True, v6=False) is None


def _have_raw_icmp() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _have_raw_icmp(), reason="needs root (raw ICMP sockets)")
def test_prober_passes_on_an_answer_that_came_after_its_deadline():
    late: list[tuple[str, float]] = []
    missed: list[str] = []

    async def main() -> None:
        prober = IcmpProber({"v6": "::1"}, 10.0, lambda w, rtt, now: None,
                            lambda w, now: missed.append(w), lambda w: 10.0,
                            on_late=lambda w, rtt, now: late.append((w, rtt)))
        prober.open()
        loop = asyncio.get_running_loop()
        prober._add_readers(loop)
        try:
            prober._send(loop, "v6", "::1")
            prober._expire(prober.seq)  # its deadline passes before the answer is read
            await asyncio.sleep(0.2)
        finally:
            prober._remove_readers(loop)
            prober.close()

    asyncio.run(main())
    assert missed == ["v6"] and [w for w, _ in late] == ["v6"], (missed, late)


@pytest.mark.skipif(not _have_raw_icmp(), reason="needs root (raw ICMP sockets)")
def test_prober_answers_over_ipv4_and_ipv6_and_bursts_when_asked():
    replies: dict[str, int] = {"v4": 0, "v6": 0}
    burst = {"on": False}

    async def main() -> int:
        prober = IcmpProber({"v4": "127.0.0.1", "v6": "::1"}, 0.1,
                            lambda w, rtt, now: replies.__setitem__(w, replies[w] + 1),
                            lambda w, now: None, lambda w: 0.1,
                            interval_for=lambda w: 0.01 if burst["on"] and w == "v6" else None)
        task = asyncio.create_task(prober.run())
        await asyncio.sleep(0.35)
        before = replies["v6"]
        burst["on"] = True
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        prober.close()
        return replies["v6"] - before

    fast = asyncio.run(main())
    assert replies["v4"] >= 3 and replies["v6"] >= 3, replies
    assert fast >= 15, f"10 ms bursts should give ~30 answers in 0.3 s, got {fast}"


def test_backups_are_probed_faster_while_the_active_is_silent():
    """The verdict takes only a backup heard since the active went quiet; probing the backups
    faster meanwhile lets the first choice answer in time (CI once saw w1 -> w3, not w2)."""
    d = Decider(["w1", "w2", "w3"], Settings(burst_interval=0.01))
    d.active = "w1"
    for w in ("w1", "w2", "w3"):
        d.on_reply(w, 0.001, 0.0)
    assert d.probe_interval("w2") is None
    d.on_miss("w1", 0.1)
    assert d.probe_interval("w1") == 0.01
    assert d.probe_interval("w2") == d.probe_interval("w3") == BACKUP_BURST
    d.on_reply("w1", 0.001, 0.15)
    assert d.probe_interval("w2") is None
