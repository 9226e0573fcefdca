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
  control    wg-failover's control path alone: the full lab (`wg-failover lab up`: exporters,
             Prometheus at --control-scrape, default the shipped 5 s, Alertmanager, the responder
             on TLS) with the switcher restarted with --no-fast-path, so the client moves only
             on the responder's assignment (alert -> Alertmanager -> responder -> switcher).
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

Drain cost (planned maintenance), the last column: wg-failover's is `wg-failover ctl drain W`
then W stops, measured --drains times in the control path's lab (with the lab's own switcher,
fast path on; a drain goes through the responder, so the fast path row shares it); keepalived's
is stopping the master's keepalived (measured once); the article's design and the two-peer
config have none ("n/a": a stop is a kill, or nothing moves the prefix).

Each row carries the 1-minute load average seen while it ran, and the run ends with the load
average: other jobs share the cores, so the figures are noisy.

Needs root, keepalived (scripts/bootstrap installs it) and, for `control`, what
`wg-failover lab` needs (prometheus, prometheus-alertmanager, the blackbox exporter).
Example:  sudo .venv/bin/python bench/baselines.py --quick --kills 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import failover as fo  # noqa: E402 - bench/failover.py: the fast path's own machinery

from wg_failover import wg  # noqa: E402
from wg_failover.fleet import load_fleet  # noqa: E402
from wg_failover.lab import build, kit, ops  # noqa: E402
from wg_failover.lab.netns import WG_RUN_DIR, Host, NetLab, preflight  # noqa: E402
from wg_failover.lab.procs import poll_until, stop_process, wgfo_argv  # noqa: E402
from wg_failover.lab.state import (  # noqa: E402
    LAB_ROOT_ENV,
    SERVICE_ADDRESS,
    LabError,
    LabState,
    kill_procs,
    spawn,
)

APPROACHES = ("fast", "control", "article", "keepalived", "twopeer")
# The control path's lab links into the root namespace, so its /24 must be free there:
# 198.19.X.0/24, clear of the other labs' 198.18 and of test_grafana_live's 198.19.40-239.
CONTROL_SUBNETS = tuple(range(241, 255))
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
    """One approach's kills: gaps in seconds, None where traffic never came back in time.

    Its planned maintenance: `drain` says how it is done (or, without `drain_gaps`, a figure
    measured elsewhere), `drain_gaps` the silences it cost here, `drain_lost` the echoes lost in
    each, `drain_idle` the longest silence in as long a window just before it (no drain: what
    the machine's load alone does to a 10 ms ping); `drain_none` says why the approach has no
    drain at all (printed as "n/a").
    `load` holds the 1-minute load averages sampled while it ran (other jobs share the cores).
    """

    approach: str
    label: str
    gaps: list[float | None] = field(default_factory=list)
    timeout: float = 0.0
    drain: str = ""
    drain_gaps: list[float | None] = field(default_factory=list)
    drain_lost: list[int] = field(default_factory=list)
    drain_idle: list[float] = field(default_factory=list)  # the same silence, no drain (baseline)
    drain_none: str = ""
    load: list[float] = field(default_factory=list)
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


def longest_silence(replies: Sequence[float], t0: float, t1: float) -> float | None:
    """The longest time without a reply from the last reply at or before `t0` to the first at or
    after `t1` (a drain's window); None when either end has no reply."""
    before = [r for r in replies if r <= t0]
    after = [r for r in replies if r >= t1]
    if not before or not after:
        return None
    window = [r for r in replies if before[-1] <= r <= after[0]]
    return max((b - a for a, b in zip(window, window[1:], strict=False)), default=0.0)


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


def drain_cell(r: Result) -> str:
    """What a planned maintenance costs: "n/a (why)", a measured gap, or a cited figure."""
    if r.drain_none:
        return f"n/a ({r.drain_none})"
    if not r.drain_gaps:
        return r.drain or "-"
    n = len(r.drain_gaps)
    ms = [g * 1000 for g in r.drain_gaps if g is not None]
    if len(ms) < n:
        gap = f"never (>{r.timeout:g} s) in {n - len(ms)} of {n}"
    elif n == 1:
        gap = f"gap {_fmt_ms(ms[0], r.timeout)}"
    else:
        gap = (f"gap p50 {_fmt_ms(fo.pct(ms, 50), r.timeout)}, max "
               f"{_fmt_ms(max(ms), r.timeout)} over {n}")
    idle = (f" (same window before it, no drain: max {_fmt_ms(max(r.drain_idle) * 1000, 0)})"
            if r.drain_idle else "")
    lost = f", {sum(r.drain_lost)} echoes lost" if r.drain_lost else ""
    return f"{r.drain}: {gap}{idle}{lost}" if r.drain else gap + idle + lost


