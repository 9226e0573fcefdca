"""The switcher's decisions, as plain logic on plain data (no sockets, no clock of its own).

`Decider` is fed probe results and responder assignments, each with the current monotonic time,
and answers with actions (`Switch`, `Report`, `Note`) that the I/O shell in `client.switcher`
carries out. Keeping time an argument makes every rule here testable without waiting.
Assignments and reports are the wire schema's models (`wg_failover.wire`), the ones the responder
validates against.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from wg_failover.wire import (
    AppliedEvent,
    Assignment,
    ProbeEvent,
    ProbeResult,
    RejectedEvent,
    SwitchEvent,
)

UP, DOWN, UNKNOWN = "up", "down", "unknown"


# --------------------------------------------------------------------------- probe health


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
    flapped: bool = False  # it was down at least once since the switcher started
    results: deque = field(default_factory=deque)

    def _push(self, ok: bool) -> None:
        self.results.append(ok)
        while len(self.results) > self.window:
            self.results.popleft()

    @property
    def loss(self) -> float:
        """Share of the last `window` probes that went unanswered (0 when nothing is known)."""
        return (self.results.count(False) / len(self.results)) if self.results else 0.0

    def record_reply(self, rtt: float, now: float) -> bool:
        """An answered probe. Returns True when the state changed."""
        self._push(True)
        self.last_rtt = rtt
        self.last_reply = now
        if self.state != UP:
            # The first answer after a silence usually waited for a WireGuard handshake: it says
            # nothing about the path's RTT, and would stretch every deadline for a while.
            self.consecutive_misses = 0
            self.state, self.up_since, self.down_since = UP, now, None
            return True
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar += 0.25 * (abs(self.srtt - rtt) - self.rttvar)
            self.srtt += self.alpha * (rtt - self.srtt)
        self.consecutive_misses = 0
        return False

    def record_miss(self, now: float, k: int) -> bool:
        """A probe whose deadline passed unanswered. Returns True when the state changed."""
        self._push(False)
        self.consecutive_misses += 1
        if self.consecutive_misses >= k and self.state != DOWN:
            if self.state == UP:
                self.flapped = True
            self.state, self.down_since, self.up_since = DOWN, now, None
            return True
        return False

    def held_down(self, now: float, hold_down: float) -> bool:
        """A worker that went down must answer for `hold_down` seconds before we return to it."""
        return (self.flapped and self.state == UP and self.up_since is not None
                and now - self.up_since < hold_down)

    def timeout(self, interval: float, floor: float | None = None, cap: float = 2.0) -> float:
        """How long to wait for a probe's answer: at least one interval, more on slow paths."""
        base = interval if floor is None else floor
        if self.srtt is None:
            return max(base, 0.001)
        return min(cap, max(base, self.srtt + 4 * self.rttvar))

    def summary(self) -> ProbeResult:
        # A dead worker has no round trip: reporting the last smoothed one would draw a flat,
        # healthy-looking RTT line for a worker that answers nothing.
        rtt = None if self.srtt is None or self.state != UP else round(self.srtt * 1000, 3)
        return ProbeResult(up=self.state == UP, rtt_ms=rtt, loss=round(self.loss, 4))


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Switch:
    """Move the routes to `to` (one `wg set`)."""

    to: str
    from_: str | None
    kind: str  # "failover" (fast path), "assignment" (responder), "initial" (routes were nowhere)
    reason: str
    elapsed_ms: int | None = None
    version: int | None = None


@dataclass(frozen=True)
class Report:
    """One event for `POST /v1/clients/{name}/events`: the JSON body, from a wire model."""

    event: dict[str, Any]

    @classmethod
    def of(cls, event: ProbeEvent | SwitchEvent | AppliedEvent | RejectedEvent) -> Report:
        # None stays in: the responder has always been sent `"rtt_ms": null` for a dead worker.
        return cls(event.model_dump(mode="json"))


@dataclass(frozen=True)
class Note:
    """A decision that changes nothing on the interface, worth one log line."""

    message: str
    level: int = logging.INFO


Action = Switch | Report | Note


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class VersionCheck:
    """Whether an assignment is news, and the warning to log when taking it means the responder's
    store is not the one the last version came from."""

    accept: bool
    warning: str | None = None


