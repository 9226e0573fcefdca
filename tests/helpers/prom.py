"""Small helpers for the tests that run the real Prometheus, Alertmanager and responder.

    prom_query(prom_url, expr) -> list of result dicts (instant query)
    wait_until(what, pred, timeout, every=0.2, logs=()) -> pred's first truthy value; on timeout
        the test fails with the tails of `logs`
    sample(text, series) -> the value of one series in a text exposition (0 when absent)
    worker_states(responder) -> {worker: state} from the responder's /v1/workers
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .responder import ResponderProc


def prom_query(url: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def wait_until(what: str, pred: Callable[[], Any], timeout: float, every: float = 0.2,
               logs: Iterable[Path | str] = ()) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            value = pred()
            if value:
                return value
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p} ---\n{Path(p).read_text(errors='replace')[-3000:]}"
                              for p in logs if Path(p).exists())
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{tails}")
        time.sleep(every)


def sample(text: str, series: str) -> float:
    """The value of one series in a text exposition (0 when it is not there)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


def worker_states(responder: ResponderProc) -> dict[str, str]:
    r = httpx.get(f"{responder.url}/v1/workers", timeout=5)
    r.raise_for_status()
    return {w["name"]: w["state"] for w in r.json()}
