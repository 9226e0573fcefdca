"""Outbound webhooks: each new assignment is POSTed, signed, to the targets that want it.

Targets: a client's `notify_url` (its own assignments) and `responder.webhooks` entries
(integrations; every client's assignments, or those listed in `clients`). The body is the API's
assignment JSON. Headers:

    X-WGFO-Signature: t=UNIX_SECONDS,v1=HEX(HMAC-SHA256(secret, "UNIX_SECONDS." + body))
    X-WGFO-Delivery:  CLIENT:VERSION:EPOCH  (an idempotency key: a receiver may see it twice)
    X-WGFO-Event:     assignment

`verify_signature` is what a receiver runs (importable, no responder needed).

Delivery rules:
- one task per target, so at most one request in flight per target;
- a target keeps only the newest undelivered assignment per client (a newer version replaces an
  older one that has not gone out yet), and a version is only sent when it is newer than the
  one the target last accepted: an older version never follows a newer;
- failures retry with exponential backoff and jitter (0.5 s doubling to 60 s, never giving up on
  the newest state); they show in `wgfo_webhook_notify_failures_total{client}` and in
  `GET /v1/clients/{name}` under `delivery.webhook`;
- the newest accepted version per (target, client) is kept in the store's delivery log (with
  SQLite, table `notify_webhook` in the responder's file). At start, every client whose current
  version is newer than what a target accepted is pending again, so deliveries survive a
  restart (at least once: a crash between the receiver's 2xx and our write sends that version
  again, same X-WGFO-Delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import Counter, Gauge

from wg_failover.backoff import backoff_delay

from ..limits import LogLimiter
from ..store import DeliveryLog, StoreError
from . import NotifierHost, register_factory

log = logging.getLogger("wg_failover.responder.webhooks")
limited = LogLimiter(log)

SIGNATURE_HEADER = "X-WGFO-Signature"
DELIVERY_HEADER = "X-WGFO-Delivery"
EVENT_HEADER = "X-WGFO-Event"
TOLERANCE_SECONDS = 300
BACKOFF_BASE, BACKOFF_CAP = 0.5, 60.0
REQUEST_TIMEOUT = 10.0


# --------------------------------------------------------------------------- signatures


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The X-WGFO-Signature value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: bytes, header: str | None, body: bytes, *,
                     tolerance: float = TOLERANCE_SECONDS, now: float | None = None) -> bool:
    """True when `header` is a valid signature of `body` made within `tolerance` seconds.

    For receivers: pass the raw request body (before any JSON parsing) and remember the
    X-WGFO-Delivery keys (or versions) already applied; a replayed old request fails the
    timestamp check, a replayed recent one repeats a key.
    """
    if not header:
        return False
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        k, sep, v = part.strip().partition("=")
        if sep:
            fields.setdefault(k, []).append(v)
    try:
        ts = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance:
        return False
    want = sign(secret, body, ts).rpartition("v1=")[2]
    return any(hmac.compare_digest(want, got) for got in fields.get("v1", []))


def delivery_key(assignment: dict[str, Any]) -> str:
    """The idempotency key of one delivery. It names the store's epoch too: a new database
    starts its versions at 1 again, and a receiver that de-duplicates on CLIENT:VERSION alone
    would drop every assignment of the new store as one it had seen."""
    key = f"{assignment['client']}:{assignment['version']}"
    epoch = assignment.get("epoch")
    return f"{key}:{epoch}" if epoch else key


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    id: str  # "client:NAME" or "hook:NAME"
    url: str
    secret: bytes
    clients: frozenset[str] | None = None  # None: every client

    def wants(self, client: str) -> bool:
        return self.clients is None or client in self.clients


@dataclass
class TargetState:
    """Pending work of one target; only its own task sends."""

    target: Target
    pending: dict[str, tuple[dict[str, Any], float | None]] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)
    failures: int = 0  # in a row
    failures_total: int = 0
    last_error: str | None = None
    last_attempt: float | None = None
    last_success: float | None = None
    next_attempt: float | None = None
    task: asyncio.Task[None] | None = None

    def offer(self, assignment: dict[str, Any], t0: float | None) -> bool:
        """Take `assignment` if it is newer than anything delivered or pending; True if taken."""
        c, v = assignment["client"], assignment["version"]
        if v <= self.delivered.get(c, 0):
            return False
        old = self.pending.get(c)
        if old is not None and old[0]["version"] >= v:
            return False
        self.pending[c] = (assignment, t0)
        return True

    def done(self, assignment: dict[str, Any]) -> None:
        """`assignment` was accepted by the target."""
        c, v = assignment["client"], assignment["version"]
        self.delivered[c] = max(v, self.delivered.get(c, 0))
        p = self.pending.get(c)
        if p is not None and p[0]["version"] <= v:
            del self.pending[c]


class WebhookNotifier:
    name = channel = "webhook"

    def __init__(self, targets: list[Target], *, timeout: float = REQUEST_TIMEOUT):
        self.targets = {t.id: TargetState(t) for t in targets}
        self.by_client: dict[str, list[TargetState]] = {}
        self.hooks = [s for s in self.targets.values() if s.target.id.startswith("hook:")]
        for s in self.targets.values():
            if s.target.id.startswith("client:"):
                self.by_client.setdefault(s.target.id[len("client:"):], []).append(s)
        self.timeout = timeout
        self.http: httpx.AsyncClient | None = None
        self.delivery_log: DeliveryLog | None = None
        self.failures: Counter | None = None
        self.delivered_total: Counter | None = None
        self.latency: Any = None
        self.running = False

    def _targets_of(self, client: str) -> list[TargetState]:
        return self.by_client.get(client, []) + [s for s in self.hooks if s.target.wants(client)]

    # ----------------------------------------------------------------- the seam

    def assignment_changed(self, assignment: dict[str, Any]) -> None:
        t0 = time.monotonic()
        for s in self._targets_of(assignment["client"]):
            if s.offer(assignment, t0):
                self._kick(s)

    def worker_changed(self, worker: dict[str, Any]) -> None:
        return None

    def client_status(self, name: str) -> dict[str, Any] | None:
        out = []
        for s in self._targets_of(name):
            p = s.pending.get(name)
            out.append({
                "target": s.target.id,
                "delivered_version": s.delivered.get(name),
                "pending_version": p[0]["version"] if p else None,
                "failures_in_a_row": s.failures,
                "failures_total": s.failures_total,
                "last_error": s.last_error,
                "last_attempt": s.last_attempt,
                "last_success": s.last_success,
                "next_attempt": s.next_attempt,
            })
        return {"targets": out} if out else None

    # ----------------------------------------------------------------- start / stop

    async def start(self, host: NotifierHost) -> None:
        m = host.metrics
        self.failures = Counter("wgfo_webhook_notify_failures_total",
                                "Outbound assignment webhooks that failed (each attempt)",
                                ["client"], registry=m.collector_registry)
        self.delivered_total = Counter("wgfo_webhook_notify_delivered_total",
                                       "Outbound assignment webhooks the target accepted (2xx)",
                                       registry=m.collector_registry)
        pending = Gauge("wgfo_webhook_notify_pending",
                        "Assignments waiting to be delivered to a webhook target",
                        registry=m.collector_registry)
        pending.set_function(lambda: float(sum(len(s.pending) for s in self.targets.values())))
        self.latency = m.notification_latency.labels(channel="webhook")
        self.delivery_log = await asyncio.to_thread(host.store.open_delivery_log)
        try:
            done = await asyncio.to_thread(self.delivery_log.load)
        except StoreError as exc:
            # The store cannot be read or written now (a full disk at start): deliver every
            # current version again (at least once; receivers ignore a version they applied).
            log.warning("webhooks: cannot read the delivery log (%s); sending every client's "
                        "current assignment again", exc.reason)
            done = {}
        for (tid, client), v in done.items():
            s = self.targets.get(tid)
            if s is not None:
                s.delivered[client] = v
        self.http = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False,
                                      headers={"User-Agent": "wg-failover-responder"})
        self.running = True
        # Whatever a target has not accepted yet (new target, or pending at the last stop).
        for aj in host.all_assignments():  # fleet clients only (not removed ones)
            for s in self._targets_of(aj["client"]):
                if s.offer(aj, None):
                    self._kick(s)
        n = sum(len(s.pending) for s in self.targets.values())
        log.info("webhooks: %d targets, %d deliveries pending", len(self.targets), n)

    async def stop(self) -> None:
        self.running = False
        tasks = [s.task for s in self.targets.values() if s.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.aclose()
        if self.delivery_log is not None:
            self.delivery_log.close()

    # ----------------------------------------------------------------- delivery

    def _kick(self, s: TargetState) -> None:
        if not self.running or (s.task is not None and not s.task.done()):
            return
        s.task = asyncio.get_running_loop().create_task(self._run(s),
                                                        name=f"webhook {s.target.id}")

    async def _run(self, s: TargetState) -> None:
        while self.running and s.pending:
            client = next(iter(s.pending))
            assignment, t0 = s.pending[client]
            s.last_attempt = time.time()
            s.next_attempt = None
            error = await self._post(s.target, assignment)
            if error is None:
                s.done(assignment)
                s.failures = 0
                s.last_error = None
                s.last_success = time.time()
                if self.delivered_total is not None:
                    self.delivered_total.inc()
                if t0 is not None and self.latency is not None:
                    self.latency.observe(max(0.0, time.monotonic() - t0))
                if self.delivery_log is not None:
                    try:
                        await asyncio.to_thread(self.delivery_log.record, s.target.id, client,
                                                assignment["version"])
                    except StoreError as exc:  # delivered anyway; at worst sent again later
                        limited.warning(f"record:{exc.reason}",
                                        "webhooks: cannot record a delivery: %s", exc)
                continue
            s.failures += 1
            s.failures_total += 1
            s.last_error = error
            if self.failures is not None:
                self.failures.labels(client=client).inc()
            delay = backoff_delay(s.failures, BACKOFF_BASE, BACKOFF_CAP)
            s.next_attempt = time.time() + delay
            log.warning("webhook %s: %s v%d failed (%s); retry %d in %.1f s", s.target.id,
                        client, assignment["version"], error, s.failures, delay)
            await asyncio.sleep(delay)
            # Rotate: one stuck client must not hold up an integration's other clients.
            if client in s.pending and len(s.pending) > 1:
                s.pending[client] = s.pending.pop(client)

    async def _post(self, target: Target, assignment: dict[str, Any]) -> str | None:
        """POST one assignment; None on a 2xx answer, else a short reason (never the secret)."""
        assert self.http is not None
        body = json.dumps(assignment, separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(target.secret, body, int(time.time())),
            DELIVERY_HEADER: delivery_key(assignment),
            EVENT_HEADER: "assignment",
        }
        try:
            r = await self.http.post(target.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        with contextlib.suppress(Exception):
            await r.aclose()
        if 200 <= r.status_code < 300:
            return None
        return f"HTTP {r.status_code}"


def read_secret(path: str) -> bytes:
    value = Path(path).read_bytes().strip()
    if not value:
        raise ValueError("empty")
    return value


def build_targets(fleet: Any, settings: Any) -> list[Target]:
    """Targets whose secret file can be read; the others are logged and left out."""
    out = []
    wanted: list[tuple[str, str, str, frozenset[str] | None]] = []
    for c in fleet.clients:
        if getattr(c, "notify_url", None):
            wanted.append((f"client:{c.name}", c.notify_url, c.notify_secret_file, None))
    for h in getattr(settings, "webhooks", None) or []:
        wanted.append((f"hook:{h.name}", h.url, h.secret_file,
                       frozenset(h.clients) if h.clients is not None else None))
    for tid, url, secret_file, clients in wanted:
        try:
            secret = read_secret(secret_file)
        except (OSError, ValueError) as exc:
            log.error("webhook %s disabled: secret file %s: %s", tid, secret_file,
                      type(exc).__name__ if isinstance(exc, OSError) else exc)
            continue
        out.append(Target(tid, url, secret, clients))
    return out


def factory(fleet: Any, settings: Any) -> WebhookNotifier | None:
    targets = build_targets(fleet, settings)
    return WebhookNotifier(targets) if targets else None


register_factory("webhooks", factory)
