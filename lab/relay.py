"""A userspace UDP relay with settable delay, jitter and loss: `tc netem` for the lab.

WireGuard runs over UDP, so a relay in front of a worker's endpoint degrades that worker's whole
tunnel (handshakes, probes, user traffic) the way a bad underlay path would, without `tc`:

    client wg --UDP--> relay (the worker's endpoint port) --UDP--> worker wg (moved to a port
    of its own on 127.0.0.1)

`front_wireguard` sets this up inside a lab namespace: it moves the worker's wireguard-go to
another port (`wg set IFACE listen-port`) and starts the relay, as a child process, on the port
the fleet names, so nothing on the client changes (the switcher's reconcile keeps the fleet's
endpoint). The relay process is steered through its stdin (`RelayProc.set`, `RelayProc.stats`).

Each datagram, in each direction the settings name, is dropped with probability `loss`, else
sent after `delay` +- a uniform `jitter` (clamped at 0, so jitter can reorder, as netem's does).
A seed makes the drops and delays repeatable.

Run alone: python -m wg_failover.lab.relay --listen 0.0.0.0:51820 --upstream 127.0.0.1:51821
    then lines on stdin: `set delay_ms=50 jitter_ms=15 loss=0.2 direction=both`, `stats`, `quit`.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

DIRECTIONS = ("both", "to", "from")  # "to": client -> upstream only; "from": the way back only
MAX_SESSIONS = 64  # distinct senders relayed at once; the lab has a handful
MAX_QUEUED = 20_000  # datagrams waiting out their delay; more are dropped (and counted)
SESSION_IDLE = 120.0  # seconds without traffic before a sender's upstream socket is closed


@dataclass
class RelaySettings:
    delay: float = 0.0  # seconds, each way the direction names
    jitter: float = 0.0  # seconds; the delay is delay + uniform(-jitter, +jitter), at least 0
    loss: float = 0.0  # probability that one datagram is dropped
    direction: str = "both"

    def check(self) -> RelaySettings:
        if self.delay < 0 or self.jitter < 0:
            raise ValueError("delay and jitter must be >= 0")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss must be between 0 and 1")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        return self


@dataclass
class RelayStats:
    forwarded: dict[str, int] = field(default_factory=lambda: {"to": 0, "from": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {"to": 0, "from": 0})
    overflow: int = 0
    sessions: int = 0


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Relay:
    """One listening socket; one upstream socket per sender, so replies find their way back."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int],
                 settings: RelaySettings | None = None, seed: int | None = None) -> None:
        self.upstream = upstream
        self.settings = (settings or RelaySettings()).check()
        self.rng = random.Random(seed)
        self.stats = RelayStats()
        self.sock = socket.socket(_family(listen[0]), socket.SOCK_DGRAM)
        self.sock.bind(listen)
        self.sock.setblocking(False)
        self.listen = self.sock.getsockname()[:2]
        self.sessions: dict[tuple, tuple[socket.socket, float]] = {}  # sender -> (sock, last)
        self.by_upstream_sock: dict[socket.socket, tuple] = {}
        self.queue: list[tuple[float, int, socket.socket, bytes, tuple]] = []
        self.seq = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    def set(self, **changes: Any) -> RelaySettings:
        """Change some settings (delay/jitter in seconds); datagrams already queued keep theirs."""
        with self.lock:
            new = RelaySettings(**{**asdict(self.settings), **changes}).check()
            self.settings = new
            return new

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"settings": asdict(self.settings), **asdict(self.stats),
                    "queued": len(self.queue)}

    def start(self) -> Relay:
        self.thread = threading.Thread(target=self.serve, name="udp-relay", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(5)
        for s, _ in self.sessions.values():
            s.close()
        self.sessions.clear()
        self.sock.close()

    # ------------------------------------------------------------------ the loop
    def _session(self, sender: tuple, now: float) -> socket.socket | None:
        item = self.sessions.get(sender)
        if item is not None:
            self.sessions[sender] = (item[0], now)
            return item[0]
        if len(self.sessions) >= MAX_SESSIONS:
            self._expire(now, force=True)
            if len(self.sessions) >= MAX_SESSIONS:
                return None
        up = socket.socket(_family(self.upstream[0]), socket.SOCK_DGRAM)
        up.setblocking(False)
        up.connect(self.upstream)
        self.sessions[sender] = (up, now)
        self.by_upstream_sock[up] = sender
        self.stats.sessions = len(self.sessions)
        return up

    def _expire(self, now: float, force: bool = False) -> None:
        idle = [k for k, (_, last) in self.sessions.items() if now - last > SESSION_IDLE]
        if force and not idle and self.sessions:
            idle = [min(self.sessions, key=lambda k: self.sessions[k][1])]
        for k in idle:
            s, _ = self.sessions.pop(k)
            self.by_upstream_sock.pop(s, None)
            s.close()
        self.stats.sessions = len(self.sessions)

    def _admit(self, way: str, out: socket.socket, data: bytes, dest: tuple | None,
               now: float) -> None:
        """Drop, or queue for sending after the delay, one datagram going `way`."""
        with self.lock:
            st = self.settings
            applies = st.direction in ("both", way)
            if applies and st.loss > 0 and self.rng.random() < st.loss:
                self.stats.dropped[way] += 1
                return
            delay = 0.0
            if applies:
                delay = st.delay + (self.rng.uniform(-st.jitter, st.jitter) if st.jitter else 0)
            if len(self.queue) >= MAX_QUEUED:
                self.stats.overflow += 1
                return
            self.seq += 1
            heapq.heappush(self.queue, (now + max(0.0, delay), self.seq, out, data, dest or ()))
            self.stats.forwarded[way] += 1

    def _flush(self, now: float) -> None:
        while True:
            with self.lock:
                if not self.queue or self.queue[0][0] > now:
                    return
                _, _, out, data, dest = heapq.heappop(self.queue)
            try:
                if dest:
                    out.sendto(data, dest)
                else:
                    out.send(data)
            except OSError:
                pass  # a closed session or an unreachable peer: the datagram is lost, as on a wire

    def serve(self) -> None:
        last_expiry = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            with self.lock:
                wait = 0.05 if not self.queue else max(0.0, min(0.05, self.queue[0][0] - now))
            readers = [self.sock, *self.by_upstream_sock]
            try:
                ready, _, _ = select.select(readers, [], [], wait)
            except (OSError, ValueError):
                ready = []  # a session socket closed under us; the next round rebuilds the list
            now = time.monotonic()
            for s in ready:
                for _ in range(64):  # bounded, so a flood cannot starve the delayed queue
                    try:
                        data, sender = s.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # e.g. ECONNREFUSED from a connected upstream socket
                    if s is self.sock:
                        up = self._session(sender, now)
                        if up is not None:
                            self._admit("to", up, data, None, now)
                    else:
                        back = self.by_upstream_sock.get(s)
                        if back is not None:
                            self._admit("from", self.sock, data, back, now)
            self._flush(time.monotonic())
            if now - last_expiry > 10:
                self._expire(now)
                last_expiry = now


# --------------------------------------------------------------------------- as a child process


def parse_set(words: Sequence[str]) -> dict[str, Any]:
    """`delay_ms=50 jitter_ms=15 loss=0.2 direction=to` -> Relay.set keyword arguments."""
    out: dict[str, Any] = {}
    for word in words:
        key, _, value = word.partition("=")
        if key in ("delay_ms", "jitter_ms"):
            out[key[:-3]] = float(value) / 1000.0
        elif key == "loss":
            out["loss"] = float(value)
        elif key == "direction":
            out["direction"] = value
        else:
            raise ValueError(f"unknown setting {key!r}")
    return out


class RelayProc:
    """A relay running as a child process (in a lab namespace), steered through its stdin."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lock = threading.Lock()
        line = self._readline(10.0)
        if not line.startswith("listening"):
            raise RuntimeError(f"relay did not start: {line!r}")

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"relay: no answer within {timeout:g} s")
        return self.proc.stdout.readline().strip()

    def _ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        with self.lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            answer = self._readline(5.0)
        if answer.startswith("error"):
            raise ValueError(f"relay: {answer}")
        return answer

    def set(self, delay: float | None = None, jitter: float | None = None,
            loss: float | None = None, direction: str | None = None) -> None:
        """Change the relay's settings (seconds; loss 0..1) from now on."""
        words = []
        if delay is not None:
            words.append(f"delay_ms={delay * 1000:g}")
        if jitter is not None:
            words.append(f"jitter_ms={jitter * 1000:g}")
        if loss is not None:
            words.append(f"loss={loss:g}")
        if direction is not None:
            words.append(f"direction={direction}")
        self._ask("set " + " ".join(words))

    def stats(self) -> dict[str, Any]:
        return json.loads(self._ask("stats"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(3)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(3)


def front_wireguard(host: Any, ifname: str, port: int, inner_port: int | None = None,
                    seed: int | None = None, **settings: float | str) -> RelayProc:
    """Put a relay in front of the wireguard-go `ifname` in lab host `host` (a `netns.Host`):
    wireguard-go moves to `inner_port` (default port + 1) and the relay takes `port`.
    `settings`: delay, jitter (seconds), loss, direction, as `RelaySettings`."""
    from wg_failover import wg  # the lab's own import of the core

    from .kit import python

    inner = inner_port or port + 1
    wg.run_wg(["set", ifname, "listen-port", str(inner)])
    argv = [python(), "-m", "wg_failover.lab.relay", "--listen", f"0.0.0.0:{port}",
            "--upstream", f"127.0.0.1:{inner}"]
    if seed is not None:
        argv += ["--seed", str(seed)]
    proc = host.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
    relay = RelayProc(proc)
    if settings:
        relay.set(**settings)  # type: ignore[arg-type]
    return relay


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", required=True, metavar="HOST:PORT")
    ap.add_argument("--upstream", required=True, metavar="HOST:PORT")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    relay = Relay(_addr(args.listen), _addr(args.upstream), seed=args.seed).start()
    print(f"listening {relay.listen[0]}:{relay.listen[1]}", flush=True)
    try:
        for line in sys.stdin:  # EOF (the parent went away) stops the relay too
            words = line.split()
            if not words:
                continue
            try:
                if words[0] == "set":
                    new = relay.set(**parse_set(words[1:]))
                    print("ok " + json.dumps(asdict(new)), flush=True)
                elif words[0] == "stats":
                    print(json.dumps(relay.snapshot()), flush=True)
                elif words[0] == "quit":
                    print("ok", flush=True)
                    break
                else:
                    print(f"error unknown command {words[0]!r}", flush=True)
            except (ValueError, TypeError) as exc:
                print(f"error {exc}", flush=True)
    finally:
        relay.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