def fmt_load(values: Sequence[float]) -> str:
    """A range to one decimal, "1.2" or "0.8-2.1": the 1-minute load averages seen while an
    approach ran (and other ranges of small numbers)."""
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:.1f}" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}-{hi:.1f}"


def fmt_loadavg(avg: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in avg)


def render_table(results: Sequence[Result]) -> str:
    """The comparison table: approach, kills, gap p50/p95/max, ratio of p50 to the fast path,
    the load average while it ran, what a drain costs."""
    sums = {r.approach: summarize(r) for r in results}
    fast = sums.get("fast", {}).get("p50")
    head = ("approach", "kills", "gap p50", "gap p95", "gap max", "p50 vs fast", "load 1m",
            "drain (planned maintenance)")
    rows = [head]
    for r in results:
        s = sums[r.approach]
        rows.append((r.label, str(s["kills"]), _fmt_ms(s["p50"], r.timeout),
                     _fmt_ms(s["p95"], r.timeout), _fmt_ms(s["max"], r.timeout),
                     ratio(s["p50"], fast), fmt_load(r.load), drain_cell(r)))
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
        out.append(dict(asdict(r), summary=s, p50_vs_fast=ratio(sums[r.approach]["p50"], fast),
                        drain_cost=drain_cell(r)))
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
def code_state() -> str:
    """The commit measured, and whether the product's folders had uncommitted changes (the
    working tree is shared: a figure of uncommitted code is not reproducible from a commit)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "client", "responder", "exporter", "wg_failover", "lab"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return "commit unknown (no git)"
    files = sorted({ln[3:] for ln in dirty if ln.strip()})
    return f"commit {head or '?'}" + (f", with uncommitted changes in {', '.join(files)}"
                                      if files else ", no uncommitted product changes")


def sample_load(res: Result) -> None:
    res.load.append(os.getloadavg()[0])


def run_fast(prefix: str, workdir: Path, kills: int, settle: float) -> Result:
    res = Result("fast", "wg-failover fast path", timeout=10.0, drain=FAST_DRAIN)
    lab, sl = new_lab(prefix, workdir, 3)
    try:
        sw = sl.start_switcher(workdir / "state", fo.CUT_OFF)
        for w in sl.prefs():
            if not sw.wait_for(rf"probe: {w} is up", 20):
                raise RuntimeError(f"switcher never saw {w} up:\n{sw.text()}")
        ping = start_traffic(sl)
        # run_kills measures to the first reply after the kill, which can be an echo that was
        # already on its way back (a 16 ms "gap" when the switcher saw 190 ms of silence): note
        # each kill's time, and measure the gap as every other approach here does.
        killed_at: list[float] = []
        kill = sl.kill_worker

        def noted_kill(name: str) -> None:
            killed_at.append(time.time())
            kill(name)

        sl.kill_worker = noted_kill  # type: ignore[method-assign]
        try:
            fo.run_kills(sl, sw, ping, kills, settle)
            res.gaps = [gap_after_kill(ping.snapshot(), t) for t in killed_at]
            _say("the same kills, gap measured as for every approach here (past echoes in "
                 "flight): " + ", ".join("-" if g is None else f"{g * 1000:.0f} ms"
                                         for g in res.gaps))
        finally:
            ping.stop()
            sw.stop()
        # The switcher's defaults change as it grows: quote its own start line, not a copy.
        m = re.search(r"INFO switcher \S+ on \S+: (.*)", sw.text())
        res.notes.append("3 workers, responder cut off, switcher defaults"
                         + (f": {m.group(1).strip()}" if m else ""))
    finally:
        lab.close()
    return res


def up_control_lab(prefix: str, workdir: Path, scrape: float) -> LabState:
    """The full lab (`wg-failover lab up`: exporters, responder on TLS, Prometheus, Alertmanager,
    blackbox, the switcher) with 3 workers and 1 client, its state under this run's workdir."""
    os.environ[LAB_ROOT_ENV] = str(workdir / "labs")  # not /run's: this run's lab only
    start = os.getpid() % len(CONTROL_SUBNETS)
    err: LabError | None = None
    for k in range(3):
        subnet = f"198.19.{CONTROL_SUBNETS[(start + k) % len(CONTROL_SUBNETS)]}.0/24"
        try:
            return build.up(prefix, 3, 1, subnet, scrape, say=lambda m: _say("  " + m))
        except LabError as e:
            if "in use" not in str(e):
                raise
            err = e  # another lab holds that /24: try the next one
    raise RuntimeError(f"no free subnet for the control path's lab: {err}")


