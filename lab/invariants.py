"""The fault campaign's invariants, as plain checkers over observations (no I/O).

`bench/chaos.py` feeds them what it sees in a running lab (ping replies, `wg show`, the
responder's answers) with the time it saw it; the unit tests feed them recorded observations.
Each checker returns `Violation`s as they happen, so the campaign prints them at once.

1. traffic: a client with at least one healthy worker it can reach never goes without a ping
   reply for longer than `GAP_BOUND` (the fast path's bound).
2. switching: no client's routes move while no fault is in force and the lab has converged
   (a flap), and no client moves more than `MAX_SWITCHES_PER_FAULT` times per fault.
3. convergence: after the last heal of an episode the lab converges within `CONVERGE_BOUND`:
   the responder calls every worker up, every client's routes sit on its assigned (healthy)
   worker and its pings are answered, every worker's peers match the fleet, every recorded
   process runs.
4. versions: a client's assignment version (within one store epoch) never goes backwards, and
   the epoch never changes (the store survives every restart).
5. blind master: while the master is cut off from a worker its clients still reach, those
   clients stay on it and the responder does not call it down.
6. leftovers: after `lab down` nothing of the lab is left (checked by `lab.faults.leftovers`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

GAP_BOUND = 1.0  # seconds: the fast path's bound (3 missed probes at 100 ms, plus margin)
MAX_SWITCHES_PER_FAULT = 2
CONVERGE_BOUND = 90.0  # seconds after the last heal; a revived worker alone takes ~40 s (docs)


@dataclass(frozen=True)
class Violation:
    t: float  # seconds since the campaign started
    invariant: str  # "1 traffic", "2 flap", "2 switches", "3 convergence", "4 version", ...
    text: str
    faults: tuple[str, ...] = ()  # labels of the faults in force

    def line(self) -> str:
        force = ", ".join(self.faults) or "none"
        return (f"VIOLATION {self.t:8.2f} s  [{self.invariant}] {self.text}  "
                f"(faults in force: {force})")


# ---------------------------------------------------------------------- 1. traffic


@dataclass
class TrafficCheck:
    """Per client: the last ping reply, and since when it has had a healthy reachable worker.

    `covered(client, t, yes)` says at time t whether the client then has a healthy worker it
    can reach (and a live switcher to move to it). A gap counts only from when the client is
    covered: time with no usable worker at all is not the system's to bridge.
    """

    bound: float = GAP_BOUND
    last_reply: dict[str, float] = field(default_factory=dict)
    covered_since: dict[str, float | None] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)  # clients whose current gap was reported
    worst: float = 0.0  # the worst covered gap seen so far, seconds
    worst_client: str = ""

    def covered(self, client: str, t: float, yes: bool) -> None:
        if not yes:
            self.covered_since[client] = None
        elif self.covered_since.get(client) is None:
            self.covered_since[client] = t

    def _covered_gap(self, client: str, t: float) -> float:
        since = self.covered_since.get(client)
        last = self.last_reply.get(client)
        if since is None or last is None:
            return 0.0
        return t - max(since, last)

    def reply(self, client: str, t: float) -> None:
        gap = self._covered_gap(client, t)
        if gap > self.worst:
            self.worst, self.worst_client = gap, client
        self.last_reply[client] = t
        self.reported.discard(client)

    def check(self, t: float, faults: tuple[str, ...] = ()) -> list[Violation]:
        """Gaps still open at `t` that already exceed the bound (each reported once)."""
        out = []
        for client in sorted(self.last_reply):
            gap = self._covered_gap(client, t)
            if gap > self.bound and client not in self.reported:
                self.reported.add(client)
                out.append(Violation(t, "1 traffic", f"{client}: no reply for {gap:.2f} s "
                                     f"while it had a healthy reachable worker", faults))
        return out


# ---------------------------------------------------------------------- 2. switching


@dataclass
class SwitchCheck:
    """Route moves seen on the clients' interfaces, against the faults of the current episode."""

    max_per_fault: int = MAX_SWITCHES_PER_FAULT
    active: dict[str, str] = field(default_factory=dict)  # client -> last worker seen (not None)
    episode: str | None = None  # label of the episode in progress (None: quiet, converged)
    n_faults: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    switches: int = 0

    def begin(self, episode: str, n_faults: int) -> None:
        self.episode, self.n_faults, self.counts = episode, max(1, n_faults), {}

    def end(self) -> None:
        """The episode's faults are healed and the lab has converged: quiet from here."""
        self.episode = None

    def observe(self, t: float, routes: Mapping[str, str | None],
                faults: tuple[str, ...] = ()) -> list[Violation]:
        out = []
        for client, worker in routes.items():
            if worker is None:
                continue  # between two `wg set`s, or the interface is being read: not a move
            before = self.active.get(client)
            self.active[client] = worker
            if before is None or before == worker:
                continue
            out += self.move(t, client, before, worker, faults)
        return out

    def move(self, t: float, client: str, before: str, worker: str,
             faults: tuple[str, ...] = (), why: str = "") -> list[Violation]:
        """One move of a client's routes (seen on its interface or in its switcher's log, whose
        time and reason `why` then gives)."""
        self.switches += 1
        why = f"; {why}" if why else ""
        if self.episode is None:
            return [Violation(t, "2 flap", f"{client}: routes moved {before} -> {worker} "
                              f"with no fault in force{why}", faults)]
        n = self.counts[client] = self.counts.get(client, 0) + 1
        if n == self.max_per_fault * self.n_faults + 1:
            return [Violation(t, "2 switches", f"{client}: {n} moves in episode "
                              f"{self.episode} ({self.n_faults} fault(s); last "
                              f"{before} -> {worker}{why})", faults)]
        return []


