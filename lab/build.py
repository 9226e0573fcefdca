"""`lab up` and `lab down`: build the fleet in namespaces, start every part, and undo exactly that.

Components are separate processes started through their own CLIs (`wg-failover exporter ...`,
see `procs.wgfo_argv`), so the lab exercises what an operator runs and never imports their code.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from wg_failover import wg
from wg_failover.fleet import dump_fleet, load_fleet
from wg_failover.tokens import sha256_hex
from wg_failover.wgquick import render_worker, strip

from . import fleetops, netns, tlsca
from .gen import generate_fleet
from .procs import poll_until, wgfo_argv
from .state import (
    ALERTMANAGER_PORT,
    BLACKBOX_PORT,
    EXPORTER_PORT,
    PROMETHEUS_PORT,
    RESPONDER_PORT,
    SERVICE_ADDRESS,
    SERVICE_ROUTES,
    WG_PORT,
    LabError,
    LabState,
    kill_procs,
    lab_dir,
    plan_addresses,
    spawn,
    write_secret,
)

Say = Callable[[str], None]
COMPONENTS = ("exporter", "responder", "switcher")
HOLD_DOWN_SECONDS = 20  # a revived worker is "up" again after this (the lab keeps it short)


def missing_components() -> list[str]:
    """Subcommands not (yet) available, as sentences; the lab needs all of them."""
    problems = []
    for name in COMPONENTS:
        proc = subprocess.run(wgfo_argv(name, "--help"), capture_output=True, text=True,
                              timeout=60)
        # A component that failed to load registers a bare placeholder: no --fleet in its help.
        if proc.returncode != 0 or "--fleet" not in proc.stdout:
            problems.append(f"`wg-failover {name}` is not available")
    for tool, pkg in (("prometheus", "prometheus"),
                      ("prometheus-alertmanager", "prometheus-alertmanager"),
                      ("prometheus-blackbox-exporter", "prometheus-blackbox-exporter")):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` not found: apt-get install {pkg}")
    try:
        from wg_failover import promconfig  # noqa: F401  (core: renders the shipped Prometheus configs)
    except ImportError as exc:
        problems.append(f"wg_failover.promconfig is missing: {exc}")
    return problems


def preflight_lab() -> None:
    problems = netns.preflight()
    if not problems:
        problems = missing_components()
    if problems:
        raise LabError("the lab cannot run here:\n  " + "\n  ".join(problems))


def _root_overlaps(subnet: str) -> list[str]:
    """Root-namespace addresses and routes inside `subnet` (another lab, or a real network)."""
    net = ipaddress.ip_network(subnet)
    hits = []
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    for line in out.split("\n"):
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "inet":
            iface = ipaddress.ip_interface(parts[3])
            if iface.network.overlaps(net):
                hits.append(f"{parts[3]} on {parts[1]}")
    return hits


def lab_running(state: LabState) -> bool:
    return any(p.alive() for p in state.processes) or any(
        ns.startswith(state.prefix + "-") for ns in netns.list_namespaces())


# ---------------------------------------------------------------------- up


def up(prefix: str, workers: int, clients: int, subnet: str, scrape_interval: float = 1.0,
       say: Say = print) -> LabState:
    """Build and start a lab; on any failure, remove what was made and raise."""
    preflight_lab()
    directory = lab_dir(prefix)
    if (directory / "state.json").exists():
        old = LabState.load(directory)
        if lab_running(old):
            raise LabError(f"a lab with prefix {prefix!r} is already running; "
                           f"`wg-failover lab down --prefix {prefix}` first")
        down(old, say=lambda _m: None)
    if any(ns.startswith(prefix + "-") for ns in netns.list_namespaces()):
        raise LabError(f"namespaces {prefix}-* exist but no lab state: remove them with "
                       f"`wg-failover lab down --prefix {prefix}` or choose another --prefix")
    addrs = plan_addresses(subnet, workers, clients)
    overlaps = _root_overlaps(addrs.subnet)
    if overlaps:
        raise LabError(f"{addrs.subnet} is in use on this machine ({', '.join(overlaps)}); "
                       "choose another --subnet (e.g. 198.18.7.0/24)")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, mode=0o700)
    state = LabState(
        prefix=prefix, directory=str(directory), subnet=addrs.subnet,
        master_address=addrs.master, root_address=addrs.root, root_ifname=f"{prefix}-root",
        hub=f"{prefix}-hub", scrape_interval=scrape_interval,
        eval_interval=scrape_interval,  # the shipped config evaluates at the scrape interval
    )
    state.save()
    try:
        _build(state, addrs, workers, clients, say)
    except BaseException:
        say("lab up failed; removing what it made")
        with contextlib.suppress(Exception):
            down(state, say=lambda _m: None, keep_logs=True)
        raise
    return state


def _build(state: LabState, addrs, n_workers: int, n_clients: int, say: Say) -> None:
    from wg_failover import promconfig

    t0 = time.monotonic()
    gen = generate_fleet(
        n_workers, n_clients, worker_host=lambda i: addrs.workers[i], listen_port=WG_PORT,
        exporter_port=EXPORTER_PORT, routes=SERVICE_ROUTES,
        responder_url=state.responder_url, hold_down_seconds=HOLD_DOWN_SECONDS,
    )
    # The workers are the fleet file's (each with its agent's token); the clients are not in
    # it: each joins through the responder (`wg-failover join`), as a new client would.
    for w in gen.fleet.workers:
        gen.tokens[w.name] = secrets.token_urlsafe(24)
    fleet = gen.fleet.model_copy(update={"workers": [
        w.model_copy(update={"token_sha256": sha256_hex(gen.tokens[w.name])})
        for w in gen.fleet.workers]})
    state.fleet_path.write_text(dump_fleet(fleet.model_copy(update={"clients": []})))
    # The control plane runs on TLS as in a deployment: a CA made for this lab, and a certificate
    # for the responder's namespace address and for 127.0.0.1 (Prometheus and Alertmanager reach
    # it from inside the master namespace). Both die with the lab.
    ca = tlsca.make_ca(state.tls_dir, name=f"wg-failover lab {state.prefix} CA")
    cert, cert_key = tlsca.issue(ca, state.tls_dir, "responder", ips=[addrs.master, "127.0.0.1"])
    clients = {c.name for c in fleet.clients}  # their keys and tokens come from join
    for name, key in gen.private_keys.items():
        if name not in clients:
            write_secret(state.secret_path(f"{name}.key"), key)
    for name, token in gen.tokens.items():
        if name not in clients:
            write_secret(state.secret_path(f"{name}.token"), token)
    logs = state.dir / "logs"

    say(f"namespaces {state.prefix}-* on {addrs.subnet}: a bridge, master, "
        f"{n_workers} workers, {n_clients} clients")
    lab = netns.NetLab(state.prefix, subnet=addrs.subnet, detach=True)
    lab.up()
    _root_link(state, addrs.prefixlen)
    master = lab.add_host("master", address=addrs.master)

    for i, w in enumerate(fleet.workers):
        host = lab.add_host(w.name, address=addrs.workers[i])
        # No dummy module here: the service address sits on the namespace's loopback.
        host.run(["ip", "addr", "add", f"{SERVICE_ADDRESS}/32", "dev", "lo"])
        state.workers[w.name] = {"netns": host.netns, "address": host.address,
                                 "ifname": lab.ifname(f"w{i + 1}")}
        start_worker(state, lab, host, w.name, agent=False)
    say(f"  workers up: wireguard-go + exporter on :{EXPORTER_PORT} each, "
        f"service {SERVICE_ADDRESS} behind every worker; no peers yet")

    state.processes.append(spawn(master.netns, wgfo_argv(
        "responder", "--fleet", str(state.fleet_path), "--db", str(state.dir / "responder.db"),
        "--listen", f"0.0.0.0:{RESPONDER_PORT}", "--tls-cert", str(cert), "--tls-key",
        str(cert_key)), logs / "responder.log", "responder", "master"))
    state.save()

    _start_prometheus(state, promconfig, master.netns, logs)
    state.save()
    say(f"  master up: responder :{RESPONDER_PORT}, prometheus :{PROMETHEUS_PORT}, "
        f"alertmanager :{ALERTMANAGER_PORT}, blackbox exporter :{BLACKBOX_PORT} "
        f"(scrape {state.scrape_interval:g} s, "
        f"rules every {state.eval_interval:g} s: short, for the lab)")
    _wait_http(state, f"{state.responder_url}/readyz", "responder", 30, verify=state.verify())
    for w in fleet.workers:
        fleetops.start_agent(state, w.name)
    state.save()
    say("  agents up: each worker's peers follow the clients the responder allows on it")

    for j, c in enumerate(fleet.clients):
        host = lab.add_host(c.name, address=addrs.clients[j])
        fleetops.start_client(state, host, c.name, lab.ifname(f"c{j + 1}"), c.address,
                              c.workers)
    fleetops.snapshot_fleet(state)
    say(f"  clients joined: {len(fleet.clients)} enrollment keys from the admin API, "
        "`wg-failover join` in each client's namespace, wireguard-go from the config it wrote, "
        "a switcher following its view (no fleet file)")
    wait_ready(state, say)
    say(f"lab {state.prefix} up in {time.monotonic() - t0:.1f} s")


def start_worker(state: LabState, lab: netns.NetLab, host: netns.Host, name: str,
                 agent: bool = True) -> None:
    """The worker's wireguard-go (from the fleet and its key), its exporter and (unless the
    responder is not up yet) its agent, recorded."""
    fleet = load_fleet(state.fleet_path)
    w = fleet.worker(name)
    info = state.workers[name]
    key = state.secret_path(f"{name}.key").read_text().strip()
    iface = host.wireguard(info["ifname"], strip(render_worker(fleet, w, key)),
                           [w.tunnel_host_cidr])
    state.processes.append(_proc_of(iface.process.pid, "wireguard", name))
    argv = wgfo_argv("exporter", "--listen", f"{host.address}:{EXPORTER_PORT}",
                     "--interface", iface.name, "--fleet", str(state.fleet_path),
                     "--worker", name)
    state.processes.append(spawn(host.netns, argv, state.dir / "logs" / f"exporter-{name}.log",
                                 "exporter", name))
    if agent:
        fleetops.start_agent(state, name)
    state.save()


def restart_worker(state: LabState, name: str) -> None:
    """Start a killed worker's wireguard-go and exporter again (same keys, same addresses)."""
    if any(p.alive() for p in state.procs(host=name)):
        raise LabError(f"{name} still has live processes; it was not killed")
    info = state.workers[name]
    # The dead wireguard-go left its control socket; a new one must not be mistaken for it.
    (netns.WG_RUN_DIR / f"{info['ifname']}.sock").unlink(missing_ok=True)
    state.processes = [p for p in state.processes if p.host != name]
    lab = netns.NetLab(state.prefix, subnet=state.subnet, detach=True)
    start_worker(state, lab, netns.Host(lab, name, info["netns"], info["address"]), name)


