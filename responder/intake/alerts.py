"""Alertmanager alerts: each applied at most once, each moving a worker's state or drain flag.

    up ──firing failover──► down ──last one resolved──► recovering ──hold-down──► up

A worker is down while at least one `action="failover"` alert for it fires, and drained while an
`action="drain"` alert fires (or the admin drained it). `action="notify"` alerts, and alerts for
unknown workers or without labels, are only recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from datetime import datetime

from .. import planner
from ..draft import Draft
from ..models import AMAlert, AMPayload
from ..state import ResponderState

log = logging.getLogger("wg_failover.responder")

ACTIONS = ("failover", "drain", "notify")


def alert_fingerprint(a: AMAlert) -> str:
    if a.fingerprint:
        return a.fingerprint
    # Alertmanager always sends one; for hand-made payloads derive it from the labels.
    raw = json.dumps(sorted(a.labels.items()))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def dedup_key(a: AMAlert) -> str:
    """The same alert in the same state: repeated notifications and an HA pair's second
    delivery share it."""
    return f"{alert_fingerprint(a)}|{a.status}|{a.startsAt}"


async def take_delivery(state: ResponderState, payload: AMPayload) -> tuple[int, int]:
    """Apply one webhook delivery in one transaction: (alerts applied, duplicates skipped).
    Raises StoreError when it cannot commit (then nothing was applied)."""

    def build(d: Draft) -> tuple[int, int]:
        keys = [dedup_key(a) for a in payload.alerts]
        seen = state.store.seen(keys)
        fresh, batch = [], set()
        for a, k in zip(payload.alerts, keys, strict=True):
            if k in seen or k in batch:
                continue
            batch.add(k)
            fresh.append(a)
        apply_alerts(d, payload, fresh)
        return len(fresh), len(payload.alerts) - len(fresh)

    return await state.change(build)


def apply_alerts(d: Draft, payload: AMPayload, fresh: list[AMAlert]) -> None:
    """Record `fresh` (alerts not applied before) and move worker states and drain flags."""
    if payload.truncatedAlerts:
        # Alertmanager's max_alerts cut some alerts out of this delivery: they never reach
        # us, so say so where an operator will look.
        log.warning("webhook from group %s: %d alerts truncated (raise max_alerts)",
                    payload.groupKey, payload.truncatedAlerts)
        d.event("alerts-truncated", count=payload.truncatedAlerts, group=payload.groupKey)
    for a in fresh:
        fp = alert_fingerprint(a)
        d.tx.dedup.add(dedup_key(a))
        action = a.labels.get("action")
        name = a.labels.get("worker")
        info = {"status": a.status, "action": action, "alertname": a.labels.get("alertname"),
                "fingerprint": fp, "startsAt": a.startsAt,
                "summary": a.annotations.get("summary")}
        if a.status == "firing":
            with contextlib.suppress(ValueError):
                delay = d.now - datetime.fromisoformat(a.startsAt).timestamp()
                if delay >= 0:
                    d.after.alert_delays.append(delay)
        if action not in ACTIONS or not name:
            d.event("alert-ignored", worker=name, why="no worker/action label", **info)
            continue
        if not d.knows_worker(name):
            d.event("alert-ignored", worker=name, why="unknown worker", **info)
            continue
        d.event("alert", worker=name, **info)
        if action == "notify":
            continue
        _apply_alert(d, name, action, a.status, fp, info["alertname"])


def _apply_alert(d: Draft, name: str, action: str, status: str, fp: str,
                 alertname: str | None) -> None:
    row = d.worker(name)
    drained_before = d.views()[name].draining
    if status == "firing":
        d.tx.alerts_del.discard(fp)
        d.tx.alerts_add[fp] = (name, action)
    else:
        d.tx.alerts_add.pop(fp, None)
        if fp in d.committed.alerts:
            d.tx.alerts_del.add(fp)
    holding = [f for f, (w, act) in d.alerts().items() if w == name and act == action]
    if action == "failover":
        if status == "firing" and row.state != planner.DOWN:
            d.set_worker_state(name, planner.DOWN, cause=alertname)
        elif status == "resolved" and row.state == planner.DOWN and not holding:
            d.set_worker_state(name, planner.RECOVERING, cause=alertname,
                               hold_down_seconds=d.settings.hold_down_seconds)
    else:  # drain
        now_drained = row.drain_admin or bool(holding)
        if drained_before != now_drained:
            d.worker_changed.add(name)
            d.event("drain" if now_drained else "undrain", worker=name, cause=alertname)
