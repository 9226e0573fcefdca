"""Baselines: wg-failover's fast path beside the alternatives, on the same lab, killed the same way.

Each approach gets a fresh lab built the same way (real wireguard-go in network namespaces, the
workers of bench/failover.py with the service 10.99.0.1 behind each tunnel, one client pinging the
service every 10 ms), and its active worker's wireguard-go is killed with SIGKILL --kills times
(restarted after each kill, so kills rotate). The traffic gap is the last reply before the kill to
the first reply after it; a gap that does not close within the approach's timeout is reported as
"never" (bounded by that timeout).

Approaches (--approach NAME, repeatable; default all):
  fast       wg-failover's fast path: the real `wg-failover switcher` with the responder cut off,
             run by bench/failover.py's own code (100 ms probes, K=3).
  article    the seed article's design as written: a master pings every worker every 30 s (here:
             through a WireGuard tunnel of its own, since a dead wireguard-go on a live host still
             answers ICMP on its underlay address), marks it offline after 3 misses, notifies the
             client (in-process, no webhook latency), which restarts its interface with the next
             online worker as its only peer. wg-quick does not drive wireguard-go in these
             namespaces, so its steps are emulated: `ip link del`, wireguard-go, `wg setconf`,
             `ip addr`, `ip link set up`, `ip route`.
  keepalived two workers with ONE shared private key and tunnel address, a virtual IP on the
             underlay moved by the real keepalived (VRRP, unicast, advert_int 1 s, a track script
             `wg show IFACE` every 1 s); the client has one peer whose endpoint is the virtual IP.
  twopeer    the common client config with two peers both routing the same prefix (the lab routes
             10.99.0.0/24 where guides write 0.0.0.0/0: a default route would hijack the
             namespace's underlay). Prints the config and what `wg show` keeps, then kills the
             peer holding the prefix.

--quick scales the article's intervals down (1 s pings instead of 30 s, same 3 misses); the table
labels those figures as scaled and prints what the unscaled design implies. Everything else runs
at its real settings in both modes.

Drain cost (planned maintenance): wg-failover's drain through the responder is measured by
`bench/failover.py --drains`; this script prints that figure, labeled, rather than start a
responder. The article's drain is a client restart (measured here once), keepalived's is stopping
the master's keepalived (measured once), the two-peer config has none.

Needs root and keepalived (scripts/bootstrap installs it).
Example:  sudo .venv/bin/python bench/baselines.py --quick --kills 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import failover as fo  # noqa: E402 - bench/failover.py: the fast path's own machinery

from wg_failover import wg  # noqa: E402
from wg_failover.lab import kit  # noqa: E402
from wg_failover.lab.netns import WG_RUN_DIR, Host, NetLab, preflight  # noqa: E402
from wg_failover.lab.procs import poll_until, stop_process  # noqa: E402

APPROACHES = ("fast", "article", "keepalived", "twopeer")
VIP = "198.18.0.100"
# Where bench/failover.py --drains measured the fast path's drain (docs/switcher.md).
FAST_DRAIN = "0-2 echoes lost per drain (5 drains: 3 of ~630), bench/failover.py --drains 5; " \
             "not measured in this run"
ARTICLE_INTERVAL = 30.0
ARTICLE_MISSES = 3
KEEPALIVE = 25  # the design's wg-quick PersistentKeepalive


# ---------------------------------------------------------------------- pure parts
@dataclass
class Result:
    """One approach's kills: gaps in seconds, None where traffic never came back in time."""

    approach: str
    label: str
    gaps: list[float | None] = field(default_factory=list)
    timeout: float = 0.0
    drain: str = ""
    notes: list[str] = field(default_factory=list)


def gap_around(replies: Sequence[float], t: float) -> float | None:
    """Last reply at or before `t` to the first after it; None when none came after."""
    before = [r for r in replies if r <= t]
    after = [r for r in replies if r > t]
    if not before or not after:
        return None
    return after[0] - before[-1]


