"""When the switcher sends a probe report: on a change that matters, plus a slow heartbeat.

A full report every few seconds from every switcher is what made the responder's intake grow
with the fleet (100,000 switchers every 5 s: 20,000 reports a second). Most of those reports
repeat the last one. So a report goes out only when something a reader of it would act on
changed since the last one *sent*:
- a worker went up or down (the data-plane vote), or the set of probed workers changed;
- the active worker changed;
- a worker's RTT moved a lot: by at least max(`rtt_abs_ms`, `rtt_ratio` of the last sent one)
  (slow drift adds up against the last sent figure and is reported once it is large);
- a worker's loss crossed a threshold (`loss_steps`), with hysteresis: up at the threshold, back
  down only under `loss_down` of it, so a loss rate sitting on a threshold does not flap;
- else every `heartbeat` seconds, so the responder knows the switcher is alive and its vote holds.

Jitter alone (RTT and loss noise inside those bounds) never sends anything. Plain data in, a
decision out, time an argument: tested without I/O (tests/unit/test_report_policy.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from wg_failover.wire import ProbeResult

log = logging.getLogger("wg_failover.switcher")

DEFAULT_HEARTBEAT = 30.0  # seconds (--report-heartbeat)
# Longer heartbeats are taken as this: the responder's latency placement sets aside a client's
# figures after 120 s without a report (responder/latency.py STALE_AFTER).
LONGEST_HEARTBEAT = 120.0


@dataclass(frozen=True)
class ReportPolicy:
    heartbeat: float = DEFAULT_HEARTBEAT
    rtt_abs_ms: float = 20.0
    rtt_ratio: float = 0.5
    # The loss window is 50 probes (client.health): at 2 % loss it reads 10 % a few times an
    # hour by chance alone, 20 % practically never (binomial tail ~1e-7 a check).
    loss_steps: tuple[float, ...] = (0.2, 0.5)
    loss_down: float = 0.5  # back below a step only under this share of it

    def __post_init__(self) -> None:
        if not (self.heartbeat > 0 and math.isfinite(self.heartbeat)):
            raise ValueError("heartbeat must be a positive number of seconds")


@dataclass(frozen=True)
class Summary:
    """What one probe report says: the active worker and each worker's result."""

    active: str | None
    workers: Mapping[str, ProbeResult] = field(default_factory=dict)


@dataclass(frozen=True)
class Sent:
    """The last probe report sent, and when (monotonic seconds)."""

    at: float
    summary: Summary


@dataclass(frozen=True)
class Decision:
    send: bool
    why: str  # for the debug log and the tests: "first", "heartbeat", "w1 down", ...


def decide(last: Sent | None, current: Summary, now: float,
           policy: ReportPolicy | None = None) -> Decision:
    """Whether to send `current` now, given the `last` report sent (None: none yet)."""
    p = policy or ReportPolicy()
    if last is None:
        return Decision(True, "first")
    old = last.summary
    if set(old.workers) != set(current.workers):
        return Decision(True, "workers changed")
    for w, cur in current.workers.items():
        prev = old.workers[w]
        if prev.up != cur.up:
            return Decision(True, f"{w} {'up' if cur.up else 'down'}")
    if old.active != current.active:
        return Decision(True, f"active {old.active} -> {current.active}")
    for w, cur in current.workers.items():
        why = _rtt_change(w, old.workers[w], cur, p) or _loss_change(w, old.workers[w], cur, p)
        if why:
            return Decision(True, why)
    if now - last.at >= p.heartbeat:
        return Decision(True, "heartbeat")
    return Decision(False, "no change")


def rtt_moved(prev_ms: float, cur_ms: float, p: ReportPolicy) -> bool:
    """A large RTT change: at least max(rtt_abs_ms, rtt_ratio x the last sent RTT)."""
    return abs(cur_ms - prev_ms) >= max(p.rtt_abs_ms, p.rtt_ratio * prev_ms)


def _rtt_change(w: str, prev: ProbeResult, cur: ProbeResult, p: ReportPolicy) -> str | None:
    if not cur.up:
        return None  # a down worker has no RTT; its going down was judged above
    if prev.rtt_ms is None or cur.rtt_ms is None:
        # An RTT appearing (the first smoothed figure after coming up) is news; one vanishing
        # while up cannot happen with client.health, and is not worth a report if it did.
        return f"{w} rtt known" if prev.rtt_ms is None and cur.rtt_ms is not None else None
    if rtt_moved(prev.rtt_ms, cur.rtt_ms, p):
        return f"{w} rtt {prev.rtt_ms:.1f} -> {cur.rtt_ms:.1f} ms"
    return None


