"""`wg-failover lab`: up, status, failover, drain, down, and the one-command demo."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import httpx

from wg_failover.cli import CliError
from wg_failover.fleet import load_fleet

from . import build, fleetops, netns, ops
from .netns import NetnsError
from .state import LabError, LabState, check_prefix, lab_dir

DEFAULT_PREFIX = "wgl"
PREFIX_ENV = "WG_FAILOVER_LAB_PREFIX"


def _say(msg: str) -> None:
    print(msg, flush=True)


def _load(args: argparse.Namespace) -> LabState:
    return LabState.load(lab_dir(args.prefix))


def cmd_up(args: argparse.Namespace) -> int:
    state = build.up(args.prefix, args.workers, args.clients, args.subnet, args.scrape_interval,
                     say=_say)
    ops.status(state, say=_say)
    _grafana(state)
    _say(f"next: wg-failover lab failover --prefix {state.prefix}   (or drain WORKER, status, "
         "down)")
    return 0


def _grafana(state: LabState) -> None:
    """Point at Grafana where the user runs one (docker compose); silent otherwise."""
    grafana = os.environ.get("WG_FAILOVER_GRAFANA_URL", "http://127.0.0.1:3000")
    try:
        if httpx.get(f"{grafana}/api/health", timeout=0.5).status_code == 200:
            _say(f"  grafana      {grafana} (add {state.prometheus_url} as a Prometheus "
                 "data source to see this lab)")
    except httpx.HTTPError:
        pass


def cmd_down(args: argparse.Namespace) -> int:
    directory = lab_dir(args.prefix)
    try:
        state = LabState.load(directory)
    except LabError:
        # No state (or a broken one): still remove namespaces with exactly this prefix.
        removed = netns.cleanup_prefix(args.prefix)
        _say(f"no lab state in {directory}; removed {len(removed)} namespaces {args.prefix}-*")
        return 0
    build.down(state, say=_say)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = _load(args)
    result = ops.status(state, say=(lambda _m: None) if args.json else _say)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def cmd_failover(args: argparse.Namespace) -> int:
    state = _load(args)
    summary = ops.failover(state, args.worker, say=_say, timeout=args.timeout, cut=args.cut)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0 if failover_ok(summary) else 1


def failover_ok(summary: dict[str, Any]) -> bool:
    """Every client of the killed worker is on another worker and confirmed; nobody else moved."""
    routes = summary["routes_now"]
    return (not summary["timed_out"] and not summary["others_moved"]
            and all(routes.get(c) not in (None, summary["worker"]) for c in summary["affected"]))


def cmd_revive(args: argparse.Namespace) -> int:
    state = _load(args)
    final = ops.revive(state, args.worker, say=_say, wait=args.wait)
    return 0 if args.wait <= 0 or final == "up" else 1


def cmd_drain(args: argparse.Namespace) -> int:
    state = _load(args)
    if args.undo:
        ops.Api(state).drain(args.worker, undo=True)
        _say(f"{args.worker} undrained")
        return 0
    result = ops.drain(state, args.worker, say=_say, timeout=args.timeout)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if len(result["moved"]) == len(result["affected"]) else 1


def cmd_add_worker(args: argparse.Namespace) -> int:
    state = _load(args)
    _say("a new worker joins: enrollment key (admin API), `wg-failover join`, wireguard-go, "
         "exporter, agent")
    result = fleetops.add_worker(state, say=_say, capacity=args.capacity)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if not result["not_warm"] else 1


def cmd_add_client(args: argparse.Namespace) -> int:
    state = _load(args)
    result = fleetops.add_client(state, say=_say, workers=args.workers)
    ops.status(state, say=_say)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if result["reaches_service"] else 1


def cmd_remove_client(args: argparse.Namespace) -> int:
    state = _load(args)
    result = fleetops.remove_client(state, args.client, say=_say)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if removed_ok(result) else 1


def removed_ok(result: dict[str, Any]) -> bool:
    """No live worker keeps the revoked client's peer, its token is refused, its pings stop."""
    return (not result["not_gone"] and result["token_status"] == 401
            and result["pings_answered_before"] and not result["pings_answered"])


