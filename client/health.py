"""What the probes say about each worker (`WorkerHealth`), and the gray-failure rule that compares
the active worker with a backup (`gray_verdict`). Plain logic on plain data: time is an argument.

Gray failure: a worker that still answers some probes but loses many, or whose RTT jumped, hurts
users as much as a dead one. Loss is judged on a *trial*: after the active worker misses a probe,
the switcher probes it fast (the burst that also detects a dead worker quickly) for `samples`
probes; the miss that started the trial is not counted, so a trial is an unbiased sample. RTT is
judged on the median of the last `rtt_samples` answers.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from wg_failover.wire import ProbeResult

UP, DOWN, UNKNOWN = "up", "down", "unknown"


@dataclass
class GraySettings:
    """When the active worker counts as far worse than a backup. The defaults keep a lab with 1 %
    loss each way (about 2 % of probes) from switching: a trial of 100 probes losing 10 or more
    then has a chance of about 5e-5, while 20 % loss makes almost every trial fail."""

    samples: int = 100  # probes in one loss trial (2 s at the 20 ms burst interval)
    loss: float = 0.10  # share of a trial lost that makes the active worker gray
    backup_loss: float = 0.02  # a backup must lose at most this over its last probes...
    backup_min: int = 20  # ...of which it has at least this many
    rtt_factor: float = 5.0  # median RTT this many times a backup's...
    rtt_min: float = 0.020  # ...and at least this much more (seconds): a LAN's 0.3 -> 3 ms is fine
    rtt_samples: int = 20  # answers each median is taken over
    hold: float = 10.0  # seconds after a gray switch before another one (no flapping)

    @property
    def loss_count(self) -> int:
        return max(1, math.ceil(self.loss * self.samples - 1e-9))


@dataclass
class WorkerHealth:
    """What the probes say about one worker: state, RTT (EWMA), loss over a window."""

    name: str
    window: int = 50
    alpha: float = 0.125  # RFC 6298's gain for the smoothed RTT
    srtt: float | None = None  # seconds
    rttvar: float = 0.0
    last_rtt: float | None = None
    consecutive_misses: int = 0
    state: str = UNKNOWN
    up_since: float | None = None  # when it last came up (after being unknown or down)
    down_since: float | None = None
    last_reply: float | None = None  # monotonic time of the last answer
    quiet_since: float | None = None  # when the current run of misses began (None: answering)
    silence: tuple[float, float] | None = None  # the last run of misses an answer ended: (from, to)
    flapped: bool = False  # it was down at least once since the switcher started
    results: deque = field(default_factory=deque)
    rtts: deque = field(default_factory=lambda: deque(maxlen=64))  # recent answers' RTTs
    trial: bool = False  # probed fast (burst): a miss started it
    trial_n: int = 0  # results since the trial started
    trial_lost: int = 0
    left_gray_at: float | None = None  # when the switcher last left it for a gray failure

    def _push(self, ok: bool) -> None:
        self.results.append(ok)
        while len(self.results) > self.window:
            self.results.popleft()
        if self.trial:
            self.trial_n += 1
            self.trial_lost += not ok

    @property
    def loss(self) -> float:
        """Share of the last `window` probes that went unanswered (0 when nothing is known)."""
        return (self.results.count(False) / len(self.results)) if self.results else 0.0

    def start_trial(self) -> None:
        self.trial, self.trial_n, self.trial_lost = True, 0, 0

    def end_trial(self) -> None:
        self.trial, self.trial_n, self.trial_lost = False, 0, 0

    def rtt_median(self, n: int) -> float | None:
        """Median of the last `n` answers' RTTs; None with fewer."""
        if len(self.rtts) < n:
            return None
        return statistics.median(list(self.rtts)[-n:])

    def record_reply(self, rtt: float, now: float) -> bool:
        """An answered probe. Returns True when the state changed."""
        self._push(True)
        self.last_rtt = rtt
        self._end_silence(now)
        if self.state != UP:
            # The first answer after a silence usually waited for a WireGuard handshake: it says
            # nothing about the path's RTT, and would stretch every deadline for a while.
            self.consecutive_misses = 0
            self.state, self.up_since, self.down_since = UP, now, None
            return True
        self.rtts.append(rtt)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar += 0.25 * (abs(self.srtt - rtt) - self.rttvar)
            self.srtt += self.alpha * (rtt - self.srtt)
        self.consecutive_misses = 0
        return False

    def record_late(self, rtt: float, now: float) -> None:
        """An answer that came after its probe's deadline (already counted as a miss). It proves
        the worker alive, and its RTT must reach the estimate: without it the deadline would be
        learnt from the answers that beat it only, and jitter would turn into ever more misses."""
        if self.state != UP:
            return  # the next timely answer brings it up
        self._end_silence(now)
        self.consecutive_misses = 0
        if self.trial and self.trial_lost > 0:
            self.trial_lost -= 1  # late, not lost
        self.rtts.append(rtt)
        if self.srtt is not None:
            self.rttvar += 0.25 * (abs(self.srtt - rtt) - self.rttvar)
            self.srtt += self.alpha * (rtt - self.srtt)

    def _end_silence(self, now: float) -> None:
        if self.quiet_since is not None:
            self.silence = (self.quiet_since, now)
        self.last_reply, self.quiet_since = now, None

    def heard_since(self, t: float | None) -> bool:
        """Answered at or after `t` (None: no bound). With the burst, an active worker's silence
        is judged before the backups' next probes are due: when every worker died at once, the
        backups' last answers predate it, and moving to them would hop through dead workers."""
        return t is None or (self.last_reply is not None and self.last_reply >= t)

    def record_miss(self, now: float, k: int, min_silence: float = 0.0) -> bool:
        """A probe whose deadline passed unanswered. Returns True when the state changed: down
        after `k` misses in a row and at least `min_silence` seconds without an answer."""
        self._push(False)
        self.consecutive_misses += 1
        if self.consecutive_misses == 1:
            self.quiet_since = now
        silent = self.last_reply is None or now - self.last_reply >= min_silence
        if self.consecutive_misses >= k and silent and self.state != DOWN:
            if self.state == UP:
                self.flapped = True
            self.state, self.down_since, self.up_since = DOWN, now, None
            self.end_trial()
            self.rtts.clear()  # a worker coming back is judged on its new path
            return True
        return False

    def held_down(self, now: float, hold_down: float) -> bool:
        """A worker that went down (or was left for a gray failure) must answer for `hold_down`
        seconds before we return to it."""
        if self.left_gray_at is not None and now - self.left_gray_at < hold_down:
            return True
        return (self.flapped and self.state == UP and self.up_since is not None
                and now - self.up_since < hold_down)

    def timeout(self, interval: float, floor: float | None = None, cap: float = 2.0) -> float:
        """How long to wait for a probe's answer: at least `floor` (default one interval), more
        on slow paths; one interval at least until an RTT is known."""
        base = interval if floor is None else floor
        if self.srtt is None:
            return max(base, interval, 0.001)
        return min(cap, max(base, self.srtt + 4 * self.rttvar))

    def summary(self) -> ProbeResult:
        # A dead worker has no round trip: reporting the last smoothed one would draw a flat,
        # healthy-looking RTT line for a worker that answers nothing.
        rtt = None if self.srtt is None or self.state != UP else round(self.srtt * 1000, 3)
        return ProbeResult(up=self.state == UP, rtt_ms=rtt, loss=round(self.loss, 4))


