"""The responder's Prometheus metrics. The names are a contract: `prometheus/rules/`,
`grafana/dashboards/` and the table in docs/responder.md use them.

Counters and histograms are ordinary prometheus_client objects. Everything that describes the
current state (worker health, assignments, client probes) is produced at scrape time by a
collector from a read-only `Snapshot` of the served state, so a moved client's old series simply
disappears.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from wg_failover.wire import ProbeResult

from .limits import REPORT_BUDGET, advised_heartbeat
from .planner import REASONS, WorkerView, loads

# A client's probe report counts in the data-plane vote (wgfo_client_observed_*) while it is
# fresh: PROBE_MAX_AGE seconds for switchers that report every few seconds (and say nothing of a
# heartbeat), else the heartbeat the report carries (change-only reporting, client/
# report_policy.py) plus HEARTBEAT_GRACE, the switcher reporter's longest retry wait: a
# heartbeat that needed one retry still lands in time, a silent client loses its vote soon after
# its next heartbeat was due (and never sooner than before, PROBE_MAX_AGE).
PROBE_MAX_AGE = 30.0
HEARTBEAT_GRACE = 15.0


def probe_max_age(heartbeat_s: float | None) -> float:
    """How long a probe report that promised `heartbeat_s` (None: nothing) stays a vote."""
    return PROBE_MAX_AGE if heartbeat_s is None else max(PROBE_MAX_AGE,
                                                         heartbeat_s + HEARTBEAT_GRACE)


# What a switcher with the defaults promises (`heartbeat_s`): its 30 s heartbeat and one 5 s
# check (client/report_policy.py heartbeat_to_send), or the responder's advice and a check.
SWITCHER_CHECK = 5.0
SWITCHER_HEARTBEAT_S = 30.0 + SWITCHER_CHECK


def rebuild_window(clients: int, budget: float) -> float:
    """Seconds from the start of a term (a restart, a replica that takes the lead) until every
    switcher that reports has been heard: the votes live in the leader's memory only. A
    switcher whose stream reconnected reports within a check; one whose stream stayed on a
    follower, only at its next heartbeat (the longer of its own and the advice)."""
    beat = max(SWITCHER_HEARTBEAT_S, advised_heartbeat(clients, budget) + SWITCHER_CHECK)
    return probe_max_age(beat)


@dataclass
class VoteRebuild:
    """When a state began to lead, and how long from then its votes are being rebuilt
    (`rebuild_window`; none after a first start: there were no votes to lose)."""

    budget: float = REPORT_BUDGET  # --report-budget
    started: float = field(default_factory=time.monotonic)
    window: float = 0.0

    def begin(self, restart: bool, clients: int) -> None:
        self.started = time.monotonic()
        self.window = rebuild_window(clients, self.budget) if restart else 0.0

    def active(self) -> bool:
        return time.monotonic() - self.started < self.window


STATES = ("up", "down", "recovering", "draining")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
DELAY_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class Snapshot:
    """What the state collector reads at a scrape; the served state hands out a fresh one."""

    workers: Mapping[str, WorkerView]  # fleet order
    assignments: Mapping[str, str | None]  # client -> worker, fleet order
    streams_open: int
    unplaceable: int
    probes: Mapping[str, tuple[float, Mapping[str, ProbeResult]]]  # client -> (time, results)
    votes_rebuilding: bool = False  # the term is younger than its rebuild_window


class Metrics:
    def __init__(self) -> None:
        self.collector_registry = CollectorRegistry()
        # client -> how long its latest probe report stays a vote (intake/clients.py sets it).
        self.probe_max_age: dict[str, float] = {}
        r = self.collector_registry
        self.failovers = Counter("wgfo_failovers_total",
                                 "Times a worker was marked down", ["worker"], registry=r)
        self.moves = Counter("wgfo_client_moves_total",
                             "Client assignments moved to another worker", ["reason"], registry=r)
        self.deliveries = Counter("wgfo_webhook_deliveries_total",
                                  "Alertmanager webhook deliveries by outcome", ["outcome"],
                                  registry=r)
        self.duplicate_alerts = Counter("wgfo_webhook_duplicate_alerts_total",
                                        "Alerts in deliveries that were already applied",
                                        registry=r)
        # Alerts recorded but acted on by nobody: a rule without the labels, or naming a worker
        # the fleet does not have (a typo, a stale rule) or no worker name at all.
        self.ignored_alerts = Counter("wgfo_alerts_ignored_total",
                                      "Alerts that changed nothing, by why", ["why"], registry=r)
        self.alert_delay = Histogram("wgfo_alert_delivery_delay_seconds",
                                     "Webhook received minus the alert's startsAt (firing alerts)",
                                     buckets=DELAY_BUCKETS, registry=r)
        self.notification_latency = Histogram(
            "wgfo_notification_latency_seconds",
            "Assignment committed to the client notified, by channel", ["channel"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.apply_latency = Histogram(
            "wgfo_client_apply_latency_seconds",
            "Assignment committed to the client's `applied` report", buckets=LATENCY_BUCKETS,
            registry=r)
        self.switches = Counter("wgfo_client_switches_total",
                                "Fast-path switches reported by the client", ["client"],
                                registry=r)
        self.switch_causes = Counter(
            "wgfo_client_switch_causes_total",
            "Fast-path switches reported by clients, by why the old worker was left (dead, "
            "gray-loss, gray-rtt; unknown from switchers that do not say)", ["cause"], registry=r)
        self.client_events = Counter("wgfo_client_events_total",
                                     "Client event reports by type", ["type"], registry=r)
        # The limits and the store's health (hardening findings 5 and 6).
        self.streams_replaced = Counter(
            "wgfo_client_streams_replaced_total",
            "Streams and long-polls closed because the same client opened a newer one past "
            "--max-streams-per-client", registry=r)
        self.reports_limited = Counter(
            "wgfo_client_reports_limited_total",
            "Client reports answered 429 (the client's report rate limit)", registry=r)
        self.events_pruned = Counter("wgfo_events_pruned_total",
                                     "Event log rows removed by retention", registry=r)
        self.store_writable = Gauge("wgfo_store_writable",
                                    "1 when the state store takes commits, 0 while it cannot "
                                    "(disk full, damaged, read-only)", registry=r)
        for outcome in ("applied", "duplicate", "unauthorized", "invalid", "error"):
            self.deliveries.labels(outcome=outcome)
        for why in ("missing-labels", "malformed-worker", "unknown-worker"):
            self.ignored_alerts.labels(why=why)
        for ch in ("sse", "longpoll"):
            self.notification_latency.labels(channel=ch)

    def known_labels(self, workers: list[str], clients: list[str]) -> None:
        """Create the labelled counters at 0 for every known label value.

        A counter series born at its first event makes `increase()` miss that event (there is no
        earlier sample), so the first failover after a restart would read as 0 on dashboards
        and in rules.
        """
        for w in workers:
            self.failovers.labels(worker=w)
        for reason in REASONS:
            self.moves.labels(reason=reason)
        for c in clients:
            self.switches.labels(client=c)
        for kind in ("probe", "switch", "applied", "rejected"):
            self.client_events.labels(type=kind)

    def count_committed(self, moves: Iterable[str], failovers: Iterable[str],
                        switches: Iterable[str], alert_delays: Iterable[float],
                        apply_latencies: Iterable[float]) -> None:
        """A committed change's counts: its moves' reasons, workers failed over, clients that
        switched, alert and apply delays."""
        # One labels() lookup per reason, not per move: a 30,000-client failover moves 10,000.
        for reason, n in collections.Counter(moves).items():
            self.moves.labels(reason=reason).inc(n)
        for name in failovers:
            self.failovers.labels(worker=name).inc()
        for client in switches:
            self.switches.labels(client=client).inc()
        for delay in alert_delays:
            self.alert_delay.observe(delay)
        for latency in apply_latencies:
            self.apply_latency.observe(latency)

    def watch(self, snapshot: Callable[[], Snapshot]) -> None:
        """Produce the state gauges from `snapshot()` at every scrape."""
        self.collector_registry.register(_StateCollector(snapshot, self.probe_max_age))

    def watch_connections(self, stats: Callable[[], ConnectionStats]) -> None:
        """The HTTP server's connection figures (server.py), read at every scrape."""
        self.collector_registry.register(_ConnectionCollector(stats))


