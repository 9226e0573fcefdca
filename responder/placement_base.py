"""The planner's plain data and the few primitives every placement rule shares (planner.py,
placement.py): worker and client views, a move, a plan, loads, room, and recording a move.
Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

UP, DOWN, RECOVERING = "up", "down", "recovering"
INF = float("inf")

# Reasons an assignment changes; they label wgfo_client_moves_total and appear in the API.
R_INITIAL = "initial"
R_FAILOVER = "failover"
R_DRAIN = "drain"
R_UNUSABLE = "client-rejected"
R_CAPACITY = "capacity"
R_PREEMPT = "preempt"
R_SWITCH = "client-switch"
R_FLEET = "fleet-change"  # its worker left the fleet or its preference list
R_SUSPECT = "suspect"  # several of its worker's clients switched away from it (intake/suspect.py)
R_LATENCY = "latency"
R_SETTLE = "settle"  # placed before its figures came: its fastest worker once they did
REASONS = (R_INITIAL, R_FAILOVER, R_DRAIN, R_UNUSABLE, R_CAPACITY, R_PREEMPT, R_SWITCH, R_FLEET,
           R_SUSPECT, R_LATENCY, R_SETTLE)


@dataclass(frozen=True)
class WorkerView:
    name: str
    state: str = UP  # up | down | recovering
    draining: bool = False
    capacity: int | None = None  # None: unlimited
    suspect: bool = False  # treated as unavailable until an alert confirms it or the mark expires
    region: str | None = None
    # Clients left it by their fast path within the suspect window (a quorum not reached yet,
    # or a mark still settling): no latency move onto it, whose figures predate their flight.
    fled: bool = False

    @property
    def healthy(self) -> bool:
        """Takes clients: up, not draining, not suspect."""
        return self.state == UP and not self.draining and not self.suspect


@dataclass(frozen=True)
class ClientView:
    name: str
    prefs: tuple[str, ...]  # worker names, most preferred first
    unusable: frozenset[str] = frozenset()  # workers this client's probes reject


@dataclass(frozen=True)
class Move:
    client: str
    from_worker: str | None
    to_worker: str
    reason: str


@dataclass
class Plan:
    moves: dict[str, Move] = field(default_factory=dict)  # by client, in the order made
    unplaceable: list[str] = field(default_factory=list)  # must move, nowhere to go


def loads(assignments: Mapping[str, str | None]) -> dict[str, int]:
    """Clients per worker, from client -> worker (None: unassigned, not counted)."""
    out: dict[str, int] = {}
    for w in assignments.values():
        if w is not None:
            out[w] = out.get(w, 0) + 1
    return out


def room(w: WorkerView, load: int) -> float:
    """Free places on `w` carrying `load` clients (inf: unlimited)."""
    return INF if w.capacity is None else w.capacity - load


def usable(c: ClientView, w: WorkerView) -> bool:
    """May `c` be placed on `w`: healthy and not rejected by its probes."""
    return w.healthy and w.name not in c.unusable


def record_move(out: Plan, assign: dict[str, str | None], load: dict[str, int], client: str,
                frm: str | None, to: str, reason: str) -> None:
    """Apply one move to the working assignment and loads, and keep it in the plan."""
    if frm is not None:
        load[frm] -= 1
    load[to] = load.get(to, 0) + 1
    assign[client] = to
    # One client may move twice in one plan (e.g. capacity fix after failover): keep one move
    # from its original worker to its final one.
    m = out.moves.get(client)
    if m is None:
        out.moves[client] = Move(client, frm, to, reason)
    elif m.from_worker == to:
        del out.moves[client]
    else:
        out.moves[client] = Move(client, m.from_worker, to, m.reason)