def gap_after_kill(replies: Sequence[float], t: float, grace: float = 0.2) -> float | None:
    """The longest silence between the last reply before the kill at `t` and the first reply
    later than `t + grace`; None when none came that late.

    Echoes already in flight when wireguard-go dies still come back for a few milliseconds:
    the first reply after `t` is not the recovery, so the silence that follows it counts too.
    """
    before = [r for r in replies if r <= t]
    late = [r for r in replies if r > t + grace]
    if not before or not late:
        return None
    window = [r for r in replies if before[-1] <= r <= late[0]]
    return max(b - a for a, b in zip(window, window[1:], strict=False))


def summarize(r: Result) -> dict:
    """p50/p95/max in ms over the recovered kills, and how many never recovered."""
    ms = [g * 1000 for g in r.gaps if g is not None]
    never = sum(1 for g in r.gaps if g is None)
    out: dict = {"kills": len(r.gaps), "never": never, "timeout_s": r.timeout}
    if never:
        # A kill that never recovered is worse than any that did: the percentiles count it as
        # "above the timeout", so p95/max say "never" as soon as one did.
        ranked = sorted(ms) + [float("inf")] * never
        out.update(p50=fo.pct(ranked, 50), p95=fo.pct(ranked, 95), max=float("inf"))
    elif ms:
        out.update(p50=fo.pct(ms, 50), p95=fo.pct(ms, 95), max=max(ms))
    else:
        out.update(p50=None, p95=None, max=None)
    return out


def _fmt_ms(v: float | None, timeout: float) -> str:
    if v is None:
        return "-"
    if v == float("inf"):
        return f"never (>{timeout:g} s)"
    return f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s"


def ratio(value: float | None, fast: float | None) -> str:
    if value is None or not fast:
        return "-"
    if value == float("inf"):
        return "inf"
    return f"{value / fast:.1f}x"


