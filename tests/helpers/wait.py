"""Waiting in tests: bounded polls that fail the test with context, and free loopback ports."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from wg_failover.lab.procs import find_free_port, poll_until

__all__ = ["free_port", "poll_until", "wait_started", "wait_until"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return find_free_port()


def wait_until(what: str, pred: Callable[[], Any], timeout: float, every: float = 0.2,
               logs: Iterable[Path | str] = ()) -> Any:
    """`pred`'s first truthy value; on timeout the test fails naming `what`, with the tails of
    `logs`. An HTTP error from `pred` counts as "not yet" (a server still starting), and so does
    a failed `assert` in it: a pred can assert what it waits for, and on timeout the failure shows
    its last message (what was seen) instead of a bare "timed out"."""
    last: list[Any] = [None]

    def attempt() -> Any:
        try:
            last[0] = pred()
        except (httpx.HTTPError, AssertionError) as exc:
            last[0] = exc
            return None
        return last[0]

    value = poll_until(attempt, timeout, every)
    if not value:
        tails = "\n".join(f"--- {p} ---\n{Path(p).read_text(errors='replace')[-3000:]}"
                          for p in logs if Path(p).exists())
        seen = last[0]
        seen = f"{type(seen).__name__}: {seen}" if isinstance(seen, Exception) else repr(seen)
        pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last: {seen})\n{tails}")
    return value


def wait_started(proc: subprocess.Popen[Any], ready: Callable[[], bool], timeout: float,
                 what: str, log: Callable[[], str]) -> None:
    """Until `ready()` says the process `proc` serves. RuntimeError with `log()` when it exits
    first (with its code) or when `timeout` passes (then it is killed): a helper that starts a
    server must say why it did not come up, not hang or fail a later request."""
    poll_until(lambda: proc.poll() is not None or ready(), timeout, 0.05)
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log()}")
    if not ready():
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"{what} not ready within {timeout:g} s:\n{log()}")