def lab_ping(netns: str) -> kit.Pinger:
    """`ping -D` every 10 ms from a lab client's namespace to the service, as start_traffic."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, "ping", "-n", "-D", "-i", "0.01", "-W", "1",
         SERVICE_ADDRESS], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        bufsize=1)
    ping = kit.Pinger(proc)
    if not poll_until(lambda: len(ping.snapshot()) > 50, 15):
        ping.stop()
        raise RuntimeError("no traffic to the service in the control path's lab")
    return ping


def swap_switcher(state: LabState, client: str, *extra: str) -> Path:
    """Restart the lab's switcher of `client` with the same argv plus `extra`; its log."""
    old = state.procs(host=client, role="switcher")
    if not old or not old[0].alive():
        raise RuntimeError(f"the lab's switcher of {client} is not running")
    argv = [os.fsdecode(a) for a in
            Path(f"/proc/{old[0].pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")]
    kill_procs(old)
    state.processes = [p for p in state.processes if p not in old]
    log = state.dir / "logs" / f"switcher-{client}-{'-'.join(e.strip('-') for e in extra)}.log"
    # Recorded in the lab's state, so `build.down` stops it with the rest.
    state.processes.append(spawn(state.clients[client]["netns"], [*argv, *extra], log,
                                 "switcher", client))
    state.save()
    return log


