"""A lean reader of `wg show ... dump` for the scrape path.

wg_failover.wg.parse_dump makes a frozen dataclass per peer, which at 10,000 peers costs more
than the rest of a scrape; this reader keeps each peer as a plain tuple. It reads the same
format with the same checks where a value is exported (a test holds the two readers to the same
results), and, like the core reader, drops the private key column at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wg_failover.wg import Device, WgError

# Fields of a peer row.
DEV, KEY, ENDPOINT, ALLOWED, HANDSHAKE, RX, TX = range(7)
PeerRow = tuple[str, str, str, tuple[str, ...], int, int, int]


@dataclass
class Snapshot:
    devices: dict[str, Device] = field(default_factory=dict)
    peers: list[PeerRow] = field(default_factory=list)  # endpoint "" = none

    def extend(self, other: Snapshot) -> None:
        self.devices.update(other.devices)
        self.peers.extend(other.peers)


def parse_rows(text: str, device: str | None = None) -> Snapshot:
    """`wg show all dump` (device None: the first column is the interface) or `wg show DEV dump`.

    wg(8): a device line is private-key, public-key, listen-port, fwmark; a peer line is
    public-key, preshared-key, endpoint, allowed-ips, latest-handshake, transfer-rx, transfer-tx,
    persistent-keepalive.
    """
    out = Snapshot()
    peers = out.peers
    append = peers.append
    skip = 1 if device is None else 0
    dev = device
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line or line.isspace():
            continue
        cols = line.split("\t")
        n = len(cols) - skip
        if skip:
            if n < 1:
                raise WgError(f"wg dump line {lineno}: too few columns")
            dev = cols[0]
        try:
            if n == 8:
                pub, _psk, endpoint, allowed, hs, rx, tx, ka = cols[skip:]
                if ka != "off":
                    int(ka)
                if allowed == "(none)":
                    ips: tuple[str, ...] = ()
                else:
                    ips = tuple(allowed.split(","))
                    if "" in ips:
                        ips = tuple(a for a in ips if a)
                append((dev, pub, "" if endpoint == "(none)" else endpoint, ips,
                        int(hs), int(rx), int(tx)))
            elif n == 4:
                _priv, pub, port, fwmark = cols[skip:]
                out.devices[dev] = Device(dev, None if pub == "(none)" else pub, int(port),
                                          None if fwmark == "off" else int(fwmark, 0))
            else:
                raise WgError(f"wg dump line {lineno}: unexpected {n} columns")
        except ValueError as exc:
            raise WgError(f"wg dump line {lineno}: {exc}") from None
    return out
