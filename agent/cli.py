"""`wg-failover agent` and `wg-failover join`: registered through the `wg_failover.commands`
entry points (one each, so running one loads only this package)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from wg_failover import tls, wg
from wg_failover.cli import CliError, positive_float
from wg_failover.endpoints import split_urls

from .cache import DEFAULT_STATE_DIR, cache_path
from .follow import PeersFollower
from .join import NODE_FILE, JoinError, JoinOptions, join, read_secret
from .run import Agent

AGENT_DESCRIPTION = f"""\
Run on each worker beside its WireGuard interface. Keeps the interface's peers equal to the
clients the fleet allows on this worker: follows the responder (SSE, long-poll fallback,
reconnecting with backoff) and applies every change with as few `wg set` calls as it needs. The
interface is never restarted, and a peer whose key and allowed-ips are already right is never
touched, so live sessions are not disturbed; a removed or revoked client's peer is removed.

What the responder last sent is cached in --state-dir (agent-WORKER.json, 0600) before it is
applied: a responder outage or an agent restart changes nothing, and on start the agent
reconciles the interface to the cache until the responder answers. Without a cache it waits for
the responder and touches no peer. The interface is read back (`wg show IFACE dump`) every
--reconcile-every seconds, so a restarted interface gets its peers again. Each client address
is routed to the interface as wg-quick would (`ip route`, the agent's own protocol number 119,
so it only ever deletes its own routes); --no-routes leaves routing to the operator.

--node FILE (the node.json `wg-failover join` wrote) gives --worker, --interface, --responder,
--token-file and --ca-file; flags given on the command line win. The responder is reached over
HTTPS (pin its CA with --ca-file); a plain http:// responder that is not on this machine is
refused unless --insecure-http is given. Needs CAP_NET_ADMIN (wg set).

Exit code 2 with one line on stderr for a bad flag, file or interface; otherwise runs until
stopped. (Default state dir: {DEFAULT_STATE_DIR}.)
"""

JOIN_DESCRIPTION = """\
Enroll this node with the responder (DESIGN.md "The fleet is live"). Makes the node's WireGuard
private key here (DIR/private.key, 0600; it never leaves the node), sends the public key with an
enrollment key from `wg-failover ctl keys create`, and writes into --state-dir:
  token        the node's API token (0600; shown nowhere else, the responder keeps its sha256)
  IFACE.conf   a working wg-quick config (0600): `wg-quick up DIR/IFACE.conf`
  node.json    name, kind, responder, interface, files: `wg-failover agent --node DIR/node.json`
It does not bring the interface up itself.

The enrollment key's kind decides what the node becomes. A client gets its address from
--address, else from the key, else from the responder's client_pool. A worker gives
--endpoint, --tunnel-address and --exporter (and may give --capacity, --region).

