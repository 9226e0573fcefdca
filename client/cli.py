"""`wg-failover switcher`: registered through the `wg_failover.commands` entry point."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
from pathlib import Path

from wg_failover import tls, wg
from wg_failover.cli import CliError, fleet_argument
from wg_failover.endpoints import split_urls
from wg_failover.fleet import FLEET_ENV, Client, Fleet, load_fleet, parse_host_port
from wg_failover.tls import TlsError, client_context

from .bounds import MAX_BODY, MAX_EVENT, MAX_LINE, WireInputError
from .cache import DEFAULT_STATE_DIR, cache_path, load_view, save_view, view_path
from .health import GraySettings
from .metrics import SwitcherMetrics
from .probe import ProbeError
from .reporter import Reporter
from .sources import AuthError, HttpAssignmentSource, describe
from .switcher import Options, Switcher
from .view import HttpViewSource, ViewFollower, first_view, view_fleet

log = logging.getLogger("wg_failover.switcher")

_KIB = {"line": MAX_LINE // 1024, "event": MAX_EVENT // 1024, "body": MAX_BODY // 1024}

DESCRIPTION = f"""\
Run beside a client's WireGuard interface (brought up from `wg-failover config client`). Every
worker is a warm peer with its own tunnel /32; the routes sit on the active worker's peer only.

The switcher probes each worker's tunnel address (ICMP echo through that worker's own peer, every
--interval), and when the active worker misses K probes in a row while a backup answers, it moves
the routes to the best answering backup with one `wg set IFACE peer KEY allowed-ips ...` (no
restart, no new handshake), then tells the responder. It also follows the responder's assignment
(SSE, long-poll fallback) and applies each new version, unless its probes see that worker dead.
The last state is cached in --state-dir, so a restart resumes without the responder and without
touching a healthy active peer. Needs root or CAP_NET_ADMIN (wg) and CAP_NET_RAW (ICMP).

Without a fleet file (no --fleet, no $WG_FAILOVER_FLEET) and with --responder and --token-file,
the switcher follows its view instead: the workers it may use and its own routes, from the
responder (SSE, long-poll fallback), cached in --state-dir beside the assignment. A worker that
joins becomes a warm peer; one that leaves loses its peer (the routes leave it first). Its name
is --client, else the `name` in --state-dir/node.json (written by `wg-failover join`).

Versions only grow within one responder store; the store's epoch (sent with every assignment and
cached) tells a replaced store (its versions start again at 1) from an old message: the switcher
follows the new store and logs a WARNING saying so.

