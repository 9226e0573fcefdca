"""The agent's one decision, pure: the peers a worker's interface should have (wire.WorkerPeers)
against those it has (`wg show IFACE dump`) -> the fewest `wg set` operations that make them equal.

A peer whose key and allowed-ips are already right is never named in an operation: `wg set` on
it would not break its session, but leaving it out keeps the cost of a change proportional to
the change, not to the fleet. Endpoints and keepalives are the clients' to set (they connect
to the worker), so they are never touched either. Operations are batched: wg(8) takes any number
of `peer` clauses in one `wg set`, so a change of a thousand peers is a handful of calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from wg_failover.wg import Peer, normalize_networks
from wg_failover.wire import PeerEntry

# One `wg set` call carries at most this many argument bytes: Linux caps one argument at 128 KiB
# and all of them (with the environment) at a quarter of the stack limit (2 MiB by default).
MAX_ARG_BYTES = 256 * 1024


@dataclass(frozen=True)
class PeerOp:
    """Set one peer's allowed-ips (adding the peer when it is missing), or remove it."""

    public_key: str
    allowed_ips: tuple[str, ...] | None  # None: remove the peer
    name: str = ""  # the client's name, for log lines only
    previous: tuple[str, ...] = ()  # the allowed-ips it had (changed or removed peers)

    @property
    def remove(self) -> bool:
        return self.allowed_ips is None

    def args(self) -> list[str]:
        if self.allowed_ips is None:
            return ["peer", self.public_key, "remove"]
        return ["peer", self.public_key, "allowed-ips", ",".join(self.allowed_ips)]


@dataclass
class Plan:
    add: list[PeerOp] = field(default_factory=list)
    change: list[PeerOp] = field(default_factory=list)
    remove: list[PeerOp] = field(default_factory=list)
    kept: int = 0  # peers already right, left alone
    duplicates: list[str] = field(default_factory=list)  # desired names whose key came twice
    routes: int = 0  # routes added or deleted with it (set by whoever applied it)

    def empty(self) -> bool:
        return not (self.add or self.change or self.remove)

    def ops(self) -> list[PeerOp]:
        # Removals first: an address that moves from a removed client to a new one is then free
        # before it is given (wg would otherwise take it from the old peer anyway, but a failed
        # batch in between would leave the old one without it and the new one not yet there).
        return [*self.remove, *self.change, *self.add]

    def summary(self) -> str:
        routes = f", {self.routes} route changes" if self.routes else ""
        return (f"+{len(self.add)} ~{len(self.change)} -{len(self.remove)} "
                f"(={self.kept} untouched{routes})")


def _sorted_ips(ips: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(normalize_networks(ips)))


def plan(desired: Sequence[PeerEntry], current: Sequence[Peer]) -> Plan:
    """What makes `current` equal to `desired`: peers missing are added, peers whose allowed-ips
    differ (as sets of networks, in any spelling) are changed, peers not desired are removed."""
    return _plan(desired, {p.public_key: p.allowed_ips for p in current})


def plan_from_applied(desired: Sequence[PeerEntry], applied: Sequence[PeerEntry]) -> Plan:
    """`plan` against what was applied last rather than a dump: the next change is then planned
    from memory (its cost grows with the change, not with the fleet), and only the periodic
    reconcile reads the interface."""
    return _plan(desired, {e.public_key: e.allowed_ips for e in applied})


def _plan(desired: Sequence[PeerEntry], have: Mapping[str, Sequence[str]]) -> Plan:
    out = Plan()
    want: dict[str, PeerEntry] = {}
    for entry in desired:
        if entry.public_key in want:
            out.duplicates.append(entry.name)  # the responder never sends one; keep the first
            continue
        want[entry.public_key] = entry
    for key, entry in want.items():
        ips = have.get(key)
        if ips is None:
            out.add.append(PeerOp(key, _sorted_ips(entry.allowed_ips), entry.name))
        elif list(ips) == list(entry.allowed_ips) or sorted(ips) == sorted(entry.allowed_ips):
            out.kept += 1  # the common case, without parsing a single address
        elif _sorted_ips(ips) != (new := _sorted_ips(entry.allowed_ips)):
            out.change.append(PeerOp(key, new, entry.name, tuple(ips)))
        else:
            out.kept += 1
    out.remove = [PeerOp(key, None, previous=tuple(ips)) for key, ips in have.items()
                  if key not in want]
    return out


def wg_set_argvs(interface: str, ops: Sequence[PeerOp],
                 max_bytes: int = MAX_ARG_BYTES) -> list[list[str]]:
    """The `wg` argument lists (without `wg` itself) that apply `ops` in order, each at most
    `max_bytes` long: `set IFACE peer K1 ... peer K2 ...`."""
    head = ["set", interface]
    out: list[list[str]] = []
    argv: list[str] = []
    size = 0
    for op in ops:
        args = op.args()
        n = sum(len(a) + 1 for a in args)
        if argv and size + n > max_bytes:
            out.append(head + argv)
            argv, size = [], 0
        argv += args
        size += n
    if argv:
        out.append(head + argv)
    return out



# ----------------------------------------------------------------------------------- routes
# A peer's allowed-ips only say which peer a packet to that address goes to once it is in the
# interface; the kernel must route the address to the interface first (wg-quick adds a route
# per allowed-ip when it brings an interface up). Peers added at run time need the same, or the
# worker's answers to a new client leave by its default route. The agent's routes carry a
# protocol number of their own, so it only ever deletes routes it added.
def _routable(ips: Iterable[str]) -> set[str]:
    out = set()
    for net in normalize_networks(ips):
        if not net.endswith("/0"):  # a default route through a worker's tunnel is never meant
            out.add(net)
    return out


def route_changes(p: Plan) -> tuple[set[str], set[str]]:
    """(routes to add or replace, routes to delete) for a plan made from what was applied."""
    new = _routable(ip for op in (*p.add, *p.change) for ip in op.allowed_ips or ())
    old = _routable(ip for op in (*p.change, *p.remove) for ip in op.previous)
    return new, old - new


def route_plan(desired: Sequence[PeerEntry], current: Iterable[str]
               ) -> tuple[set[str], set[str]]:
    """(routes to add, routes to delete) that make the agent's routes (`current`, as `ip route`
    prints them: a host route without its /32) those of the desired peers. A route wg-quick
    added at `up` is not the agent's: it is replaced by one that is, once."""
    # Compared as written first; only the few that differ are parsed (10,000 addresses through
    # ipaddress cost a third of a second, and the full reconcile runs every few seconds).
    want = {ip for e in desired for ip in e.allowed_ips}
    have = {c if "/" in c else c + ("/128" if ":" in c else "/32") for c in current}
    add, delete = _routable(want - have), _routable(have - want)
    return add - delete, delete - add