# ---------------------------------------------------------------------- 3. convergence


@dataclass(frozen=True)
class Snapshot:
    """What the lab looks like at one moment (None where a source did not answer)."""

    worker_states: Mapping[str, str] | None  # responder: worker -> state
    assigned: Mapping[str, str | None] | None  # responder: client -> assigned worker
    routes: Mapping[str, str | None]  # `wg show` on each client: where its routes are
    worker_peers: Mapping[str, frozenset[str] | None]  # `wg show` on each worker: peer keys
    fleet_peers: frozenset[str]  # every client's public key, from the fleet
    dead_processes: tuple[str, ...] = ()  # recorded processes that do not run
    silent: tuple[str, ...] = ()  # clients whose pings got no reply lately (traffic stopped)


def not_converged(s: Snapshot) -> list[str]:
    """Why the lab has not converged (empty: it has). Every worker is meant healthy here."""
    why = list(f"{p} is not running" for p in s.dead_processes)
    why += [f"{c}: no traffic" for c in s.silent]
    if s.worker_states is None:
        why.append("responder does not answer /v1/workers")
    else:
        why += [f"responder calls {w} {st}" for w, st in sorted(s.worker_states.items())
                if st != "up"]
    if s.assigned is None:
        why.append("responder does not answer every assignment")
    else:
        for c, route in sorted(s.routes.items()):
            a = s.assigned.get(c)
            if a is None or route != a:
                why.append(f"{c}: routes on {route}, assigned {a}")
            elif s.worker_states is not None and s.worker_states.get(a) != "up":
                why.append(f"{c}: assigned {a}, which is not up")
    for w, peers in sorted(s.worker_peers.items()):
        if peers != s.fleet_peers:
            why.append(f"{w}: peers do not match the fleet")
    return why


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, -(-len(xs) * q // 100) - 1))
    return xs[int(k)]


# ---------------------------------------------------------------------- 4. versions


@dataclass
class VersionCheck:
    seen: dict[str, tuple[str | None, int]] = field(default_factory=dict)  # client -> epoch, v

    def observe(self, t: float, client: str, epoch: str | None, version: int,
                faults: tuple[str, ...] = ()) -> list[Violation]:
        before = self.seen.get(client)
        if before is None:
            self.seen[client] = (epoch, version)
            return []
        old_epoch, old_version = before
        if epoch is not None and old_epoch is not None and epoch != old_epoch:
            self.seen[client] = (epoch, version)
            return [Violation(t, "4 version", f"{client}: store epoch changed {old_epoch} -> "
                              f"{epoch} (assignments before it are lost)", faults)]
        if version < old_version:
            return [Violation(t, "4 version", f"{client}: assignment version went back "
                              f"{old_version} -> {version}", faults)]
        self.seen[client] = (epoch or old_epoch, version)
        return []


# ---------------------------------------------------------------------- 5. blind master


@dataclass
class BlindMasterCheck:
    """While the master cannot see `worker` but its clients can: nobody leaves it."""

    worker: str
    clients: frozenset[str]  # clients whose routes were on it when the cut began
    label: str
    reported: set[str] = field(default_factory=set)

    def observe(self, t: float, routes: Mapping[str, str | None],
                worker_states: Mapping[str, str] | None,
                assigned: Mapping[str, str | None] | None,
                faults: tuple[str, ...] = ()) -> list[Violation]:
        out = []
        for c in sorted(self.clients):
            moved = routes.get(c) not in (None, self.worker)
            reassigned = assigned is not None and assigned.get(c) not in (None, self.worker)
            if (moved or reassigned) and c not in self.reported:
                self.reported.add(c)
                where = routes.get(c) if moved else (assigned or {}).get(c)
                out.append(Violation(t, "5 blind master", f"{c} left {self.worker} for {where} "
                                     "although it still reaches it", faults))
        state = (worker_states or {}).get(self.worker)
        if state is not None and state != "up" and "@state" not in self.reported:
            self.reported.add("@state")
            out.append(Violation(t, "5 blind master", f"responder calls {self.worker} {state} "
                                 "although its clients reach it", faults))
        return out
