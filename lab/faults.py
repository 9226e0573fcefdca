"""Faults for a running lab, each with its heal, and the seeded schedule `bench/chaos.py` runs.

Every fault acts on the lab's own parts only (its processes by pid and kernel start time, its
namespaces, a tmpfs under its state directory):

- crash-*: SIGKILL one process; the heal starts it again with the very argv it ran with (read
  from /proc before the kill), recorded in the lab state so `lab down` stops the new one. A
  worker's wireguard-go comes back with the same key and config (`wg setconf`), as a restarted
  service would.
- cut-both: the worker's eth0 down; cut-oneway: nftables drops what enters (`in`) or leaves
  (`out`) the worker's eth0; loss: nftables drops 20 % of its packets each way (`numgen random`);
  master-cut: nftables on the worker drops everything from and to the master, so the master's
  scrapes and ICMP probes fail while the clients still reach it.
- all-down: every worker's wireguard-go and exporter killed; the heal restarts them all.
- disk-full: the responder's database sits on a small tmpfs (`prepare_disk` moves it there at the
  start of a campaign); the fault fills it to the last byte, the heal frees it.

Kinds whose part does not exist in this lab (mosquitto, responder replicas, PostgreSQL, a
worker's agent in a lab without agents) are reported as skipped with a printed line.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from wg_failover.fleet import dump_fleet, load_fleet
from wg_failover.promconfig import RESPONDER_RECEIVER
from wg_failover.wgquick import render_worker, strip

from . import netns
from .state import LabError, LabState, Proc, kill_procs, proc_start_time, spawn

Say = Callable[[str], None]

# kind -> (what it targets, shortest and longest duration in seconds)
KINDS: dict[str, tuple[str, float, float]] = {
    "crash-wireguard": ("worker", 3, 12),
    "crash-exporter": ("worker", 3, 15),
    "crash-switcher": ("client", 2, 10),
    "crash-agent": ("worker", 2, 10),
    "crash-responder": ("master", 2, 10),
    "crash-prometheus": ("master", 3, 15),
    "crash-alertmanager": ("master", 3, 15),
    "crash-mosquitto": ("master", 2, 8),
    "crash-replica": ("master", 2, 8),
    "crash-postgres": ("master", 2, 8),
    "cut-both": ("worker", 3, 12),
    "cut-oneway": ("worker", 3, 12),
    "loss": ("worker", 4, 15),
    # Long enough for the master's rules to decide (for: 6s after the first bad scrapes).
    "master-cut": ("worker", 12, 20),
    "all-down": ("all", 3, 8),
    "disk-full": ("master", 3, 12),
}
# Faults that take a worker out of the clients' reach (the data plane), by kind.
DATA_PLANE = frozenset({"crash-wireguard", "cut-both", "cut-oneway", "all-down"})
LOSS_PERCENT = 20
# The campaign's alert timers (prepare_alerting): a repeat every 10 s (one every 10-15 s with the
# 5 s group_interval), expiry after two missed ones, resends from Prometheus every 15 s. Not
# shorter: Prometheus sends each alert valid for 4 resends, and a Prometheus crashed for up to
# 15 s (plus its start) must not let Alertmanager resolve alerts that still fire.
ALERT_REPEAT = "10s"
ALERT_EXPIRE = 30.0
ALERT_RESEND = "15s"
DISK_KIB = 32 * 1024  # the responder's tmpfs: room for a long campaign's events, filled by a fault
NFT_TABLE = "wgfochaos"


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str  # a worker, a client, "master" or "all"
    start: float  # seconds after the episode began
    duration: float
    param: str = ""  # cut-oneway: "in" | "out"

    @property
    def label(self) -> str:
        extra = f" {self.param}" if self.param else ""
        return f"{self.kind}({self.target}{extra})"


@dataclass(frozen=True)
class Episode:
    index: int
    faults: tuple[Fault, ...]

    @property
    def span(self) -> float:
        """Seconds from the episode's start until its last heal."""
        return max(f.start + f.duration for f in self.faults)

    @property
    def label(self) -> str:
        return f"#{self.index}"


