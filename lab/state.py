"""A running lab's state on disk: what `lab up` made, so later invocations can find and undo it.

The state file holds no secrets; keys and tokens sit beside it in `secrets/`, mode 0600.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import ssl
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wg_failover.tls import client_context

LAB_ROOT_ENV = "WG_FAILOVER_LAB_ROOT"
DEFAULT_LAB_ROOT = "/run/wg-failover-lab"
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")

# Fixed ports: every namespace has its own network stack, so nothing here can clash with the host.
RESPONDER_PORT = 8080
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
BLACKBOX_PORT = 9115
EXPORTER_PORT = 9586
WG_PORT = 51820
SERVICE_ADDRESS = "10.99.0.1"  # the same service behind every worker, reached through the tunnel
SERVICE_ROUTES = ("10.99.0.0/24",)


class LabError(RuntimeError):
    """A problem the user can act on (printed without a traceback)."""


def lab_root() -> Path:
    return Path(os.environ.get(LAB_ROOT_ENV, DEFAULT_LAB_ROOT))


def check_prefix(prefix: str) -> str:
    # Letters and digits only: NetLab's cleanup matches `{prefix}-*`, so a '-' inside a prefix
    # would let one lab's cleanup reach another's namespaces. Six bytes leave room in IFNAMSIZ.
    if not PREFIX_RE.match(prefix):
        raise LabError(f"--prefix {prefix!r}: 1-6 lowercase letters/digits, starting with a letter")
    return prefix


@dataclass(frozen=True)
class Addresses:
    """Underlay addresses of a lab on one /24."""

    subnet: str
    master: str
    root: str  # the root namespace's end of the link into the lab
    workers: tuple[str, ...]
    clients: tuple[str, ...]
    prefixlen: int


def plan_addresses(subnet: str, workers: int, clients: int) -> Addresses:
    """Master .2, workers from .10, clients from .100, the root namespace's link .254."""
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as exc:
        raise LabError(f"--subnet {subnet!r}: {exc}") from None
    if net.version != 4 or net.prefixlen != 24:
        raise LabError(f"--subnet {subnet!r}: give an IPv4 /24, e.g. 198.18.0.0/24")
    if not 1 <= workers <= 80 or not 1 <= clients <= 150:
        raise LabError("--workers 1..80 and --clients 1..150")
    base = net.network_address
    return Addresses(
        subnet=str(net),
        master=str(base + 2),
        root=str(base + 254),
        workers=tuple(str(base + 10 + i) for i in range(workers)),
        clients=tuple(str(base + 100 + j) for j in range(clients)),
        prefixlen=net.prefixlen,
    )


@dataclass
class Proc:
    """One process the lab started, identified by pid and kernel start time (pids get reused)."""

    role: str  # wireguard | exporter | responder | prometheus | alertmanager | blackbox
    #            | switcher
    host: str  # short host name: master, w1, c1
    pid: int
    start_time: int
    log: str = ""

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start_time


@dataclass
class LabState:
    prefix: str
    directory: str
    subnet: str
    master_address: str
    root_address: str
    root_ifname: str
    hub: str
    scrape_interval: float
    eval_interval: float
    workers: dict[str, dict] = field(default_factory=dict)  # name -> netns, address, ifname
    clients: dict[str, dict] = field(default_factory=dict)  # name -> netns, address, ifname
    processes: list[Proc] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)  # workers `lab failover` took out
    cut: list[str] = field(default_factory=list)  # ... of those, the ones cut off, not killed
    created: float = field(default_factory=time.time)

    # ------------------------------------------------------------------ paths
    @property
    def dir(self) -> Path:
        return Path(self.directory)

    @property
    def fleet_path(self) -> Path:
        return self.dir / "fleet.yaml"

    def secret_path(self, name: str) -> Path:
        return self.dir / "secrets" / name

    def token(self, name: str) -> str:
        return self.secret_path(f"{name}.token").read_text().strip()

    @property
    def responder_url(self) -> str:
        return f"https://{self.master_address}:{RESPONDER_PORT}"

    @property
    def tls_dir(self) -> Path:
        """The lab's throwaway CA and the responder's certificate (wg_failover.lab.tlsca)."""
        return self.dir / "tls"

    @property
    def ca_path(self) -> Path:
        return self.tls_dir / "ca.crt"

    def verify(self) -> ssl.SSLContext:
        """What the lab's own HTTP clients verify the responder with: the lab CA only."""
        return client_context(str(self.ca_path))

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.master_address}:{PROMETHEUS_PORT}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{self.master_address}:{ALERTMANAGER_PORT}"

    def netns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def procs(self, host: str | None = None, role: str | None = None) -> list[Proc]:
        return [p for p in self.processes
                if (host is None or p.host == host) and (role is None or p.role == role)]

    # ------------------------------------------------------------------ persistence
    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, self.dir / "state.json")

    @classmethod
    def load(cls, directory: Path) -> LabState:
        try:
            data = json.loads((directory / "state.json").read_text())
        except FileNotFoundError:
            raise LabError(f"no lab running here ({directory} has no state.json); "
                           "start one with `wg-failover lab up`") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"{directory}/state.json is unreadable: {exc}") from None
        data["processes"] = [Proc(**p) for p in data.get("processes", [])]
        return cls(**data)


def lab_dir(prefix: str) -> Path:
    return lab_root() / check_prefix(prefix)


def write_secret(path: Path, text: str) -> None:
    """Create a file only its owner can read, before any secret byte is written to it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    os.chmod(path, 0o600)


# ---------------------------------------------------------------------- processes


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot); None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2:].split()
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])


def spawn(netns: str, argv: Sequence[str], log: Path, role: str, host: str,
          env: dict[str, str] | None = None) -> Proc:
    """Start `argv` in `netns`, detached (own session, output to `log`), and record it.

    `ip netns exec` execs the command after entering the namespace, so the pid is the command's.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv], stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
    start = None
    for _ in range(100):  # the start time is there as soon as the process exists
        start = proc_start_time(popen.pid)
        if start is not None or popen.poll() is not None:
            break
        time.sleep(0.01)
    # Python would warn about a child it never waited for; this one outlives us on purpose.
    popen.returncode = 0 if start is not None else popen.poll()
    return Proc(role=role, host=host, pid=popen.pid, start_time=start or -1, log=str(log))


def kill_procs(procs: Sequence[Proc], sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
    """Signal exactly these processes (checked by start time), then SIGKILL what is left."""
    live = [p for p in procs if p.alive()]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, sig)
    deadline = time.monotonic() + wait
    while live and time.monotonic() < deadline:
        _reap()
        live = [p for p in live if p.alive()]
        if live:
            time.sleep(0.05)
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
    for _ in range(100):
        _reap()
        if not any(p.alive() for p in live):
            break
        time.sleep(0.02)


def _reap() -> None:
    # Children of this very process (when `lab up` and `lab down` run in one, e.g. the demo)
    # stay zombies until waited for.
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
