"""The switcher's decisions, as plain logic on plain data (no sockets, no clock of its own).

`Decider` is fed probe results and responder assignments, each with the current monotonic time,
and answers with actions (`Switch`, `Report`, `Note`) that the I/O shell in `client.switcher`
carries out. Keeping time an argument makes every rule here testable without waiting.
Assignments and reports are the wire schema's models (`wg_failover.wire`), the ones the responder
validates against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from wg_failover.wire import AppliedEvent, Assignment, ProbeEvent, RejectedEvent, SwitchEvent

from .health import DOWN, UNKNOWN, UP, GraySettings, WorkerHealth, gray_verdict, shared_silence

__all__ = ["DOWN", "UNKNOWN", "UP", "Action", "Decider", "GraySettings", "Note", "Report",
           "Settings", "Switch", "WorkerHealth", "check_version"]


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
    cause: str | None = None  # why the fast path left: "dead", "gray-loss", "gray-rtt"


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


BURST_DEADLINE = 0.02  # seconds: the shortest wait for a burst probe's answer
BACKUP_BURST = 0.04  # seconds between a backup's probes while the active is silent


@dataclass
class Settings:
    k: int = 3
    hold_down: float = 10.0
    # Off: a dead active worker is only left on the responder's assignment (the control path
    # alone, as bench/baselines.py measures it); probes still guard what assignments apply.
    fast_path: bool = True
    # The BFD-like burst: after the active worker's first missed probe, probe it every
    # `burst_interval` seconds (0: off); it is down after that miss and `burst_misses` more in a
    # row. The shell asks `probe_interval` what to use.
    burst_interval: float = 0.0
    burst_misses: int = 3
    # ...and only once it has been silent this long: burst probes are close together, and one
    # short stall of the path (or of a loaded host) must not look like a death.
    burst_silence: float = 0.15
    gray: GraySettings | None = None  # None: no gray-failure rule (it needs the burst's trials)


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
        self.gray_at = -1e9  # when the fast path last left a worker for a gray failure
        self.gray_stuck_noted = False

    def on_reply(self, worker: str, rtt: float, now: float) -> list[Action]:
        h = self.health.get(worker)
        if h is None:
            return []
        changed = h.record_reply(rtt, now)
        self._trial_step(h)
        out: list[Action] = []
        if changed:
            out.append(Note(f"probe: {worker} is up (first answer in {rtt * 1000:.1f} ms)"))
            out.append(self.probe_report())
        return out + self.evaluate(now)

    def on_late(self, worker: str, rtt: float, now: float) -> list[Action]:
        """An answer to a probe already counted as missed: alive, and an RTT sample."""
        h = self.health.get(worker)
        if h is not None:
            h.record_late(rtt, now)
        return []

    def on_miss(self, worker: str, now: float) -> list[Action]:
        h = self.health.get(worker)
        if h is None:
            return []
        bursting = self.settings.burst_interval > 0 and worker == self.active
        k = self.settings.burst_misses + 1 if bursting else self.settings.k
        changed = h.record_miss(now, k, self.settings.burst_silence if bursting else 0.0)
        if bursting and not h.trial and h.state == UP:
            h.start_trial()  # after recording: the miss that starts a trial is not in it
        self._trial_step(h)
        out: list[Action] = []
        if changed:
            ago = ("" if h.last_reply is None
                   else f", last reply {(now - h.last_reply) * 1000:.0f} ms ago")
            out.append(Note(f"probe: {worker} is down ({h.consecutive_misses} missed{ago})"))
            out.append(self.probe_report())
        return out + self.evaluate(now)

    def _trial_step(self, h: WorkerHealth) -> None:
        """End a burst when it has done its job: without the gray rule, at the first answer; with
        it, after its `samples` probes unless they failed (then `evaluate` gives the verdict)."""
        if not h.trial:
            return
        g = self.settings.gray
        if h.name != self.active or (g is None and h.consecutive_misses == 0) or (
                g is not None and h.trial_n >= g.samples and h.trial_lost < g.loss_count):
            h.end_trial()

    def probe_interval(self, worker: str) -> float | None:
        """The burst interval while `worker` is the active one in a burst; else None (the
        shell's normal interval)."""
        h, b = self.health.get(worker), self.settings.burst_interval
        if b > 0 and worker == self.active and h is not None and h.trial and h.state != DOWN:
            return b
        a = self.health.get(self.active or "")
        if b > 0 and a is not None and a.quiet_since is not None and a.state != DOWN:
            # While the active is silent, the backups too: a failover takes only a backup
            # heard since then, so each must answer before the verdict, first choice included.
            return max(b, BACKUP_BURST)
        return None

    def probe_deadline(self, worker: str, interval: float, floor: float | None) -> float:
        """How long a probe sent to `worker` now waits for its answer: a burst probe at least
        BURST_DEADLINE (a loaded host answers a few ms late, and late is not lost)."""
        h, burst = self.health[worker], self.probe_interval(worker)
        if burst is not None:
            return h.timeout(burst, max(burst, BURST_DEADLINE))
        return h.timeout(interval, floor)

    def probe_report(self) -> Report:
        return Report.of(ProbeEvent(workers={w: self.health[w].summary() for w in self.workers}))

    def best_backup(self, now: float, heard_since: float | None = None) -> str | None:
        """The answering worker to fail over to: preference order, workers that flapped last."""
        ranked = []
        for idx, w in enumerate(self.order):
            h = self.health[w]
            if w == self.active or h.state != UP or not h.heard_since(heard_since):
                continue
            ranked.append((h.held_down(now, self.settings.hold_down),
                           h.consecutive_misses > 0, idx, w))
        return min(ranked)[3] if ranked else None

    def evaluate(self, now: float) -> list[Action]:
        """Fast path first (is the active worker dead?), then a pending responder assignment."""
        out: list[Action] = []
        active_h = self.health.get(self.active) if self.active else None
        if self.settings.fast_path and active_h is not None and active_h.state == DOWN:
            to = self.best_backup(now, self._quiet_since(active_h))
            if to is not None and shared_silence(active_h, self.health[to], now):
                to = None  # every worker went quiet at once: wait for the active's answer too
            if to is None:
                if not self.active_stuck_noted and self.best_backup(now) is None:
                    out.append(Note(f"active {self.active} is down and no backup answers; "
                                    "keeping it"))
                    self.active_stuck_noted = True
            else:
                since = active_h.last_reply
                elapsed = None if since is None else int((now - since) * 1000)
                reason = (f"{self.active} missed {active_h.consecutive_misses} probes"
                          + (f" (last reply {elapsed} ms ago)" if elapsed is not None else "")
                          + f"; {to} answers")
                out.append(self._switch_to(to, "failover", reason, elapsed, cause="dead"))
                out.append(Report.of(SwitchEvent(
                    from_worker=active_h.name, to_worker=to, reason=reason,
                    elapsed_ms=elapsed if elapsed is not None else 0, cause="dead")))
        elif self.settings.fast_path and active_h is not None and active_h.state == UP:
            out += self._gray(active_h, now)
        if self.pending is not None and self.pending.version == self.version:
            out += self._try_pending(now)
        if self.active is None:
            # Routes sit on no peer: nothing flows, so take the best answering worker now.
            to = self._first_up(now)
            if to is not None:
                out.append(self._switch_to(to, "initial", f"routes were on no peer; {to} answers"))
        return out

    def _gray(self, active_h: WorkerHealth, now: float) -> list[Action]:
        """Leave an active worker that answers far worse than a clean backup (gray failure)."""
        g = self.settings.gray
        if g is None or now - self.gray_at < g.hold:
            return []
        verdict = None
        # No emergency: only onto a worker the responder calls usable (its assignment's worker
        # and backups), not one it holds down after a heal and would send the client back from.
        a = self.assignment
        for w in self.order:
            h = self.health[w]
            if w != self.active and not h.held_down(now, self.settings.hold_down) and (
                    a is None or w == a.worker or w in a.backups):
                verdict = gray_verdict(active_h, h, g)
                if verdict is not None:
                    break
        if verdict is None:
            out: list[Action] = []
            if active_h.trial and active_h.trial_lost >= g.loss_count:
                if not self.gray_stuck_noted:
                    self.gray_stuck_noted = True
                    out.append(Note(f"active {active_h.name} lost {active_h.trial_lost} of "
                                    f"{active_h.trial_n} probes, but no backup is clean; "
                                    "keeping it", logging.WARNING))
                active_h.end_trial()  # the next miss starts a new one
            return out
        cause, reason = verdict
        self.gray_at = now
        self.gray_stuck_noted = False
        active_h.left_gray_at = now
        active_h.end_trial()
        return [self._switch_to(w, "gray", reason, cause=cause),
                Report.of(SwitchEvent(from_worker=active_h.name, to_worker=w, reason=reason,
                                      cause=cause))]

    def _quiet_since(self, h: WorkerHealth | None) -> float | None:
        return h.quiet_since if h is not None and self.settings.burst_interval else None

    def _first_up(self, now: float) -> str | None:
        ups = [(self.health[w].held_down(now, self.settings.hold_down), i, w)
               for i, w in enumerate(self.order) if self.health[w].state == UP]
        return min(ups)[2] if ups else None

    def _switch_to(self, to: str, kind: str, reason: str, elapsed_ms: int | None = None,
                   version: int | None = None, cause: str | None = None) -> Switch:
        """Decide a move (the routes count as on `to` from now); the shell carries it out."""
        act = Switch(to=to, from_=self.active, kind=kind, reason=reason, elapsed_ms=elapsed_ms,
                     version=version, cause=cause)
        old = self.health.get(self.active) if self.active else None
        if old is not None:
            old.end_trial()  # bursts are for the active worker only
        self.active = to
        self.active_stuck_noted = False
        return act

    def switch_failed(self, act: Switch) -> None:
        """The shell could not carry out `act`: the routes stayed where they were."""
        self.active = act.from_
        if act.kind == "gray" and act.from_ is not None:
            self.gray_at = -1e9  # retried when the next trial fails, not after the hold
            self.health[act.from_].left_gray_at = None
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
        if h.state == UP and (first or not h.held_down(now, self.settings.hold_down)) and \
                h.heard_since(self._quiet_since(self.health.get(self.active or ""))):
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