def schedule(seed: int, workers: list[str], clients: list[str]) -> Iterator[Episode]:
    """The campaign's episodes, the same for the same seed and lab size.

    Each episode opens with the next kind of a seeded shuffle of every kind (so every kind comes
    up early), and adds up to two more faults at random 0-3 s later, each on its own target:
    every fault is healed after its own random time. `all-down` runs alone.
    """
    rng = random.Random(seed)
    kinds = list(KINDS)
    order: list[str] = []
    index = 0
    while True:
        if not order:
            order = kinds[:]
            rng.shuffle(order)
        first = order.pop()
        n_more = 0 if first == "all-down" else rng.choices((0, 1, 2), weights=(6, 3, 1))[0]
        chosen = [first] + [rng.choice([k for k in kinds if k != "all-down"])
                            for _ in range(n_more)]
        used: set[str] = set()
        faults = []
        for i, kind in enumerate(chosen):
            what, lo, hi = KINDS[kind]
            pool = {"worker": workers, "client": clients}.get(what, [what])
            targets = [t for t in pool if (t, kind) not in used and t not in used]
            if what == "master":
                # one of each master fault at a time; the responder's crash and full disk apart
                clash = {"crash-responder", "disk-full"}
                if (kind in used or (kind in clash and used & clash)):
                    continue
                used.add(kind)
                target = "master"
            elif what == "all":
                target = "all"
            else:
                if not targets:
                    continue
                target = rng.choice(targets)
                used.add(target)
            param = rng.choice(("in", "out")) if kind == "cut-oneway" else ""
            start = 0.0 if i == 0 else round(rng.uniform(0, 3), 2)
            faults.append(Fault(kind, target, start, round(rng.uniform(lo, hi), 2), param))
        index += 1
        yield Episode(index, tuple(faults))


# ---------------------------------------------------------------------- the injector


def _mounted(path: Path) -> bool:
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 1 and parts[1] == str(path):
                return True
    return False


def mounts_under(directory: Path) -> list[str]:
    """Mount points inside `directory` (e.g. the responder's tmpfs), deepest first."""
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 1 and (parts[1] + "/").startswith(str(directory) + "/"):
                out.append(parts[1])
    return sorted(out, key=len, reverse=True)


