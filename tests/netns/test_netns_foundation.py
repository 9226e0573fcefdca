"""The fleet's configs on real wireguard-go in network namespaces: tunnels come up, and moving
the routes with one `wg set` moves the traffic to another worker without a restart."""

from __future__ import annotations

import subprocess

from wg_failover import wg
from wg_failover.lab.gen import generate_fleet
from wg_failover.wgquick import client_peer_allowed_ips, render_client, render_worker

SERVICE = "10.99.0.1"  # the same service address behind every worker


def wg_quick_strip(tmp_path, config: str) -> str:
    path = tmp_path / "wgfo0.conf"
    path.write_text(config)
    return subprocess.run(["wg-quick", "strip", str(path)], check=True, capture_output=True,
                          text=True).stdout


def test_fleet_configs_on_real_wireguard(netlab, tmp_path):
    gen = generate_fleet(3, 2, worker_host=lambda i: f"198.18.0.{i + 10}")
    fleet = gen.fleet
    ifaces = {}
    for i, w in enumerate(fleet.workers):
        host = netlab.add_host(w.name, address=f"198.18.0.{i + 10}")
        # No dummy-interface module here; a /32 on the namespace's loopback serves the same.
        host.run(["ip", "addr", "add", f"{SERVICE}/32", "dev", "lo"])
        conf = wg_quick_strip(tmp_path, render_worker(fleet, w, gen.private_keys[w.name]))
        ifaces[w.name] = host.wireguard(f"w{i}", conf, [w.tunnel_host_cidr])
    clients = {}
    for j, c in enumerate(fleet.clients):
        host = netlab.add_host(c.name)
        conf = wg_quick_strip(tmp_path, render_client(fleet, c, gen.private_keys[c.name],
                                                      keepalive=1))
        clients[c.name] = (host, host.wireguard(f"c{j}", conf, [c.address]))
        # wg-quick would route the client's routes into the tunnel; do the same here.
        for route in c.routes:
            host.run(["ip", "route", "replace", route, "dev", clients[c.name][1].name])

    # Every client reaches every worker's tunnel address, each through that worker's own peer.
    for name, (host, _iface) in clients.items():
        for w in fleet.workers:
            assert host.ping(w.tunnel_address, count=3, timeout=2), f"{name} -> {w.name}"

    # The service goes through the active (first preferred) worker only.
    c = fleet.clients[0]
    host, iface = clients[c.name]
    first, second = fleet.preferences(c)[:2]

    def rx_on(worker_name: str) -> int:
        return sum(p.rx_bytes for p in ifaces[worker_name].dump().peers
                   if p.public_key == c.public_key)

    before = {w.name: rx_on(w.name) for w in fleet.workers}
    assert host.ping(SERVICE, count=3, timeout=2)
    assert rx_on(first.name) > before[first.name]

    # Move the routes to the second worker: one `wg set`, no restart, no new handshake needed.
    handshakes = {p.public_key: p.latest_handshake for p in iface.dump().peers}
    wg.set_peer(iface.name, second.public_key,
                allowed_ips=client_peer_allowed_ips(fleet, c, second, active=True))
    peers = {p.public_key: p for p in iface.dump().peers}
    assert set(peers[second.public_key].allowed_ips) == {"10.99.0.0/24", second.tunnel_host_cidr}
    # WireGuard takes the prefix from the first peer: it may sit on one peer only.
    assert peers[first.public_key].allowed_ips == (first.tunnel_host_cidr,)

    # Kill the first worker outright: the service still answers, through the second.
    ifaces[first.name].kill()
    mid = rx_on(second.name)
    assert host.ping(SERVICE, count=3, timeout=2)
    assert rx_on(second.name) > mid
    assert iface.dump().peers and handshakes[second.public_key] > 0
