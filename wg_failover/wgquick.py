"""wg-quick(8) configs for workers and clients, rendered from the fleet.

The client config is where the design's one idea lives: every worker is a peer with its own tunnel
/32 and a keepalive (so every backup is warm), and the routed prefixes sit on the active worker
only.
WireGuard's cryptokey routing gives a prefix to exactly one peer, so writing 0.0.0.0/0 on two peers
would silently leave it on the last one.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from .fleet import Client, Fleet, Worker
from .wire import ClientView, PeerEntry

PRIVATE_KEY_PLACEHOLDER = "<REPLACE WITH THIS HOST'S PRIVATE KEY: wg genkey>"
DEFAULT_KEEPALIVE = 25


class KeyFileError(ValueError):
    pass


def read_private_key(path: str | Path) -> str:
    """Read a private key file as `wg genkey` writes it. Errors never quote the file's content."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read private key file: {exc}") from None
    try:
        ok = len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise KeyFileError(f"{path}: not a WireGuard private key (32 bytes, base64)")
    return text


def _peer(lines: list[str], comment: str, public_key: str, allowed: list[str],
          endpoint: str | None = None, keepalive: int | None = None) -> None:
    lines += ["", "[Peer]", f"# {comment}", f"PublicKey = {public_key}"]
    if endpoint:
        lines.append(f"Endpoint = {endpoint}")
    lines.append(f"AllowedIPs = {', '.join(allowed)}")
    if keepalive:
        lines.append(f"PersistentKeepalive = {keepalive}")


def render_worker(fleet: Fleet, worker: Worker | str, private_key: str | None = None) -> str:
    """The worker's wg0: its tunnel address, listen port, and every client that may use it."""
    w = fleet.worker(worker) if isinstance(worker, str) else worker
    lines = [
        f"# wg-failover worker {w.name}: generated from the fleet file; edit the fleet, not this.",
        "[Interface]",
        f"Address = {w.tunnel_host_cidr}",
        f"ListenPort = {w.listen_port}",
        f"PrivateKey = {private_key or PRIVATE_KEY_PLACEHOLDER}",
    ]
    for c in fleet.clients_of(w):
        _peer(lines, f"client {c.name}", c.public_key, c.host_cidrs)
    return "\n".join(lines) + "\n"


def client_peer_allowed_ips(
    fleet: Fleet, client: Client, worker: Worker, active: bool
) -> list[str]:
    """AllowedIPs of one worker peer on a client: its tunnel /32, plus the routes when active."""
    return ([*client.routes] if active else []) + [worker.tunnel_host_cidr]


def render_client(
    fleet: Fleet,
    client: Client | str,
    private_key: str | None = None,
    keepalive: int = DEFAULT_KEEPALIVE,
    active: str | None = None,
) -> str:
    """The client's interface with every preferred worker as a peer; routes on `active` only.

    `active` defaults to the client's first preferred worker.
    """
    c = fleet.client(client) if isinstance(client, str) else client
    prefs = fleet.preferences(c)
    active_name = active or prefs[0].name
    if active_name not in {w.name for w in prefs}:
        raise KeyError(f"worker {active_name!r} is not among client {c.name}'s workers")
    lines = [
        f"# wg-failover client {c.name}: generated from the fleet file.",
        "# Every worker is a peer; the routes sit on the active one only, and",
        "# `wg-failover switcher` moves them with one `wg set` when a worker fails.",
        "[Interface]",
        f"Address = {', '.join(c.addresses)}",
        f"PrivateKey = {private_key or PRIVATE_KEY_PLACEHOLDER}",
    ]
    for w in prefs:
        is_active = w.name == active_name
        _peer(
            lines,
            f"worker {w.name}{' (active)' if is_active else ' (backup)'}",
            w.public_key,
            client_peer_allowed_ips(fleet, c, w, is_active),
            endpoint=w.endpoint,
            keepalive=keepalive,
        )
    return "\n".join(lines) + "\n"


def strip(config: str) -> str:
    """What `wg-quick strip` does: drop the wg-quick-only keys so `wg setconf` takes the rest."""
    wg_quick_only = {"address", "dns", "mtu", "table", "preup", "postup", "predown", "postdown",
                     "saveconfig"}
    out = []
    interface = False
    for raw in config.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            interface = line.lower() == "[interface]"
        elif interface and line.split("=", 1)[0].strip().lower() in wg_quick_only:
            continue
        out.append(line)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ the live fleet (`join`)
# A node that joined at run time has no fleet file: its config comes from what the responder
# answered (wire.ClientView, wire.WorkerPeers); the same layout as render_client/render_worker.
def render_client_view(view: ClientView, private_key: str | None = None,
                       active: str | None = None, keepalive: int = DEFAULT_KEEPALIVE) -> str:
    """A client's interface from its view: every worker it may use is a warm peer with its
    tunnel /32; the routes sit on `active` only (default: the first worker of the view)."""
    names = [w.name for w in view.workers]
    active_name = active or (names[0] if names else None)
    if active_name is not None and active_name not in names:
        raise KeyError(f"worker {active_name!r} is not among client {view.client}'s workers")
    lines = [
        f"# wg-failover client {view.client}: written by `wg-failover join` from its view.",
        "# Every worker is a peer; the routes sit on the active one only, and",
        "# `wg-failover switcher` moves them with one `wg set` when a worker fails.",
        "[Interface]",
        f"Address = {view.address}",
        f"PrivateKey = {private_key or PRIVATE_KEY_PLACEHOLDER}",
    ]
    for w in view.workers:
        is_active = w.name == active_name
        ip = ipaddress.ip_address(w.tunnel_address)
        _peer(lines, f"worker {w.name}{' (active)' if is_active else ' (backup)'}",
              w.public_key, ([*view.routes] if is_active else []) + [f"{ip}/{ip.max_prefixlen}"],
              endpoint=w.endpoint, keepalive=keepalive)
    return "\n".join(lines) + "\n"


def render_worker_interface(name: str, tunnel_address: str, listen_port: int,
                            private_key: str | None = None,
                            peers: Sequence[PeerEntry] = ()) -> str:
    """A worker's interface that joined at run time: its tunnel address and listen port, and the
    clients it serves as they were when it joined (`wg-failover agent` keeps them current)."""
    ip = ipaddress.ip_address(tunnel_address)
    lines = [
        f"# wg-failover worker {name}: written by `wg-failover join`; `wg-failover agent` keeps",
        "# its peers equal to the fleet's clients at run time (peers here are only a start).",
        "[Interface]",
        f"Address = {ip}/{ip.max_prefixlen}",
        f"ListenPort = {listen_port}",
        f"PrivateKey = {private_key or PRIVATE_KEY_PLACEHOLDER}",
    ]
    for p in peers:
        _peer(lines, f"client {p.name}", p.public_key, list(p.allowed_ips))
    return "\n".join(lines) + "\n"
