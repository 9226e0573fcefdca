"""The responder's own limits (hardening finding 5): they hold without a proxy in front.

- `Limits`: the settings (`wg-failover responder --max-streams-per-client ...`); the CLI puts one
  on `app.state.limits`, and an app without one gets the defaults.
- `TokenBucket` / `ClientBuckets`: how many reports a client may send (10 a second, bursts of
  20); a switch or rejected report, which re-plans the whole fleet, has its own smaller budget.
- `LogLimiter`: at most one log line per kind every few seconds, the next one saying how many
  were held back, so a flood of bad requests or a full disk cannot fill the disk with logs.

The connection cap and the request timeouts are in `server.py` (they live at the socket level).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_STREAMS_PER_CLIENT = 4
DEFAULT_REQUEST_TIMEOUT = 10.0  # seconds from a request's first byte to its last
DEFAULT_WRITE_TIMEOUT = 60.0  # seconds a reader may leave our writes unread (a full buffer)
REPORT_RATE, REPORT_BURST = 10.0, 20  # per client; a switcher sends one report every few s
# Switch and rejected reports each re-plan every client (tens of ms at 10,000 clients): a
# switcher sends one per failure it sees, so 1 a second with bursts of 5 is far above need.
REPLAN_RATE, REPLAN_BURST = 1.0, 5
LOG_EVERY = 10.0  # seconds between two lines of one kind
# Unchanged probe reports (heartbeats) a second that the responder plans for, fleet-wide: each
# report's answer advises a heartbeat of clients / budget seconds (wire.ReportAccepted), so
# 100,000 switchers send about 2,000 a second, 0.4 core (bench/reports.py), and a fleet of up
# to 60,000 keeps the switchers' own 30 s. At most ADVICE_CAP: the switchers' longest
# heartbeat (client/report_policy.py LONGEST_HEARTBEAT; latency placement sets aside figures
# older than 120 s).
REPORT_BUDGET = 2000.0
ADVICE_CAP = 120.0


@dataclass(frozen=True)
class Limits:
    max_streams_per_client: int = DEFAULT_STREAMS_PER_CLIENT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    write_timeout: float = DEFAULT_WRITE_TIMEOUT
    report_rate: float = REPORT_RATE
    report_burst: int = REPORT_BURST
    replan_rate: float = REPLAN_RATE
    replan_burst: int = REPLAN_BURST
    report_budget: float = REPORT_BUDGET


def advised_heartbeat(clients: int, budget: float) -> float:
    """The heartbeat (s) that keeps `clients` switchers' heartbeats within `budget` a second:
    rounded up to a tenth, at least 0.1 (the wire's bound is > 0), at most ADVICE_CAP."""
    return min(ADVICE_CAP, max(0.1, math.ceil(clients * 10 / budget) / 10))


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    rate: float
    burst: float
    tokens: float = field(default=math.inf)
    last: float = 0.0

    def take(self, now: float) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there is."""
        if self.tokens == math.inf:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else math.inf


class ClientBuckets:
    """One TokenBucket per client. Only fleet clients that passed auth get one, so the table is
    as large as the fleet at most."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.buckets: dict[str, TokenBucket] = {}

    def take(self, client: str) -> float:
        b = self.buckets.get(client)
        if b is None:
            b = self.buckets[client] = TokenBucket(self.rate, self.burst)
        return b.take(self.clock())


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(min(seconds, 3600.0))))


@dataclass
class _Seen:
    last: float
    held: int = 0


class LogLimiter:
    """At most one line per `every` seconds for each kind; the next line that gets through says
    how many were held back. Kinds are the caller's constants (or a bounded set such as store
    reasons), never text from the wire, so the table stays small."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self.logger, self.every, self.clock = logger, every, clock
        self._seen: dict[str, _Seen] = {}

    def allow(self, kind: str) -> tuple[int, float] | None:
        """None (and one more held back) if a `kind` line went out less than `every` seconds
        ago; else (lines held back since the last one, seconds since it), and the slot is
        taken."""
        now = self.clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen.last < self.every:
            seen.held += 1
            return None
        if len(self._seen) > 1000:  # a bounded table even if a caller's kinds are not
            self._seen.clear()
        self._seen[kind] = _Seen(now)
        return (seen.held, now - seen.last) if seen is not None else (0, 0.0)

    def log(self, level: int, kind: str, msg: str, *args: Any, **kw: Any) -> bool:
        """Log `msg % args` unless a `kind` line went out less than `every` seconds ago;
        whether it was logged."""
        held = self.allow(kind)
        if held is None:
            return False
        if held[0]:
            msg += " (%d more like it in the last %.0f s)"
            args = (*args, *held)
        self.logger.log(level, msg, *args, **kw)
        return True

    def error(self, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logging.ERROR, kind, msg, *args)

    def warning(self, kind: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)


class RepeatFilter(logging.Filter):
    """A logging filter with LogLimiter's rule, keyed by a record's logger and message template:
    for loggers whose lines we do not write ourselves (uvicorn's "Invalid HTTP request
    received.", asyncio's accept errors), where a peer decides how often they come."""

    def __init__(self, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.every, self.clock = every, clock
        self._seen: dict[tuple[str, str], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg)[:200])
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.last < self.every:
            seen.held += 1
            return False
        if seen is not None and seen.held:
            record.msg = f"{record.msg} ({seen.held} more like it in the last " \
                         f"{now - seen.last:.0f} s)"
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = _Seen(now)
        return True


class ClientGuard:
    """The stream front's per-client limits: its streams (Hub.subscribe takes the number) and
    report buckets, one set per app."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.reports = ClientBuckets(limits.report_rate, limits.report_burst)
        self.replans = ClientBuckets(limits.replan_rate, limits.replan_burst)


# One limiter for the store's failure lines wherever they are noticed (a 503 answer, a timer,
# the upkeep), so a full disk is one line every LOG_EVERY seconds per reason, not one a request.
store_errors = LogLimiter(logging.getLogger("wg_failover.responder"))