def render_table(results: Sequence[Result]) -> str:
    """The comparison table: approach, kills, gap p50/p95/max, ratio of p50 to the fast path."""
    sums = {r.approach: summarize(r) for r in results}
    fast = sums.get("fast", {}).get("p50")
    head = ("approach", "kills", "gap p50", "gap p95", "gap max", "p50 vs fast", "drain cost")
    rows = [head]
    for r in results:
        s = sums[r.approach]
        rows.append((r.label, str(s["kills"]), _fmt_ms(s["p50"], r.timeout),
                     _fmt_ms(s["p95"], r.timeout), _fmt_ms(s["max"], r.timeout),
                     ratio(s["p50"], fast), r.drain))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
                     + "  " + row[-1])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(head[-1]))
    notes = [f"{r.label}: {n}" for r in results for n in r.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def to_json(results: Sequence[Result]) -> str:
    sums = {r.approach: summarize(r) for r in results}
    fast = sums.get("fast", {}).get("p50")

    def clean(v: object) -> object:
        return "never" if v == float("inf") else v

    out = []
    for r in results:
        s = {k: clean(v) for k, v in sums[r.approach].items()}
        out.append(dict(asdict(r), summary=s, p50_vs_fast=ratio(sums[r.approach]["p50"], fast)))
    return json.dumps(out, indent=2)


def article_implied(interval: float = ARTICLE_INTERVAL, misses: int = ARTICLE_MISSES) -> str:
    """What the unscaled article implies for a kill: detection alone, before the restart."""
    lo = (misses - 1) * interval
    return (f"unscaled design: {interval:g} s x {misses} misses = {lo:g}-{misses * interval:g} s "
            f"to mark offline (the kill lands anywhere in a {interval:g} s period), plus the "
            "notification and the client's interface restart")


def keepalived_conf(name: str, ifname: str, src: str, peer: str, vip: str, priority: int,
                    vrid: int = 51, advert_int: float = 1.0, prefixlen: int = 24) -> str:
    """A keepalived.conf for one worker: VRRP over unicast on the lab underlay, the VIP on eth0,
    and a track script that fails when this worker's wireguard-go is gone.

    Without the track script VRRP only watches keepalived itself: a dead wireguard-go on a live
    host would keep the VIP forever. Both are BACKUP with nopreempt, so a restarted worker does
    not take the VIP back (a failback would be a second gap per kill).
    keepalived's defaults, for reference: advert_int 1 s, script interval 1 s, fall 1, rise 1,
    vrrp_garp_master_delay 5 s, preempt on.
    """
    return f"""global_defs {{
    router_id {name}
    script_user root
    enable_script_security
}}

vrrp_script chk_wg {{
    script "{shutil.which('wg') or '/usr/bin/wg'} show {ifname}"
    interval 1
    timeout 1
    fall 1
    rise 1
}}

vrrp_instance {name} {{
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id {vrid}
    priority {priority}
    advert_int {advert_int:g}
    unicast_src_ip {src}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        {vip}/{prefixlen} dev eth0
    }}
    track_script {{
        chk_wg
    }}
}}
"""


def peer_conf(private_key: str, peers: Sequence[tuple[str, str, Sequence[str]]],
              keepalive: int = KEEPALIVE) -> str:
    """A `wg setconf` config: the interface key and (public key, endpoint, AllowedIPs) peers."""
    lines = ["[Interface]", f"PrivateKey = {private_key}"]
    for pub, endpoint, allowed in peers:
        lines += ["", "[Peer]", f"PublicKey = {pub}", f"Endpoint = {endpoint}",
                  f"AllowedIPs = {', '.join(allowed)}", f"PersistentKeepalive = {keepalive}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- lab helpers
def _say(msg: str) -> None:
    print(msg, flush=True)


def wait_gap(ping: kit.Pinger, killed_at: float, timeout: float) -> float | None:
    """Wait (at most `timeout`) for a reply after the kill; the gap, or None: never."""
    grace = 0.2
    poll_until(lambda: ping.replies_after(killed_at + grace), timeout, step=0.02)
    return gap_after_kill(ping.snapshot(), killed_at, grace)


def start_traffic(sl: kit.SwitcherLab) -> kit.Pinger:
    ping = sl.start_ping(0.01)
    if not poll_until(lambda: len(ping.snapshot()) > 50, 15):
        raise RuntimeError("no traffic to the service before the first kill")
    return ping


def replace_client_iface(sl: kit.SwitcherLab, config: str) -> None:
    """wg-quick down; wg-quick up, step by step: delete the interface (wireguard-go exits with
    it), start wireguard-go, `wg setconf`, address, link up, a route per AllowedIPs prefix."""
    assert sl.client_iface is not None and sl.client_host is not None
    name = sl.client_iface.name
    sl.client_host.run(["ip", "link", "del", name], check=False)
    try:
        sl.client_iface.process.wait(5)
    except subprocess.TimeoutExpired:
        sl.client_iface.kill()
    (WG_RUN_DIR / f"{name}.sock").unlink(missing_ok=True)
    sl.client_iface = sl.client_host.wireguard(name, config, [sl.client.address])


def new_lab(prefix: str, workdir: Path, workers: int) -> tuple[NetLab, kit.SwitcherLab]:
    lab = NetLab(prefix)
    lab.up()
    try:
        return lab, kit.build(lab, workdir, workers=workers)
    except BaseException:
        lab.close()
        raise


# ---------------------------------------------------------------------- approaches
def run_fast(prefix: str, workdir: Path, kills: int, settle: float) -> Result:
    res = Result("fast", "wg-failover fast path", timeout=10.0, drain=FAST_DRAIN)
    lab, sl = new_lab(prefix, workdir, 3)
    try:
        sw = sl.start_switcher(workdir / "state", fo.CUT_OFF)
        for w in sl.prefs():
            if not sw.wait_for(rf"probe: {w} is up", 20):
                raise RuntimeError(f"switcher never saw {w} up:\n{sw.text()}")
        ping = start_traffic(sl)
        try:
            res.gaps = list(fo.run_kills(sl, sw, ping, kills, settle))
        finally:
            ping.stop()
            sw.stop()
        res.notes.append("3 workers, switcher defaults (100 ms probes, K=3), responder cut off")
    finally:
        lab.close()
    return res


class ArticleMaster:
    """The article's master: every `interval` seconds, one ping to each worker; `misses`
    consecutive misses mark it offline and notify the client, one answer marks it online."""

    def __init__(self, host: Host, targets: dict[str, str], interval: float, misses: int,
                 notify: Callable[[str], None]) -> None:
        self.host, self.targets, self.interval, self.misses = host, targets, interval, misses
        self.notify = notify
        self.missed = dict.fromkeys(targets, 0)
        self.online = dict.fromkeys(targets, True)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(self.interval + 5)

    def _check(self) -> None:
        wait = min(1.0, self.interval / 2)
        procs = {n: subprocess.Popen(self.host.exec_argv(
            ["ping", "-n", "-q", "-c", "1", "-W", f"{wait:g}", a]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n, a in self.targets.items()}
        for n, p in procs.items():
            try:
                ok = p.wait(wait + 5) == 0
            except subprocess.TimeoutExpired:
                p.kill()
                ok = False
            self.missed[n] = 0 if ok else self.missed[n] + 1
            if ok:
                self.online[n] = True
            elif self.online[n] and self.missed[n] >= self.misses:
                self.online[n] = False
                self.notify(n)

    def _loop(self) -> None:
        # As cron would: ticks on a fixed schedule, whatever a check took.
        nxt = time.monotonic()
        while not self.stopping.is_set():
            self._check()
            nxt += self.interval
            self.stopping.wait(max(0.0, nxt - time.monotonic()))


def run_article(prefix: str, workdir: Path, kills: int, settle: float, quick: bool) -> Result:
    interval = 1.0 if quick else ARTICLE_INTERVAL
    timeout = interval * (ARTICLE_MISSES + 1) + 20
    label = "article (scaled: 1 s pings x 3)" if quick else "article (30 s pings x 3)"
    res = Result("article", label, timeout=timeout)
    res.notes.append(article_implied())
    if quick:
        res.notes.append("--quick: the master pings every 1 s instead of 30 s; these figures are "
                         "SCALED, the real design is ~30x slower to detect")
    lab, sl = new_lab(prefix, workdir, 3)
    master_key = wg.genkey()
    master_addr = "10.66.2.1"
    try:
        fleet = sl.fleet
        workers = {w.name: w for w in fleet.workers}
        order = [w.name for w in fleet.preferences(sl.client)]
        ckey = sl.gen.private_keys[sl.client.name]
        routes = list(sl.client.routes)

        def only_peer(name: str) -> str:
            w = workers[name]
            return peer_conf(ckey, [(w.public_key, w.endpoint, routes + [w.tunnel_host_cidr])])

        # The master reaches each worker's tunnel address through a WireGuard peer of its own:
        # that is what stops answering when wireguard-go dies (the host's underlay would not).
        master = lab.add_host("master", address="198.18.0.2")
        master_pub = wg.pubkey(master_key)

        def add_master_peer(name: str) -> None:
            node = sl.workers[name]
            wg.run_wg(["set", node.iface.name, "peer", master_pub, "allowed-ips",
                       f"{master_addr}/32"])
            node.host.run(["ip", "route", "replace", f"{master_addr}/32", "dev",
                           node.iface.name])

        # Workers learn the master's key first: its first handshakes would be dropped otherwise.
        for name in order:
            add_master_peer(name)
        master.wireguard("m0", peer_conf(master_key, [
            (w.public_key, w.endpoint, [w.tunnel_host_cidr]) for w in fleet.workers]),
            [f"{master_addr}/32"])
        active = {"name": order[0]}
        switched = threading.Event()
        lock = threading.Lock()

        def notify(dead: str) -> None:
            with lock:
                if dead != active["name"]:
                    return
                nxt = next((n for n in order if n != dead and master_obj.online[n]), None)
                if nxt is None:
                    return
                replace_client_iface(sl, only_peer(nxt))
                active["name"] = nxt
                switched.set()

        replace_client_iface(sl, only_peer(order[0]))  # one peer, as the article's client has
        master_obj = ArticleMaster(master, {n: workers[n].tunnel_address for n in order},
                                   interval, ARTICLE_MISSES, notify)
        ping = start_traffic(sl)
        master_obj.start()
        if not poll_until(lambda: not any(master_obj.missed.values())
                          and all(master_obj.online.values()), interval * 3 + 10, 0.1):
            raise RuntimeError(f"the master does not reach every worker: {master_obj.missed}")
        try:
            for i in range(kills):
                victim = active["name"]
                switched.clear()
                killed_at = time.time()
                sl.kill_worker(victim)
                gap = wait_gap(ping, killed_at, timeout)
                res.gaps.append(gap)
                _say(f"article kill {i + 1}: {victim} -> {active['name']} "
                     f"(master sees online: {master_obj.online})  traffic gap "
                     + (f"{gap * 1000:.0f} ms" if gap is not None else f"never (>{timeout:g} s)"))
                sl.restart_worker(victim)
                add_master_peer(victim)
                # The next kill needs the master to see the restarted worker online again.
                poll_until(lambda v=victim: master_obj.online[v], interval * 2 + 10, 0.1)
                time.sleep(settle)
            # A planned move in this design is the same restart, without the detection.
            with lock:
                nxt = next(n for n in order if n != active["name"])
                t = time.time()
                replace_client_iface(sl, only_peer(nxt))
                active["name"] = nxt
            gap = wait_gap(ping, t, 20)
            res.drain = ("restart = gap " + (f"{gap * 1000:.0f} ms" if gap is not None
                                             else "never (>20 s)") + " (measured once)")
        finally:
            master_obj.stop()
            ping.stop()
    finally:
        lab.close()
    return res


def vip_holder(sl: kit.SwitcherLab, names: Sequence[str]) -> str | None:
    for n in names:
        out = sl.workers[n].host.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                                     check=False).stdout
        if f" {VIP}/" in out:
            return n
    return None


def run_keepalived(prefix: str, workdir: Path, kills: int, settle: float,
                   timeout: float) -> Result:
    res = Result("keepalived", "keepalived VRRP + shared key", timeout=timeout)
    if shutil.which("keepalived") is None:
        res.notes.append("skipped: keepalived not installed (scripts/bootstrap installs it)")
        return res
    lab, sl = new_lab(prefix, workdir, 2)
    kprocs: dict[str, subprocess.Popen] = {}
    try:
        fleet = sl.fleet
        w1, w2 = fleet.workers[0], fleet.workers[1]
        names = [w1.name, w2.name]
        port = w1.endpoint.rsplit(":", 1)[1]
        # Worker 2 becomes worker 1's twin: same key, same tunnel address, same peers.
        n1, n2 = sl.workers[w1.name], sl.workers[w2.name]
        n2.config, n2.addresses = n1.config, n1.addresses
        sl.restart_worker(w2.name)
        ckey = sl.gen.private_keys[sl.client.name]
        allowed = list(sl.client.routes) + [w1.tunnel_host_cidr]
        replace_client_iface(sl, peer_conf(ckey, [(w1.public_key, f"{VIP}:{port}", allowed)]))
        kdir = workdir / "keepalived"
        kdir.mkdir()

        def start_ka(name: str, peer: str, prio: int) -> None:
            node = sl.workers[name]
            conf = kdir / f"{name}.conf"
            conf.write_text(keepalived_conf(f"{prefix}_{name}", node.iface.name,
                                            node.host.address, peer, VIP, prio))
            log = open(kdir / f"{name}.log", "a")  # noqa: SIM115 - the child owns it
            # Own pid files, VRRP only, no fork: this keepalived belongs to this namespace and
            # this run, and dies with the lab (its namespace is emptied at close).
            kprocs[name] = node.host.popen(
                ["keepalived", "-n", "-l", "-P", "-f", str(conf),
                 "-p", str(kdir / f"{name}.pid"), "-r", str(kdir / f"{name}.vrrp.pid")],
                stdout=log, stderr=subprocess.STDOUT)
            log.close()

        start_ka(w1.name, n2.host.address, 150)
        start_ka(w2.name, n1.host.address, 100)
        if not poll_until(lambda: vip_holder(sl, names) is not None, 15, 0.1):
            raise RuntimeError("keepalived: no worker took the VIP in 15 s:\n"
                               + (kdir / f"{w1.name}.log").read_text())
        ping = start_traffic(sl)
        vip_moves: list[float] = []
        try:
            for i in range(kills):
                victim = vip_holder(sl, names)
                assert victim is not None
                killed_at = time.time()
                sl.kill_worker(victim)
                # When the VIP moved, to tell VRRP's share of the gap from WireGuard's.
                moved = poll_until(lambda v=victim: vip_holder(sl, names) not in (None, v),
                                   timeout, 0.05)
                vip_s = time.time() - killed_at if moved else None
                if vip_s is not None:
                    vip_moves.append(vip_s)
                gap = wait_gap(ping, killed_at, timeout)
                res.gaps.append(gap)
                _say(f"keepalived kill {i + 1}: {victim} dies, VIP on {vip_holder(sl, names)} "
                     + (f"after {vip_s * 1000:.0f} ms" if vip_s is not None else "never")
                     + "  traffic gap "
                     + (f"{gap * 1000:.0f} ms" if gap is not None else f"never (>{timeout:g} s)"))
                sl.restart_worker(victim)
                time.sleep(settle + 2)  # the track script's rise, so it is a backup again
                if gap is None:
                    # Let traffic come back (or not) before the next kill, so each kill starts
                    # from a working tunnel.
                    t = time.time()
                    poll_until(lambda t=t: ping.replies_after(t), timeout, 0.05)
            if vip_moves:
                res.notes.append(
                    f"the VIP moved {min(vip_moves) * 1000:.0f}-{max(vip_moves) * 1000:.0f} ms "
                    "after the kill; the rest of the gap is the client's WireGuard session: the "
                    "twin has the key but not the session, and the client only starts a new "
                    "handshake after 15 s (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT) without replies")
            holder = vip_holder(sl, names)
            ep = [p.endpoint for p in sl.client_iface.dump().peers] if sl.client_iface else []
            res.notes.append(f"client's peer endpoint at the end: {', '.join(map(str, ep))} "
                             f"(VIP {VIP}); VRRP advert_int 1 s, track script every 1 s")
            # Planned maintenance: stop the master's keepalived (it sends a priority-0 advert).
            if holder is not None:
                t = time.time()
                poll_until(lambda t=t: ping.replies_after(t), timeout, 0.05)
                t = time.time()
                stop_process(kprocs[holder], 5)
                gap = wait_gap(ping, t, timeout)
                res.drain = ("stop master's keepalived = gap "
                             + (f"{gap * 1000:.0f} ms" if gap is not None
                                else f"never (>{timeout:g} s)") + " (measured once)")
        finally:
            ping.stop()
    finally:
        for p in kprocs.values():
            stop_process(p, 5)
        lab.close()
    return res


def run_twopeer(prefix: str, workdir: Path, kills: int, timeout: float) -> Result:
    res = Result("twopeer", "two peers, same prefix", timeout=timeout,
                 drain="none (no way to move the prefix short of editing the config)")
    lab, sl = new_lab(prefix, workdir, 2)
    try:
        w1, w2 = sl.fleet.workers[0], sl.fleet.workers[1]
        ckey = sl.gen.private_keys[sl.client.name]
        routes = list(sl.client.routes)
        conf = peer_conf(ckey, [(w.public_key, w.endpoint, routes + [w.tunnel_host_cidr])
                                for w in (w1, w2)])
        _say("two-peer client config (what guides write, with 0.0.0.0/0 as 10.99.0.0/24 here):")
        _say("\n".join("    " + ln for ln in conf.splitlines()
                       if not ln.startswith("PrivateKey")))
        replace_client_iface(sl, conf)
        peers = sl.client_peers()
        _say("wg show allowed-ips after `wg setconf`:")
        for name, allowed in peers.items():
            _say(f"    {name}: {', '.join(allowed) or '(none)'}")
        holder = next((n for n, a in peers.items() if routes[0] in a), None)
        res.notes.append("wg show: " + "; ".join(f"{n} {', '.join(a)}" for n, a in peers.items())
                         + f" - the prefix sits on {holder} only")
        ping = start_traffic(sl)
        try:
            for i in range(kills):
                assert holder is not None
                killed_at = time.time()
                sl.kill_worker(holder)
                gap = wait_gap(ping, killed_at, timeout)
                res.gaps.append(gap)
                _say(f"twopeer kill {i + 1}: {holder} dies  traffic gap "
                     + (f"{gap * 1000:.0f} ms" if gap is not None else f"never (>{timeout:g} s)"))
                sl.restart_worker(holder)
                t = time.time()
                poll_until(lambda t=t: ping.replies_after(t), 20, 0.05)
        finally:
            ping.stop()
    finally:
        lab.close()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=5, help="kills per approach (default 5)")
    ap.add_argument("--approach", action="append", choices=APPROACHES,
                    help="run only this approach (repeatable; default all). The ratio column "
                         "needs 'fast' in the same run")
    ap.add_argument("--quick", action="store_true",
                    help="scale the article's 30 s pings down to 1 s (labeled in the output)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds after a kill before a gap counts as 'never' (keepalived, "
                         "two-peer; default 30; the article's is its own detection + 20 s)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds between a restarted worker and the next kill")
    ap.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    args = ap.parse_args()
    if not 1 <= args.kills <= 100:
        ap.error("--kills: 1-100")
    problems = preflight()
    if problems:
        print("cannot run the lab: " + "; ".join(problems), file=sys.stderr)
        return 2
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks remove this run's namespaces.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(143))
    chosen = args.approach or list(APPROACHES)
    base = f"bb{os.getpid() % 1000:03d}"
    workdir = Path(tempfile.mkdtemp(prefix="wgfo-baselines-"))
    results: list[Result] = []
    try:
        for n, name in enumerate(a for a in APPROACHES if a in chosen):
            prefix, wdir = f"{base}{n}", workdir / name
            _say(f"\n== {name} (lab {prefix}) ==")
            try:
                if name == "fast":
                    results.append(run_fast(prefix, wdir, args.kills, args.settle))
                elif name == "article":
                    results.append(run_article(prefix, wdir, args.kills, args.settle,
                                               args.quick))
                elif name == "keepalived":
                    results.append(run_keepalived(prefix, wdir, args.kills, args.settle,
                                                  args.timeout))
                else:
                    results.append(run_twopeer(prefix, wdir, args.kills, args.timeout))
            except Exception as e:  # noqa: BLE001 - one broken approach still leaves a table
                _say(f"{name}: failed: {e}")
                results.append(Result(name, name, notes=[f"failed: {e}"]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _say(f"\n{args.kills} kills (SIGKILL of the active worker's wireguard-go) per approach, "
         "ping every 10 ms" + (" -- --quick: article figures SCALED (1 s pings)"
                               if args.quick else ""))
    _say(render_table(results))
    if args.json:
        _say(to_json(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