def gray_verdict(active: WorkerHealth, backup: WorkerHealth,
                 g: GraySettings) -> tuple[str, str] | None:
    """(cause, why) when `active` answers far worse than a clean `backup`; else None."""
    if backup.state != UP or len(backup.results) < g.backup_min or backup.loss > g.backup_loss \
            or backup.consecutive_misses:
        return None
    clean = f"{backup.name} lost {backup.results.count(False)} of its last {len(backup.results)}"
    if active.trial and active.trial_lost >= g.loss_count:
        return "gray-loss", (f"{active.name} lost {active.trial_lost} of {active.trial_n} probes "
                             f"(limit {g.loss_count} of {g.samples}); {clean}")
    ma, mb = active.rtt_median(g.rtt_samples), backup.rtt_median(g.rtt_samples)
    if ma is not None and mb is not None and ma >= g.rtt_factor * mb and ma - mb >= g.rtt_min:
        return "gray-rtt", (f"{active.name} median RTT {ma * 1000:.1f} ms over its last "
                            f"{g.rtt_samples} answers, {backup.name} {mb * 1000:.1f} ms "
                            f"(limit x{g.rtt_factor:g} and +{g.rtt_min * 1000:g} ms); {clean}")
    return None


SHARED_SILENCE = 0.2  # s: "the same moment", and how long the active has to answer after it


def shared_silence(active: WorkerHealth, backup: WorkerHealth, now: float) -> bool:
    """The backup went quiet at about the moment the active did and answers again only since
    an instant: every worker silent at once is local (the client's host or its WireGuard
    starved of CPU: the chaos campaign's false failovers), and the active's answer is likely
    right behind the backup's. The switcher waits SHARED_SILENCE for it before failing over."""
    s, q = backup.silence, active.quiet_since
    return s is not None and q is not None and abs(s[0] - q) <= SHARED_SILENCE \
        and now - s[1] < SHARED_SILENCE
