"""The failover timeline, from snapshots of what each part reports.

Pure logic: `FailoverWatch` takes snapshots (the clients' active peers, Prometheus's and
Alertmanager's alert lists, the responder's event log) with the time they were taken and returns
the new timeline entries. The lab's poller (`lab.ops`) feeds it; the tests feed it plain data.
Times are seconds since the kill; a source's own timestamp is used where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Entry:
    t: float  # seconds since the kill
    text: str


def parse_time(value: str | None) -> float | None:
    """RFC 3339 as Prometheus and Alertmanager write it (nanoseconds, `Z`) -> unix seconds."""
    if not value:
        return None
    v = value.strip().replace("Z", "+00:00")
    # Python parses at most microseconds: cut the fraction to 6 digits.
    if "." in v:
        head, rest = v.split(".", 1)
        digits = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(digits):]
        v = f"{head}.{digits[:6]}{tz}"
    try:
        return datetime.fromisoformat(v).timestamp()
    except ValueError:
        return None


def event_type(event: dict[str, Any]) -> str:
    """A responder event's type; client reports keep theirs in `data.type`."""
    data = event.get("data") or {}
    if isinstance(data, dict) and isinstance(data.get("type"), str):
        return data["type"]
    return str(event.get("kind", ""))


@dataclass
class FailoverWatch:
    worker: str  # the worker that was killed
    affected: list[str]  # clients whose routes were on it
    others: list[str]  # every other client (must not move)
    t0: float  # unix time of the kill
    fast: dict[str, tuple[float, str]] = field(default_factory=dict)  # client -> (t, to)
    fast_reported: dict[str, int] = field(default_factory=dict)  # client -> switcher's ms
    planned: dict[str, tuple[float, str, int | None]] = field(default_factory=dict)
    confirmed: dict[str, tuple[float, str]] = field(default_factory=dict)
    before: dict[str, str | None] = field(default_factory=dict)  # active peers at the kill
    marks: dict[str, float] = field(default_factory=dict)  # milestone -> t

    def _rel(self, unix: float) -> float:
        return unix - self.t0

    def _mark(self, key: str, t: float, text: str) -> list[Entry]:
        if key in self.marks:
            return []
        self.marks[key] = t
        return [Entry(t, text)]

    # ------------------------------------------------------------------ inputs
    def routes(self, now: float, active: dict[str, str | None]) -> list[Entry]:
        """Which worker's peer holds each client's routes (from `wg show`), at unix time `now`."""
        out = []
        t = self._rel(now)
        for client, w in active.items():
            if client in self.affected and w and w != self.worker and client not in self.fast:
                self.fast[client] = (t, w)
                out.append(Entry(t, f"{client}: routes moved {self.worker} -> {w} "
                                    "(fast path, seen on the interface)"))
        return out

    def others_moved(self, active: dict[str, str | None]) -> list[str]:
        """Clients not on the killed worker whose routes moved anyway (there should be none)."""
        return [c for c in self.others if c in self.before and active.get(c) != self.before[c]]

    def prometheus(self, now: float, alerts: list[dict[str, Any]]) -> list[Entry]:
        """`/api/v1/alerts` data.alerts: this worker's failover alert, pending then firing."""
        out = []
        for a in alerts:
            labels = a.get("labels", {})
            if labels.get("worker") != self.worker or labels.get("action") != "failover":
                continue
            name = labels.get("alertname", "alert")
            active_at = parse_time(a.get("activeAt"))
            t_active = self._rel(active_at) if active_at else self._rel(now)
            out += self._mark("prom_pending", t_active,
                              f"prometheus: {name}{{worker={self.worker}}} pending (rule true)")
            if a.get("state") == "firing":
                out += self._mark("prom_firing", self._rel(now),
                                  f"prometheus: {name}{{worker={self.worker}}} firing")
        return out

    def alertmanager(self, now: float, alerts: list[dict[str, Any]]) -> list[Entry]:
        """`/api/v2/alerts`: the alert reached Alertmanager (it notifies after group_wait)."""
        for a in alerts:
            labels = a.get("labels", {})
            if labels.get("worker") == self.worker and labels.get("action") == "failover":
                return self._mark("am_received", self._rel(now),
                                  f"alertmanager: has {labels.get('alertname', 'the alert')}, "
                                  "notifying the responder")
        return []

    def events(self, now: float, events: list[dict[str, Any]]) -> list[Entry]:
        """New entries of the responder's event log (`GET /v1/events`).

        Kinds used: `client-switch` (a switcher's fast-path report), `move` (the responder's
        assignment of a client changed: its plan, or a client's switch it accepted), `alert`
        (a webhook), `worker-state` (data.to = down), `client-applied` (a switcher runs that
        version). A later `move` of a client needs a new confirmation.
        """
        out = []
        for e in events:
            ts = e.get("ts")
            t = self._rel(float(ts)) if isinstance(ts, int | float) else self._rel(now)
            if t < -1:
                continue  # before the kill
            typ = event_type(e)
            data = e.get("data") if isinstance(e.get("data"), dict) else {}
            client = e.get("client")
            worker = e.get("worker")
            if typ == "client-switch" and client in self.affected:
                ms = data.get("elapsed_ms")
                if isinstance(ms, int | float) and client not in self.fast_reported:
                    ms = self.fast_reported[client] = round(ms)
                    out.append(Entry(t, f"{client}: switcher reports fast-path switch "
                                        f"{data.get('from_worker')} -> {data.get('to_worker')}, "
                                        f"{ms} ms after the last reply"))
            elif typ == "move" and client in self.affected:
                to = data.get("to_worker") or worker
                version = data.get("version")
                self.planned[client] = (t, to, version if isinstance(version, int) else None)
                self.confirmed.pop(client, None)
                self.marks.pop("all_confirmed", None)
                why = data.get("reason")
                out.append(Entry(t, f"responder: {client} assigned {data.get('from_worker')} -> "
                                    f"{to}" + (f" v{version}" if version else "")
                                    + (f" ({why})" if why else "")))
            elif typ == "client-applied" and client in self.affected:
                plan = self.planned.get(client)
                version = data.get("version")
                if (plan and client not in self.confirmed and worker == plan[1]
                        and (plan[2] is None or version == plan[2])):
                    self.confirmed[client] = (t, worker)
                    out.append(Entry(t, f"{client}: confirmed, runs v{version} on {worker}"))
            elif (typ == "alert" and worker == self.worker and data.get("action") == "failover"
                    and data.get("status", "firing") == "firing"):
                out += self._mark("webhook", t, "responder: webhook received "
                                  f"({data.get('alertname') or 'alert'} firing)")
            elif typ == "worker-state" and worker == self.worker and data.get("to") == "down":
                out += self._mark("worker_down", t, f"responder: {self.worker} marked down")
            elif typ == "worker-suspect" and worker == self.worker:
                out += self._mark("suspect", t, f"responder: {self.worker} suspect "
                                  f"({data.get('count')} of its clients switched away)")
        if self.done and "all_confirmed" not in self.marks:
            last = max([v[0] for v in self.confirmed.values()] + [self.marks["worker_down"]])
            out += self._mark("all_confirmed", last,
                              f"control path complete: {self.worker} down at the responder and "
                              f"every client of it confirmed a healthy worker")
        return out

    # ------------------------------------------------------------------ results
    @property
    def done(self) -> bool:
        """The responder marked the worker down and every client of it runs its assignment."""
        return "worker_down" in self.marks and all(
            c in self.confirmed and self.confirmed[c][1] != self.worker for c in self.affected)

    def summary(self) -> dict[str, Any]:
        fast_ms = {c: self.fast_reported.get(c) for c in self.affected}
        seen = {c: round(v[0], 3) for c, v in self.fast.items()}
        control = self.marks.get("all_confirmed") if self.done else None
        return {
            "worker": self.worker,
            "affected": list(self.affected),
            "fast_path_reported_ms": fast_ms,
            "fast_path_seen_s": seen,
            "final": {c: v[1] for c, v in self.confirmed.items()},
            "confirmed_s": {c: round(v[0], 3) for c, v in self.confirmed.items()},
            "milestones_s": {k: round(v, 3) for k, v in self.marks.items()},
            "control_path_s": None if control is None else round(control, 3),
        }