def _proc_of(pid: int, role: str, host: str):
    from .state import Proc, proc_start_time

    return Proc(role=role, host=host, pid=pid, start_time=proc_start_time(pid) or -1, log="")


def _root_link(state: LabState, prefixlen: int) -> None:
    """A veth from the root namespace into the hub's bridge, so the host reaches the master."""
    r = state.root_ifname
    _ip("link", "add", r, "type", "veth", "peer", "name", "vroot", "netns", state.hub)
    _ip("-n", state.hub, "link", "set", "vroot", "master", "br0", "up")
    _ip("addr", "add", f"{state.root_address}/{prefixlen}", "dev", r)
    _ip("link", "set", r, "up")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        raise LabError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def _start_prometheus(state: LabState, promconfig, ns: str, logs: Path) -> None:
    """The shipped Prometheus, Alertmanager and blackbox configs, for the lab's addresses.

    The blackbox exporter runs in the master beside Prometheus, as in a deployment, and pings
    the workers' underlay addresses: a worker cut off the network (`lab failover --cut`) then
    fails over on its exporter and ICMP both failing, not only on its clients' votes.
    """
    pdir = state.dir / "prometheus"
    adir = state.dir / "alertmanager"
    pdir.mkdir()
    adir.mkdir()
    local = "http://127.0.0.1"
    responder = f"https://127.0.0.1:{RESPONDER_PORT}"
    prom_yml = pdir / "prometheus.yml"
    prom_yml.write_text(promconfig.render_prometheus_config(
        responder_url=responder, alertmanager_url=f"{local}:{ALERTMANAGER_PORT}",
        ca_file=state.ca_path,
        scrape_interval=f"{state.scrape_interval:g}s",
        sd_refresh_interval=f"{max(state.scrape_interval, 5):g}s",
        blackbox_address=f"127.0.0.1:{BLACKBOX_PORT}",
        read_token_file=state.secret_path("read.token")))
    am_yml = adir / "alertmanager.yml"
    am_yml.write_text(promconfig.render_alertmanager_config(
        responder_url=responder, token_file=state.secret_path("alert.token"),
        ca_file=state.ca_path))
    state.processes.append(spawn(ns, [
        "prometheus", f"--config.file={prom_yml}", f"--storage.tsdb.path={pdir / 'data'}",
        f"--web.listen-address=0.0.0.0:{PROMETHEUS_PORT}", "--storage.tsdb.retention.time=1d",
    ], logs / "prometheus.log", "prometheus", "master"))
    state.processes.append(spawn(ns, [
        "prometheus-alertmanager", f"--config.file={am_yml}",
        f"--storage.path={adir / 'data'}", f"--web.listen-address=0.0.0.0:{ALERTMANAGER_PORT}",
        "--cluster.listen-address=",
    ], logs / "alertmanager.log", "alertmanager", "master"))
    state.processes.append(spawn(ns, [
        promconfig.BLACKBOX_BIN, f"--config.file={promconfig.BLACKBOX_YML}",
        f"--web.listen-address=0.0.0.0:{BLACKBOX_PORT}",
    ], logs / "blackbox.log", "blackbox", "master"))