Refusals are printed with the responder's reason and exit code 2 (401 unknown key; 403 expired,
revoked or already used; 409 name or public key taken; 422 a bad field); nothing is registered
then, and a later join into the same --state-dir reuses the private key. A 503 or no answer is
tried again a few times with backoff.
"""


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


# ------------------------------------------------------------------------------------- agent
def register_agent(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "agent", help="on a worker: keep the interface's peers equal to the fleet's clients",
        description=AGENT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node", metavar="FILE",
                   help="node.json written by `wg-failover join` (defaults for the flags below)")
    p.add_argument("--worker", metavar="NAME", help="this worker's fleet name")
    p.add_argument("--interface", metavar="IFACE", help="the worker's WireGuard interface (wg0)")
    p.add_argument("--responder", metavar="URL", action="append",
                   help="responder base URL; repeat it (or separate with commas) for replicas: "
                   "a URL that fails or answers 503 (a standby) is passed over at once")
    p.add_argument("--token-file", metavar="FILE",
                   help="file holding this worker's API token (from join, or the fleet's "
                   "token_sha256)")
    p.add_argument("--ca-file", metavar="FILE",
                   help="CA certificate(s) the https:// responder must chain to")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow a plain http:// responder that is not on this machine")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"where the last peers are cached (default {DEFAULT_STATE_DIR})")
    p.add_argument("--reconcile-every", type=positive_float, default=10.0, metavar="SECONDS",
                   help="read the interface back and put it right this often (default 10)")
    p.add_argument("--no-routes", dest="routes", action="store_false",
                   help="do not route the clients' addresses to the interface (by default each "
                   "peer's allowed-ips get a route, as wg-quick adds them at `up`; say this "
                   "when the client pool is routed to the interface otherwise)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    p.set_defaults(func=run_agent)


def _node_defaults(args: argparse.Namespace) -> None:
    if not args.node:
        return
    try:
        node = json.loads(Path(args.node).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CliError(f"--node {args.node}: cannot read: {type(exc).__name__}") from None
    if not isinstance(node, dict) or node.get("kind") != "worker":
        raise CliError(f"--node {args.node}: not the node.json of a worker")
    for flag, key in (("worker", "name"), ("interface", "interface"),
                      ("responder", "responder"), ("token_file", "token_file"),
                      ("ca_file", "ca_file")):
        value = node.get(key)
        if getattr(args, flag) is None and flag == "responder" and isinstance(value, list) \
                and all(isinstance(v, str) for v in value):
            setattr(args, flag, value)
        elif getattr(args, flag) is None and isinstance(value, str):
            setattr(args, flag, [value] if flag == "responder" else value)


def run_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _node_defaults(args)
    missing = [f"--{f.replace('_', '-')}" for f in ("worker", "interface", "responder",
                                                     "token_file") if not getattr(args, f)]
    if missing:
        raise CliError(f"agent needs {', '.join(missing)} (or --node FILE from join)")
    urls = split_urls(args.responder)
    if not urls:
        raise CliError("--responder: no URL")
    try:
        token = read_secret(args.token_file, "--token-file")
        for url in urls:
            tls.check_responder_url(url, insecure_http=args.insecure_http,
                                    tls_files=bool(args.ca_file or args.tls_cert or args.tls_key),
                                    token="the worker's token (and peers that could be forged "
                                          "on the way)")
        verify: Any = (tls.client_context(args.ca_file, args.tls_cert, args.tls_key)
                       if any(u.startswith("https") for u in urls) else True)
    except (JoinError, tls.TlsError) as exc:
        raise CliError(str(exc)) from None
    try:
        wg.show_dump(args.interface)
    except wg.WgError as exc:
        raise CliError(f"--interface {args.interface}: {exc}") from None
    state = Path(args.state_dir)
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--state-dir {state}: {exc.strerror or exc}") from None
    follower = PeersFollower(urls, args.worker, token, verify=verify,
                             ca_file=args.ca_file)
    agent = Agent(args.worker, args.interface, cache_path(state, args.worker), follower,
                  reconcile_every=args.reconcile_every, manage_routes=args.routes)
    logging.getLogger("wg_failover.agent").info(
        "agent: worker %s, interface %s, following %s", args.worker, args.interface,
        ", ".join(urls))
    signal.signal(signal.SIGTERM, _stop)  # systemd's stop: unwind, a wg call finishes first
    try:
        asyncio.run(agent.run())
    except _Stopped:
        logging.getLogger("wg_failover.agent").info("agent: stopped; the peers stay as they are")
    return 0


class _Stopped(Exception):
    pass


def _stop(_signo: int, _frame: object) -> None:
    raise _Stopped


# -------------------------------------------------------------------------------------- join
def register_join(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "join", help="enroll this node: make its key, register it, write token and config",
        description=JOIN_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", metavar="URL", help="the responder's base URL (https://...)")
    p.add_argument("--enroll-key-file", required=True, metavar="FILE",
                   help="file holding the enrollment key")
    p.add_argument("--name", required=True, help="this node's name in the fleet")
    p.add_argument("--interface", default="wg0", metavar="IFACE",
                   help="the WireGuard interface the config is for (default wg0)")
    p.add_argument("--state-dir", required=True, metavar="DIR",
                   help="where private.key, token, IFACE.conf and node.json are written (0600)")
    p.add_argument("--ca-file", metavar="FILE",
                   help="CA certificate(s) the https:// responder must chain to")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow a plain http:// responder that is not on this machine")
    p.add_argument("--timeout", type=positive_float, default=10.0, metavar="SECONDS",
                   help="per-request timeout (default 10)")
    g = p.add_argument_group("clients")
    g.add_argument("--address", metavar="CIDR",
                   help="this client's address (default: from the key, else the pool)")
    g.add_argument("--routes", nargs="+", default=[], metavar="CIDR",
                   help="prefixes this client routes through the tunnel")
    g.add_argument("--workers", nargs="+", metavar="NAME",
                   help="the workers this client may use, in preference order (default: all)")
    g = p.add_argument_group("workers")
    g.add_argument("--endpoint", metavar="HOST:PORT", help="where clients reach this worker")
    g.add_argument("--tunnel-address", metavar="IP", help="this worker's address in the tunnel")
    g.add_argument("--exporter", metavar="HOST:PORT",
                   help="where Prometheus scrapes this worker's exporter")
    g.add_argument("--capacity", type=_count, metavar="N", help="clients this worker takes")
    g.add_argument("--region", metavar="R", help="this worker's region")
    p.add_argument("--json", action="store_true",
                   help="print what was written as JSON (never the token or the private key)")
    p.set_defaults(func=run_join)


def run_join(args: argparse.Namespace) -> int:
    o = JoinOptions(url=args.url, enroll_key_file=args.enroll_key_file, name=args.name,
                    interface=args.interface, state_dir=args.state_dir, ca_file=args.ca_file,
                    insecure_http=args.insecure_http, address=args.address, routes=args.routes,
                    workers=args.workers, endpoint=args.endpoint,
                    tunnel_address=args.tunnel_address, exporter=args.exporter,
                    capacity=args.capacity, region=args.region, timeout=args.timeout)
    try:
        got = join(o)
    except JoinError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(got, indent=1))
        return 0
    files = got["files"]
    if got["kind"] == "client":
        what = f"address {got['address']}, workers {', '.join(got['workers']) or '(none yet)'}"
        then = (f"wg-quick up {files['config']}; then wg-failover switcher with the token in "
                f"{files['token']}")
    else:
        what = (f"tunnel {got['tunnel_address']}, listen port {got['listen_port']}, "
                f"{got['peers']} peers")
        then = f"wg-quick up {files['config']}; then wg-failover agent --node {files['node']}"
    print(f"joined as {got['kind']} {got['name']} ({what}); wrote {files['private_key']}, "
          f"{files['token']}, {files['config']}, {Path(files['node']).name}.\nnext: {then}")
    return 0


__all__ = ["NODE_FILE", "register_agent", "register_join"]
