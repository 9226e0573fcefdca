"""The switcher's own `/metrics` (optional, `--metrics-listen 127.0.0.1:PORT`).

Names extend the project's `wgfo_` set with a `wgfo_switcher_` prefix; the responder publishes the
fleet-wide view (`wgfo_client_probe_rtt_seconds` and friends) from our probe reports.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from wg_failover.fleet import parse_host_port

from .decisions import UP, Decider


class SwitcherMetrics:
    def __init__(self, workers: list[str]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.workers = workers
        self.rtt = Gauge("wgfo_switcher_probe_rtt_seconds",
                         "Smoothed probe round-trip time to the worker's tunnel address",
                         ["worker"], registry=r)
        self.loss = Gauge("wgfo_switcher_probe_loss_ratio",
                          "Share of the last 50 probes to the worker that went unanswered",
                          ["worker"], registry=r)
        self.up = Gauge("wgfo_switcher_worker_up", "1 when the worker's probes answer",
                        ["worker"], registry=r)
        self.active = Gauge("wgfo_switcher_active_worker",
                            "1 for the worker whose peer holds the routes", ["worker"],
                            registry=r)
        self.switches = Counter("wgfo_switcher_switches_total",
                                "Route moves, by kind (failover|gray|assignment|initial)", ["kind"],
                                registry=r)
        self.rejected = Counter("wgfo_switcher_rejected_assignments_total",
                                "Responder assignments refused because the probes saw the "
                                "worker dead", registry=r)
        self.version = Gauge("wgfo_switcher_assignment_version",
                             "The last responder assignment version seen", registry=r)
        self.connected = Gauge("wgfo_switcher_responder_connected",
                               "1 while the assignment stream (or long-poll) is connected",
                               registry=r)
        for kind in ("failover", "gray", "assignment", "initial"):
            self.switches.labels(kind)
        for w in workers:
            self.active.labels(w).set(0)

    def update(self, decider: Decider) -> None:
        for w, h in decider.health.items():
            if h.srtt is not None:
                self.rtt.labels(w).set(h.srtt)
            self.loss.labels(w).set(h.loss)
            self.up.labels(w).set(1 if h.state == UP else 0)
        for w in self.workers:
            self.active.labels(w).set(1 if w == decider.active else 0)
        self.version.set(decider.version)

    def serve(self, listen: str) -> None:
        hp = parse_host_port(listen)
        start_http_server(hp.port, addr=hp.host, registry=self.registry)
