"""A latency-placement lab on real parts (issue 18): workers behind UDP relays that emulate their
path's RTT and jitter (lab/relay.py; no `tc netem` here), several clients each with its own
namespace, wireguard-go and real switcher, and the real responder with `placement: latency`.

Shared by `bench/placement_wg.py` (the full scenario, minutes long) and
`tests/netns/test_placement_latency.py` (a shortened one). Like the rest of the lab it never
imports a component: the switcher and the responder run through the CLI.

Each relay delays every datagram by half the RTT each way, +/- half the jitter, so a worker's
RTT through the tunnel is the set RTT +/- the jitter (two uniform halves).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wg_failover.fleet import Fleet, dump_fleet
from wg_failover.wgquick import render_client, render_worker, strip

from .gen import Generated, generate_fleet
from .kit import SERVICE, SwitcherProc, ns_request
from .netns import Host, NetLab, WgInterface
from .procs import poll_until, stop_process, wgfo_argv
from .relay import RelayProc, front_wireguard

PORT = 51820  # the generated fleet's worker endpoint port
MASTER = "198.18.0.2"


@dataclass
class ClientNode:
    name: str
    host: Host
    iface: WgInterface
    token_file: Path
    switcher: SwitcherProc | None = None


@dataclass
class PlacementLab:
    lab: NetLab
    gen: Generated
    workdir: Path
    rtt_ms: dict[str, float]  # the emulated RTT per worker now
    jitter_ms: dict[str, float] = field(default_factory=dict)
    clients: dict[str, ClientNode] = field(default_factory=dict)
    relays: dict[str, RelayProc] = field(default_factory=dict)
    worker_hosts: dict[str, Host] = field(default_factory=dict)
    master: Host | None = None
    responder: subprocess.Popen | None = None
    fleet_file: Path | None = None

    @property
    def fleet(self) -> Fleet:
        return self.gen.fleet

    @property
    def url(self) -> str:
        return f"http://{MASTER}:8080"

    # ------------------------------------------------------------------ paths
    def set_path(self, worker: str, rtt_ms: float | None = None,
                 jitter_ms: float | None = None) -> None:
        """Change a worker's emulated RTT and/or jitter from now on."""
        if rtt_ms is not None:
            self.rtt_ms[worker] = rtt_ms
        if jitter_ms is not None:
            self.jitter_ms[worker] = jitter_ms
        self.relays[worker].set(delay=self.rtt_ms[worker] / 2000,
                                jitter=self.jitter_ms.get(worker, 0.0) / 2000)

    # ------------------------------------------------------------------ processes
    def start_responder(self, timeout: float = 30) -> None:
        assert self.fleet_file is not None
        self.master = self.master or self.lab.add_host("master", address=MASTER)
        log = open(self.workdir / "responder.log", "a")  # noqa: SIM115 - the child owns it
        # --insecure-http: the underlay is this machine's private namespaces.
        self.responder = self.master.popen(
            [*wgfo_argv("responder"), "--fleet", str(self.fleet_file), "--db",
             str(self.workdir / "responder.db"), "--listen", f"{MASTER}:8080",
             "--log-level", "warning", "--insecure-http"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if not poll_until(lambda: self.http("GET", "/readyz")[0] == 200, timeout, 0.2):
            raise RuntimeError("responder did not come up:\n"
                               + (self.workdir / "responder.log").read_text())

    def start_switchers(self, *extra: str) -> None:
        assert self.fleet_file is not None
        for c in self.clients.values():
            state = self.workdir / f"state-{c.name}"
            log = self.workdir / f"switcher-{c.name}.log"
            fh = open(log, "w")  # noqa: SIM115 - the process owns it until it exits
            proc = c.host.popen(
                [*wgfo_argv("switcher"), "--fleet", str(self.fleet_file), "--client", c.name,
                 "--interface", c.iface.name, "--responder", self.url, "--token-file",
                 str(c.token_file), "--state-dir", str(state), "--insecure-http", *extra],
                stdout=fh, stderr=subprocess.STDOUT)
            fh.close()
            c.switcher = SwitcherProc(proc, log)

    def stop(self) -> None:
        for c in self.clients.values():
            if c.switcher is not None:
                c.switcher.stop()
        for r in self.relays.values():
            r.stop()
        if self.responder is not None:
            stop_process(self.responder, 5)

    # ------------------------------------------------------------------ the responder's view
    def http(self, method: str, path: str, who: str | None = "admin",
             body: dict | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if who:
            headers["Authorization"] = f"Bearer {self.gen.tokens[who]}"
        assert self.master is not None
        return ns_request(self.master, method, self.url + path, headers, body)

    def assignments(self) -> dict[str, str | None]:
        status, body = self.http("GET", "/v1/clients")
        if status != 200:
            raise RuntimeError(f"GET /v1/clients: {status} {body}")
        return {c["name"]: c.get("worker") for c in body}

    def workers(self) -> dict[str, dict]:
        status, body = self.http("GET", "/v1/workers", "read")
        if status != 200:
            raise RuntimeError(f"GET /v1/workers: {status} {body}")
        return {w["name"]: w for w in body}

    def moves(self, after: int = 0) -> list[dict]:
        """The responder's `move` events after event id `after` (oldest first)."""
        out: list[dict] = []
        for _ in range(100):  # bounded: 100 pages of 1,000
            status, body = self.http("GET", f"/v1/events?after={after}&limit=1000")
            if status != 200:
                raise RuntimeError(f"GET /v1/events: {status} {body}")
            events = body["events"]
            out += [e for e in events if e["kind"] == "move"]
            if len(events) < 1000:
                break
            after = body["last_id"]
        return out

    def last_event_id(self) -> int:
        """The id of the responder's latest event (0: none)."""
        last = 0
        for _ in range(100):  # bounded: 100 pages of 1,000
            status, body = self.http("GET", f"/v1/events?after={last}&limit=1000")
            if status != 200:
                raise RuntimeError(f"GET /v1/events: {status} {body}")
            if not body["events"]:
                return last
            last = body["last_id"]
        return last

    def route_holders(self) -> dict[str, str | None]:
        """Per client, the worker its interface routes the service through now."""
        from wg_failover import wg  # the lab's own import of the core

        by_name = {c.name: c for c in self.fleet.clients}
        return {n: wg.find_active(self.fleet, by_name[n], c.iface.dump().peers)
                for n, c in self.clients.items()}


def build(lab: NetLab, workdir: Path, rtt_ms: dict[str, float], clients: int,
          capacity: dict[str, int] | None = None, responder: dict[str, Any] | None = None,
          jitter_ms: float = 0.0, seed: int = 18) -> PlacementLab:
    """Workers w1..wN (N = len(rtt_ms), in that order) on 198.18.0.10+i behind relays with
    those RTTs, clients c1..cM on 198.18.0.20+j (preferences rotated: c1 prefers w1, c2 w2...),
    `capacity` per worker, `responder` settings on top of `placement: latency`."""
    workdir.mkdir(parents=True, exist_ok=True)
    names = list(rtt_ms)
    gen = generate_fleet(len(names), clients, worker_host=lambda i: f"198.18.0.{i + 10}",
                         routes=(f"{SERVICE.rsplit('.', 1)[0]}.0/24",),
                         responder_url=f"http://{MASTER}:8080")
    assert [w.name for w in gen.fleet.workers] == names, "workers must be named w1..wN"
    cap = capacity or {}
    fleet = gen.fleet.model_copy(update={
        "workers": [w.model_copy(update={"capacity": cap.get(w.name)})
                    for w in gen.fleet.workers],
        "responder": gen.fleet.responder.model_copy(
            update={"placement": "latency", **(responder or {})})})
    gen = Generated(fleet, gen.private_keys, gen.tokens)
    pl = PlacementLab(lab, gen, workdir, dict(rtt_ms), {w: jitter_ms for w in names})
    for i, w in enumerate(fleet.workers):
        host = lab.add_host(w.name, address=f"198.18.0.{i + 10}")
        host.run(["ip", "addr", "add", f"{SERVICE}/32", "dev", "lo"])
        conf = strip(render_worker(fleet, w, gen.private_keys[w.name]))
        iface = host.wireguard(f"w{i}", conf, [w.tunnel_host_cidr])
        pl.worker_hosts[w.name] = host
        pl.relays[w.name] = front_wireguard(host, iface.name, PORT, seed=seed + i,
                                            delay=rtt_ms[w.name] / 2000,
                                            jitter=jitter_ms / 2000)
    for j, c in enumerate(fleet.clients):
        host = lab.add_host(c.name, address=f"198.18.0.{j + 20}")
        conf = strip(render_client(fleet, c, gen.private_keys[c.name]))
        token = workdir / f"token-{c.name}"
        token.touch(mode=0o600)
        token.write_text(gen.tokens[c.name] + "\n")
        pl.clients[c.name] = ClientNode(c.name, host, host.wireguard(f"c{j}", conf,
                                                                     [c.address]), token)
    pl.fleet_file = workdir / "fleet.yaml"
    pl.fleet_file.write_text(dump_fleet(fleet))
    return pl


def wait_for_placement(pl: PlacementLab, want: dict[str, int], timeout: float,
                       every: float = 2.0) -> tuple[bool, dict[str, str | None], float]:
    """Poll until the count of clients per worker equals `want`: (reached, assignment, s)."""
    t0 = time.monotonic()
    a: dict[str, str | None] = {}
    while time.monotonic() - t0 < timeout:
        a = pl.assignments()
        counts: dict[str, int] = {}
        for w in a.values():
            if w is not None:
                counts[w] = counts.get(w, 0) + 1
        if counts == {k: v for k, v in want.items() if v}:
            return True, a, time.monotonic() - t0
        time.sleep(every)
    return False, a, time.monotonic() - t0


__all__ = ["PlacementLab", "build", "wait_for_placement"]
