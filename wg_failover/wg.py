"""WireGuard access through the real `wg(8)` tool.

We shell out to `wg` rather than speak netlink/UAPI ourselves: it works the same for the kernel
module and for wireguard-go (which has no netlink), and its `dump` format is stable and documented.
The private key column of a dump is dropped at parse time so it can never reach a log or a metric.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fleet import Client, Fleet

WG = os.environ.get("WG_FAILOVER_WG", "wg")


class WgError(RuntimeError):
    """`wg` failed or printed something we cannot read."""


@dataclass(frozen=True)
class Device:
    name: str
    public_key: str | None
    listen_port: int
    fwmark: int | None


@dataclass(frozen=True)
class Peer:
    device: str
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix seconds; 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None  # seconds; None = off


@dataclass
class Dump:
    devices: dict[str, Device] = field(default_factory=dict)
    peers: list[Peer] = field(default_factory=list)

    def peers_of(self, device: str) -> list[Peer]:
        return [p for p in self.peers if p.device == device]


def _none(value: str) -> str | None:
    return None if value == "(none)" else value


def parse_dump(text: str, device: str | None = None) -> Dump:
    """Parse `wg show all dump` (device given as None) or `wg show DEV dump` output.

    wg(8): the first line of a device has private-key, public-key, listen-port, fwmark; each peer
    line has public-key, preshared-key, endpoint, allowed-ips, latest-handshake, transfer-rx,
    transfer-tx, persistent-keepalive. With `all`, every line starts with the interface name.
    """
    out = Dump()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if device is None:
            if len(cols) < 2:
                raise WgError(f"wg dump line {lineno}: too few columns")
            dev, cols = cols[0], cols[1:]
        else:
            dev = device
        try:
            if len(cols) == 4:
                _priv, pub, port, fwmark = cols
                out.devices[dev] = Device(
                    dev, _none(pub), int(port), None if fwmark == "off" else int(fwmark, 0)
                )
            elif len(cols) == 8:
                pub, _psk, endpoint, allowed, hs, rx, tx, ka = cols
                ips = () if allowed == "(none)" else tuple(a for a in allowed.split(",") if a)
                out.peers.append(
                    Peer(
                        device=dev,
                        public_key=pub,
                        endpoint=_none(endpoint),
                        allowed_ips=ips,
                        latest_handshake=int(hs),
                        rx_bytes=int(rx),
                        tx_bytes=int(tx),
                        persistent_keepalive=None if ka == "off" else int(ka),
                    )
                )
            else:
                raise WgError(f"wg dump line {lineno}: unexpected {len(cols)} columns")
        except ValueError as exc:
            raise WgError(f"wg dump line {lineno}: {exc}") from None
    return out


def normalize_networks(items: Iterable[str]) -> set[str]:
    """Prefixes in one spelling (`10.0.0.1/24` -> `10.0.0.0/24`), so a dump and a fleet compare;
    anything unparsable is kept as written."""
    out = set()
    for item in items:
        try:
            out.add(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            out.add(item)
    return out


def find_active(fleet: Fleet, client: Client, peers: Sequence[Peer]) -> str | None:
    """The worker whose peer holds all the client's routes (the first in the client's preference
    order should several), or None. Here, not in the switcher, because the lab reads a client's
    dump the same way to show where the routes really are."""
    routes = normalize_networks(client.routes)
    if not routes:
        return None
    by_key = {p.public_key: p for p in peers}
    for w in fleet.preferences(client):
        p = by_key.get(w.public_key)
        if p is not None and routes <= normalize_networks(p.allowed_ips):
            return w.name
    return None


def run_wg(args: Sequence[str], *, input: str | None = None, timeout: float = 10.0) -> str:
    try:
        proc = subprocess.run(
            [WG, *args], input=input, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError:
        raise WgError(f"`{WG}` not found: install wireguard-tools") from None
    except subprocess.TimeoutExpired:
        raise WgError(f"`wg {args[0] if args else ''}` timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        raise WgError(f"`wg {' '.join(args[:2])}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def show_dump(interface: str | None = None) -> Dump:
    """Read WireGuard state: one interface, or all of them."""
    if interface is None:
        return parse_dump(run_wg(["show", "all", "dump"]))
    return parse_dump(run_wg(["show", interface, "dump"]), device=interface)


def set_peer(
    interface: str,
    public_key: str,
    *,
    allowed_ips: Sequence[str] | None = None,
    endpoint: str | None = None,
    persistent_keepalive: int | None = None,
    remove: bool = False,
) -> None:
    """One `wg set IFACE peer KEY ...` call. An empty allowed_ips list clears the peer's IPs."""
    args = ["set", interface, "peer", public_key]
    if remove:
        args.append("remove")
    else:
        if allowed_ips is not None:
            args += ["allowed-ips", ",".join(allowed_ips)]
        if endpoint is not None:
            args += ["endpoint", endpoint]
        if persistent_keepalive is not None:
            args += ["persistent-keepalive", str(persistent_keepalive)]  # 0 = off
    run_wg(args)


def setconf(interface: str, config_text: str) -> None:
    """`wg setconf` from text (a stripped wg-quick config), through a private temporary file."""
    with tempfile.NamedTemporaryFile("w", prefix="wgfo-", suffix=".conf") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(config_text)
        f.flush()
        run_wg(["setconf", interface, f.name])


def genkey() -> str:
    return run_wg(["genkey"]).strip()


def pubkey(private_key: str) -> str:
    return run_wg(["pubkey"], input=private_key + "\n").strip()


def keypair() -> tuple[str, str]:
    """A fresh (private, public) key pair from `wg genkey | wg pubkey`."""
    priv = genkey()
    return priv, pubkey(priv)