@dataclass(frozen=True)
class ConnectionStats:
    open: int  # HTTP connections open now
    limit: int  # --max-connections
    closed: Mapping[str, int]  # connections we closed, by why: cap, idle, timeout, write-stall


class _ConnectionCollector(Collector):
    def __init__(self, stats: Callable[[], ConnectionStats]):
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.stats()
        open_ = GaugeMetricFamily("wgfo_http_connections_open", "HTTP connections open")
        open_.add_metric([], float(s.open))
        limit = GaugeMetricFamily("wgfo_http_connections_limit",
                                  "Most HTTP connections held at once (--max-connections)")
        limit.add_metric([], float(s.limit))
        closed = CounterMetricFamily(
            "wgfo_http_connections_closed",
            "HTTP connections the responder closed: cap (503, all busy), idle (an idle one made "
            "room at the cap), timeout (a request not complete in time), write-stall",
            labels=["why"])
        for why, n in sorted(s.closed.items()):
            closed.add_metric([why], float(n))
        yield from (open_, limit, closed)


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot],
                 max_age: Mapping[str, float] | None = None):
        self.snapshot = snapshot
        self.max_age = max_age if max_age is not None else {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot()
        up = GaugeMetricFamily("wgfo_worker_up", "1 when the worker is up (drained or not)",
                               labels=["worker"])
        state = GaugeMetricFamily("wgfo_worker_state", "One-hot worker state",
                                  labels=["worker", "state"])
        draining = GaugeMetricFamily("wgfo_worker_draining", "1 when the worker is drained",
                                     labels=["worker"])
        assigned = GaugeMetricFamily("wgfo_worker_assigned_clients",
                                     "Clients currently assigned to the worker", labels=["worker"])
        load = loads(snap.assignments)
        for name, v in snap.workers.items():
            up.add_metric([name], 1.0 if v.state == "up" else 0.0)
            eff = v.state if v.state != "up" else ("draining" if v.draining else "up")
            for s in STATES:
                state.add_metric([name, s], 1.0 if s == eff else 0.0)
            draining.add_metric([name], 1.0 if v.draining else 0.0)
            assigned.add_metric([name], float(load.get(name, 0)))
        yield from (up, state, draining, assigned)

        streams = GaugeMetricFamily("wgfo_client_streams_open", "Open SSE assignment streams")
        streams.add_metric([], float(snap.streams_open))
        yield streams
        unpl = GaugeMetricFamily("wgfo_unplaceable_clients",
                                 "Clients that must move but no healthy worker can take")
        unpl.add_metric([], float(snap.unplaceable))
        yield unpl

        ca = GaugeMetricFamily("wgfo_client_assigned", "1 for each client's current worker",
                               labels=["client", "worker"])
        for client, worker in snap.assignments.items():
            if worker is not None:
                ca.add_metric([client, worker], 1.0)
        yield ca

        rebuilding = GaugeMetricFamily(
            "wgfo_responder_votes_rebuilding",
            "1 while the clients' votes are being rebuilt: this responder started leading "
            "(a restart, a replica taking the lead) less than a switcher heartbeat + 15 s ago")
        rebuilding.add_metric([], 1.0 if snap.votes_rebuilding else 0.0)
        yield rebuilding

        now = time.time()
        obs_up = GaugeMetricFamily(
            "wgfo_client_observed_up",
            "Share of reporting clients whose latest probe (fresh: under 30 s old, or the "
            "client's heartbeat + 15 s) to the worker answered",
            labels=["worker"])
        obs_n = GaugeMetricFamily("wgfo_client_observed_reporters",
                                  "Clients with a fresh probe report (under 30 s old, or "
                                  "the client's heartbeat + 15 s) for the worker",
                                  labels=["worker"])
        rtt = GaugeMetricFamily("wgfo_client_probe_rtt_seconds",
                                "Latest probe round-trip time reported by the client",
                                labels=["client", "worker"])
        loss = GaugeMetricFamily("wgfo_client_probe_loss_ratio",
                                 "Latest probe loss ratio reported by the client",
                                 labels=["client", "worker"])
        n_up: dict[str, int] = {}
        n_all: dict[str, int] = {}
        for client, (ts, workers) in sorted(snap.probes.items()):
            fresh = now - ts <= self.max_age.get(client, PROBE_MAX_AGE)
            for w, p in sorted(workers.items()):
                if fresh:
                    n_all[w] = n_all.get(w, 0) + 1
                    n_up[w] = n_up.get(w, 0) + (1 if p.up else 0)
                if p.rtt_ms is not None:
                    rtt.add_metric([client, w], p.rtt_ms / 1000.0)
                if p.loss is not None:
                    loss.add_metric([client, w], p.loss)
        for name in snap.workers:
            if n_all.get(name):
                obs_up.add_metric([name], n_up.get(name, 0) / n_all[name])
            obs_n.add_metric([name], float(n_all.get(name, 0)))
        yield from (obs_up, obs_n, rtt, loss)
