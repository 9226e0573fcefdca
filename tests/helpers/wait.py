"""Waiting in tests: bounded polls that fail the test with context, and free loopback ports."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from wg_failover.lab.procs import find_free_port, poll_until

__all__ = ["free_port", "poll_until", "wait_until"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return find_free_port()


def wait_until(what: str, pred: Callable[[], Any], timeout: float, every: float = 0.2,
               logs: Iterable[Path | str] = ()) -> Any:
    """`pred`'s first truthy value; on timeout the test fails naming `what`, with the tails of
    `logs`. An HTTP error from `pred` counts as "not yet" (a server still starting)."""

    def attempt() -> Any:
        with contextlib.suppress(httpx.HTTPError):
            return pred()
        return None

    value = poll_until(attempt, timeout, every)
    if not value:
        tails = "\n".join(f"--- {p} ---\n{Path(p).read_text(errors='replace')[-3000:]}"
                          for p in logs if Path(p).exists())
        pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{tails}")
    return value
