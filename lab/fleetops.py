"""Nodes that join and leave a running lab through the responder (DESIGN.md "The fleet is live").

A node gets an enrollment key from the admin API, runs `wg-failover join` in its own namespace
(its private key is made there; its token, wg-quick config and node.json land in
PREFIX/nodes/NAME), brings its interface up from that config, and runs its follower: the
switcher with only its state directory (node.json gives the rest), or the agent with
`--node`. A client removed with `DELETE /v1/clients/NAME` (revoke) loses its peer on every worker
and its token. After every change the lab writes the fleet the responder serves into its
fleet.yaml, so the rest of the lab (status, failover, exporters, which re-read it) sees it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from wg_failover import wg
from wg_failover.fleet import Fleet, dump_fleet, validate_fleet_data
from wg_failover.wgquick import strip

from . import netns
from .procs import poll_until, wgfo_argv
from .state import (
    EXPORTER_PORT,
    SERVICE_ADDRESS,
    SERVICE_ROUTES,
    WG_PORT,
    LabError,
    LabState,
    spawn,
    write_secret,
)

Say = Callable[[str], None]


def node_dir(state: LabState, name: str) -> Path:
    return state.dir / "nodes" / name


def _admin(state: LabState) -> httpx.Client:
    return httpx.Client(timeout=15, verify=state.verify(),
                        headers={"Authorization": f"Bearer {state.token('admin')}"})


def _check(r: httpx.Response, what: str) -> Any:
    if r.status_code >= 400:
        raise LabError(f"responder refused {what}: HTTP {r.status_code} {r.text[:300]}")
    return r.json() if r.content else None


def enroll_key(state: LabState, kind: str, name: str, address: str | None = None) -> str:
    """A one-time key for one node, its name (and a client's address) fixed by the key."""
    body: dict[str, Any] = {"kind": kind, "name": name, "expires_seconds": 600}
    if address:
        body["address"] = address
    with _admin(state) as http:
        got = _check(http.post(f"{state.responder_url}/v1/enroll-keys", json=body),
                     f"an enrollment key for {name}")
    return got["key"]


def snapshot_fleet(state: LabState) -> Fleet:
    """The fleet the responder serves now, written over the lab's fleet.yaml (atomically: the
    exporters re-read it when it changes)."""
    with _admin(state) as http:
        data = _check(http.get(f"{state.responder_url}/v1/fleet"), "GET /v1/fleet")
    # The answer wraps the fleet with its version, store epoch and which nodes joined.
    if isinstance(data, dict) and isinstance(data.get("fleet"), dict):
        data = data["fleet"]
    fleet = validate_fleet_data(data, "the responder's fleet")
    tmp = state.fleet_path.with_suffix(".tmp")
    tmp.write_text(dump_fleet(fleet))
    os.replace(tmp, state.fleet_path)
    return fleet


def allow_everywhere(state: LabState, worker: str) -> list[str]:
    """Append `worker` to every client's `workers` list (those without a list may use every
    worker already), through `PUT /v1/fleet`; the clients whose list changed."""
    with _admin(state) as http:
        data = _check(http.get(f"{state.responder_url}/v1/fleet"), "GET /v1/fleet")["fleet"]
        changed = []
        for c in data.get("clients", []):
            if c.get("workers") is not None and worker not in c["workers"]:
                c["workers"] = [*c["workers"], worker]
                changed.append(c["name"])
        if changed:
            _check(http.put(f"{state.responder_url}/v1/fleet", json=data), "PUT /v1/fleet")
    return changed


def add_namespace(state: LabState, name: str, address: str) -> netns.Host:
    """A namespace PREFIX-NAME on the lab's bridge (as NetLab.add_host, for a running lab)."""
    ns = state.netns(name)
    if ns in netns.list_namespaces():
        raise LabError(f"namespace {ns} exists already")
    plen = ipaddress.ip_network(state.subnet).prefixlen
    veth = f"v{name}"[:15]
    for argv in (["netns", "add", ns], ["-n", ns, "link", "set", "lo", "up"],
                 ["-n", state.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                  "netns", ns],
                 ["-n", state.hub, "link", "set", veth, "master", "br0", "up"],
                 ["-n", ns, "addr", "add", f"{address}/{plen}", "dev", "eth0"],
                 ["-n", ns, "link", "set", "eth0", "up"]):
        proc = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=20)
        if proc.returncode != 0:
            raise LabError(f"`ip {' '.join(argv)}` failed: {proc.stderr.strip()}")
    lab = netns.NetLab(state.prefix, subnet=state.subnet, detach=True)
    host = netns.Host(lab, name, ns, address)
    lab.hosts[name] = host
    return host