def unmount_under(directory: Path) -> None:
    for m in mounts_under(directory):
        if subprocess.run(["umount", m], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", m], capture_output=True, timeout=30)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode() for a in raw.split(b"\0") if a]


def responder_repeat(text: str, interval: str) -> str:
    """An alertmanager.yml with `interval` as the responder route's repeat_interval (pure)."""
    config = yaml.safe_load(text)
    routes = [r for r in (config.get("route") or {}).get("routes") or []
              if r.get("receiver") == RESPONDER_RECEIVER]
    if not routes:
        raise LabError(f"alertmanager.yml has no route to {RESPONDER_RECEIVER!r}")
    for r in routes:
        r["repeat_interval"] = interval
    return yaml.safe_dump(config, sort_keys=False)


def _nft(ns: str, script: str) -> None:
    proc = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                          capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        raise LabError(f"nft in {ns} failed: {proc.stderr.strip()}")


@dataclass
class Injector:
    """Injects and heals faults on one running lab; remembers what it needs to undo them."""

    state: LabState
    say: Say = print
    restarted: dict[str, float] = field(default_factory=dict)  # worker -> wall time of restart
    argv: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (role, host) -> argv
    disk: Path | None = None

    def unavailable(self, kind: str) -> str | None:
        """Why `kind` cannot run in this lab (None: it can)."""
        if kind == "crash-agent" and not self.state.procs(role="agent"):
            return "no agents in this lab"
        if kind == "crash-mosquitto" and not self.state.procs(role="mosquitto"):
            return "no mosquitto in this lab"
        if kind == "crash-replica" and not self.state.procs(role="responder-replica"):
            return "no responder replicas in this lab"
        if kind == "crash-postgres" and not self.state.procs(role="postgres"):
            return "the responder runs on SQLite here, no PostgreSQL"
        if kind == "disk-full" and self.disk is None:
            return "the responder's database is not on a small disk (prepare_disk)"
        return None

    # ------------------------------------------------------------------ processes
    def _proc(self, role: str, host: str) -> Proc:
        procs = self.state.procs(host=host, role=role)
        if not procs:
            raise LabError(f"no {role} on {host} in this lab")
        return procs[-1]

    def crash(self, role: str, host: str) -> None:
        """SIGKILL one recorded process, keeping its argv for the heal."""
        p = self._proc(role, host)
        if p.alive():
            self.argv[(role, host)] = _cmdline(p.pid)
        kill_procs([p], signal.SIGKILL, wait=2)

    def restart(self, role: str, host: str, argv: list[str] | None = None) -> Proc:
        """Start a crashed process again as it ran, and record it in place of the dead one."""
        old = self._proc(role, host)
        if old.alive():
            return old
        argv = argv or self.argv.get((role, host))
        if not argv:
            raise LabError(f"no argv kept for {role} on {host}")
        log = Path(old.log) if old.log else self.state.dir / "logs" / f"{role}-{host}.log"
        new = spawn(self.state.netns(host), argv, log, role, host)
        self.state.processes = [q for q in self.state.processes if q is not old] + [new]
        self.state.save()
        return new

    def crash_wireguard(self, worker: str) -> None:
        kill_procs(self.state.procs(host=worker, role="wireguard"), signal.SIGKILL, wait=2)

    def restart_wireguard(self, worker: str) -> None:
        """The worker's wireguard-go again, same key and config, as its service would restart."""
        procs = self.state.procs(host=worker, role="wireguard")
        if any(p.alive() for p in procs):
            return
        info = self.state.workers[worker]
        (netns.WG_RUN_DIR / f"{info['ifname']}.sock").unlink(missing_ok=True)
        fleet = load_fleet(self.state.fleet_path)
        w = fleet.worker(worker)
        key = self.state.secret_path(f"{worker}.key").read_text().strip()
        lab = netns.NetLab(self.state.prefix, subnet=self.state.subnet, detach=True)
        host = netns.Host(lab, worker, info["netns"], info["address"])
        iface = host.wireguard(info["ifname"], strip(render_worker(fleet, w, key)),
                               [w.tunnel_host_cidr])
        self.state.processes = [p for p in self.state.processes if p not in procs] + [Proc(
            role="wireguard", host=worker, pid=iface.process.pid,
            start_time=proc_start_time(iface.process.pid) or -1)]
        self.state.save()
        self.restarted[worker] = time.time()

    # ------------------------------------------------------------------ alerting
    def prepare_alerting(self) -> None:
        """Shorter alert timers for a campaign, so a lost resolve cannot hold a worker down past
        the convergence bound (docs/chaos.md "Alerting in the campaign"). Call before
        `prepare_disk`, whose responder restart applies the fleet file's new setting.

        - Alertmanager repeats a firing failover alert every ALERT_REPEAT (shipped: 5 min);
        - the responder takes one not repeated for ALERT_EXPIRE as resolved (shipped: 900 s);
        - Prometheus re-sends firing alerts every ALERT_RESEND (default 1 min): a restarted
          Alertmanager learns them sooner, notifies them and so records them, and then does
          send their resolve (one that resolved before it learned them is the expiry's).
        """
        fleet = load_fleet(self.state.fleet_path)
        rs = fleet.responder.model_copy(update={"alert_expire_seconds": ALERT_EXPIRE})
        self.state.fleet_path.write_text(dump_fleet(fleet.model_copy(update={"responder": rs})))
        am = self._proc("alertmanager", "master")
        path = Path(next(a.split("=", 1)[1] for a in _cmdline(am.pid)
                         if a.startswith("--config.file=")))
        path.write_text(responder_repeat(path.read_text(), ALERT_REPEAT))
        os.kill(am.pid, signal.SIGHUP)  # Alertmanager reloads its configuration
        prom = self._proc("prometheus", "master")
        argv = [a for a in _cmdline(prom.pid) if not a.startswith("--rules.alert.resend-delay")]
        kill_procs([prom], signal.SIGTERM, wait=20)
        self.restart("prometheus", "master", argv + [f"--rules.alert.resend-delay={ALERT_RESEND}"])

    # ------------------------------------------------------------------ the disk
    def prepare_disk(self) -> Path:
        """Move the responder's database onto a small tmpfs (the responder restarts once)."""
        disk = self.state.dir / "responder-disk"
        disk.mkdir(mode=0o700, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_KIB}k,mode=0700", "tmpfs",
                            str(disk)], capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise LabError(f"cannot mount a tmpfs for the responder: {r.stderr.strip()}")
        p = self._proc("responder", "master")
        argv = _cmdline(p.pid)
        kill_procs([p], signal.SIGTERM, wait=10)
        old_db = Path(argv[argv.index("--db") + 1])
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(old_db) + suffix)
            if src.exists():
                (disk / (old_db.name + suffix)).write_bytes(src.read_bytes())
                src.unlink()
        argv[argv.index("--db") + 1] = str(disk / old_db.name)
        self.restart("responder", "master", argv)
        self.disk = disk
        return disk

    def fill(self) -> None:
        assert self.disk is not None
        fd = os.open(self.disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for block in (1 << 20, 65536, 4096, 512, 1):  # bounded: the tmpfs is finite
                for _ in range(DISK_KIB * 1024 // block + 1):
                    try:
                        os.write(fd, b"\0" * block)
                    except OSError:
                        break
        finally:
            os.close(fd)

    def unfill(self) -> None:
        if self.disk is not None:
            (self.disk / "filler").unlink(missing_ok=True)

    # ------------------------------------------------------------------ faults
    def inject(self, f: Fault) -> None:
        st = self.state
        kind, target = f.kind, f.target
        if kind.startswith("crash-") and kind not in ("crash-wireguard",):
            role = {"crash-exporter": "exporter", "crash-switcher": "switcher",
                    "crash-agent": "agent",
                    "crash-responder": "responder", "crash-prometheus": "prometheus",
                    "crash-alertmanager": "alertmanager"}[kind]
            self.crash(role, target)
        elif kind == "crash-wireguard":
            self.crash_wireguard(target)
        elif kind == "all-down":
            # One signal round for every worker: "at once", not one worker after another.
            kill_procs([p for w in st.workers for p in st.procs(host=w)], signal.SIGKILL, wait=2)
        elif kind == "cut-both":
            _ip(st.workers[target]["netns"], "link", "set", "eth0", "down")
        elif kind == "cut-oneway":
            hook, match = ("input", "iifname") if f.param == "in" else ("output", "oifname")
            _nft(st.workers[target]["netns"], f"table inet {NFT_TABLE} {{\n"
                 f" chain c {{ type filter hook {hook} priority 0; {match} \"eth0\" drop; }}\n"
                 "}\n")
        elif kind == "loss":
            _nft(st.workers[target]["netns"], f"table inet {NFT_TABLE} {{\n"
                 f" chain i {{ type filter hook input priority 0; iifname \"eth0\" "
                 f"numgen random mod 100 < {LOSS_PERCENT} drop; }}\n"
                 f" chain o {{ type filter hook output priority 0; oifname \"eth0\" "
                 f"numgen random mod 100 < {LOSS_PERCENT} drop; }}\n}}\n")
        elif kind == "master-cut":
            m = st.master_address
            _nft(st.workers[target]["netns"], f"table inet {NFT_TABLE} {{\n"
                 f" chain i {{ type filter hook input priority 0; ip saddr {m} drop; }}\n"
                 f" chain o {{ type filter hook output priority 0; ip daddr {m} drop; }}\n}}\n")
        elif kind == "disk-full":
            self.fill()
        else:
            raise LabError(f"fault {kind} cannot run in this lab: {self.unavailable(kind)}")

    def heal(self, f: Fault) -> None:
        st = self.state
        kind, target = f.kind, f.target
        if kind == "crash-wireguard":
            self.restart_wireguard(target)
        elif kind.startswith("crash-"):
            role = kind.removeprefix("crash-")
            self.restart(role, target)
        elif kind == "all-down":
            from .build import restart_worker

            for w in st.workers:
                if not any(p.alive() for p in st.procs(host=w)):
                    (netns.WG_RUN_DIR / f"{st.workers[w]['ifname']}.sock").unlink(missing_ok=True)
                    restart_worker(st, w)
                    self.restarted[w] = time.time()
        elif kind == "cut-both":
            _ip(st.workers[target]["netns"], "link", "set", "eth0", "up")
        elif kind in ("cut-oneway", "loss", "master-cut"):
            subprocess.run(["ip", "netns", "exec", st.workers[target]["netns"], "nft", "delete",
                            "table", "inet", NFT_TABLE], capture_output=True, timeout=20)
        elif kind == "disk-full":
            self.unfill()

    def heal_everything(self) -> None:
        """Undo whatever may still be in force (the campaign was interrupted): best effort."""
        for w, info in self.state.workers.items():
            with contextlib.suppress(Exception):
                subprocess.run(["ip", "netns", "exec", info["netns"], "nft", "delete", "table",
                                "inet", NFT_TABLE], capture_output=True, timeout=20)
                _ip(info["netns"], "link", "set", "eth0", "up")
            del w
        with contextlib.suppress(Exception):
            self.unfill()


def _ip(ns: str, *args: str) -> None:
    proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        raise LabError(f"`ip -n {ns} {' '.join(args)}` failed: {proc.stderr.strip()}")


# ---------------------------------------------------------------------- after `lab down`


def leftovers(state: LabState) -> list[str]:
    """Anything of the lab still there after `lab down` (invariant 6): empty when clean."""
    left = [f"namespace {ns}" for ns in netns.list_namespaces()
            if ns.startswith(state.prefix + "-")]
    left += [f"{p.role} on {p.host} (pid {p.pid})" for p in state.processes if p.alive()]
    if netns.WG_RUN_DIR.is_dir():
        left += [f"socket {s}" for s in netns.WG_RUN_DIR.glob(f"{state.prefix}*.sock")]
    link = subprocess.run(["ip", "link", "show", state.root_ifname], capture_output=True,
                          timeout=10)
    if link.returncode == 0:
        left.append(f"link {state.root_ifname}")
    left += [f"mount {m}" for m in mounts_under(state.dir)]
    if state.dir.exists():
        left.append(f"directory {state.dir}")
    return left