def cmd_demo(args: argparse.Namespace) -> int:
    t0 = time.monotonic()

    def step(n: int, text: str) -> None:
        _say(f"\n[{n}/6 {time.monotonic() - t0:5.1f} s] {text}")

    _say("wg-failover demo: the whole system in network namespaces on this machine; a worker "
         "is killed,\nits clients fail over (fast path on each client, then the control path "
         "through Prometheus,\nAlertmanager and the responder), another worker is drained, a new "
         "worker\njoins and takes a new client, that client is revoked, and everything is "
         "removed.")
    step(1, f"lab up: {args.workers} workers, {args.clients} clients")
    state = build.up(args.prefix, args.workers, args.clients, args.subnet, args.scrape_interval,
                     say=_say)
    ok = False
    summary: dict[str, Any] = {}
    drained: dict[str, Any] = {}
    joined: dict[str, Any] = {}
    try:
        ops.status(state, say=_say)
        _grafana(state)
        step(2, "failover: kill the busiest worker; the timeline as it happens")
        summary = ops.failover(state, None, say=_say, timeout=args.timeout)
        ok = failover_ok(summary)
        live = [w for w in state.workers if w not in state.killed]
        step(3, "drain: move every client off a live worker, planned, while they ping")
        active = ops.active_workers(state, load_fleet(state.fleet_path))
        target = max(live, key=lambda w: sum(1 for a in active.values() if a == w))
        if len(live) >= 2:
            drained = ops.drain(state, target, say=_say, timeout=args.timeout)
            ok = ok and len(drained["moved"]) == len(drained["affected"])
        else:
            _say("  (only one live worker left: nothing to drain to)")
        step(4, "join: a new worker enrolls and every switcher adds it; a new client joins "
             "preferring it; then that client is revoked")
        joined = join_and_revoke(state)
        ok = ok and joined["ok"]
        step(5, "status")
        ops.status(state, say=_say)
    finally:
        step(6, "lab down")
        build.down(state, say=_say)
    for line in recap(summary, drained, joined):
        _say(line)
    _say(f"\ndemo {'done' if ok else 'FAILED'} in {time.monotonic() - t0:.1f} s"
         + ("" if ok else ": see the timeline above"))
    return 0 if ok else 1


def join_and_revoke(state: LabState) -> dict[str, Any]:
    """The demo's live-fleet step: add a worker, add a client that prefers it, revoke that
    client. `ok`: the worker is warm everywhere, the client reached the service through it,
    and after the revocation no worker has its peer, its token gets 401, its pings stop."""
    worker = fleetops.add_worker(state, say=_say)
    others = [w for w in state.workers if w != worker["worker"] and w not in state.killed]
    client = fleetops.add_client(state, say=_say, workers=[worker["worker"], *others])
    holder = ops.active_workers(state, load_fleet(state.fleet_path)).get(client["client"])
    _say(f"  {client['client']}'s routes are on {holder}")
    removed = fleetops.remove_client(state, client["client"], say=_say)
    ok = (not worker["not_warm"] and client["reaches_service"]
          and holder == worker["worker"] and removed_ok(removed))
    return {"worker": worker, "client": client, "holder": holder, "removed": removed, "ok": ok}