def join(state: LabState, host: netns.Host, name: str, kind: str, ifname: str,
         *flags: str, address: str | None = None) -> dict[str, Any]:
    """`wg-failover join` in the node's namespace; what it wrote (never the token)."""
    d = node_dir(state, name)
    d.mkdir(parents=True, mode=0o700, exist_ok=True)
    key_file = d / "enroll.key"
    write_secret(key_file, enroll_key(state, kind, name, address))
    argv = wgfo_argv("join", state.responder_url, "--enroll-key-file", str(key_file),
                     "--name", name, "--interface", ifname, "--state-dir", str(d),
                     "--ca-file", str(state.ca_path), "--json", *flags)
    proc = host.run(argv, check=False, timeout=60)
    key_file.unlink(missing_ok=True)  # one-time: used now
    if proc.returncode != 0:
        raise LabError(f"join of {name} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    got = json.loads(proc.stdout)
    # The rest of the lab finds every node's token and key in secrets/ (as for `lab up`).
    shutil.copyfile(d / "token", state.secret_path(f"{name}.token"))
    shutil.copyfile(d / "private.key", state.secret_path(f"{name}.key"))
    return got


def _interface_up(state: LabState, host: netns.Host, name: str, ifname: str,
                  addresses: list[str]) -> None:
    conf = strip((node_dir(state, name) / f"{ifname}.conf").read_text())
    lab = host.lab
    iface = lab.wireguard(host, ifname, conf, addresses)
    from .build import _proc_of

    state.processes.append(_proc_of(iface.process.pid, "wireguard", name))


def start_client(state: LabState, host: netns.Host, name: str, ifname: str, address: str,
                 workers: list[str] | None = None) -> None:
    """Join as a client, bring its interface up from the config join wrote, run its switcher
    with nothing but its state directory (node.json: name, interface, responder, token)."""
    flags = ["--routes", *SERVICE_ROUTES]
    if workers:
        flags += ["--workers", *workers]
    join(state, host, name, "client", ifname, *flags, address=address)
    _interface_up(state, host, name, ifname, [address])
    state.clients[name] = {"netns": host.netns, "address": host.address, "ifname": ifname}
    state.processes.append(spawn(host.netns, wgfo_argv(
        "switcher", "--state-dir", str(node_dir(state, name))),
        state.dir / "logs" / f"switcher-{name}.log", "switcher", name))
    state.save()


def start_agent(state: LabState, name: str) -> None:
    """The worker's agent: its interface's peers follow the clients the fleet allows on it."""
    info = state.workers[name]
    d = node_dir(state, name)
    if (d / "node.json").exists():
        argv = wgfo_argv("agent", "--node", str(d / "node.json"), "--state-dir", str(d))
    else:  # a worker the fleet file declares, with the token whose sha256 it carries
        argv = wgfo_argv("agent", "--worker", name, "--interface", info["ifname"],
                         "--responder", state.responder_url, "--ca-file", str(state.ca_path),
                         "--token-file", str(state.secret_path(f"{name}.token")),
                         "--state-dir", str(d))
        d.mkdir(parents=True, mode=0o700, exist_ok=True)
    state.processes.append(spawn(info["netns"], argv, state.dir / "logs" / f"agent-{name}.log",
                                 "agent", name))


def _next(state: LabState, letter: str) -> int:
    """The next free index of PREFIX-{letter}N (namespaces of revoked nodes stay until down)."""
    used = [0]
    for ns in netns.list_namespaces():
        tail = ns.removeprefix(f"{state.prefix}-{letter}")
        if ns.startswith(f"{state.prefix}-{letter}") and tail.isdigit():
            used.append(int(tail))
    return max(used) + 1


def add_worker(state: LabState, say: Say = print, capacity: int | None = None,
               allow: bool = True) -> dict[str, Any]:
    """A new worker joins the running lab: namespace, join, wireguard-go, exporter, agent. Its
    peers come from the responder; every allowed client's switcher adds it as a warm peer.
    `allow`: append it to every client's worker list (as a last-resort backup), so all may
    use it."""
    i = _next(state, "w")
    name = f"w{i}"
    base = ipaddress.ip_network(state.subnet).network_address
    if i > 80:
        raise LabError("at most 80 workers in a lab")
    address, tunnel = str(base + 9 + i), f"10.66.0.{i}"
    t0 = time.monotonic()
    host = add_namespace(state, name, address)
    host.run(["ip", "addr", "add", f"{SERVICE_ADDRESS}/32", "dev", "lo"])
    ifname = f"{state.prefix}{name}"
    flags = ["--endpoint", f"{address}:{WG_PORT}", "--tunnel-address", tunnel,
             "--exporter", f"{address}:{EXPORTER_PORT}", "--region", "lab"]
    if capacity:
        flags += ["--capacity", str(capacity)]
    got = join(state, host, name, "worker", ifname, *flags)
    t_joined = time.monotonic()  # in the fleet, so in the responder's targets, from now
    say(f"  {time.monotonic() - t0:+8.3f} s  {name} joined (tunnel {tunnel}, "
        f"{got.get('peers', 0)} client peers from the responder)")
    _interface_up(state, host, name, ifname, [f"{tunnel}/32"])
    state.workers[name] = {"netns": host.netns, "address": address, "ifname": ifname}
    snapshot_fleet(state)
    state.processes.append(spawn(host.netns, wgfo_argv(
        "exporter", "--listen", f"{address}:{EXPORTER_PORT}", "--interface", ifname,
        "--fleet", str(state.fleet_path), "--worker", name),
        state.dir / "logs" / f"exporter-{name}.log", "exporter", name))
    start_agent(state, name)
    state.save()
    # The clients may use it once its agent follows the responder: their first handshakes then
    # find their peers there (else WireGuard retries only 5 s later; the switcher helps anyway).
    agent_log = state.dir / "logs" / f"agent-{name}.log"
    poll_until(lambda: "responder: connected" in agent_log.read_text(errors="replace"), 15, 0.05)
    say(f"  {time.monotonic() - t0:+8.3f} s  {name}'s agent follows the responder")
    t_allowed = time.monotonic()
    if allow:
        changed = allow_everywhere(state, name)
        say(f"  {time.monotonic() - t0:+8.3f} s  PUT /v1/fleet: {name} appended to the workers "
            f"of {', '.join(changed) or 'no client (every client may use every worker)'}")
    key = wg.show_dump(ifname).devices[ifname].public_key
    warm: dict[str, float] = {}

    allowed = [c.name for c in snapshot_fleet(state).clients
               if c.workers is None or name in c.workers]

    def all_warm() -> bool:
        for c, info in state.clients.items():
            if c not in allowed:
                continue
            if c in warm:
                continue
            try:
                peers = wg.show_dump(info["ifname"]).peers
            except wg.WgError:
                continue
            if any(p.public_key == key and p.latest_handshake > 0 for p in peers):
                warm[c] = time.monotonic() - t_allowed
                say(f"  {time.monotonic() - t0:+8.3f} s  {c}: {name} is a warm peer (handshake "
                    f"{warm[c]:.2f} s after it was allowed)")
        return all(c in warm for c in allowed if c in state.clients)

    poll_until(all_warm, 30, 0.05)
    scraped = _wait_scraped(state, name, t_joined, 30)
    say(f"  {time.monotonic() - t0:+8.3f} s  prometheus: "
        + (f"{name}'s exporter scraped, up ({scraped:.1f} s after it joined; found through the "
           "responder's targets: http_sd refresh, then Prometheus's own discovery update, "
           "5 s each at most in the lab)" if scraped is not None
           else f"{name}'s exporter NOT scraped within 30 s"))
    return {"worker": name, "address": address, "tunnel_address": tunnel,
            "scraped_s": None if scraped is None else round(scraped, 3),
            # From the moment the clients may use it (the PUT, or the join when all may).
            "warm_s": {c: round(t, 3) for c, t in warm.items()},
            "not_warm": sorted(set(allowed) & set(state.clients) - set(warm))}


def _wait_scraped(state: LabState, worker: str, since: float, timeout: float) -> float | None:
    """Seconds from `since` until Prometheus scrapes the worker's exporter as up, or None."""
    from wg_failover.promconfig import EXPORTER_JOB

    def up() -> bool:
        try:
            targets = httpx.get(f"{state.prometheus_url}/api/v1/targets", timeout=2).json()
            return any(t["labels"].get("worker") == worker and t["health"] == "up"
                       and t["labels"].get("job") == EXPORTER_JOB
                       for t in targets["data"]["activeTargets"])
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    return time.monotonic() - since if poll_until(up, timeout, 0.2) else None


def add_client(state: LabState, say: Say = print, workers: list[str] | None = None
               ) -> dict[str, Any]:
    """A new client joins the running lab; the planner places it (on a new worker if it has
    the most room)."""
    j = _next(state, "c")
    name = f"c{j}"
    if j > 150:
        raise LabError("at most 150 clients in a lab")
    base = ipaddress.ip_network(state.subnet).network_address
    t0 = time.monotonic()
    host = add_namespace(state, name, str(base + 99 + j))
    start_client(state, host, name, f"{state.prefix}c{j}", f"10.66.1.{j + 1}/32", workers)
    snapshot_fleet(state)
    say(f"  {time.monotonic() - t0:+8.3f} s  {name} joined; switcher started")
    reached = poll_until(lambda: host.ping(SERVICE_ADDRESS, count=1, timeout=0.5), 20, 0.1)
    say(f"  {time.monotonic() - t0:+8.3f} s  {name} "
        + (f"reaches {SERVICE_ADDRESS}" if reached else f"does NOT reach {SERVICE_ADDRESS}"))
    return {"client": name, "address": f"10.66.1.{j + 1}/32", "reaches_service": bool(reached)}


def remove_client(state: LabState, name: str, say: Say = print, timeout: float = 10
                  ) -> dict[str, Any]:
    """Revoke a client: `DELETE /v1/clients/NAME`. Times how long until no worker has its peer,
    checks its token gets 401 and its pings stop."""
    if name not in state.clients:
        raise LabError(f"no client {name!r} in this lab (have: {', '.join(state.clients)})")
    info = state.clients[name]
    key = wg.show_dump(info["ifname"]).devices[info["ifname"]].public_key
    token = state.token(name)
    host = netns.Host(netns.NetLab(state.prefix, subnet=state.subnet, detach=True), name,
                      info["netns"], info["address"])
    before = host.ping(SERVICE_ADDRESS, count=3, timeout=0.5)
    say(f"  {name} pings {SERVICE_ADDRESS} before: {'answered' if before else 'NO answer'}")
    t0 = time.monotonic()
    with _admin(state) as http:
        _check(http.delete(f"{state.responder_url}/v1/clients/{name}"), f"removing {name}")
    say(f"  {0:+8.3f} s  responder: {name} revoked")
    gone: dict[str, float] = {}

    def peers_gone() -> bool:
        for w, info in state.workers.items():
            if w in gone or w in state.killed:
                continue
            try:
                peers = wg.show_dump(info["ifname"]).peers
            except wg.WgError:
                continue
            if all(p.public_key != key for p in peers):
                gone[w] = time.monotonic() - t0
                say(f"  {gone[w]:+8.3f} s  {w}: {name}'s peer removed")
        return all(w in gone for w in state.workers if w not in state.killed)

    poll_until(peers_gone, timeout, 0.02)
    with httpx.Client(timeout=5, verify=state.verify()) as http:
        status = http.get(f"{state.responder_url}/v1/clients/{name}/view",
                          headers={"Authorization": f"Bearer {token}"}).status_code
    say(f"  {time.monotonic() - t0:+8.3f} s  {name}'s token: HTTP {status}")
    answered = host.ping(SERVICE_ADDRESS, count=3, timeout=0.5)
    say(f"  {time.monotonic() - t0:+8.3f} s  {name} pings {SERVICE_ADDRESS}: "
        + ("ANSWERED (still has access)" if answered else "no answer (access lost)"))
    snapshot_fleet(state)
    # Its namespace and processes stay (a revoked client's switcher keeps its last view and
    # says it was refused); `lab down` removes them. The lab's client list forgets it.
    del state.clients[name]
    state.save()
    return {"client": name, "peers_gone_s": {w: round(t, 3) for w, t in gone.items()},
            "token_status": status, "pings_answered_before": before,
            "pings_answered": answered,
            "not_gone": sorted(w for w in state.workers
                               if w not in gone and w not in state.killed)}
