"""A fault campaign on the full lab: seeded random faults, mixed, each healed after a random time,
with the system's invariants checked all along (issue 17; docs/chaos.md).

Builds a lab (real wireguard-go, exporters, responder on a small tmpfs, Prometheus, Alertmanager,
blackbox exporter, switchers), pings the service through every client's tunnel every 20 ms, and
runs the episodes of `lab.faults.schedule(seed)` until --minutes are used: each episode injects
one to three faults and heals each after its own random time, then waits until the lab has
converged. Every broken invariant (`lab.invariants`) is printed at once with the time and the
faults in force. At the end: `lab down`, then a check that nothing of the lab is left.

Prints: faults injected by kind, violations by invariant (goal 0), the worst traffic gap of a
client that had a healthy reachable worker, convergence time p50/p99 after the last heal of each
episode. Exit 0 with no violation, 1 with any, 2 when the lab cannot run.

Needs root.  Example:  sudo .venv/bin/python bench/chaos.py --seed 1 --minutes 30
The same seed (and lab size) replays the same schedule; `--list` prints it without a lab.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from wg_failover import wg  # noqa: E402
from wg_failover.fleet import load_fleet  # noqa: E402
from wg_failover.lab import build, faults, invariants, ops  # noqa: E402
from wg_failover.lab.state import SERVICE_ADDRESS, SERVICE_ROUTES, LabError, LabState  # noqa: E402

POLL = 0.2  # seconds between `wg show` rounds on the clients (routes, handshakes)
API_EVERY = 1.0  # seconds between rounds of the responder's API (states, assignments)
QUIET = 3.0  # seconds watched for flaps between episodes
SILENT = 0.5  # seconds without a ping reply: that client's traffic has not converged
START_MARGIN = 40.0  # seconds an episode needs beyond its faults to be worth starting
REPLY_RE = re.compile(r"^\[(\d+\.\d+)\].*bytes from")
# Every move a switcher makes, in its log: `... INFO switch w1 -> w2 (failover) ...`. The log
# catches back-and-forth moves quicker than a poll of `wg show` could.
SWITCH_RE = re.compile(r"^(\S+) \w+ switch (\S+) -> (\S+) \((.*)$")


def loadavg() -> tuple[float, float, float]:
    try:
        a, b, c = Path("/proc/loadavg").read_text().split()[:3]
        return float(a), float(b), float(c)
    except (OSError, ValueError):
        return (0.0, 0.0, 0.0)


def cpu_pressure() -> float:
    """The share of the last 10 s some runnable task waited for a CPU (PSI), in %: the direct
    measure of CPU starvation (0 where the kernel has no PSI)."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some "):
                return float(line.split()[1].split("=")[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def names(n: int, letter: str) -> list[str]:
    return [f"{letter}{i + 1}" for i in range(n)]


class Campaign:
    def __init__(self, state: LabState, inj: faults.Injector, converge_bound: float,
                 say=print) -> None:
        self.state, self.inj, self.say = state, inj, say
        self.fleet = load_fleet(state.fleet_path)
        self.key_of = {w.public_key: w.name for w in self.fleet.workers}
        self.fleet_peers = frozenset(c.public_key for c in self.fleet.clients)
        self.t0 = time.time()
        self.lock = threading.Lock()
        self.traffic = invariants.TrafficCheck()
        self.switch = invariants.SwitchCheck()
        self.versions = invariants.VersionCheck()
        self.blind: dict[str, invariants.BlindMasterCheck] = {}
        self.converge_bound = converge_bound
        self.in_force: list[faults.Fault] = []
        self.violations: list[invariants.Violation] = []
        self.injected: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.converge: list[float] = []
        self.episodes = 0
        self.errors: list[str] = []  # faults the campaign could not inject or heal
        self.max_load = 0.0  # the highest 1-minute load average seen
        self.max_psi = 0.0  # the highest CPU pressure (PSI "some", 10 s average) seen, %
        self.loads_at_violations: list[tuple[float, float]] = []  # (load1, cpu pressure)
        self.api = ops.Api(state, timeout=2)
        self.pings: list[subprocess.Popen] = []
        self.routes: dict[str, str | None] = {}
        self.handshakes: dict[str, dict[str, int]] = {}
        self.worker_states: dict[str, str] | None = None
        self.assigned: dict[str, str | None] | None = None
        self.next_api = 0.0
        self.log_pos: dict[str, int] = {}
        for c in state.clients:
            self.log_pos[c] = self._switcher_log(c).stat().st_size

    def now(self) -> float:
        return time.time() - self.t0

    def labels(self) -> tuple[str, ...]:
        return tuple(f.label for f in self.in_force)

    def report(self, found: list[invariants.Violation]) -> None:
        for v in found:
            self.violations.append(v)
            # The machine's load with it: CPU starvation (2 shared cores) or a real defect?
            load, psi = loadavg(), cpu_pressure()
            self.loads_at_violations.append((load[0], psi))
            self.say(f"{v.line()}  [load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
                     f"cpu pressure {psi:.0f} %]")

    def sample_load(self) -> None:
        self.max_load = max(self.max_load, loadavg()[0])
        self.max_psi = max(self.max_psi, cpu_pressure())

    # ------------------------------------------------------------------ traffic
    def start_pings(self) -> None:
        for c, info in self.state.clients.items():
            p = subprocess.Popen(
                ["ip", "netns", "exec", info["netns"], "ping", "-D", "-n", "-i", "0.02", "-W",
                 "1", SERVICE_ADDRESS], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, bufsize=1)
            self.pings.append(p)
            threading.Thread(target=self._read_pings, args=(c, p), daemon=True).start()

    def _read_pings(self, client: str, p: subprocess.Popen) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            m = REPLY_RE.match(line)
            if m:
                with self.lock:
                    self.traffic.reply(client, float(m.group(1)) - self.t0)

    def stop_pings(self) -> None:
        for p in self.pings:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.pings:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    # ------------------------------------------------------------------ observation
    def _client_view(self, client: str) -> None:
        route, hs = None, {}
        with contextlib.suppress(wg.WgError, subprocess.TimeoutExpired):
            for p in wg.show_dump(self.state.clients[client]["ifname"]).peers:
                w = self.key_of.get(p.public_key)
                if w is None:
                    continue
                hs[w] = p.latest_handshake
                if SERVICE_ROUTES[0] in p.allowed_ips:
                    route = w
        self.routes[client] = route
        self.handshakes[client] = hs

    def _covered(self, client: str) -> bool:
        """A live switcher and some worker it can reach: no data-plane fault on it, and a
        handshake with it since its wireguard-go last (re)started (a new wireguard-go has no
        session; the client's WireGuard makes a new one when its own timers say so)."""
        sw = self.state.procs(host=client, role="switcher")
        if not sw or not sw[-1].alive():
            return False
        dead = set()
        for f in self.in_force:
            if f.kind == "all-down":
                dead |= set(self.state.workers)
            elif f.kind in faults.DATA_PLANE:
                dead.add(f.target)
        for w in self.state.workers:
            restarted = self.inj.restarted.get(w)
            if w in dead:
                continue
            if restarted is None or self.handshakes.get(client, {}).get(w, 0) >= int(restarted):
                return True
        return False

    def poll(self, api: bool) -> None:
        for c in self.state.clients:
            self._client_view(c)
        t = self.now()
        with self.lock:
            for c in self.state.clients:
                self.traffic.covered(c, t, self._covered(c))
            self.report(self.traffic.check(t, self.labels()))
        self._read_switches(t)
        if api:
            self._poll_api()
        for check in self.blind.values():
            self.report(check.observe(t, self.routes, self.worker_states if api else None,
                                      self.assigned if api else None, self.labels()))

    def _switcher_log(self, client: str) -> Path:
        return Path(self.state.procs(host=client, role="switcher")[-1].log)

    def _read_switches(self, t: float) -> None:
        for c in self.state.clients:
            path = self._switcher_log(c)
            with contextlib.suppress(OSError), path.open("rb") as f:
                f.seek(self.log_pos[c])
                data = f.read(1 << 20)
                cut = data.rfind(b"\n") + 1  # whole lines only; the rest comes next time
                self.log_pos[c] += cut
                for line in data[:cut].decode(errors="replace").splitlines():
                    m = SWITCH_RE.match(line)
                    if m and m.group(2) in self.state.workers and m.group(3) in self.state.workers:
                        # the switcher's own time and reason: what a violation needs to be read
                        why = f"at {m.group(1)[11:]}: ({m.group(4)[:160]}"
                        self.report(self.switch.move(t, c, m.group(2), m.group(3), self.labels(),
                                                     why))

    def _poll_api(self) -> None:
        try:
            self.worker_states = ops.worker_states(self.api.workers())
        except (httpx.HTTPError, ValueError, OSError):
            self.worker_states = None
        assigned: dict[str, str | None] | None = {}
        for c in self.state.clients:
            try:
                a = self.api.assignment(c)
            except (httpx.HTTPError, ValueError, OSError):
                a = None
            if not a or "version" not in a:
                assigned = None
                continue
            if assigned is not None:
                assigned[c] = a.get("worker")
            self.report(self.versions.observe(self.now(), c, a.get("epoch"), int(a["version"]),
                                              self.labels()))
        self.assigned = assigned

    def snapshot(self) -> invariants.Snapshot:
        peers: dict[str, frozenset[str] | None] = {}
        for w, info in self.state.workers.items():
            try:
                peers[w] = frozenset(p.public_key for p in wg.show_dump(info["ifname"]).peers)
            except (wg.WgError, subprocess.TimeoutExpired):
                peers[w] = None
        dead = tuple(f"{p.role} on {p.host}" for p in self.state.processes if not p.alive())
        t = self.now()
        with self.lock:
            silent = tuple(c for c in self.state.clients
                           if t - self.traffic.last_reply.get(c, -1e9) > SILENT)
        # The fleet is live (clients join through the responder): read what it serves now.
        with contextlib.suppress(Exception):
            fleet = load_fleet(self.state.fleet_path)
            self.fleet_peers = frozenset(c.public_key for c in fleet.clients)
        return invariants.Snapshot(self.worker_states, self.assigned, dict(self.routes), peers,
                                   self.fleet_peers, dead, silent)

    # ------------------------------------------------------------------ episodes
    def tick(self) -> bool:
        """One observation round; True when the API was polled in it."""
        api = time.monotonic() >= self.next_api
        if api:
            self.next_api = time.monotonic() + API_EVERY
            self.sample_load()
        self.poll(api)
        return api

    def run_episode(self, ep: faults.Episode) -> None:
        runnable = []
        for f in ep.faults:
            why = self.inj.unavailable(f.kind)
            if why:
                self.skipped[f.kind] += 1
                self.say(f"{self.now():8.2f} s  episode {ep.label}: skip {f.label}: {why}")
            else:
                runnable.append(f)
        if not runnable:
            return
        self.episodes += 1
        self.say(f"{self.now():8.2f} s  episode {ep.label}: "
                 + ", ".join(f"{f.label} at +{f.start:g} s for {f.duration:g} s"
                             for f in runnable))
        self.switch.begin(ep.label, len(runnable))
        start = time.monotonic()
        todo = sorted([(f.start, "inject", f) for f in runnable]
                      + [(f.start + f.duration, "heal", f) for f in runnable],
                      key=lambda e: (e[0], e[1] == "inject"))
        last_heal: float | None = None
        deadline = start + max(f.start + f.duration for f in runnable) + self.converge_bound + 5
        for _ in range(100000):  # bounded by the deadline below as well
            now = time.monotonic()
            while todo and now - start >= todo[0][0]:
                _, action, f = todo.pop(0)
                self._act(action, f)
                if action == "heal" and not todo:
                    last_heal = time.monotonic()
            api = self.tick()
            if last_heal is not None and api:
                why = invariants.not_converged(self.snapshot())
                elapsed = time.monotonic() - last_heal
                if not why:
                    self.converge.append(elapsed)
                    self.say(f"{self.now():8.2f} s  episode {ep.label}: converged "
                             f"{elapsed:.1f} s after the last heal")
                    break
                if elapsed > self.converge_bound or time.monotonic() > deadline:
                    self.report([invariants.Violation(
                        self.now(), "3 convergence", f"episode {ep.label}: not converged "
                        f"{elapsed:.0f} s after the last heal: {'; '.join(why[:6])}")])
                    break
            time.sleep(POLL)
        self.switch.end()

    def _act(self, action: str, f: faults.Fault) -> None:
        t = self.now()
        if action == "inject":
            if f.kind == "master-cut":
                # The clients settled on the worker: routes there and, as far as the responder
                # answers, assigned there (one still moving for another fault is not watched).
                on = frozenset(c for c, w in self.routes.items() if w == f.target and (
                    self.assigned is None or self.assigned.get(c) == f.target))
                self.blind[f.label] = invariants.BlindMasterCheck(f.target, on, f.label)
            self.in_force.append(f)
        try:
            if action == "inject":
                self.inj.inject(f)
                self.injected[f.kind] += 1
            else:
                self.inj.heal(f)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # LabError, WgError..
            # The campaign's own failure, not the system's: counted apart, and it fails the run.
            self.errors.append(f"{t:.2f} s {action} {f.label}: {exc}")
            self.say(f"{t:8.2f} s    ERROR {action} {f.label}: {exc}")
        if action == "heal":
            self.in_force.remove(f)
            self.blind.pop(f.label, None)
        self.say(f"{t:8.2f} s    {action} {f.label}")

    def quiet(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.tick()
            time.sleep(POLL)

    # ------------------------------------------------------------------ summary
    def summary(self, seed: int, minutes: float, left: list[str]) -> dict[str, Any]:
        by_kind = Counter(v.invariant for v in self.violations)
        if left:
            by_kind["6 leftovers"] += len(left)
        return {
            "seed": seed, "minutes": minutes, "episodes": self.episodes,
            "faults_injected": dict(sorted(self.injected.items())),
            "faults_skipped": dict(sorted(self.skipped.items())),
            "violations": dict(sorted(by_kind.items())),
            "violations_total": sum(by_kind.values()),
            "worst_covered_gap_s": round(self.traffic.worst, 3),
            "worst_gap_client": self.traffic.worst_client,
            "switches": self.switch.switches,
            "converge_s": {"n": len(self.converge),
                           "p50": invariants.percentile(self.converge, 50),
                           "p99": invariants.percentile(self.converge, 99),
                           "max": max(self.converge, default=None)},
            "leftovers": left,
            "errors": self.errors,
            "max_load1": round(self.max_load, 2),
            "max_cpu_pressure": round(self.max_psi, 1),
            "load1_cpu_pressure_at_violations": [[round(a, 2), round(b, 1)]
                                                 for a, b in self.loads_at_violations],
        }


def print_summary(s: dict[str, Any]) -> None:
    print(f"\nchaos: seed {s['seed']}, {s['minutes']:g} min, {s['episodes']} episodes")
    print("faults injected by kind: " + (", ".join(
        f"{k} {n}" for k, n in s["faults_injected"].items()) or "none"))
    if s["faults_skipped"]:
        print("skipped (part not in this lab): " + ", ".join(
            f"{k} {n}" for k, n in s["faults_skipped"].items()))
    print(f"violations: {s['violations_total']}" + (" (" + ", ".join(
        f"{k}: {n}" for k, n in s["violations"].items()) + ")" if s["violations"] else ""))
    print(f"worst traffic gap of a client with a healthy reachable worker: "
          f"{s['worst_covered_gap_s'] * 1000:.0f} ms ({s['worst_gap_client'] or '-'}; "
          f"bound {invariants.GAP_BOUND * 1000:.0f} ms)")
    c = s["converge_s"]
    if c["n"]:
        print(f"convergence after the last heal: p50 {c['p50']:.1f} s, p99 {c['p99']:.1f} s, "
              f"max {c['max']:.1f} s (n={c['n']}; bound {invariants.CONVERGE_BOUND:g} s)")
    at = s["load1_cpu_pressure_at_violations"]
    print(f"machine: load average (1 min) max {s['max_load1']:.2f}, cpu pressure (some, 10 s) "
          f"max {s['max_cpu_pressure']:.0f} %" + (
              "; at violations " + ", ".join(f"{a:.1f}/{b:.0f} %" for a, b in at) if at else ""))
    for e in s["errors"]:
        print(f"campaign error: {e}")
    print(f"route moves: {s['switches']}; after lab down: "
          + ("nothing left" if not s["leftovers"] else "LEFT: " + ", ".join(s["leftovers"])))


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=30.0,
                    help="campaign time: no episode starts after it (lab up/down not counted)")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--prefix", default="chx")
    ap.add_argument("--subnet", default="198.18.71.0/24")
    ap.add_argument("--converge-bound", type=float, default=invariants.CONVERGE_BOUND)
    ap.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    ap.add_argument("--keep-logs", metavar="DIR", help="where the lab's logs are copied when "
                    "an invariant broke (default /tmp/wgfo-chaos-PREFIX-seedN-logs)")
    ap.add_argument("--list", type=int, metavar="N", help="print the first N episodes and exit")
    args = ap.parse_args(argv)
    workers, clients = names(args.workers, "w"), names(args.clients, "c")
    if args.list:
        for ep, _ in zip(faults.schedule(args.seed, workers, clients), range(args.list),
                         strict=False):
            print(ep.label, " ".join(f"{f.label}@+{f.start:g}s/{f.duration:g}s"
                                     for f in ep.faults))
        return 0
    try:
        state = build.up(args.prefix, args.workers, args.clients, args.subnet, 1.0, say=print)
    except LabError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    # `kill` or a test's timeout: heal and take the lab down as on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    inj = faults.Injector(state)
    camp: Campaign | None = None
    interrupted = False
    try:
        inj.prepare_alerting()
        inj.prepare_disk()
        build.wait_ready(state, say=print)
        camp = Campaign(state, inj, args.converge_bound)
        camp.start_pings()
        camp.quiet(QUIET)
        budget = args.minutes * 60
        for ep in faults.schedule(args.seed, workers, clients):
            # Room for the faults and a typical convergence (a worker marked down comes back
            # up ~40 s after its heal); the last episode may still overrun by its convergence.
            if camp.now() + ep.span + START_MARGIN > budget:
                break
            camp.run_episode(ep)
            camp.quiet(QUIET)
    except KeyboardInterrupt:
        interrupted = True
        print("chaos: interrupted; healing and taking the lab down")
    finally:
        if camp is not None:
            camp.stop_pings()
            camp.api.close()
        inj.heal_everything()
        if camp is None or camp.violations or camp.errors or interrupted:
            # The lab's logs die with it: keep a copy to read what went wrong.
            keep = Path(args.keep_logs or f"/tmp/wgfo-chaos-{args.prefix}-seed{args.seed}-logs")
            with contextlib.suppress(OSError):
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(state.dir / "logs", keep)
                print(f"chaos: the lab's logs are kept in {keep}")
        build.down(state)
    left = faults.leftovers(state)
    if camp is None:
        return 2
    s = camp.summary(args.seed, args.minutes, left)
    print_summary(s)
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=2) + "\n")
    return 1 if s["violations_total"] or s["errors"] or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
