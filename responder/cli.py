"""`wg-failover responder`: run the responder (FastAPI on uvicorn, state in SQLite or
PostgreSQL); `wg-failover responder migrate`: a SQLite store into PostgreSQL."""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource

from wg_failover.cli import CliError, fleet_argument
from wg_failover.fleet import load_fleet, parse_host_port, resolve_fleet_path
from wg_failover.tls import TlsError, check_listen, is_loopback, server_tls

from . import limits as L

DEFAULT_DB = "/var/lib/wg-failover/responder.db"
DEFAULT_LISTEN = "0.0.0.0:8080"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "responder",
        help="run the responder: Alertmanager webhook in, client assignments out",
        description=(
            "Run the fleet's authority. It takes Alertmanager webhooks (POST /v1/alerts; labels "
            "`worker` and `action` = failover|drain|notify), keeps worker health and client "
            "assignments in SQLite (WAL; kill -9 safe) or PostgreSQL (--db postgresql://...), "
            "re-plans clients when a worker fails "
            "or is drained, and serves each client its assignment (long-poll, SSE), the "
            "Prometheus http_sd target list (/v1/targets) and /metrics. API docs: /docs."
        ),
    )
    fleet_argument(p)
    p.add_argument("--db", metavar="PATH|URL", default=DEFAULT_DB,
                   help=f"SQLite state file (default {DEFAULT_DB}; created if missing), or a "
                   "postgresql://USER@HOST:PORT/DB URL (docs/deploy.md, PostgreSQL)")
    p.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN,
                   help=f"address to serve on (default {DEFAULT_LISTEN})")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default info")
    tls = p.add_argument_group(
        "TLS", "bearer tokens must not cross a network in clear text: serve HTTPS, or listen on "
        "loopback only (behind a TLS proxy), or say --insecure-http (docs/deploy.md)")
    tls.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM, "
                     "the chain after the leaf)")
    tls.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    tls.add_argument("--tls-client-ca", metavar="FILE",
                     help="mutual TLS: every client must present a certificate from this CA")
    tls.add_argument("--insecure-http", action="store_true",
                     help="serve plain HTTP on a non-loopback address anyway")
    lim = p.add_argument_group(
        "limits", "what one peer can hold; they apply without a proxy in front (docs/responder.md)")
    lim.add_argument("--max-connections", type=int, metavar="N",
                     help="HTTP connections held at once; at the cap an idle one makes room, and "
                     "when all are busy a new one gets 503 + Retry-After (default: the open-file "
                     "limit, raised to its hard limit, less a reserve: 10%%, at least 100)")
    lim.add_argument("--max-streams-per-client", type=int, metavar="N",
                     default=L.DEFAULT_STREAMS_PER_CLIENT,
                     help="SSE streams and long-polls one client holds at once; a newer one "
                     "closes the oldest (default %(default)d)")
    lim.add_argument("--http", choices=("httptools", "h11"), default="httptools",
                     help="HTTP/1.1 parser: httptools (C, about half the CPU per request) or h11 "
                     "(pure Python); both get the same limits (default %(default)s)")
    lim.add_argument("--request-timeout", type=float, metavar="SECONDS",
                     default=L.DEFAULT_REQUEST_TIMEOUT,
                     help="close a connection whose request (line, headers, body) is not "
                     "complete this long after it began, or that sends nothing "
                     "(default %(default)g)")
    lim.add_argument("--report-rate", type=float, metavar="PER_SECOND", default=L.REPORT_RATE,
                     help="client reports per second per client, answered 429 past it "
                     "(default %(default)g)")
    lim.add_argument("--report-burst", type=int, metavar="N", default=L.REPORT_BURST,
                     help="client reports one client may send at once (default %(default)d)")
    lim.add_argument("--report-budget", type=float, metavar="PER_SECOND", default=L.REPORT_BUDGET,
                     help="heartbeat reports a second planned for the whole fleet: each "
                     "report's answer advises switchers a heartbeat of clients / this many "
                     "seconds (at most 120; a switcher keeps its own when longer), so the "
                     "reports' cost stays flat as the fleet grows (default %(default)g)")
    p.set_defaults(func=run)
    sub = p.add_subparsers(dest="responder_command", metavar="COMMAND")
    m = sub.add_parser("migrate", help="copy a SQLite store into an empty PostgreSQL database",
                       description="Copy the responder's SQLite store (stop the responder first) "
                       "into an empty PostgreSQL database: epoch, workers, assignments with "
                       "their versions, alerts, the event log with its ids, de-duplication "
                       "keys, the webhooks' delivery log, the live fleet and its keys.")
    m.add_argument("--from-sqlite", metavar="PATH", required=True, help="the SQLite state file")
    m.add_argument("--db", metavar="URL", required=True,
                   help="postgresql://USER@HOST:PORT/DB (a password may come from PGPASSWORD "
                   "or ~/.pgpass instead of the URL)")
    m.set_defaults(func=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    from .store import StoreError, describe_location, is_postgres
    from .store.migrate import MigrateError, migrate_sqlite_to_postgres

    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    # The summary says what the target holds; the store's start-up notes (a new database, a new
    # epoch that the migration replaces) would only mislead here.
    logging.getLogger("wg_failover.responder").setLevel(logging.ERROR)
    if not is_postgres(args.db):
        raise CliError(f"--db {describe_location(args.db)}: must be a postgresql:// URL")
    try:
        done = migrate_sqlite_to_postgres(args.from_sqlite, args.db)
    except (MigrateError, StoreError) as exc:
        raise CliError(f"migrate: {exc}") from None
    print(done.summary())
    return 0


def _raise_nofile() -> int:
    """Raise the soft open-file limit to the hard one; the soft limit now in force."""
    # Each open SSE stream is a file descriptor; the usual soft limit of 1024 is far too low.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _limits(args: argparse.Namespace, nofile: int) -> tuple[L.Limits, int]:
    """The limits from the options, and the connection cap (below the open-file limit, so
    accept() never runs out of file descriptors)."""
    from .server import file_limit_reserve

    most = nofile - file_limit_reserve(nofile)
    cap = most if args.max_connections is None else args.max_connections
    if not 1 <= cap <= most:
        raise CliError(f"--max-connections {cap}: must be 1 to {most} (the open-file limit is "
                       f"{nofile}, less {nofile - most} for the store, logs and outbound "
                       "connections; raise LimitNOFILE for more)")
    if args.max_streams_per_client < 1:
        raise CliError("--max-streams-per-client must be at least 1")
    if not 0 < args.request_timeout <= 3600:
        raise CliError("--request-timeout must be more than 0 and at most 3600 seconds")
    if not 0 < args.report_rate <= 1e6 or not 1 <= args.report_burst <= 1_000_000:
        raise CliError("--report-rate must be more than 0, --report-burst at least 1")
    if not 0 < args.report_budget <= 1e6:
        raise CliError("--report-budget must be more than 0 and at most 1000000 a second")
    return L.Limits(max_streams_per_client=args.max_streams_per_client,
                    request_timeout=args.request_timeout, report_rate=args.report_rate,
                    report_burst=args.report_burst, report_budget=args.report_budget), cap


def run(args: argparse.Namespace) -> int:
    import prometheus_client
    import uvicorn

    from .app import create_app
    from .server import ConnectionLimiter, Server, protocol_class
    from .store import StoreError, check_store, describe_location

    fleet = load_fleet(args.fleet)
    listen = args.listen
    try:
        hp = parse_host_port(("0.0.0.0" + listen) if listen.startswith(":") else listen)
    except ValueError as exc:
        raise CliError(f"--listen: {exc}") from None
    try:
        tls = server_tls(args.tls_cert, args.tls_key, args.tls_client_ca)
        check_listen(hp.host, tls=tls is not None, insecure_http=args.insecure_http)
    except TlsError as exc:
        raise CliError(str(exc)) from None
    # `_created` series double the output and no rule or dashboard reads them.
    prometheus_client.disable_created_metrics()
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits, max_connections = _limits(args, _raise_nofile())
    if tls is None and args.insecure_http and not is_loopback(hp.host):
        logging.getLogger("wg_failover.responder").warning(
            "--insecure-http: serving plain HTTP on %s; bearer tokens cross the network in "
            "clear text", listen)
    # Open, check and read the store once here (a new one is created and announced here), so
    # that a damaged or unusable --db is one clear error with exit 2, not a startup traceback.
    try:
        check_store(args.db)
    except StoreError as exc:  # StoreCorrupt's message says what to do
        raise CliError(f"cannot open --db {describe_location(args.db)}: {exc}") from None
    app = create_app(fleet, args.db, fleet_path=str(resolve_fleet_path(args.fleet)))
    app.state.limits = limits  # read by the stream front (stream/front.py)
    limiter = ConnectionLimiter(max_connections, limits.request_timeout, limits.write_timeout)
    config = uvicorn.Config(
        app, host=hp.host, port=hp.port, log_level=args.log_level, access_log=False,
        lifespan="on", backlog=4096, timeout_graceful_shutdown=2,
        # No WebSocket routes: an Upgrade would hand the socket to a protocol the cap and the
        # timeouts do not see.
        timeout_keep_alive=75, http=protocol_class(limiter, args.http), ws="none",
        **(tls.uvicorn_kwargs() if tls is not None else {}),
    )
    server = Server(config, limiter)
    server.run()
    # uvicorn exits quietly when startup fails (port taken, unreadable db): say so.
    if not server.started:
        raise CliError(f"responder did not start on {listen} (see the log above)")
    return 0
