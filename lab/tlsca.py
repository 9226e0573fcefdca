"""A throwaway certificate authority for the lab and the tests, made with the real `openssl`.

    ca = make_ca(DIR)                                   # DIR/ca.crt, DIR/ca.key
    crt, key = issue(ca, DIR, "responder", ips=["198.18.0.1", "127.0.0.1"], dns=["localhost"])
    crt, key = issue(ca, DIR, "c1", client=True)        # for mutual TLS

Keys are EC P-256, written mode 0600; certificates are valid for two days: long enough for any
lab run, short enough that a leaked lab key is worthless. `days=` makes longer-lived ones (the
docker compose example's `init`, deploy/compose/init.py, which has no other CA to use).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DAYS = 2


@dataclass(frozen=True)
class CA:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise FileNotFoundError("`openssl` not found: apt-get install openssl")
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()[-500:]}")


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path))
    os.chmod(path, 0o600)


def make_ca(directory: str | os.PathLike[str], name: str = "wg-failover lab CA", *,
            days: int = DAYS) -> CA:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca = CA(d / "ca.crt", d / "ca.key")
    _new_key(ca.key)
    _openssl("req", "-x509", "-new", "-key", str(ca.key), "-out", str(ca.cert), "-days", str(days),
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return ca


def issue(ca: CA, directory: str | os.PathLike[str], name: str, *, ips: Sequence[str] = (),
          dns: Sequence[str] = (), client: bool = False, days: int = DAYS) -> tuple[Path, Path]:
    """A certificate for `name` signed by `ca`: a server certificate for the given addresses
    and names, or (`client`) one a client presents for mutual TLS."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    crt, key, csr, ext = (d / f"{name}.crt", d / f"{name}.key", d / f"{name}.csr",
                          d / f"{name}.ext")
    _new_key(key)
    _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{n}" for n in dns]
    lines = ["basicConstraints=CA:FALSE",
             f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}"]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
             "-CAcreateserial", "-out", str(crt), "-days", str(days), "-extfile", str(ext))
    csr.unlink()
    ext.unlink()
    return crt, key