def check_version(known_epoch: str | None, known_version: int, a: Assignment) -> VersionCheck:
    """Versions only grow within one store epoch. A different epoch is a new store (lost,
    replaced, restored): its versions started again, so its assignment is taken whatever its
    version, or the switcher would ignore the responder until the new store passed the old one's
    count. An assignment without an epoch (an older responder) belongs to the known epoch."""
    if a.epoch is None or a.epoch == known_epoch:
        return VersionCheck(a.version > known_version)
    if known_epoch is None:
        if a.version > known_version or known_version == 0:
            return VersionCheck(True)  # the first epoch heard (a fresh start, an older cache)
        return VersionCheck(True, (
            f"responder's store now has an epoch ({a.epoch}) and its v{a.version} is not after "
            f"v{known_version}, the last version seen: following it (its store was replaced, "
            "or restored from before)"))
    return VersionCheck(True, (
        f"responder's store changed (epoch {known_epoch} -> {a.epoch}): its versions started "
        f"again; following its v{a.version} (the last version of the old store was "
        f"v{known_version})"))


# --------------------------------------------------------------------------- the decider


@dataclass
class Settings:
    k: int = 3
    hold_down: float = 10.0
    # Off: a dead active worker is only left on the responder's assignment (the control path
    # alone, as bench/baselines.py measures it); probes still guard what assignments apply.
    fast_path: bool = True


