"""Reads of the host: interface flags and counters from /sys, CPU time from /proc/stat.

Each reader takes its root directory so tests can point it at a prepared tree; the parsing is in
plain functions on text.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

IFF_UP = 0x1


@dataclass(frozen=True)
class IfaceStats:
    up: bool | None  # None = unknown (the interface is not in this network namespace)
    rx_bytes: int | None
    tx_bytes: int | None


def _read_int(path: Path, base: int = 10) -> int | None:
    try:
        return int(path.read_text().strip(), base)
    except (OSError, ValueError):
        return None


def read_iface(device: str, sys_root: str | os.PathLike[str] = "/sys") -> IfaceStats:
    """Flags and byte counters of DEVICE in this process's network namespace.

    Up is the IFF_UP flag, not operstate: a wireguard-go TUN device reports operstate "unknown"
    while it is up and working.
    """
    base = Path(sys_root) / "class" / "net" / device
    if "/" in device or device in (".", ".."):
        return IfaceStats(None, None, None)
    flags = _read_int(base / "flags", 16)
    return IfaceStats(
        up=None if flags is None else bool(flags & IFF_UP),
        rx_bytes=_read_int(base / "statistics" / "rx_bytes"),
        tx_bytes=_read_int(base / "statistics" / "tx_bytes"),
    )


@dataclass(frozen=True)
class CpuTimes:
    busy: int
    total: int


def parse_proc_stat(text: str) -> CpuTimes:
    """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal.

    guest and guest_nice are left out: the kernel already counts them in user and nice.
    """
    for line in text.splitlines():
        if line.startswith("cpu "):
            fields = [int(x) for x in line.split()[1:9]]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
            total = sum(fields)
            return CpuTimes(busy=total - idle, total=total)
    raise ValueError("no aggregate cpu line in /proc/stat")


def usage_ratio(prev: CpuTimes, cur: CpuTimes) -> float | None:
    """Busy share between two readings; None when no time passed (two scrapes at once)."""
    dt = cur.total - prev.total
    if dt <= 0:
        return None
    return min(1.0, max(0.0, (cur.busy - prev.busy) / dt))


class CpuMeter:
    """CPU usage over the interval between successive scrapes (the first: since start)."""

    def __init__(self, proc_stat: str | os.PathLike[str] = "/proc/stat"):
        self._path = Path(proc_stat)
        self._lock = threading.Lock()
        self._prev = self._read()
        self._last: float | None = None

    def _read(self) -> CpuTimes | None:
        try:
            return parse_proc_stat(self._path.read_text())
        except (OSError, ValueError):
            return None

    def sample(self) -> float | None:
        cur = self._read()
        with self._lock:
            if cur is None:
                return None
            if self._prev is not None:
                ratio = usage_ratio(self._prev, cur)
                if ratio is not None:
                    self._last = ratio
                    self._prev = cur
            else:
                self._prev = cur
            return self._last


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None