def recap(summary: dict[str, Any], drained: dict[str, Any],
          joined: dict[str, Any] | None = None) -> list[str]:
    """The demo's figures in a few lines."""
    out = ["", "recap:"]
    if summary:
        fast = [f"{c} {ms} ms" for c, ms in summary["fast_path_reported_ms"].items()
                if ms is not None]
        out.append(f"  killed {summary['worker']}: fast path (switcher, last reply to switch): "
                   + (", ".join(fast) or "not reported"))
        cp = summary["control_path_s"]
        out.append("  control path (kill to worker down and every client confirmed): "
                   + (f"{cp:.1f} s" if cp is not None else "incomplete")
                   + f"; other clients moved: {len(summary['others_moved'])}")
    if drained:
        lost = [v for v in drained["lost"].values() if v is not None]
        out.append(f"  drained {drained['worker']}: {len(drained['moved'])}/"
                   f"{len(drained['affected'])} clients moved, lost pings: "
                   + (str(sum(lost)) if lost else "n/a"))
    if joined:
        w, r = joined["worker"], joined["removed"]
        warm = max(w["warm_s"].values(), default=None)
        out.append(f"  joined {w['worker']}: warm peer on every switcher "
                   + (f"within {warm:.2f} s" if warm is not None else "NOT reached")
                   + ", scraped by Prometheus "
                   + (f"{w['scraped_s']:.1f} s after joining" if w["scraped_s"] is not None
                      else "NOT within 30 s")
                   + f"; {joined['client']['client']} placed on {joined['holder']}")
        gone = max(r["peers_gone_s"].values(), default=None)
        out.append(f"  revoked {r['client']}: peer gone from every worker "
                   + (f"within {gone:.2f} s" if gone is not None else "NOT")
                   + f", token HTTP {r['token_status']}, pings "
                   + ("still answered" if r["pings_answered"] else "stopped"))
    return out


def _run(func):
    def run(args: argparse.Namespace) -> int:
        try:
            check_prefix(args.prefix)
            return func(args)
        except (LabError, NetnsError) as exc:
            raise CliError(str(exc)) from None

    return run


