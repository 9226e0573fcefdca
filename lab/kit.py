"""A client-and-workers lab on real wireguard-go, shared by the switcher's tests and bench.

Three workers each hold the same service address (10.99.0.1 on their loopback) behind their
tunnel; one client carries every worker as a peer, routes 10.99.0.0/24 on its first choice. The
switcher runs as a real process in the client's namespace (`SwitcherProc`), through its CLI: like
the rest of the lab, this never imports the switcher's code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from wg_failover import wg
from wg_failover.fleet import Client, Fleet, dump_fleet
from wg_failover.wgquick import render_client, render_worker, strip

from .gen import Generated, generate_fleet
from .netns import WG_RUN_DIR, Host, NetLab, WgInterface
from .procs import poll_until, stop_process, wgfo_argv

SERVICE = "10.99.0.1"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class WorkerNode:
    name: str
    host: Host
    iface: WgInterface
    config: str
    addresses: list[str]


@dataclass
class SwitcherLab:
    lab: NetLab
    gen: Generated
    workdir: Path
    workers: dict[str, WorkerNode] = field(default_factory=dict)
    client_host: Host | None = None
    client_iface: WgInterface | None = None
    fleet_file: Path | None = None
    token_file: Path | None = None
    master: Host | None = None
    client_config: str = ""
    responder_url: str | None = None
    responder_proc: subprocess.Popen | None = None

    @property
    def fleet(self) -> Fleet:
        return self.gen.fleet

    @property
    def client(self) -> Client:
        return self.fleet.clients[0]

    def prefs(self) -> list[str]:
        return [w.name for w in self.fleet.preferences(self.client)]

    # ------------------------------------------------------------------ workers
    def kill_worker(self, name: str) -> None:
        self.workers[name].iface.kill()

    def restart_worker(self, name: str) -> None:
        """Start the killed worker's wireguard-go again, with the same config and addresses."""
        node = self.workers[name]
        node.iface.kill()
        # The killed process left its control socket behind; the lab waits for the socket.
        (WG_RUN_DIR / f"{node.iface.name}.sock").unlink(missing_ok=True)
        node.iface = node.host.wireguard(node.iface.name, node.config, node.addresses)

    def restart_client_interface(self) -> None:
        """Kill the client's wireguard-go and bring the interface up again from its config
        (routes on the first worker), as `wg-quick down; wg-quick up` would."""
        assert self.client_iface is not None and self.client_host is not None
        self.client_iface.kill()
        (WG_RUN_DIR / f"{self.client_iface.name}.sock").unlink(missing_ok=True)
        self.client_iface = self.client_host.wireguard(
            self.client_iface.name, self.client_config, [self.client.address])

    def worker_rx_from_client(self, name: str) -> int:
        """Bytes the worker received from the client (0 when its wireguard-go is dead)."""
        node = self.workers[name]
        if node.iface.process.poll() is not None:
            return 0
        try:
            peers = node.iface.dump().peers
        except wg.WgError:
            return 0
        return sum(p.rx_bytes for p in peers if p.public_key == self.client.public_key)

    def route_holder(self) -> str | None:
        assert self.client_iface is not None
        return wg.find_active(self.fleet, self.client, self.client_iface.dump().peers)

    def client_peers(self) -> dict[str, tuple[str, ...]]:
        assert self.client_iface is not None
        by_key = {w.public_key: w.name for w in self.fleet.workers}
        return {by_key.get(p.public_key, p.public_key): p.allowed_ips
                for p in self.client_iface.dump().peers}

    # ------------------------------------------------------------------ processes
    def switcher_argv(self, state_dir: Path, responder: str, *extra: str) -> list[str]:
        assert self.client_iface is not None and self.fleet_file and self.token_file
        # This kit's responder serves plain HTTP on a namespace address (its tests are about
        # switching; `wg-failover lab` runs the control plane on TLS).
        insecure = ["--insecure-http"] if responder.startswith("http://") else []
        return [*wgfo_argv("switcher"), "--fleet", str(self.fleet_file),
                "--client", self.client.name, "--interface", self.client_iface.name,
                "--responder", responder, "--token-file", str(self.token_file),
                "--state-dir", str(state_dir), *insecure, *extra]

    def start_switcher(self, state_dir: Path, responder: str, *extra: str,
                       log: Path | None = None) -> SwitcherProc:
        assert self.client_host is not None
        log = log or self.workdir / f"switcher-{time.monotonic_ns()}.log"
        fh = open(log, "w")  # noqa: SIM115 - the process owns it until it exits
        proc = self.client_host.popen(self.switcher_argv(state_dir, responder, *extra),
                                      stdout=fh, stderr=subprocess.STDOUT)
        fh.close()
        return SwitcherProc(proc, log)

    def start_responder(self, address: str = "198.18.0.2", port: int = 8080,
                        timeout: float = 30) -> Host:
        """The real `wg-failover responder` in a `master` namespace on the lab's underlay, so
        the switcher in the client's namespace reaches it the way a real client would. Called
        again after the responder was stopped, it starts it again on the same database."""
        assert self.fleet_file is not None
        master = self.master or self.lab.add_host("master", address=address)
        log = open(self.workdir / "responder.log", "a")  # noqa: SIM115 - the child owns it
        # --insecure-http: the underlay is this machine's private namespaces; a deployment
        # serves TLS (the responder refuses plain HTTP off loopback without the flag).
        self.responder_proc = master.popen(
            [*wgfo_argv("responder"), "--fleet", str(self.fleet_file),
             "--db", str(self.workdir / "responder.db"), "--listen",
             f"{address}:{port}", "--log-level", "warning", "--insecure-http"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.master = master
        self.responder_url = f"http://{address}:{port}"
        if poll_until(lambda: self.http("GET", "/readyz")[0] == 200, timeout, 0.2):
            return master
        raise RuntimeError("responder did not come up:\n"
                           + (self.workdir / "responder.log").read_text())

    def http(self, method: str, path: str, who: str | None = None,
             body: dict | None = None) -> tuple[int, object]:
        """One request to the lab's responder, made from inside the master namespace."""
        headers = {"Content-Type": "application/json"}
        if who:
            headers["Authorization"] = f"Bearer {self.gen.tokens[who]}"
        return ns_request(self.master, method, self.responder_url + path, headers, body)

    def start_ping(self, interval: float = 0.01) -> Pinger:
        assert self.client_host is not None
        proc = self.client_host.popen(
            ["ping", "-n", "-D", "-i", f"{interval:g}", "-W", "1", SERVICE],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        return Pinger(proc)


@dataclass
class SwitcherProc:
    """A `wg-failover switcher` process and its log."""

    proc: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match | None:
        """Wait until the log (from offset `start`) matches `pattern`; None on timeout or exit."""
        rx = re.compile(pattern)
        # Stop early when the process exits: its log will not grow any more.
        poll_until(lambda: rx.search(self.text(), start) or self.proc.poll() is not None,
                   timeout, 0.02)
        return rx.search(self.text(), start)

    def stop(self, timeout: float = 5) -> int:
        """SIGTERM (the switcher's clean shutdown), SIGKILL after `timeout`; its exit code."""
        stop_process(self.proc, timeout)
        return self.proc.returncode


class Pinger:
    """`ping -D` in the background; collects the wall-clock time of every reply."""

    _rx = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)")

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.replies: list[float] = []
        self.seqs: list[int] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = self._rx.match(line)
            if m and "bytes from" in line:
                with self._lock:
                    self.replies.append(float(m.group(1)))
                    self.seqs.append(int(m.group(2)))

    def snapshot(self) -> list[float]:
        with self._lock:
            return list(self.replies)

    def lost_between(self, t0: float, t1: float) -> tuple[int, int]:
        """(answered, lost) echoes among those answered or due between wall-clock t0 and t1.

        ping's icmp_seq counts up by one per echo (it wraps at 65536, after 11 min at 10 ms), so
        a hole in the answered sequence numbers is a lost echo.
        """
        with self._lock:
            seqs = [q for t, q in zip(self.replies, self.seqs, strict=True) if t0 <= t <= t1]
        if len(seqs) < 2:
            return len(seqs), 0
        span = (seqs[-1] - seqs[0]) % 65536 + 1
        return len(seqs), span - len(seqs)

    def lost_seqs(self, t0: float, t1: float) -> list[tuple[int, float]]:
        """Echoes lost between wall-clock t0 and t1: (icmp_seq, estimated send time), the time
        interpolated between the replies around it."""
        with self._lock:
            pairs = [(q, t) for t, q in zip(self.replies, self.seqs, strict=True)
                     if t0 <= t <= t1]
        out = []
        for (qa, ta), (qb, tb) in zip(pairs, pairs[1:], strict=False):
            n = (qb - qa) % 65536
            out += [((qa + k) % 65536, ta + (tb - ta) * k / n) for k in range(1, n)]
        return out

    def replies_after(self, t: float) -> list[float]:
        return [r for r in self.snapshot() if r > t]

    def gap_around(self, t: float) -> float | None:
        """Last reply before wall-clock `t` to the first reply after it (None: none after)."""
        replies = self.snapshot()
        before = [r for r in replies if r <= t]
        after = [r for r in replies if r > t]
        if not before or not after:
            return None
        return after[0] - before[-1]

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self._thread.join(2)


def build(lab: NetLab, workdir: Path, workers: int = 3, responder_url: str | None = None,
          hold_down_seconds: float = 60) -> SwitcherLab:
    """Workers w1..wN on 198.18.0.10+i, one client c1 with routes 10.99.0.0/24 on w1."""
    gen = generate_fleet(workers, 1, worker_host=lambda i: f"198.18.0.{i + 10}",
                         routes=("10.99.0.0/24",),
                         responder_url=responder_url or "http://198.18.0.2:8080",
                         hold_down_seconds=hold_down_seconds)
    return build_from(lab, gen, workdir)


def build_from(lab: NetLab, gen: Generated, workdir: Path,
               service_addresses: tuple[str, ...] = ()) -> SwitcherLab:
    """The lab of `gen`'s fleet (workers on 198.18.0.10+i, its first client), each worker
    serving SERVICE and `service_addresses` (CIDRs, e.g. an IPv6 one) on its loopback."""
    workdir.mkdir(parents=True, exist_ok=True)
    sl = SwitcherLab(lab, gen, workdir)
    fleet = gen.fleet
    for i, w in enumerate(fleet.workers):
        host = lab.add_host(w.name, address=f"198.18.0.{i + 10}")
        # No dummy module here: the service address sits on each worker's loopback.
        for cidr in (f"{SERVICE}/32", *service_addresses):
            host.run(["ip", "addr", "add", cidr, "dev", "lo"])
        conf = strip(render_worker(fleet, w, gen.private_keys[w.name]))
        addrs = [w.tunnel_host_cidr]
        sl.workers[w.name] = WorkerNode(w.name, host, host.wireguard(f"w{i}", conf, addrs),
                                        conf, addrs)
    c = sl.client
    host = lab.add_host(c.name)
    conf = strip(render_client(fleet, c, gen.private_keys[c.name]))
    sl.client_host = host
    sl.client_config = conf
    sl.client_iface = host.wireguard("c0", conf, c.addresses)
    sl.fleet_file = workdir / "fleet.yaml"
    sl.fleet_file.write_text(dump_fleet(fleet))
    sl.token_file = workdir / "token"
    sl.token_file.touch(mode=0o600)
    sl.token_file.write_text(gen.tokens[c.name] + "\n")
    return sl


def kill_and_ping(sl: SwitcherLab, sw: SwitcherProc, target: str, ipv6: bool = False) -> float:
    """Ping `target` from the client every 10 ms, kill w1 (the active worker) and wait until
    the switcher failed over to w2 and replies come back through it; the traffic gap (s)."""
    proc = sl.client_host.popen(["ping", *(["-6"] if ipv6 else []), "-n", "-D", "-i", "0.01",
                                 "-W", "1", target], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, bufsize=1)
    ping = Pinger(proc)
    try:
        assert poll_until(lambda: len(ping.snapshot()) > 20, 10), f"no replies from {target}"
        killed_at = time.time()
        sl.kill_worker("w1")
        m = sw.wait_for(r"switch w1 -> (w\d) \(failover\) after \d+ ms", 10)
        assert m and m.group(1) == "w2", sw.text()
        assert poll_until(lambda: len(ping.replies_after(killed_at)) > 20, 10), \
            f"traffic to {target} did not come back through the backup"
        gap = ping.gap_around(killed_at)
    finally:
        ping.stop()
    assert gap is not None
    return gap


# Runs inside a namespace: stdlib only, so it starts fast.
_HTTP_SNIPPET = """
import json, sys, urllib.request, urllib.error
r = json.loads(sys.argv[1])
data = None if r["body"] is None else json.dumps(r["body"]).encode()
req = urllib.request.Request(r["url"], data=data, method=r["method"], headers=r["headers"])
try:
    with urllib.request.urlopen(req, timeout=10) as resp:
        status, text = resp.status, resp.read().decode()
except urllib.error.HTTPError as e:
    status, text = e.code, e.read().decode()
except OSError as e:
    status, text = 0, json.dumps(str(e))
try:
    body = json.loads(text)
except ValueError:
    body = text
print(json.dumps({"status": status, "body": body}))
"""


def ns_request(host: Host, method: str, url: str, headers: dict | None = None,
               body: dict | None = None) -> tuple[int, object]:
    """An HTTP request made from inside `host`'s namespace: (status, JSON or text body)."""
    req = json.dumps({"url": url, "method": method, "headers": headers or {}, "body": body})
    proc = host.run([python(), "-c", _HTTP_SNIPPET, req], check=False, timeout=20)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        return 0, proc.stderr
    return out["status"], out["body"]


def python() -> str:
    venv = ROOT / ".venv/bin/python"
    return str(venv) if venv.exists() else sys.executable


__all__ = ["SERVICE", "Pinger", "SwitcherLab", "SwitcherProc", "build", "ns_request", "python"]