class Decider:
    """The switcher's state machine. Every public method takes `now` (monotonic seconds)."""

    def __init__(
        self,
        workers: list[str],
        settings: Settings | None = None,
        active: str | None = None,
        version: int = 0,
        pending: Assignment | None = None,
        epoch: str | None = None,
    ) -> None:
        if not workers:
            raise ValueError("a client needs at least one worker")
        self.workers = list(workers)  # the fleet's preference order
        self.settings = settings or Settings()
        self.health = {w: WorkerHealth(w) for w in workers}
        self.active = active
        self.version = version  # the last responder version seen (applied or rejected)
        self.epoch = epoch  # the responder store's epoch that version belongs to (None: unknown)
        self.pending = pending  # a responder assignment not applied yet (target dead/unknown)
        self.pending_rejected = pending is not None  # a cached pending one was reported already
        self.assignment: Assignment | None = pending  # the last one the responder sent
        self.order = list(workers)  # fast-path preference: the responder's backups first
        if pending is not None:
            self._set_order(pending)
        self.active_stuck_noted = False

    # ------------------------------------------------------------------ probe input
    def on_reply(self, worker: str, rtt: float, now: float) -> list[Action]:
        h = self.health.get(worker)
        if h is None:
            return []
        changed = h.record_reply(rtt, now)
        out: list[Action] = []
        if changed:
            out.append(Note(f"probe: {worker} is up (first answer in {rtt * 1000:.1f} ms)"))
            out.append(self.probe_report())
        return out + self.evaluate(now)

    def on_miss(self, worker: str, now: float) -> list[Action]:
        h = self.health.get(worker)
        if h is None:
            return []
        changed = h.record_miss(now, self.settings.k)
        out: list[Action] = []
        if changed:
            ago = ("" if h.last_reply is None
                   else f", last reply {(now - h.last_reply) * 1000:.0f} ms ago")
            out.append(Note(f"probe: {worker} is down ({h.consecutive_misses} missed{ago})"))
            out.append(self.probe_report())
        return out + self.evaluate(now)

    def probe_report(self) -> Report:
        return Report.of(ProbeEvent(workers={w: self.health[w].summary() for w in self.workers}))

    # ------------------------------------------------------------------ decisions
    def best_backup(self, now: float) -> str | None:
        """The answering worker to fail over to: preference order, workers that flapped last."""
        ranked = []
        for idx, w in enumerate(self.order):
            h = self.health[w]
            if w == self.active or h.state != UP:
                continue
            ranked.append((h.held_down(now, self.settings.hold_down),
                           h.consecutive_misses > 0, idx, w))
        return min(ranked)[3] if ranked else None

    def evaluate(self, now: float) -> list[Action]:
        """Fast path first (is the active worker dead?), then a pending responder assignment."""
        out: list[Action] = []
        active_h = self.health.get(self.active) if self.active else None
        if self.settings.fast_path and active_h is not None and active_h.state == DOWN:
            to = self.best_backup(now)
            if to is None:
                if not self.active_stuck_noted:
                    out.append(Note(f"active {self.active} is down and no backup answers; "
                                    "keeping it"))
                    self.active_stuck_noted = True
            else:
                since = active_h.last_reply
                elapsed = None if since is None else int((now - since) * 1000)
                reason = (f"{self.active} missed {active_h.consecutive_misses} probes"
                          + (f" (last reply {elapsed} ms ago)" if elapsed is not None else "")
                          + f"; {to} answers")
                out.append(self._switch_to(to, "failover", reason, elapsed))
                out.append(Report.of(SwitchEvent(
                    from_worker=active_h.name, to_worker=to, reason=reason,
                    elapsed_ms=elapsed if elapsed is not None else 0)))
        if self.pending is not None and self.pending.version == self.version:
            out += self._try_pending(now)
        if self.active is None:
            # Routes sit on no peer: nothing flows, so take the best answering worker now.
            to = self._first_up(now)
            if to is not None:
                out.append(self._switch_to(to, "initial", f"routes were on no peer; {to} answers"))
        return out

    def _first_up(self, now: float) -> str | None:
        ups = [(self.health[w].held_down(now, self.settings.hold_down), i, w)
               for i, w in enumerate(self.order) if self.health[w].state == UP]
        return min(ups)[2] if ups else None

    def _switch_to(self, to: str, kind: str, reason: str, elapsed_ms: int | None = None,
                   version: int | None = None) -> Switch:
        """Decide a move (the routes count as on `to` from now); the shell carries it out."""
        act = Switch(to=to, from_=self.active, kind=kind, reason=reason, elapsed_ms=elapsed_ms,
                     version=version)
        self.active = to
        self.active_stuck_noted = False
        return act

    def switch_failed(self, act: Switch) -> None:
        """The shell could not carry out `act`: the routes stayed where they were."""
        self.active = act.from_
        a = self.assignment
        if act.kind == "assignment" and a is not None and a.version == act.version:
            self.pending, self.pending_rejected = a, True  # retried on the next evaluation

    def _set_order(self, a: Assignment) -> None:
        known = [w for w in (a.worker, *a.backups) if w in self.health]
        self.order = list(dict.fromkeys(known + self.workers))

    def set_workers(self, workers: list[str]) -> None:
        """The client's view changed (`client.view`): new workers start unknown, departed ones
        are forgotten, a pending assignment to a departed one is dropped. `active` is left to
        the shell, which moves the routes off a departed worker before its peer goes."""
        if not workers:
            raise ValueError("a client needs at least one worker")
        self.workers = list(workers)
        self.health = {w: self.health.get(w) or WorkerHealth(w) for w in workers}
        self.order = list(dict.fromkeys([w for w in self.order if w in self.health]
                                        + self.workers))
        if self.pending is not None and self.pending.worker not in self.health:
            self.pending, self.pending_rejected = None, False

    # ------------------------------------------------------------------ responder input
    def on_assignment(self, a: Assignment, now: float) -> list[Action]:
        """A responder assignment: each version once, in order (within one store epoch); never
        onto a dead worker."""
        check = check_version(self.epoch, self.version, a)
        if not check.accept:
            return []
        out: list[Action] = []
        if check.warning:
            out.append(Note(check.warning, logging.WARNING))
        self.version = a.version
        if a.epoch is not None:
            self.epoch = a.epoch
        self.assignment = a
        self.pending = None
        self.pending_rejected = False
        if a.worker not in self.health:
            return [*out,
                    Report.of(RejectedEvent(
                        version=a.version, worker=a.worker,
                        reason=f"{a.worker} is not one of this client's workers")),
                    Note(f"assignment v{a.version}: rejected, {a.worker} is not one of this "
                         "client's workers")]
        self._set_order(a)
        self.pending = a
        return out + self._try_pending(now, first=True) + self.evaluate(now)

    def _try_pending(self, now: float, first: bool = False) -> list[Action]:
        a = self.pending
        if a is None:
            return []
        h = self.health[a.worker]
        if a.worker == self.active:
            self.pending = None
            return [Note(f"assignment v{a.version}: {a.worker} is already active ({a.reason})"),
                    Report.of(AppliedEvent(version=a.version, worker=a.worker))]
        # The responder is the authority: a fresh assignment to an answering worker is applied
        # at once; one we rejected earlier waits out the hold-down once its worker is back.
        if h.state == UP and (first or not h.held_down(now, self.settings.hold_down)):
            self.pending = None
            reason = f"responder v{a.version}" + (f": {a.reason}" if a.reason else "")
            return [self._switch_to(a.worker, "assignment", reason, version=a.version),
                    Report.of(AppliedEvent(version=a.version, worker=a.worker))]
        if h.state == DOWN and not self.pending_rejected:
            self.pending_rejected = True
            ago = "" if h.last_reply is None else f", last reply {now - h.last_reply:.1f} s ago"
            why = f"probes see {a.worker} dead ({h.consecutive_misses} missed{ago})"
            return [Report.of(RejectedEvent(version=a.version, worker=a.worker, reason=why)),
                    Note(f"assignment v{a.version}: rejected {a.worker}: {why}; will apply it "
                         "if it comes back")]
        if first:
            return [Note(f"assignment v{a.version}: waiting for the first probe answers of "
                         f"{a.worker}")]
        return []

