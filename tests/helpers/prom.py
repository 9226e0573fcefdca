"""Small helpers for the tests that run the real Prometheus, Alertmanager and responder.

    prom_query(prom_url, expr) -> list of result dicts (instant query)
    wait_until(what, pred, timeout, every=0.2, logs=()) -> pred's first truthy value; on timeout
        the test fails with the tails of `logs`
    sample(text, series) -> the value of one series in a text exposition (0 when absent)
    worker_states(responder) -> {worker: state} from the responder's /v1/workers
"""

from __future__ import annotations

from typing import Any

import httpx

from .responder import ResponderProc
from .wait import wait_until  # noqa: F401  (re-exported: the Prometheus tests import it from here)


def prom_query(url: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


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