The responder is reached over HTTPS (pin its CA with --ca-file; --tls-cert/--tls-key for mutual
TLS). A plain http:// responder is refused unless it is on this machine (loopback) or
--insecure-http is given: the token would cross the network in clear text. Several responder
URLs (--responder repeated or comma-separated, else the fleet's responder.urls) are replicas:
one that fails or answers 503 is passed over at once; the backoff only once all failed.

What the responder sends is read with bounds: an SSE line {_KIB['line']} KiB (a longer one
drops the connection), an SSE event {_KIB['event']} KiB, a response body or an MQTT payload
{_KIB['body']} KiB; JSON nested too deep for the parser is refused like any malformed message.
Refused input is logged in one line (at most one per 10 s for each kind), never with a traceback.
"""


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    return parse


def _ms(text: str) -> float:
    return _positive(float)(text) / 1000.0


def _ms_or_off(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0.0") else _ms(text)


def _ratio(text: str) -> float:
    value = _positive(float)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be below 1 (a share: 0.10 is 10 %)")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "switcher", help="on a client: probe the tunnels, follow the assignment, switch peers",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    fleet_argument(p)
    p.add_argument("--client", metavar="NAME",
                   help="this client's fleet name (default: `name` in --state-dir/node.json, "
                   "as `wg-failover join` writes it; its responder, token_file and ca_file "
                   "are defaults for those flags too)")
    p.add_argument("--interface", metavar="IFACE",
                   help="the client's WireGuard interface (e.g. wg0; default: `interface` in "
                   "--state-dir/node.json)")
    p.add_argument("--responder", metavar="URL", action="append",
                   help="responder base URL; repeat it (or separate with commas) for replicas: "
                   "one that fails or answers 503 (a standby) is passed over at once (default: "
                   "responder.urls, else responder.url, from the fleet file; without a fleet "
                   "file the switcher follows its view from here)")
    p.add_argument("--token-file", metavar="FILE",
                   help="file holding this client's API token (sent as a bearer token)")
    p.add_argument("--ca-file", metavar="FILE",
                   help="CA certificate(s) the https:// responder's certificate must chain to "
                   "(pins the responder's CA; default: the system's CAs)")
    p.add_argument("--tls-cert", metavar="FILE",
                   help="client certificate to present to the responder (mutual TLS; with "
                   "--tls-key)")
    p.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow a plain http:// responder that is not on this machine (the token "
                   "and assignments then cross the network in clear text: a lab, or a network "
                   "that protects them otherwise)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"where the last applied state is cached (default {DEFAULT_STATE_DIR})")
    p.add_argument("--interval", type=_ms, default=0.1, metavar="MS",
                   help="probe interval per worker in milliseconds (default 100)")
    p.add_argument("-k", "--misses", dest="k", type=_positive(int), default=3, metavar="K",
                   help="missed probes in a row that make a worker down (default 3)")
    p.add_argument("--probe-timeout", type=_ms, default=None, metavar="MS",
                   help="shortest wait for a probe's answer (default: one interval; longer "
                   "automatically on slow paths)")
    p.add_argument("--hold-down", type=float, default=10.0, metavar="SECONDS",
                   help="a worker that went down must answer this long before the fast path "
                   "returns to it (default 10)")
    p.add_argument("--burst-interval", type=_ms_or_off, default=0.01, metavar="MS",
                   help="after the active worker misses a probe, probe it this often (default "
                   "10; 0: off, K misses at --interval)")
    p.add_argument("--burst-misses", type=_positive(int), default=3, metavar="N",
                   help="burst probes missed in a row, after the first miss, that make the "
                   "active worker down (default 3)")
    p.add_argument("--gray-loss", type=_ratio, default=0.10, metavar="RATIO",
                   help="leave the active worker when a burst of 100 probes loses this share "
                   "and a backup is clean (default 0.10)")
    p.add_argument("--gray-rtt-factor", type=_positive(float), default=5.0, metavar="X",
                   help="leave the active worker when its median RTT is X times a clean "
                   "backup's and 20 ms more (default 5)")
    p.add_argument("--no-gray", dest="gray", action="store_false",
                   help="leave the active worker only when it is dead, not when it answers badly")
    p.add_argument("--no-fast-path", dest="fast_path", action="store_false",
                   help="never move on the probes alone: a dead active worker is left only on "
                   "the responder's assignment (the control path alone; for measuring it). "
                   "Probes still run: no assignment is applied onto a worker they see dead")
    p.add_argument("--keepalive", type=_positive(int), default=25, metavar="SECONDS",
                   help="PersistentKeepalive set on worker peers that have none (default 25)")
    p.add_argument("--report-every", type=_positive(float), default=5.0, metavar="SECONDS",
                   help="how often the probe results are checked for a change worth reporting "
                   "(up/down, active, a large RTT or loss change; default 5)")
    p.add_argument("--report-heartbeat", type=_positive(float), default=30.0, metavar="SECONDS",
                   help="send the probe results at least this often even when nothing changed "
                   "(at most 120; default 30); the responder keeps this client's vote that long")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics here, e.g. 127.0.0.1:9587 (default: off)")
    p.add_argument("--mqtt", metavar="URL",
                   help="follow the assignment on this MQTT broker (mqtt://HOST:1883 or "
                   "mqtts://HOST:8883; the client's retained topic) instead of the responder's "
                   "SSE stream; reports still go to the responder")
    p.add_argument("--mqtt-username", metavar="NAME",
                   help="MQTT user name (default: --client, as the broker ACL expects)")
    p.add_argument("--mqtt-password-file", metavar="FILE", help="file holding the MQTT password")
    p.add_argument("--mqtt-ca-file", metavar="FILE",
                   help="CA certificates for mqtts:// (default: the system's)")
    p.add_argument("--once", action="store_true",
                   help="reconcile, apply the current assignment (responder, else cache) and "
                   "exit: 0 applied, 1 not applied")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"],
                   help="log verbosity (default info: one line per decision)")
    p.set_defaults(func=run)


def read_token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--token-file {path}: cannot read: {exc.__class__.__name__}") from None
    if not token or any(c.isspace() for c in token):
        raise CliError(f"--token-file {path}: expected one token on one line")
    return token


def check_responder_url(url: str, *, insecure_http: bool, tls_files: bool) -> None:
    """The core's check (wg_failover.tls), as the switcher's exit-2 error."""
    try:
        tls.check_responder_url(url, insecure_http=insecure_http, tls_files=tls_files,
                                token="the client's token (and assignments that could be "
                                      "forged on the way)")
    except TlsError as exc:
        raise CliError(str(exc)) from None


def tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    """The context every request to the responder verifies with; CliError naming the file."""
    try:
        return client_context(args.ca_file, args.tls_cert, args.tls_key)
    except TlsError as exc:
        files = [f"{flag} {path}" for flag, path in (("--ca-file", args.ca_file),
                 ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)) if path]
        text = str(exc)
        if files and not any(f.split(" ", 1)[1] in text for f in files):
            text += f" ({', '.join(files)})"  # the core's message did not say which file
        raise CliError(text) from None


def node_defaults(args: argparse.Namespace) -> None:
    """Fill --client, --interface, --responder, --token-file and --ca-file, where not given, from
    --state-dir/node.json (what `wg-failover join` writes); CliError when the name is still
    missing or the file is not a client's."""
    path = Path(args.state_dir) / "node.json"
    wanted = ("client", "interface", "responder", "token_file", "ca_file")
    given = bool(args.client and args.interface)
    if all(getattr(args, k) for k in wanted) or given and not path.exists():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"--client and --interface are required (no {path} from "
                       "`wg-failover join` either)") from None
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: cannot read: {exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: not a node.json from `wg-failover join`")
    if data.get("kind", "client") != "client":
        if given:
            return  # another node's file in a shared directory: the flags say all
        raise CliError(f"{path}: kind: {str(data.get('kind'))[:20]!r} is not a client; the "
                       "switcher runs on clients")
    for key, field in zip(wanted, ("name", "interface", "responder", "token_file", "ca_file"),
                          strict=True):
        value = data.get(field)
        if key == "responder" and isinstance(value, list):  # replicas' URLs: split_urls
            value = ",".join(v for v in value if isinstance(v, str))  # takes them joined
        if not getattr(args, key) and isinstance(value, str) and value:
            setattr(args, key, value)
    for key in wanted[:2]:
        if not getattr(args, key):
            raise CliError(f"{path}: {'name' if key == 'client' else key}: is required (or "
                           f"give --{key})")


def follows_view(args: argparse.Namespace) -> bool:
    """No fleet file named (--fleet, $WG_FAILOVER_FLEET) and a responder given: follow the view."""
    return args.fleet is None and not os.environ.get(FLEET_ENV) and bool(args.responder)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines carry no decisions
    node_defaults(args)
    name = args.client
    fleet = client = None
    if follows_view(args):
        urls = split_urls(args.responder)
        if not args.token_file:
            raise CliError("without a fleet file the switcher follows its view from the "
                           "responder: --token-file is required (or give --fleet)")
        if args.mqtt:
            raise CliError("--mqtt needs a fleet file (--fleet); following the view is HTTP")
    else:
        fleet = load_fleet(args.fleet)
        try:
            client = fleet.client(name)
        except KeyError as exc:
            raise CliError(exc.args[0]) from None
        if not fleet.preferences(client):
            raise CliError(f"client {client.name} has no workers")
        urls = split_urls(args.responder or fleet.responder.replica_urls())
    if not urls:
        raise CliError("--responder: no URL")
    token = read_token(args.token_file)
    for url in urls:  # every replica carries the token
        check_responder_url(url, insecure_http=args.insecure_http,
                            tls_files=bool(args.ca_file or args.tls_cert or args.tls_key))
    verify = tls_context(args)
    if args.metrics_listen:
        try:
            parse_host_port(args.metrics_listen)
        except ValueError as exc:
            raise CliError(f"--metrics-listen: {exc}") from None
    try:
        dump = wg.show_dump(args.interface)
    except wg.WgError as exc:
        raise CliError(f"interface {args.interface}: {exc}") from None
    try:
        if fleet is None:
            device = dump.devices.get(args.interface)
            return asyncio.run(_follow_view(args, name, urls, token, verify,
                                            device.public_key if device else None))
        assert client is not None
        return _run(args, fleet, client, urls, token, verify)
    except ProbeError as exc:
        raise CliError(str(exc)) from None
    except wg.WgError as exc:
        raise CliError(f"interface {args.interface}: {exc}") from None


async def _follow_view(args: argparse.Namespace, name: str, urls: list[str],
                       token: str | None, verify: ssl.SSLContext, public_key: str | None) -> int:
    """Get the view (cache first: the responder may be away), then run on it and follow it."""
    source = HttpViewSource(urls, name, token, verify=verify, ca_file=args.ca_file)
    path = view_path(args.state_dir, name)
    view = load_view(path, name)
    where = str(path)
    if args.once:
        import httpx

        try:
            async with source.http_client() as http:
                fresh = await source.fetch_current(http)
            if fresh is not None:
                view, where = fresh, "the responder"  # type: ignore[assignment]
                save_view(path, fresh)  # type: ignore[arg-type]
        except (AuthError, WireInputError, httpx.HTTPError, OSError) as exc:
            log.warning("once: no view from the responder (%s); using the cache",
                        describe(exc, args.ca_file))
    if view is not None:
        log.info("view: v%d from %s: %s", view.version, where,
                 ", ".join(w.name for w in view.workers) or "no workers")
    elif args.once:
        log.error("once: no view from the responder and none cached in %s", path)
        return 1
    else:
        log.info("view: none cached in %s; asking the responder", path)
        view = await first_view(source)
        if view is None:
            return 1
        save_view(path, view)
    try:
        fleet, client = view_fleet(view, public_key, urls[0])
    except ValueError as exc:
        raise CliError(f"view v{view.version} of {name}: {exc}") from None
    switcher = _switcher(args, fleet, client, urls, token, verify)
    switcher.follower = ViewFollower(switcher, view, path, None if args.once else source)
    return await (switcher.run_once() if args.once else switcher.run())


def _run(args: argparse.Namespace, fleet: Fleet, client: Client, urls: list[str],
         token: str | None, verify: ssl.SSLContext) -> int:
    switcher = _switcher(args, fleet, client, urls, token, verify)
    if args.once:
        return asyncio.run(switcher.run_once())
    return asyncio.run(switcher.run())


def _switcher(args: argparse.Namespace, fleet: Fleet, client: Client, urls: list[str],
              token: str | None, verify: ssl.SSLContext) -> Switcher:
    opts = Options(interface=args.interface, interval=args.interval, k=args.k,
                   hold_down=args.hold_down, probe_timeout=args.probe_timeout,
                   keepalive=args.keepalive, report_every=args.report_every,
                   report_heartbeat=args.report_heartbeat,
                   fast_path=args.fast_path, burst_interval=args.burst_interval,
                   burst_misses=args.burst_misses,
                   gray=GraySettings(loss=args.gray_loss, rtt_factor=args.gray_rtt_factor)
                   if args.gray else None)
    metrics = None
    if args.metrics_listen:
        metrics = SwitcherMetrics([w.name for w in fleet.preferences(client)])
        try:
            metrics.serve(args.metrics_listen)
        except OSError as exc:
            raise CliError(f"--metrics-listen {args.metrics_listen}: {exc}") from None
    on_connected = (lambda up: metrics.connected.set(1 if up else 0)) if metrics else None
    if args.mqtt:
        from .mqtt_source import source_from_options

        try:
            source = source_from_options(
                args.mqtt, client.name, username=args.mqtt_username,
                password_file=args.mqtt_password_file, ca_file=args.mqtt_ca_file,
                on_connected=on_connected)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    else:
        source = HttpAssignmentSource(urls, client.name, token, on_connected=on_connected,
                                      verify=verify, ca_file=args.ca_file)
    return Switcher(fleet, client, opts, cache_path(args.state_dir, client.name),
                    source=source, reporter=Reporter(urls, client.name, token, verify=verify),
                    metrics=metrics)
