"""What latency placement knows about each client: smoothed RTTs and how long a better worker has
been better. Plain data, no I/O, no clock of its own (every call takes `now`).

Fed by the client's probe reports (intake/clients.py) and read by `replan` (draft.py), which
hands `inputs()` to the pure planner. It lives in the responder's memory only: it is derived
from reports, so after a restart it re-learns, and the first latency move then waits the
sustain time again. Per client it keeps one float per worker it probes and one timestamp per
worker that beats its current one, so 10,000 clients of 5 workers take a few MB.
"""

from __future__ import annotations

import math
import statistics
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wg_failover.fleet import ResponderSettings
from wg_failover.wire import ProbeResult

from .latency_rule import ClientLatency, LatencyRule, gain_enough, settle_rule

ALPHA = 0.2  # weight of a new report that comes 5 s after the last one
# The weight grows with the time since the client's last report (an exponential average over
# time, time constant TAU): switchers report on a large change and else only every heartbeat
# (client/report_policy.py, 30 s by default), and a report after a quiet stretch speaks for
# that whole stretch; per report, a 150 ms step took 26 heartbeats (13 minutes) to show.
TAU = -5.0 / math.log(1 - ALPHA)
CLIP = 1.5  # a report counts as at most this factor off the smoothed figure...
# A worker's first figure is the median of its first WARMUP reports, and only then is it
# compared: a spike in the very first reply would otherwise be the figure itself, and the clip
# would hold it high for minutes (long enough to look like a lasting gain elsewhere).
WARMUP = 3
STALE_AFTER = 120.0  # seconds without a report before a client's figures are set aside
RETRY_AFTER = 30.0  # seconds before a due move that did not happen (no room) asks again
# A client placed before its figures came may settle while its first figures are new: the
# rule's sustain time plus SETTLE_WINDOW from its first report (latency_rule.settle_rule). Ten
# minutes, so that a whole fleet placed at once settles within it at `latency_batch_size` moves
# a plan.
SETTLE_WINDOW = 600.0


def rule_of(settings: ResponderSettings) -> LatencyRule:
    return LatencyRule(settings.latency_min_gain_ms, settings.latency_min_gain_ratio,
                       settings.latency_sustain_seconds, settings.latency_move_interval_seconds,
                       settings.latency_batch_size)


@dataclass
class ClientMemory:
    rtt: dict[str, float] = field(default_factory=dict)  # smoothed ms
    at: float = 0.0  # its last report
    against: str | None = None  # its worker when better_since was last updated
    better_since: dict[str, float] = field(default_factory=dict)
    last_move: float | None = None  # its last latency move
    asked: float | None = None  # when it last asked for a plan (a due move)
    blind: bool = False  # its worker was given while it had no figures (may settle once)
    settle_until: float | None = None  # set at its first report
    first: dict[str, list[float]] = field(default_factory=dict)  # workers still warming up
    raw: dict[str, float] = field(default_factory=dict)  # each worker's last reported RTT

    def settling(self, now: float) -> bool:
        return self.blind and self.settle_until is not None and now <= self.settle_until


