"""The client's WireGuard interface, through `wg` only (kernel WireGuard and wireguard-go alike).

`plan_reconcile` is pure: from the fleet and a `wg show IFACE dump` it works out which peers to
add or fix. It never plans a change to a peer that already holds the routes and is configured
right, so a restarted switcher does not disturb the traffic that flows.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from wg_failover import wg
from wg_failover.fleet import Client, Fleet, Worker, parse_host_port
from wg_failover.wgquick import client_peer_allowed_ips


@dataclass(frozen=True)
class PeerChange:
    worker: str
    public_key: str
    why: str
    allowed_ips: tuple[str, ...] | None = None
    endpoint: str | None = None
    persistent_keepalive: int | None = None


def _endpoint_matches(worker: Worker, current: str | None) -> bool:
    if current is None:
        return False
    hp = parse_host_port(worker.endpoint)
    try:
        ipaddress.ip_address(hp.host)
    except ValueError:
        return True  # a host name: wg shows the address it resolved to; we cannot compare
    return str(hp) == current


def plan_reconcile(fleet: Fleet, client: Client, peers: list[wg.Peer], active: str | None,
                   keepalive: int) -> list[PeerChange]:
    """What to change so every worker is a warm peer and the routes sit on `active` only."""
    by_key = {p.public_key: p for p in peers}
    routes = wg.normalize_networks(client.routes)
    changes = []
    for w in fleet.preferences(client):
        want = client_peer_allowed_ips(fleet, client, w, w.name == active)
        p = by_key.get(w.public_key)
        if p is None:
            changes.append(PeerChange(w.name, w.public_key, "missing peer", tuple(want),
                                      w.endpoint, keepalive))
            continue
        have = wg.normalize_networks(p.allowed_ips)
        allowed = None
        whys = []
        if w.name == active:
            if not wg.normalize_networks(want) <= have:
                allowed = tuple(want)
                whys.append("routes incomplete")
        elif not wg.normalize_networks(want) <= have or have & routes:
            allowed = tuple(want)
            whys.append("allowed-ips" if not have & routes else "backup held routes")
        endpoint = None
        if not _endpoint_matches(w, p.endpoint):
            endpoint = w.endpoint
            whys.append(f"endpoint {p.endpoint or 'unset'}")
        ka = None
        if not p.persistent_keepalive:
            ka = keepalive
            whys.append("no keepalive")
        if whys:
            changes.append(PeerChange(w.name, w.public_key, ", ".join(whys), allowed, endpoint,
                                      ka))
    # The active peer first: giving it the routes takes them from wherever they were, so no
    # moment passes with the routes on no peer.
    changes.sort(key=lambda c: c.worker != active)
    return changes


def apply_changes(interface: str, changes: list[PeerChange]) -> None:
    for c in changes:
        wg.set_peer(interface, c.public_key, allowed_ips=c.allowed_ips, endpoint=c.endpoint,
                    persistent_keepalive=c.persistent_keepalive)


def move_routes(interface: str, fleet: Fleet, client: Client, worker: str) -> None:
    """THE switch: one `wg set IFACE peer KEY allowed-ips ROUTES,TUNNEL/32`.

    WireGuard's cryptokey routing takes the prefixes from the peer that had them, atomically.
    """
    w = fleet.worker(worker)
    wg.set_peer(interface, w.public_key,
                allowed_ips=client_peer_allowed_ips(fleet, client, w, active=True))
