"""`wg-failover exporter`: the command line."""

from __future__ import annotations

import argparse
import gc
import getpass
import logging
import os
import sys

from wg_failover.cli import CliError, fleet_argument
from wg_failover.fleet import DEFAULT_FLEET_PATH, FLEET_ENV, load_fleet

from .collector import FleetSource, WireGuardCollector
from .limits import MAX_CONNECTIONS, REQUEST_TIMEOUT
from .metrics import ACTIVE_WINDOW_SECONDS, COMPAT, compat_metrics, help_table

log = logging.getLogger("wg-failover.exporter")

DESCRIPTION = f"""\
Serve WireGuard peer metrics and this worker's health and load signals for Prometheus.

WireGuard is read at every scrape (no background polling, so data is never stale) by running
`wg show all dump`, or `wg show IFACE dump` per --interface. Shelling out to wg(8) works the same
for the kernel module and for wireguard-go. A failed read (missing interface, wg failing or
timing out) sets wgfo_scrape_success 0 and the page is still served with HTTP 200.

Peer names come from the fleet file (the client whose public key matches). The worker's own name,
region and capacity come from --worker, or from the fleet worker whose public key a device has.
Without a fleet file (none given and {DEFAULT_FLEET_PATH} absent) names are just left empty.

Needs CAP_NET_ADMIN for wg (or root); see deploy/wg-failover-exporter.service.

metrics (peers with a handshake in the last {ACTIVE_WINDOW_SECONDS} s count as active):
{help_table()}

with --compat mindflavor, also (MindFlavor/prometheus_wireguard_exporter's names, so dashboards
and alert rules written for it work unchanged; friendly_name is the peer's name from the fleet
file; --compat-remote adds remote_ip and remote_port, empty for a peer without an endpoint):
{help_table(compat_metrics("mindflavor"))}
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "exporter",
        help="serve WireGuard and worker metrics for Prometheus (default :9586)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", default=":9586", metavar="[HOST]:PORT",
                   help="address to serve on (default :9586, every address); /metrics")
    p.add_argument("--interface", "-i", action="append", default=[], metavar="IFACE",
                   help="WireGuard interface to read (repeatable; default: all of them)")
    fleet_argument(p)
    p.add_argument("--worker", metavar="NAME",
                   help="this worker's name in the fleet file (default: the worker whose public "
                   "key an interface has)")
    p.add_argument("--peer-metrics", choices=["on", "off"], default="on",
                   help="off: leave out the per-peer wireguard_peer_* series, keep the counts "
                   "(for workers with very many peers; default on)")
    p.add_argument("--compat", choices=sorted(COMPAT), metavar="{" + ",".join(sorted(COMPAT)) + "}",
                   help="also serve another exporter's peer metrics under its names and labels "
                   "(mindflavor: the Rust prometheus_wireguard_exporter), for its dashboards and "
                   "alert rules; ours stay (default: off)")
    p.add_argument("--compat-remote", action="store_true",
                   help="with --compat mindflavor: add the peer endpoint's remote_ip and "
                   "remote_port labels (its -r switch)")
    p.add_argument("--web-config", metavar="FILE",
                   help="TLS and basic auth, in the exporter-toolkit web-config format "
                   "(subset: see docs/exporter.md)")
    p.add_argument("--wg-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="give up on a `wg show` after this long (default 5)")
    p.add_argument("--hash-password", action="store_true",
                   help="read a password on stdin, print its bcrypt hash (for basic_auth_users)")
    p.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT, metavar="SECONDS",
                   help="close a connection that sends or reads nothing for this long "
                        "(default %(default)g)")
    p.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, metavar="N",
                   help="connections served at once; past that: 503 with Retry-After "
                        "(default %(default)d)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def _fleet_source(args: argparse.Namespace) -> FleetSource | None:
    # --fleet or $WG_FAILOVER_FLEET must load; the default path is used only if it exists.
    path = args.fleet or os.environ.get(FLEET_ENV)
    if not path:
        if not os.path.exists(DEFAULT_FLEET_PATH):
            return None
        path = DEFAULT_FLEET_PATH
    return FleetSource(path, load_fleet(path))


def run(args: argparse.Namespace) -> int:
    from . import server  # here, so `--help` stays fast

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    if args.hash_password:
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline()
        print(server.bcrypt_hash(password.rstrip("\n")))
        return 0
    try:
        host, port = server.parse_listen(args.listen)
    except ValueError as exc:
        raise CliError(f"--listen {exc}") from None
    if args.wg_timeout <= 0:
        raise CliError("--wg-timeout must be positive")
    if args.request_timeout <= 0:
        raise CliError("--request-timeout must be positive")
    if args.max_connections < 1:
        raise CliError("--max-connections must be at least 1")
    if args.compat_remote and args.compat != "mindflavor":
        raise CliError("--compat-remote needs --compat mindflavor")
    fleet = _fleet_source(args)
    if args.worker:
        if fleet is None:
            raise CliError("--worker needs a fleet file (--fleet)")
        names = [w.name for w in fleet.get().workers]
        if args.worker not in names:
            raise CliError(f"--worker {args.worker!r} is not in the fleet file "
                           f"(workers: {', '.join(names)})")
    auth = tls = None
    if args.web_config:
        try:
            cfg = server.load_web_config(args.web_config)
            tls = server.ssl_context(cfg)
            if cfg.users:
                server.bcrypt_check("", next(iter(cfg.users.values())))  # libcrypt present?
                auth = server.BasicAuth(cfg.users)
        except server.WebConfigError as exc:
            raise CliError(str(exc)) from None
    collector = WireGuardCollector(
        args.interface, fleet=fleet, worker=args.worker,
        peer_metrics=args.peer_metrics == "on", wg_timeout=args.wg_timeout,
        compat=args.compat, compat_remote=args.compat_remote,
    )
    try:
        httpd = server.serve(server.make_app(collector, auth), host, port, tls,
                             request_timeout=args.request_timeout,
                             max_connections=args.max_connections)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
    bound = httpd.server_address
    scheme = "https" if tls else "http"
    log.info("serving %s://%s/metrics (interfaces: %s; fleet: %s)",
             scheme, f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}",
             ", ".join(args.interface) or "all", fleet.path if fleet else "none")
    # A scrape at 10,000 peers makes ~100,000 short-lived tuples; without this the collector
    # would trigger many full collections over everything imported at start (measured in
    # bench/exporter.py): freeze the start-up objects and collect the young generation less often.
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
    return 0
