"""A node's WireGuard key pair, made on the node: `wg genkey | wg pubkey` when wg is installed,
else the same math here (X25519, RFC 7748), so `join` also runs where wireguard-tools is not
installed yet (the config it writes is used later)."""

from __future__ import annotations

import base64
import os
import shutil

from wg_failover import wg

_P = 2**255 - 19
_A24 = 121665


def _x25519(scalar: bytes, u: bytes) -> bytes:
    # RFC 7748 section 5: the Montgomery ladder, with the scalar clamped as X25519 does.
    k = bytearray(scalar)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    n = int.from_bytes(k, "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in range(254, -1, -1):
        bit = (n >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3, z3 = (da + cb) ** 2 % _P, x1 * (da - cb) ** 2 % _P
        x2, z2 = aa * bb % _P, e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def py_genkey() -> str:
    k = bytearray(os.urandom(32))
    k[0] &= 248  # as `wg genkey` prints it: already clamped
    k[31] = (k[31] & 127) | 64
    return base64.b64encode(bytes(k)).decode()


def py_pubkey(private_key: str) -> str:
    raw = base64.b64decode(private_key, validate=True)
    if len(raw) != 32:
        raise ValueError("a WireGuard private key is 32 bytes")
    return base64.b64encode(_x25519(raw, (9).to_bytes(32, "little"))).decode()


def keypair() -> tuple[str, str]:
    """(private, public): from wg(8) when it is installed, else computed here."""
    if shutil.which(wg.WG):
        return wg.keypair()
    priv = py_genkey()
    return priv, py_pubkey(priv)


def public_of(private_key: str) -> str:
    return wg.pubkey(private_key) if shutil.which(wg.WG) else py_pubkey(private_key)
