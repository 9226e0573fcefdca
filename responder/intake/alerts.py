"""Alertmanager alerts: each applied at most once, each moving a worker's state or drain flag.

    up ──firing failover──► down ──last one resolved──► recovering ──hold-down──► up

A worker is down while at least one `action="failover"` alert for it fires, and drained while an
`action="drain"` alert fires (or the admin drained it). `action="notify"` alerts, and alerts for
unknown workers or without labels, are only recorded.

Every text of an alert is checked as what it is before the store sees it: the `worker` label
must be a fleet name (a malformed one is recorded as missing, never stored as sent), the action
one of ACTIONS, and the alert name, summary and group key are cut to bounded printable text.
The store then holds nothing that a later read cannot serve (hardening finding 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from weakref import WeakKeyDictionary

from wg_failover.fleet import NAME_RE
from wg_failover.wire import MAX_TEXT

from .. import planner
from ..draft import Draft
from ..models import AMAlert, AMPayload
from ..state import ResponderState

log = logging.getLogger("wg_failover.responder")

ACTIONS = ("failover", "drain", "notify")
# Why an alert changed nothing: the event's `why`, and the `why` label of
# wgfo_alerts_ignored_total.
IGNORED = {"no worker/action label": "missing-labels",
           "malformed worker label": "malformed-worker",
           "unknown worker": "unknown-worker"}


@dataclass
class Delivery:
    """What one webhook delivery did."""

    applied: int = 0  # alerts not seen before, recorded
    duplicates: int = 0  # alerts applied by an earlier delivery, skipped
    ignored: Counter[str] = field(default_factory=Counter)  # IGNORED value -> alerts


def bounded_text(value: object, limit: int = MAX_TEXT) -> str | None:
    """Free text from Alertmanager (an annotation, a label value, the group key) as the event log
    keeps it: at most `limit` characters, control characters as spaces (a multi-line summary
    stays readable) and lone surrogates, which UTF-8 cannot encode, as U+FFFD."""
    if value is None:
        return None
    text = str(value)[:limit]
    if text.isascii() and text.isprintable():
        return text
    return "".join(" " if (cat := unicodedata.category(c)) == "Cc" else
                   "\ufffd" if cat == "Cs" else c for c in text)


def worker_label(value: str | None) -> tuple[str | None, bool]:
    """The `worker` label as a fleet name, and whether it was sent but is not one."""
    if not value:
        return None, False
    if NAME_RE.fullmatch(value):
        return value, False
    return None, True


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


# When each firing alert was last delivered (repeats too, which de-duplication drops): memory
# only; after a start every stored alert counts as delivered at the start.
_last_seen: WeakKeyDictionary[ResponderState, dict[str, float]] = WeakKeyDictionary()


def _seen(state: ResponderState) -> dict[str, float]:
    return _last_seen.setdefault(state, {})


async def expire_alerts(state: ResponderState) -> None:
    """Take as resolved every firing alert not delivered again for `alert_expire_seconds`: only
    a lost resolve gets there (Alertmanager repeats firing ones), and it must not hold a worker
    down or drained for good. One change for all of them, with an `alert-expired` event each."""
    seen, now = _seen(state), state.clock()
    for fp in state.alerts:
        seen.setdefault(fp, now)
    limit = state.settings.alert_expire_seconds
    old = [fp for fp in state.alerts if now - seen[fp] > limit]
    if not old:
        return

    def build(d: Draft) -> None:
        for fp in old:
            held = d.committed.alerts.get(fp)
            if held is None or not d.knows_worker(held[0]):
                if held is not None:
                    d.tx.alerts_del.add(fp)
                continue
            name, action = held
            d.event("alert-expired", worker=name, fingerprint=fp, action=action,
                    silent_seconds=round(now - seen[fp]))
            _apply_alert(d, name, action, "resolved", fp, "expired")
            d.tx.dedup_forget.add(f"{fp}|firing|")

    await state.change(build)
    for fp in old:
        seen.pop(fp, None)
    log.warning("alerts not repeated by Alertmanager for %g s taken as resolved: %d",
                limit, len(old))


async def take_delivery(state: ResponderState, payload: AMPayload) -> Delivery:
    """Apply one webhook delivery in one transaction. Raises StoreError when it cannot commit
    (then nothing was applied)."""

    def build(d: Draft) -> Delivery:
        keys = [dedup_key(a) for a in payload.alerts]
        seen = state.store.seen(keys)
        fresh, batch = [], set()
        for a, k in zip(payload.alerts, keys, strict=True):
            if k in seen or k in batch:
                continue
            batch.add(k)
            fresh.append(a)
        ignored = apply_alerts(d, payload, fresh)
        return Delivery(len(fresh), len(payload.alerts) - len(fresh), ignored)

    done = await state.change(build)
    seen, now = _seen(state), state.clock()
    for a in payload.alerts:
        if a.status == "firing":
            seen[alert_fingerprint(a)] = now
    return done


def apply_alerts(d: Draft, payload: AMPayload, fresh: list[AMAlert]) -> Counter[str]:
    """Record `fresh` (alerts not applied before) and move worker states and drain flags.
    Returns how many alerts changed nothing, by IGNORED reason."""
    ignored: Counter[str] = Counter()
    if payload.truncatedAlerts:
        # Alertmanager's max_alerts cut some alerts out of this delivery: they never reach
        # us, so say so where an operator will look.
        group = bounded_text(payload.groupKey)
        log.warning("webhook from group %s: %d alerts truncated (raise max_alerts)",
                    group, payload.truncatedAlerts)
        d.event("alerts-truncated", count=payload.truncatedAlerts, group=group)
    for a in fresh:
        fp = alert_fingerprint(a)
        d.tx.dedup.add(dedup_key(a))
        action = a.labels.get("action")
        name, malformed = worker_label(a.labels.get("worker"))
        info = {"status": a.status,
                "action": action if action in ACTIONS else bounded_text(action),
                "alertname": bounded_text(a.labels.get("alertname")),
                "fingerprint": fp, "startsAt": a.startsAt,
                "summary": bounded_text(a.annotations.get("summary"))}
        if a.status == "firing":
            with contextlib.suppress(ValueError):
                delay = d.now - datetime.fromisoformat(a.startsAt).timestamp()
                if delay >= 0:
                    d.after.alert_delays.append(delay)
        if action not in ACTIONS or not (name or malformed):
            why = "no worker/action label"
        elif name is None:
            why = "malformed worker label"
        elif not d.knows_worker(name):
            why = "unknown worker"
        else:
            why = None
        if why is not None or name is None:
            d.event("alert-ignored", worker=name, why=why, **info)
            ignored[IGNORED[why or "no worker/action label"]] += 1
            continue
        d.event("alert", worker=name, **info)
        if action == "notify":
            continue
        _apply_alert(d, name, action, a.status, fp, info["alertname"])
    return ignored


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
