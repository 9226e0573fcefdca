"""What a running lab does: status, failover (with the live timeline), drain.

Everything here talks to the lab's parts as a user would: the responder's HTTP API, Prometheus's
and Alertmanager's APIs (through the root namespace's link into the lab), and `wg show` for what
each client's interface really does.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx

from wg_failover import wg
from wg_failover.fleet import Fleet, load_fleet

from .procs import poll_until
from .state import SERVICE_ADDRESS, SERVICE_ROUTES, LabError, LabState, kill_procs
from .timeline import Entry, FailoverWatch

Say = Callable[[str], None]
POLL_ROUTES = 0.05  # seconds between `wg show` polls of the clients (cheap: one call each)
POLL_APIS = 0.25  # seconds between polls of the responder, Prometheus and Alertmanager
SETTLE = 1.0  # seconds a finished failover is watched for late changes


class Api:
    """The responder's API with the lab's admin token, plus Prometheus and Alertmanager."""

    def __init__(self, state: LabState, timeout: float = 3.0):
        self.state = state
        self.http = httpx.Client(timeout=timeout, verify=state.verify())
        self.admin = {"Authorization": f"Bearer {state.token('admin')}"}

    def close(self) -> None:
        self.http.close()

    def _get(self, url: str, **kw) -> Any:
        r = self.http.get(url, **kw)
        r.raise_for_status()
        return r.json()

    def workers(self) -> Any:
        return self._get(f"{self.state.responder_url}/v1/workers", headers=self.admin)

    def assignment(self, client: str) -> dict[str, Any] | None:
        token = self.state.token(client)
        r = self.http.get(f"{self.state.responder_url}/v1/clients/{client}/assignment",
                          headers={"Authorization": f"Bearer {token}"})
        return r.json() if r.status_code == 200 else None

    def events(self, after: int, limit: int = 500) -> list[dict[str, Any]]:
        data = self._get(f"{self.state.responder_url}/v1/events",
                         params={"after": after, "limit": limit}, headers=self.admin)
        return data.get("events", []) if isinstance(data, dict) else list(data)

    def last_event_id(self) -> int:
        after = 0
        for _ in range(1000):  # bounded: 500,000 events is far more than a lab makes
            page = self.events(after)
            if not page:
                break
            after = max(int(e["id"]) for e in page)
        return after

    def drain(self, worker: str, undo: bool = False) -> Any:
        verb = "undrain" if undo else "drain"
        r = self.http.post(f"{self.state.responder_url}/v1/workers/{worker}/{verb}",
                           headers=self.admin)
        if r.status_code >= 400:
            raise LabError(f"responder refused {verb} {worker}: HTTP {r.status_code} {r.text}")
        return r.json() if r.content else None

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        return self._get(f"{self.state.prometheus_url}/api/v1/alerts")["data"]["alerts"]

    def alertmanager_alerts(self) -> list[dict[str, Any]]:
        return self._get(f"{self.state.alertmanager_url}/api/v2/alerts",
                         params={"active": "true"})


def worker_states(data: Any) -> dict[str, str]:
    """`GET /v1/workers` -> {worker: state}, whether it answers a list or a mapping."""
    items = data.get("workers", data) if isinstance(data, dict) else data
    if isinstance(items, dict):
        return {k: (v.get("state") if isinstance(v, dict) else str(v)) for k, v in items.items()}
    return {w.get("name"): w.get("state") + (" draining" if w.get("draining") else "")
            for w in items if isinstance(w, dict) and isinstance(w.get("state"), str)}


def active_workers(state: LabState, fleet: Fleet) -> dict[str, str | None]:
    """For each client, the worker whose peer holds its routes now (from `wg show`)."""
    by_key = {w.public_key: w.name for w in fleet.workers}
    out: dict[str, str | None] = {}
    for c, info in state.clients.items():
        out[c] = None
        with contextlib.suppress(wg.WgError, subprocess.TimeoutExpired):
            for p in wg.show_dump(info["ifname"]).peers:
                if SERVICE_ROUTES[0] in p.allowed_ips:
                    out[c] = by_key.get(p.public_key)
    return out


def _print_entries(say: Say, entries: list[Entry]) -> None:
    for e in sorted(entries, key=lambda e: e.t):
        say(f"  {e.t:+8.3f} s  {e.text}")


# ---------------------------------------------------------------------- failover


def pick_worker(active: dict[str, str | None], fleet: Fleet, killed: list[str]) -> str:
    """The live worker carrying the most clients (the most interesting one to kill)."""
    counts = {w.name: 0 for w in fleet.workers if w.name not in killed}
    for w in active.values():
        if w in counts:
            counts[w] += 1
    if not counts:
        raise LabError("every worker is already dead")
    return max(counts, key=lambda w: (counts[w], -list(counts).index(w)))


def failover(state: LabState, worker: str | None, say: Say = print,
             timeout: float = 120, cut: bool = False) -> dict[str, Any]:
    """Kill a worker as a crash would (or cut its link) and print the timeline as it happens."""
    fleet = load_fleet(state.fleet_path)
    active = active_workers(state, fleet)
    if worker is None:
        worker = pick_worker(active, fleet, state.killed)
    if worker not in state.workers:
        raise LabError(f"no worker {worker!r} in this lab (have: {', '.join(state.workers)})")
    if worker in state.killed:
        raise LabError(f"{worker} is already out; `wg-failover lab revive {worker}` first")
    affected = [c for c, w in active.items() if w == worker]
    others = [c for c in state.clients if c not in affected]
    api = Api(state)
    try:
        cursor = [api.last_event_id()]  # the responder's event log, read from here on
        how = ("cutting its link (eth0 down; its processes keep running)" if cut
               else "killing wireguard-go and the exporter (SIGKILL, as a crash)")
        say(f"{worker}: {how}; clients on it: {', '.join(affected) or 'none'}")
        watch = FailoverWatch(worker, affected, others, t0=time.time(), before=dict(active))
        if cut:
            _ip_netns(state.workers[worker]["netns"], "link", "set", "eth0", "down")
            state.cut.append(worker)
        else:
            kill_procs(state.procs(host=worker), signal.SIGKILL, wait=2)
        state.killed.append(worker)
        state.save()
        say(f"  {0:+8.3f} s  {worker} {'cut off' if cut else 'killed'}")
        next_api = 0.0
        done_at: float | None = None

        def settled() -> bool:
            nonlocal next_api, done_at
            now = time.time()
            entries = watch.routes(now, active_workers(state, fleet))
            if time.monotonic() >= next_api:
                next_api = time.monotonic() + POLL_APIS
                entries += _poll_apis(api, watch, now, cursor)
            _print_entries(say, entries)
            if not watch.done:
                done_at = None
                return False
            # Watch a little longer: a late re-plan would need new confirmations.
            done_at = done_at or time.monotonic()
            return time.monotonic() - done_at >= SETTLE

        poll_until(settled, timeout, POLL_ROUTES)
        final = active_workers(state, fleet)
        summary = watch.summary()
        summary["others_moved"] = watch.others_moved(final)
        summary["routes_now"] = {c: final.get(c) for c in affected}
        summary["timed_out"] = not watch.done
        try:
            summary["responder_state"] = worker_states(api.workers()).get(worker)
        except (httpx.HTTPError, ValueError):
            summary["responder_state"] = None
    finally:
        api.close()
    _say_summary(say, summary, state)
    return summary


def _ip_netns(ns: str, *args: str) -> None:
    proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        raise LabError(f"`ip -n {ns} {' '.join(args)}` failed: {proc.stderr.strip()}")


def revive(state: LabState, worker: str, say: Say = print, wait: float = 0) -> str | None:
    """Bring a worker back (restart it, or reconnect its link); optionally wait until the
    responder calls it up again (after the alert resolves and the hold-down)."""
    from .build import restart_worker

    if worker not in state.workers:
        raise LabError(f"no worker {worker!r} in this lab (have: {', '.join(state.workers)})")
    if worker not in state.killed:
        raise LabError(f"{worker} is not out (see `wg-failover lab status`)")
    t0 = time.monotonic()
    if worker in state.cut:
        _ip_netns(state.workers[worker]["netns"], "link", "set", "eth0", "up")
        state.cut.remove(worker)
        say(f"{worker}: link reconnected")
    else:
        restart_worker(state, worker)
        say(f"{worker}: wireguard-go, exporter and agent started again")
    state.killed.remove(worker)
    state.save()
    last = None
    if wait <= 0:
        return None
    api = Api(state)

    def up_again() -> bool:
        nonlocal last
        with contextlib.suppress(httpx.HTTPError, ValueError):
            now = worker_states(api.workers()).get(worker)
            if now != last:
                say(f"  {time.monotonic() - t0:+8.3f} s  responder: {worker} is {now}")
                last = now
        return last == "up"

    try:
        poll_until(up_again, wait - (time.monotonic() - t0), 0.5)
    finally:
        api.close()
    return last


def _poll_apis(api: Api, watch: FailoverWatch, now: float, after_ref: list[int]) -> list[Entry]:
    out: list[Entry] = []
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        out += watch.prometheus(now, api.prometheus_alerts())
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        out += watch.alertmanager(now, api.alertmanager_alerts())
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        for _ in range(20):  # bounded: a burst of events is paged through
            page = api.events(after_ref[0])
            if not page:
                break
            after_ref[0] = max(int(e["id"]) for e in page)
            out += watch.events(now, page)
    return out


def _say_summary(say: Say, s: dict[str, Any], state: LabState) -> None:
    say("summary:")
    for c in s["affected"]:
        ms = s["fast_path_reported_ms"].get(c)
        seen = s["fast_path_seen_s"].get(c)
        say(f"  {c}: fast path "
            + (f"{ms} ms (switcher: last reply to switch)" if ms is not None else "not reported")
            + (f", routes seen moved at +{seen:.3f} s" if seen is not None else "")
            + f"; now on {s['routes_now'].get(c)}")
    m = s["milestones_s"]
    for key, label in (("prom_pending", "Prometheus rule true"),
                       ("prom_firing", "Prometheus alert firing"),
                       ("am_received", "Alertmanager has the alert"),
                       ("webhook", "responder got the webhook")):
        if key in m:
            say(f"  {label}: +{m[key]:.3f} s")
    if s["control_path_s"] is not None:
        say(f"  control path (kill -> every client confirmed the responder's plan): "
            f"{s['control_path_s']:.3f} s  (scrape {state.scrape_interval:g} s, "
            f"rules {state.eval_interval:g} s in this lab)")
    elif s["affected"]:
        say("  control path: not every client confirmed before the timeout")
    say(f"  other clients moved: {', '.join(s['others_moved']) or 'none'}; "
        f"responder says {s['worker']} is {s['responder_state']}")


# ---------------------------------------------------------------------- drain


PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


def drain(state: LabState, worker: str, say: Say = print, timeout: float = 60) -> dict[str, Any]:
    """Drain a worker through the responder while its clients ping the service: no loss expected."""
    fleet = load_fleet(state.fleet_path)
    if worker not in state.workers:
        raise LabError(f"no worker {worker!r} in this lab (have: {', '.join(state.workers)})")
    active = active_workers(state, fleet)
    affected = [c for c, w in active.items() if w == worker]
    api = Api(state)
    pings = {}
    try:
        after = api.last_event_id()
        ping_s = 3 + 2 * state.scrape_interval
        for c in affected:
            # -i 0.02: a probe every 20 ms, as root; counts lost packets during the move.
            pings[c] = subprocess.Popen(
                ["ip", "netns", "exec", state.clients[c]["netns"], "ping", "-n", "-q",
                 # -c, not -w: a deadline would count the echo still in flight as lost.
                 "-i", "0.02", "-W", "1", "-c", str(int(ping_s / 0.02)), SERVICE_ADDRESS],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        t0 = time.time()
        say(f"draining {worker} through the responder (clients on it: "
            f"{', '.join(affected) or 'none'}; each pings {SERVICE_ADDRESS} every 20 ms)")
        api.drain(worker)
        moved: dict[str, tuple[float, str]] = {}

        def all_moved() -> bool:
            for c, w in active_workers(state, fleet).items():
                if c in affected and w not in (None, worker) and c not in moved:
                    moved[c] = (time.time() - t0, w)
                    say(f"  {moved[c][0]:+8.3f} s  {c}: routes moved {worker} -> {w}")
            return len(moved) >= len(affected)

        poll_until(all_moved, timeout, POLL_ROUTES)
        events = []
        with contextlib.suppress(httpx.HTTPError, ValueError):
            events = api.events(after)
    finally:
        api.close()
    loss = {}
    for c, p in pings.items():
        try:
            out, _ = p.communicate(timeout=ping_s + 10)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        m = PING_RE.search(out or "")
        loss[c] = (int(m.group(1)), int(m.group(2))) if m else None
    applied = sorted({e.get("client") for e in events if e.get("kind") == "client-applied"
                      and e.get("worker") == moved.get(e.get("client"), (0, None))[1]}
                     & set(affected))
    for c in affected:
        sent_recv = loss.get(c)
        lost = "?" if sent_recv is None else f"{sent_recv[0] - sent_recv[1]}/{sent_recv[0]}"
        say(f"  {c}: now on {moved.get(c, (0, '?'))[1]}, lost pings {lost}")
    say(f"drain of {worker}: {len(moved)}/{len(affected)} clients moved, "
        f"{len(applied)} confirmed to the responder")
    return {"worker": worker, "affected": affected, "moved": {c: v[1] for c, v in moved.items()},
            "lost": {c: (None if v is None else v[0] - v[1]) for c, v in loss.items()},
            "confirmed": applied}


# ---------------------------------------------------------------------- status


def status(state: LabState, say: Say = print) -> dict[str, Any]:
    fleet = load_fleet(state.fleet_path)
    active = active_workers(state, fleet)
    api = Api(state, timeout=2)
    try:
        try:
            states = worker_states(api.workers())
        except (httpx.HTTPError, ValueError):
            states = {}
        assignments = {}
        for c in state.clients:
            with contextlib.suppress(httpx.HTTPError, ValueError, OSError):
                assignments[c] = api.assignment(c)
        alerts: list[str] | None = None
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            alerts = sorted({
                f"{a['labels'].get('alertname')}{{worker={a['labels'].get('worker', '')}}}"
                for a in api.prometheus_alerts() if a.get("state") == "firing"})
    finally:
        api.close()
    say(f"lab {state.prefix}: {state.subnet}, directory {state.dir}")
    say(f"  responder    {state.responder_url}/docs  (admin token: "
        f"{state.secret_path('admin.token')}; CA: {state.ca_path})")
    say(f"  prometheus   {state.prometheus_url}/alerts")
    say(f"  alertmanager {state.alertmanager_url}")
    say("")
    say(f"  {'worker':<8} {'responder':<14} {'processes':<28} {'clients (routes here)'}")
    for w in state.workers:
        procs = " ".join(f"{p.role}:{'up' if p.alive() else 'dead'}"
                         for p in state.procs(host=w))
        on = [c for c, a in active.items() if a == w]
        say(f"  {w:<8} {states.get(w) or '?':<14} {procs:<28} {', '.join(on) or '-'}")
    say("")
    say(f"  {'client':<8} {'assigned':<10} {'version':<8} {'routes on':<10} {'switcher'}")
    for c in state.clients:
        a = assignments.get(c) or {}
        sw = state.procs(host=c, role="switcher")
        alive = "up" if sw and sw[0].alive() else "dead"
        say(f"  {c:<8} {a.get('worker') or '?':<10} {str(a.get('version', '?')):<8} "
            f"{active.get(c) or '-':<10} {alive}")
    say("")
    say("  alerts firing: " + ("(prometheus unreachable)" if alerts is None
                               else ", ".join(alerts) or "none"))
    return {"workers": states, "active": active, "alerts_firing": alerts,
            "assigned": {c: (a or {}).get("worker") for c, a in assignments.items()}}