class LatencyMemory:
    def __init__(self) -> None:
        self.clients: dict[str, ClientMemory] = {}
        # Scheduling of latency plans (intake/clients.py): at most one pending, one a second.
        self.plan_pending = False
        self.next_plan = 0.0  # time.monotonic()
        self.tasks: set[Any] = set()

    def observe(self, client: str, results: Mapping[str, ProbeResult], current: str | None,
                now: float, rule: LatencyRule, latency_move_at: float | None = None) -> None:
        """Fold one probe report in. `current`: the client's worker now; `latency_move_at`: when
        its assignment was last changed for latency, if its current one was."""
        m = self.clients.get(client)
        if m is None:
            m = self.clients[client] = ClientMemory()
        for w in [w for w in m.rtt if w not in results]:
            del m.rtt[w]  # no longer probed: no figure
            m.first.pop(w, None)
            m.raw.pop(w, None)
        weight = 1 - math.exp(-min(max(now - m.at, 0.0), STALE_AFTER) / TAU)
        for w, p in results.items():
            if not p.up or p.rtt_ms is None:
                m.rtt.pop(w, None)  # a figure comes back only from fresh replies
                m.first.pop(w, None)
                m.raw.pop(w, None)
                continue
            prev, m.raw[w] = m.raw.get(w), float(p.rtt_ms)
            old = m.rtt.get(w)
            early = m.first.get(w)
            if old is None or early is not None:
                early = [*(early or []), float(p.rtt_ms)]
                m.rtt[w] = statistics.median(early)
                if len(early) < WARMUP:
                    m.first[w] = early
                else:
                    m.first.pop(w, None)
            else:
                # A spike moves the figure by at most ALPHA * (CLIP - 1), so a few slow replies
                # never make a worker look slow. ...unless the report before said the same: two
                # reports in a row far off on the same side are a lasting change, and count
                # whole (the nearer of the two), so a step shows within the sustain time
                # however seldom the switcher reports.
                lo, hi = old / CLIP, old * CLIP
                if prev is not None and ((p.rtt_ms > hi and prev > hi)
                                         or (p.rtt_ms < lo and prev < lo)):
                    ms = min(p.rtt_ms, prev) if p.rtt_ms > hi else max(p.rtt_ms, prev)
                else:
                    ms = min(max(p.rtt_ms, lo), hi)
                m.rtt[w] = old + weight * (ms - old)
        m.at = now
        if latency_move_at is not None and (m.last_move is None or latency_move_at > m.last_move):
            m.last_move = latency_move_at
        if current != m.against:
            if m.against is not None:
                m.blind = False  # it moved: the one settling chance is over
            m.against, m.asked = current, None
            m.better_since.clear()
        if m.blind and m.settle_until is None:
            m.settle_until = now + rule.sustain_seconds + SETTLE_WINDOW
        if m.blind and not m.settling(now):
            m.blind = False
            m.better_since.clear()  # built by the settling rule: the rule's own starts afresh
        elif m.blind:
            rule = settle_rule(rule)  # the better_since it builds is the one settling uses
        cur_ms = m.rtt.get(current) if current is not None and current not in m.first else None
        if cur_ms is None:
            m.better_since.clear()
            return
        for w, ms in m.rtt.items():
            if w != current and w not in m.first and gain_enough(cur_ms, ms, rule):
                m.better_since.setdefault(w, now)
            else:
                m.better_since.pop(w, None)
        for w in [w for w in m.better_since if w not in m.rtt]:
            del m.better_since[w]

    def due(self, client: str, now: float, rule: LatencyRule) -> bool:
        """Might a plan now move this client for latency (room aside)? Then it asks once, and
        again only RETRY_AFTER later if it is still due (its better worker was full)."""
        m = self.clients.get(client)
        if m is None or not m.better_since:
            return False
        if m.last_move is not None and now - m.last_move < rule.move_interval_seconds:
            return False
        if m.asked is not None and now - m.asked < RETRY_AFTER:
            return False
        if min(m.better_since.values()) > now - rule.sustain_seconds:
            return False
        m.asked = now
        return True

    def inputs(self, clients: Mapping[str, str | None], now: float) -> dict[str, ClientLatency]:
        """The planner's latency input for these clients (client -> its worker now; fresh
        figures only); forgets clients that are not among them (they left the fleet).

        A client without a worker and without figures is about to be placed blind (preference
        order): it is remembered, so it may settle on its fastest worker once it has reported.
        Only these: after a restart the clients keep their workers, so none is re-placed."""
        out = {}
        names = set()
        for name, worker in clients.items():
            names.add(name)
            m = self.clients.get(name)
            if m is not None and m.rtt and now - m.at <= STALE_AFTER:
                settle = m.settling(now)
                # A settling chance that ran out since the last report: its better_since was
                # built by the settling rule, so nothing is sustained yet by the rule's own.
                since = {} if m.blind and not settle else m.better_since
                out[name] = ClientLatency(m.rtt, m.against, since, m.last_move, settle=settle)
            elif worker is None:
                if m is None:
                    m = self.clients[name] = ClientMemory()
                m.blind, m.against, m.settle_until = True, None, None
        if len(self.clients) > len(names):
            for name in [n for n in self.clients if n not in names]:
                del self.clients[name]
        return out


    def worker_figures(self, now: float) -> dict[str, WorkerFigures]:
        """Per worker, what its clients' fresh smoothed figures say (`GET /v1/workers`)."""
        per: dict[str, list[float]] = {}
        for m in self.clients.values():
            if now - m.at <= STALE_AFTER:
                for w, ms in m.rtt.items():
                    per.setdefault(w, []).append(ms)
        return {w: WorkerFigures.of(v) for w, v in per.items()}


@dataclass(frozen=True)
class WorkerFigures:
    clients: int  # clients with a fresh figure for the worker
    median_ms: float
    p90_ms: float

    @classmethod
    def of(cls, values: list[float]) -> WorkerFigures:
        v = sorted(values)
        return cls(len(v), round(statistics.median(v), 1),
                   round(v[min(len(v) - 1, math.ceil(0.9 * len(v)) - 1)], 1))


_BY_STATE: weakref.WeakKeyDictionary[Any, LatencyMemory] = weakref.WeakKeyDictionary()


def memory_of(state: Any) -> LatencyMemory:
    """The latency memory of a responder state (kept beside it, created at first use)."""
    m = _BY_STATE.get(state)
    if m is None:
        m = _BY_STATE[state] = LatencyMemory()
    return m