def loss_step(loss: float, steps: tuple[float, ...]) -> int:
    """How many of `steps` the loss reached."""
    return sum(loss >= s for s in steps)


def _loss_change(w: str, prev: ProbeResult, cur: ProbeResult, p: ReportPolicy) -> str | None:
    if not cur.up:
        return None
    sent = loss_step(prev.loss or 0.0, p.loss_steps)
    now = cur.loss or 0.0
    if loss_step(now, p.loss_steps) > sent or \
            loss_step(now, tuple(s * p.loss_down for s in p.loss_steps)) < sent:
        return f"{w} loss {prev.loss or 0.0:.2f} -> {now:.2f}"
    return None


MAX_HEARTBEAT = 300.0  # the wire's bound on `heartbeat_s`


def heartbeat_to_send(heartbeat: float, check_every: float) -> float:
    """The longest gap between two reports that this switcher promises the responder: the
    heartbeat is judged at each check, and the last report (an up/down one goes out at once)
    need not fall on a check, so up to one check more (at most the wire's bound)."""
    return min(MAX_HEARTBEAT, heartbeat + check_every)


class Tracker:
    """The switcher's memory of its last sent report (the only state the policy needs)."""

    def __init__(self, policy: ReportPolicy | None = None,
                 heartbeat_s: float | None = None, check_every: float = 0.0) -> None:
        self.policy = policy or ReportPolicy()
        self.heartbeat_s = heartbeat_s  # what the reports say of it (`heartbeat_to_send`)
        self.own = self.policy.heartbeat  # the switcher's own heartbeat (--report-heartbeat)
        self.check_every = check_every
        self.last: Sent | None = None
        self.sent = 0
        self.skipped = 0

    @classmethod
    def for_switcher(cls, heartbeat: float, check_every: float) -> Tracker:
        return cls(ReportPolicy(heartbeat=heartbeat), heartbeat_to_send(heartbeat, check_every),
                   check_every)

    def advise(self, advised: float | None) -> bool:
        """The responder's heartbeat advice (wire.ReportAccepted): the heartbeat becomes the
        longer of the switcher's own and the advice, at most LONGEST_HEARTBEAT; no advice (an
        older responder) leaves the switcher's own. True when the heartbeat changed; the next
        report says the new one (`heartbeat_s`), and the responder keeps votes fresh by it."""
        beat = min(LONGEST_HEARTBEAT, max(self.own, advised or 0.0))
        if beat == self.policy.heartbeat:
            return False
        self.policy = replace(self.policy, heartbeat=beat)
        if self.heartbeat_s is not None:
            self.heartbeat_s = heartbeat_to_send(beat, self.check_every)
            # The last report promised the old heartbeat, and the responder keeps the vote fresh
            # by that: the next check says the new one rather than letting the vote lapse.
            self.last = None
        return True

    def take_advice(self, advised: float | None) -> None:
        """`advise`, said in the log when the heartbeat changes (the reporter calls it with
        each accepted probe report's answer)."""
        if self.advise(advised):
            log.info("probe report heartbeat now %.0f s (own %.0f s, the responder advises "
                     "%s)", self.policy.heartbeat, self.own,
                     "none" if advised is None else f"{advised:g} s")

    def due(self, current: Summary, now: float) -> Decision:
        d = decide(self.last, current, now, self.policy)
        if not d.send:
            self.skipped += 1
        return d

    def record(self, current: Summary, now: float) -> None:
        """A probe report with `current` was handed to the reporter at `now`."""
        self.last = Sent(now, current)
        self.sent += 1

    def on_connected(self, chain: Callable[[bool], None]) -> Callable[[bool], None]:
        """Wrap an assignment source's connection callback: when the responder is reached again
        after a break it may have restarted and lost every probe report (they live in its
        memory), so the next check sends the summary instead of waiting for the heartbeat."""
        connected = True  # the start needs no reset: the first check sends anyway

        def hook(up: bool) -> None:
            nonlocal connected
            if up and not connected:
                self.last = None
            connected = up
            chain(up)

        return hook