def _wait_http(state: LabState, url: str, what: str, timeout: float,
               verify: ssl.SSLContext | bool = True) -> None:
    last = ""

    def ready() -> bool:
        nonlocal last
        try:
            r = httpx.get(url, timeout=2, verify=verify)
            if r.status_code == 200:
                return True
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        _raise_if_dead(state, only_logged=True)
        return False

    if not poll_until(ready, timeout, 0.2):
        raise LabError(f"{what} not ready at {url} after {timeout:g} s ({last}); logs in "
                       f"{state.dir / 'logs'}")


def _raise_if_dead(state: LabState, only_logged: bool = False) -> None:
    """A part that exited will not come up: say which, instead of waiting out the timeout."""
    dead = [p for p in state.processes if (p.log or not only_logged) and not p.alive()]
    if dead:
        raise LabError(f"{dead[0].role} on {dead[0].host} exited; see "
                       f"{dead[0].log or 'its namespace'}")


def wait_ready(state: LabState, say: Say, timeout: float = 60) -> None:
    """Until every part answers: exporters scraped, clients hold handshakes and assignments."""
    from wg_failover.promconfig import EXPORTER_JOB

    _wait_http(state, f"{state.prometheus_url}/-/ready", "prometheus", 30)
    _wait_http(state, f"{state.alertmanager_url}/-/ready", "alertmanager", 30)
    _wait_http(state, f"http://{state.master_address}:{BLACKBOX_PORT}/-/ready",
               "blackbox exporter", 30)
    pending: list[str] = []

    def ready() -> bool:
        pending.clear()
        try:
            targets = httpx.get(f"{state.prometheus_url}/api/v1/targets", timeout=2).json()
            # The blackbox job's targets carry `worker` too; this waits for the exporters.
            ups = {t["labels"].get("worker"): t["health"]
                   for t in targets["data"]["activeTargets"]
                   if t["labels"].get("worker") and t["labels"].get("job") == EXPORTER_JOB}
        except (httpx.HTTPError, ValueError, KeyError):
            ups = {}
        pending.extend(f"scrape of {w}" for w in state.workers if ups.get(w) != "up")
        for c, info in state.clients.items():
            with contextlib.suppress(wg.WgError):
                peers = wg.show_dump(info["ifname"]).peers
                if len(peers) < len(state.workers) or any(
                        p.latest_handshake == 0 for p in peers):
                    pending.append(f"handshakes of {c}")
        _raise_if_dead(state)
        return not pending

    if not poll_until(ready, timeout, 0.5):
        raise LabError(f"lab not ready after {timeout:g} s: waiting for {', '.join(pending)}")


# ---------------------------------------------------------------------- down


def down(state: LabState, say: Say = print, keep_logs: bool = False) -> list[str]:
    """Stop exactly the lab's processes, remove its namespaces, link and directory."""
    kill_procs(state.processes, signal.SIGTERM, wait=5)
    removed = netns.cleanup_prefix(state.prefix)
    with contextlib.suppress(Exception):
        # Deleting one end of a veth deletes both; the hub's deletion usually did it already.
        subprocess.run(["ip", "link", "del", state.root_ifname], capture_output=True, timeout=10)
    # A tmpfs mounted under the state directory (lab.faults: the responder's small disk) goes
    # first, or it would outlive the directory.
    from .faults import unmount_under

    unmount_under(state.dir)
    if not keep_logs:
        shutil.rmtree(state.dir, ignore_errors=True)
    say(f"lab {state.prefix} down: {len(state.processes)} processes stopped, "
        f"{len(removed)} namespaces removed")
    return removed
