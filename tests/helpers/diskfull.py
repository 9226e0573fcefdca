"""A real full disk for tests: a small tmpfs (root only), filled up to the last byte.

    with small_disk(tmp_path / "disk", size_kib=512) as disk:   # mounted, unmounted at the end
        ...                                                       # put a database in `disk`
        fill(disk)      # a file that takes every free byte (disk / "filler")
        ...             # writes now fail with ENOSPC / SQLITE_FULL
        unfill(disk)    # room again

`small_disk` skips the test when it cannot mount (not root, no tmpfs). It always unmounts, even
when the test fails (lazily, if a process still holds a file there).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FILLER = "filler"


@contextlib.contextmanager
def small_disk(path: Path, size_kib: int = 512) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs root (mount -t tmpfs)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(disk: Path) -> int:
    """Take every free byte of `disk` with one file; returns its size. Bounded: a tmpfs of a few
    hundred KiB fills in a few hundred writes."""
    fd = os.open(disk / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    written = 0
    try:
        for block in (65536, 4096, 512, 1):
            for _ in range(1 << 20):
                try:
                    written += os.write(fd, b"\0" * block)
                except OSError:
                    break
    finally:
        os.close(fd)
    return written


def unfill(disk: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (disk / FILLER).unlink()