def register(subparsers: Any) -> None:
    """Add `lab` and its subcommands to the `wg-failover` parser."""
    lab = subparsers.add_parser(
        "lab", help="the whole system in network namespaces on this machine (root)",
        description="Build the fleet in network namespaces on this machine (a bridge, one "
        "namespace per worker and client, real wireguard-go, the exporter, the responder, "
        "Prometheus, Alertmanager and a switcher per client), then fail workers over and watch. "
        "Needs root, wireguard-go, prometheus and prometheus-alertmanager. Every namespace, "
        "interface and process carries the prefix; state lives in "
        "/run/wg-failover-lab/PREFIX/.")
    sub = lab.add_subparsers(dest="lab_command", metavar="LABCOMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--prefix", default=os.environ.get(PREFIX_ENV, DEFAULT_PREFIX),
                       help=f"names of this lab's namespaces, interfaces and state directory "
                       f"(default ${PREFIX_ENV}, then {DEFAULT_PREFIX!r})")

    def building(p: argparse.ArgumentParser, clients: int) -> None:
        p.add_argument("--workers", type=int, default=3, help="number of workers (default 3)")
        p.add_argument("--clients", type=int, default=clients,
                       help=f"number of clients (default {clients})")
        p.add_argument("--subnet", default="198.18.0.0/24",
                       help="underlay /24 (default 198.18.0.0/24, RFC 2544); the host gets .254 "
                       "on a veth named PREFIX-root to reach the master at .2")
        p.add_argument("--scrape-interval", type=float, default=1.0, metavar="SECONDS",
                       help="Prometheus scrape and rule interval in the lab (default 1; shipped "
                       "prometheus.yml: 5)")

    p = sub.add_parser(
        "up", help="build and start a lab",
        description="Build and start a lab: namespaces PREFIX-* around a bridge, a master "
        "(responder, prometheus, alertmanager with the shipped configs), workers (wireguard-go, "
        "exporter, service 10.99.0.1) and clients (wireguard-go with every worker as a peer, "
        "switcher). Waits until every exporter is scraped and every client has handshakes, "
        "then prints the status. State: /run/wg-failover-lab/PREFIX/.")
    common(p)
    building(p, 5)
    p.set_defaults(func=_run(cmd_up))

    p = sub.add_parser(
        "status", help="workers, clients, assignments and where routes really are",
        description="Workers (the responder's state, their processes, the clients whose routes "
        "are on them), clients (the responder's assignment and version, the peer holding "
        "their routes per `wg show`, the switcher), and the alerts Prometheus has firing.")
    common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=_run(cmd_status))

    p = sub.add_parser(
        "failover", help="kill a worker (crash) and print the timeline",
        description="Kill a worker's wireguard-go and exporter (SIGKILL, as a crash; --cut: "
        "take its link down instead) and print the timeline as it happens: each client's "
        "fast-path switch, the Prometheus alert, Alertmanager, the responder's webhook and "
        "plan, every client's confirmation, and the control-path time. Exit 0 when every "
        "client of the worker ends on a healthy worker and no other client moved.")
    common(p)
    p.add_argument("worker", nargs="?", help="worker to kill (default: the one with most clients)")
    p.add_argument("--timeout", type=float, default=120, help="give up after SECONDS")
    p.add_argument("--cut", action="store_true",
                   help="cut the worker's link (eth0 down) instead of killing its processes")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.set_defaults(func=_run(cmd_failover))

    p = sub.add_parser("revive", help="bring a failed worker back (restart or reconnect)")
    common(p)
    p.add_argument("worker")
    p.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                   help="wait up to SECONDS until the responder calls it up again (the alert "
                   "resolves after 15 s healthy, then the lab's 20 s hold-down)")
    p.set_defaults(func=_run(cmd_revive))

    p = sub.add_parser(
        "drain", help="drain a worker through the responder, clients pinging",
        description="Drain a worker through the responder's API (admin token) while each of "
        "its clients pings 10.99.0.1 every 20 ms; prints each move and the lost pings.")
    common(p)
    p.add_argument("worker")
    p.add_argument("--undo", action="store_true", help="undrain instead")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run(cmd_drain))

    p = sub.add_parser(
        "add-worker", help="a new worker joins the running lab (join + agent)",
        description="Add a worker to the running lab as an operator would: an enrollment key "
        "from the admin API, `wg-failover join` in its new namespace (its key is made there), "
        "wireguard-go from the config join wrote, its exporter (Prometheus finds it through the "
        "responder's targets) and `wg-failover agent`. Prints when each client's switcher has "
        "it as a warm peer (handshake); exit 1 if one does not within 30 s.")
    common(p)
    p.add_argument("--capacity", type=int, default=None, help="clients it takes (default: "
                   "unlimited)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=_run(cmd_add_worker))

    p = sub.add_parser(
        "add-client", help="a new client joins the running lab (join + switcher)",
        description="Add a client: an enrollment key, `wg-failover join` in its namespace, "
        "wireguard-go from the config join wrote, and a switcher with only its state "
        "directory (it follows its view). The responder places it.")
    common(p)
    p.add_argument("--workers", nargs="+", metavar="NAME",
                   help="the workers it may use, in preference order (default: all)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=_run(cmd_add_client))

    p = sub.add_parser(
        "remove-client", help="revoke a client: no peer on any worker, its token refused",
        description="DELETE /v1/clients/NAME (admin): the client leaves the fleet. Prints when "
        "each worker's agent removed its peer, the answer its token now gets and whether it "
        "still reaches the service. Exit 0 when every live worker dropped it within 10 s, its "
        "token gets 401 and its pings go unanswered.")
    common(p)
    p.add_argument("client")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=_run(cmd_remove_client))

    p = sub.add_parser(
        "down", help="stop and remove everything the lab made (only that)",
        description="Stop exactly the lab's processes (pid and start time from its state), "
        "delete its namespaces PREFIX-*, the host's link PREFIX-root and its state directory.")
    common(p)
    p.set_defaults(func=_run(cmd_down))

    p = sub.add_parser(
        "demo", help="up, a failover with its timeline, a drain, a worker joins, a client is "
        "revoked, down (~45 s)",
        description="The main job in one command: lab up, a failover of the busiest worker "
        "with its timeline, a drain of another worker while clients ping, a new worker joining "
        "(warm on every switcher, scraped) and taking a new client, that client revoked (its "
        "peers gone, its token refused, its pings unanswered), status, lab down, and a recap "
        "of the figures. Exit 0 when every step succeeded.")
    common(p)
    building(p, 5)
    p.add_argument("--timeout", type=float, default=90)
    p.set_defaults(func=_run(cmd_demo))