def run_control(prefix: str, workdir: Path, kills: int, drains: int, settle: float,
                scrape: float, timeout: float) -> Result:
    """The control path alone: the same kill, the switcher off its fast path (--no-fast-path),
    so the client moves only when Prometheus's alert reaches the responder through
    Alertmanager and the responder's new assignment reaches the switcher. Before that, with the
    lab's own switcher (fast path on, as deployed), `drains` planned drains: `wg-failover ctl
    drain`, the client moves, then the drained worker stops."""
    res = Result("control", f"wg-failover control path ({scrape:g} s scrapes)", timeout=timeout,
                 drain="ctl drain, then stop the worker")
    sample_load(res)
    state = up_control_lab(prefix, workdir, scrape)
    api: ops.Api | None = None
    ping: kit.Pinger | None = None
    try:
        api = ops.Api(state)
        fleet = load_fleet(state.fleet_path)
        client = next(iter(state.clients))
        cns = state.clients[client]["netns"]
        ctl = wgfo_argv("ctl", "--responder", state.responder_url, "--ca-file",
                        str(state.ca_path), "--token-file", str(state.secret_path("admin.token")))

        def holder() -> str | None:
            return ops.active_workers(state, fleet).get(client)

        def answers(w: str) -> bool:
            addr = fleet.worker(w).tunnel_address
            return subprocess.run(["ip", "netns", "exec", cns, "ping", "-n", "-q", "-c", "1",
                                   "-W", "0.5", addr], capture_output=True,
                                  timeout=10).returncode == 0

        def spare(active: str | None) -> bool:
            # Somewhere to move to: a worker the responder calls up and the client's probes
            # reach (the switcher applies no assignment onto a worker its probes see dead).
            try:
                states = ops.worker_states(api.workers())
            except (httpx.HTTPError, ValueError):
                return False
            return any(s == "up" and w != active and answers(w) for w, s in states.items())

        def revive(w: str) -> None:
            kill_procs(state.procs(host=w))  # what is left of it: the exporter
            build.restart_worker(state, w)

        def ctl_run(*args: str) -> str:
            out = subprocess.run([*ctl, *args], capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                raise RuntimeError(f"wg-failover ctl {' '.join(args)}: {out.stderr.strip()}")
            return out.stdout.strip()

        ping = lab_ping(cns)
        for i in range(drains):
            active = holder()
            if active is None or not poll_until(lambda a=active: spare(a), 120, 0.5):
                raise RuntimeError(f"drain {i + 1}: no worker to move to after 120 s")
            time.sleep(settle)
            t0 = time.time()
            said = ctl_run("drain", active)
            moved = poll_until(lambda a=active: holder() not in (None, a), 30, 0.05)
            moved_s = time.time() - t0
            # The maintenance itself: the drained worker stops (wireguard-go and exporter).
            kill_procs(state.procs(host=active))
            time.sleep(1.0)
            t1 = time.time()
            back = poll_until(lambda t=t1: ping.replies_after(t), 10, 0.02)
            replies = ping.snapshot()
            gap = longest_silence(replies, t0, t1) if moved and back else None
            idle = longest_silence(replies, max(replies[0], t0 - (t1 - t0)), t0)
            lost = ping.lost_between(t0 - 0.5, t1)[1]
            res.drain_gaps.append(gap)
            res.drain_lost.append(lost)
            if idle is not None:
                res.drain_idle.append(idle)
            _say(f"control drain {i + 1}: `ctl drain {active}` ({said.splitlines()[0]}); "
                 f"client on {holder()} after {moved_s * 1000:.0f} ms, then {active} stopped; "
                 "longest silence " + (f"{gap * 1000:.0f} ms" if gap is not None else "never")
                 + (f" (as long a window before it: {idle * 1000:.0f} ms)" if idle else "")
                 + f", {lost} echoes lost")
            revive(active)
            ctl_run("undrain", active)
        if drains:
            res.notes.append("drain: `wg-failover ctl drain W`, the client moves on the "
                             "responder's push, then W stops; the silence is measured from the "
                             "drain to 1 s after the stop, beside the longest silence in as long "
                             "a window just before the drain (one echo every 10 ms: what load "
                             "alone does); the lab's own switcher, fast path on")
        log = swap_switcher(state, client, "--no-fast-path")
        if not poll_until(lambda: all(f"probe: {w} is up" in log.read_text()
                                      for w in state.workers), 30, 0.2):
            raise RuntimeError("the --no-fast-path switcher never saw every worker up:\n"
                               + log.read_text()[-2000:])
        if "fast path OFF" not in log.read_text():
            raise RuntimeError("the switcher did not take --no-fast-path")
        applied_s: list[float] = []
        for i in range(kills):
            victim = holder()
            if victim is None or not poll_until(lambda v=victim: spare(v), 120, 0.5):
                raise RuntimeError(f"kill {i + 1}: no worker to move to after 120 s")
            time.sleep(settle)
            sample_load(res)
            offset = len(log.read_text())
            killed_at = time.time()
            kill_procs(state.procs(host=victim, role="wireguard"), signal.SIGKILL, wait=2)
            gap = wait_gap(ping, killed_at, timeout)
            res.gaps.append(gap)
            text = log.read_text()[offset:]
            if "(failover)" in text:
                raise RuntimeError("the switcher moved on its own probes: not the control path")
            m = re.search(rf"(\S+) INFO switch {victim} -> (\S+) \(assignment\)", text)
            applied = fo.log_time(m.group(1)) - killed_at if m else None
            if applied is not None:
                applied_s.append(applied)
            _say(f"control kill {i + 1}: {victim} -> {holder()}  traffic gap "
                 + (f"{gap * 1000:.0f} ms" if gap is not None else f"never (>{timeout:g} s)")
                 + (f"  (the responder's assignment applied at +{applied:.2f} s)"
                    if applied is not None else ""))
            revive(victim)
        res.notes.append(
            f"3 workers, the full lab: exporters, Prometheus ({scrape:g} s scrapes and rule "
            "evaluation), Alertmanager, the responder on TLS; the switcher with --no-fast-path "
            "(probes still run, it moves only on the responder's assignment)"
            + (f"; assignment applied {fmt_load(applied_s)} s after the kill" if applied_s
               else ""))
        sample_load(res)
    finally:
        if ping is not None:
            ping.stop()
        if api is not None:
            api.close()
        build.down(state, say=lambda _m: None)
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
    # The design has no planned move: the master only reacts to a worker it cannot reach, so
    # stopping a worker for maintenance is the kill measured here.
    res = Result("article", label, timeout=timeout,
                 drain_none="no drain: stopping a worker is a kill, the gap above")
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
                # Traffic flows as soon as the new interface is up, a moment before `notify`
                # records the new active worker: wait for it, or the line names the dead one.
                switched.wait(5)
                _say(f"article kill {i + 1}: {victim} -> {active['name']} "
                     f"(master sees online: {master_obj.online})  traffic gap "
                     + (f"{gap * 1000:.0f} ms" if gap is not None else f"never (>{timeout:g} s)"))
                sl.restart_worker(victim)
                add_master_peer(victim)
                # The next kill needs the master to see the restarted worker online again.
                poll_until(lambda v=victim: master_obj.online[v], interval * 2 + 10, 0.1)
                time.sleep(settle)
            # By hand, an operator could move the client first: the same restart without the
            # detection. Not part of the design, so a note, not its drain.
            with lock:
                nxt = next(n for n in order if n != active["name"])
                t = time.time()
                replace_client_iface(sl, only_peer(nxt))
                active["name"] = nxt
            gap = wait_gap(ping, t, 20)
            res.notes.append("outside the design, restarting the client onto another worker by "
                             "hand first: gap " + (f"{gap * 1000:.0f} ms" if gap is not None
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
    res = Result("keepalived", "keepalived VRRP + shared key", timeout=timeout,
                 drain="stop master's keepalived")
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
                res.drain_gaps.append(gap)
                _say(f"keepalived drain: {holder}'s keepalived stopped  traffic gap "
                     + (f"{gap * 1000:.0f} ms" if gap is not None else f"never (>{timeout:g} s)"))
        finally:
            ping.stop()
    finally:
        for p in kprocs.values():
            stop_process(p, 5)
        lab.close()
    return res


def run_twopeer(prefix: str, workdir: Path, kills: int, timeout: float) -> Result:
    res = Result("twopeer", "two peers, same prefix", timeout=timeout,
                 drain_none="nothing moves the prefix short of editing the config")
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
    ap.add_argument("--drains", type=int, default=3,
                    help="planned drains in the control path's lab (wg-failover's drain; "
                         "default 3; 0: none)")
    ap.add_argument("--control-scrape", type=float, default=5.0, metavar="SECONDS",
                    help="the control path's Prometheus scrape and rule interval (default 5, "
                         "as shipped; `wg-failover lab` uses 1)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds between a restarted worker and the next kill")
    ap.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    args = ap.parse_args()
    if not 1 <= args.kills <= 100:
        ap.error("--kills: 1-100")
    if not 0 <= args.drains <= 20:
        ap.error("--drains: 0-20")
    if not 0.5 <= args.control_scrape <= 30:
        ap.error("--control-scrape: 0.5-30 seconds")
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
    load_start = os.getloadavg()
    code_at_start = code_state()
    try:
        for n, name in enumerate(a for a in APPROACHES if a in chosen):
            prefix, wdir = f"{base}{n}", workdir / name
            _say(f"\n== {name} (lab {prefix}) ==")
            load_before = os.getloadavg()[0]
            try:
                if name == "fast":
                    results.append(run_fast(prefix, wdir, args.kills, args.settle))
                elif name == "control":
                    results.append(run_control(prefix, wdir, args.kills, args.drains,
                                               args.settle, args.control_scrape,
                                               max(args.timeout, 60.0)))
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
            results[-1].load[:0] = [load_before]
            sample_load(results[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    by_name = {r.approach: r for r in results}
    if "fast" in by_name and by_name.get("control", Result("", "")).drain_gaps:
        # A drain never takes the fast path: the responder moves the client either way.
        by_name["fast"].drain = "the control path's drain (a drain goes through the responder)"
    load_end = os.getloadavg()
    _say(f"\n{args.kills} kills (SIGKILL of the active worker's wireguard-go) per approach, "
         "ping every 10 ms" + (" -- --quick: article figures SCALED (1 s pings)"
                               if args.quick else ""))
    _say(render_table(results))
    _say(f"code: {code_at_start}")
    _say(f"load average (1/5/15 min) at the start {fmt_loadavg(load_start)}, at the end "
         f"{fmt_loadavg(load_end)}; 2 cores shared with other jobs: the figures are noisy")
    if args.json:
        _say(to_json(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
