"""Hosts in network namespaces, joined by a bridge, with real wireguard-go interfaces.

Used by the integration tests, the benchmarks and `wg-failover lab`. Every namespace, interface
and process it makes carries the lab's prefix, and `close()` removes exactly those, so two labs (or
a test and a lab) never touch each other's parts and the host's own namespace is left alone: the
bridge lives in a `hub` namespace of its own.

wireguard-go keeps its control sockets in /var/run/wireguard, which all namespaces share, so
interface names must be unique machine-wide: they carry the prefix too (and fit in 15 bytes).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wg_failover import wg

from .procs import poll_until

WG_RUN_DIR = Path("/var/run/wireguard")
IFNAMSIZ = 15


class NetnsError(RuntimeError):
    pass


def _run(
    argv: Sequence[str], check: bool = True, timeout: float = 20
) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def preflight() -> list[str]:
    """What stops a lab from running here, as sentences (empty when all is well)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces and TUN devices need it)")
    for tool, pkg in (("ip", "iproute2"), ("wg", "wireguard-tools"),
                      ("wireguard-go", "wireguard-go"), ("ping", "iputils-ping")):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` not found: apt-get install {pkg}")
    if not Path("/dev/net/tun").exists():
        problems.append("/dev/net/tun is missing: wireguard-go needs the TUN driver")
    return problems


@dataclass
class Host:
    lab: NetLab
    name: str  # short name inside the lab
    netns: str  # full namespace name
    address: str  # underlay address on the bridge

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 20):
        return _run(self.exec_argv(argv), check=check, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(self.exec_argv(argv), **kwargs)
        self.lab.processes.append(proc)
        return proc

    def ping(self, address: str, count: int = 1, timeout: float = 1.0) -> bool:
        """True when any of `count` echoes (0.1 s apart) is answered within `timeout` each."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.1", "-W", f"{timeout:g}", address]
        return self.run(argv, check=False, timeout=timeout * count + 5).returncode == 0

    def wireguard(self, ifname: str, config: str, addresses: Sequence[str]) -> WgInterface:
        """Start wireguard-go as IFNAME in this host, `wg setconf` it, add addresses, bring it up.

        `config` is a stripped wg-quick config (what `wg setconf` takes). Routes for the peers'
        AllowedIPs are added as wg-quick would, so traffic to them enters the tunnel.
        """
        return self.lab.wireguard(self, ifname, config, addresses)


@dataclass
class WgInterface:
    host: Host
    name: str
    process: subprocess.Popen

    def kill(self) -> None:
        """Kill wireguard-go, as a crash would: the tunnel stops answering at once."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def dump(self) -> wg.Dump:
        return wg.show_dump(self.name)


@dataclass
class NetLab:
    """A set of namespaces named `{prefix}-…` around one bridge. Use as a context manager."""

    prefix: str
    subnet: str = "198.18.0.0/24"  # RFC 2544 benchmarking range: never a real host
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)
    interfaces: list[WgInterface] = field(default_factory=list)
    _next_ip: int = 1
    # True: wireguard-go runs in a session of its own, so it outlives this process (`lab up`).
    detach: bool = False

    def __post_init__(self) -> None:
        if len(self.prefix) > 8 or not self.prefix.replace("-", "").isalnum():
            raise ValueError("prefix: 1-8 letters/digits (interface names must fit 15 bytes)")
        self.network = ipaddress.ip_network(self.subnet)
        self.hub = f"{self.prefix}-hub"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> NetLab:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def up(self) -> None:
        problems = preflight()
        if problems:
            raise NetnsError("; ".join(problems))
        cleanup_prefix(self.prefix)  # leftovers of a run that was killed
        _run(["ip", "netns", "add", self.hub])
        _run(["ip", "-n", self.hub, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.hub, "link", "set", "br0", "up"])

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.processes:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.processes.clear()
        cleanup_prefix(self.prefix)

    # ------------------------------------------------------------------ building
    def add_host(self, name: str, address: str | None = None) -> Host:
        """A namespace `{prefix}-{name}` with eth0 on the bridge and loopback up."""
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        netns = f"{self.prefix}-{name}"
        if address is None:
            address = str(self.network.network_address + self._next_ip)
            self._next_ip += 1
        plen = self.network.prefixlen
        idx = len(self.hosts)
        _run(["ip", "netns", "add", netns])
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        veth = f"v{idx}"
        _run(["ip", "-n", self.hub, "link", "add", veth, "type", "veth",
              "peer", "name", "eth0", "netns", netns])
        _run(["ip", "-n", self.hub, "link", "set", veth, "master", "br0", "up"])
        _run(["ip", "-n", netns, "addr", "add", f"{address}/{plen}", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        host = Host(self, name, netns, address)
        self.hosts[name] = host
        return host

    def ifname(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        if len(name) > IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ} bytes")
        return name

    def wireguard(self, host: Host, ifname: str, config: str,
                  addresses: Sequence[str]) -> WgInterface:
        if not ifname.startswith(self.prefix):
            ifname = self.ifname(ifname)
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
        proc = host.popen(["wireguard-go", "-f", ifname], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=self.detach)
        sock = WG_RUN_DIR / f"{ifname}.sock"

        def listening() -> bool:
            if proc.poll() is not None:
                raise NetnsError(f"wireguard-go {ifname} exited with {proc.returncode}")
            return uapi_ready(sock)

        if not poll_until(listening, 10, 0.02):
            raise NetnsError(f"wireguard-go {ifname}: no control socket after 10 s")
        iface = WgInterface(host, ifname, proc)
        self.interfaces.append(iface)
        wg.setconf(ifname, config)
        for addr in addresses:
            host.run(["ip", "addr", "add", addr, "dev", ifname])
        host.run(["ip", "link", "set", ifname, "up"])
        # As wg-quick does: a route for every AllowedIPs prefix, so traffic enters the tunnel.
        for peer in wg.show_dump(ifname).peers:
            for prefix in peer.allowed_ips:
                if ipaddress.ip_network(prefix).prefixlen == 0:
                    continue  # a default route would hijack the namespace's underlay
                host.run(["ip", "route", "replace", prefix, "dev", ifname])
        return iface


def uapi_ready(sock: Path) -> bool:
    """wireguard-go accepts connections on its control socket. The file appears at bind(),
    before listen(): a `wg` in that window finds no listener, falls back to the kernel module
    and fails with "Protocol not supported" (the fault campaign hit it under load)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


def list_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pids(ns: str) -> list[str]:
    return _run(["ip", "netns", "pids", ns], check=False).stdout.split()


def cleanup_prefix(prefix: str) -> list[str]:
    """Kill every process in, and delete, the namespaces named `{prefix}-*`; drop stale sockets.

    Returns the namespaces removed. Only names with this exact prefix are touched.
    """
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(prefix + "-"):
            continue
        for pid in _pids(ns):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        poll_until(lambda ns=ns: not _pids(ns), 2.5, 0.05)
        _run(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    if WG_RUN_DIR.is_dir():
        for sock in WG_RUN_DIR.glob(f"{prefix}*.sock"):
            # A socket nobody listens on is stale (its wireguard-go died with the namespace).
            try:
                wg.run_wg(["show", sock.stem], timeout=2)
            except wg.WgError:
                sock.unlink(missing_ok=True)
    return removed


def unique_prefix(base: str = "wt") -> str:
    """A short prefix unlikely to clash with another run on this machine."""
    return f"{base}{os.getpid() % 10000:04d}"[:8]
