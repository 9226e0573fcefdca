"""`wg-failover responder`: run the responder (FastAPI on uvicorn, state in SQLite)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import sqlite3

from wg_failover.cli import CliError, fleet_argument
from wg_failover.fleet import load_fleet, parse_host_port
from wg_failover.tls import TlsError, check_listen, is_loopback, server_tls

DEFAULT_DB = "/var/lib/wg-failover/responder.db"
DEFAULT_LISTEN = "0.0.0.0:8080"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "responder",
        help="run the responder: Alertmanager webhook in, client assignments out",
        description=(
            "Run the fleet's authority. It takes Alertmanager webhooks (POST /v1/alerts; labels "
            "`worker` and `action` = failover|drain|notify), keeps worker health and client "
            "assignments in SQLite (WAL; kill -9 safe), re-plans clients when a worker fails "
            "or is drained, and serves each client its assignment (long-poll, SSE), the "
            "Prometheus http_sd target list (/v1/targets) and /metrics. API docs: /docs."
        ),
    )
    fleet_argument(p)
    p.add_argument("--db", metavar="PATH", default=DEFAULT_DB,
                   help=f"SQLite state file (default {DEFAULT_DB}); created if missing")
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
    p.set_defaults(func=run)


def _raise_nofile() -> None:
    # Each open SSE stream is a file descriptor; the usual soft limit of 1024 is far too low.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            # End the SSE streams first: uvicorn would otherwise wait for them (they never end
            # on their own) until its graceful-shutdown timeout. Switchers reconnect elsewhere.
            app = getattr(self.config, "app", None)
            state = getattr(getattr(app, "state", None), "responder", None)
            if state is not None:
                state.ready = False
                await state.hub.stop()
            await super().shutdown(sockets)

    return Server


def run(args: argparse.Namespace) -> int:
    import prometheus_client
    import uvicorn

    from .app import create_app
    from .store import open_store

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
    _raise_nofile()
    if tls is None and args.insecure_http and not is_loopback(hp.host):
        logging.getLogger("wg_failover.responder").warning(
            "--insecure-http: serving plain HTTP on %s; bearer tokens cross the network in "
            "clear text", listen)
    # Open the store once here so a bad --db is one clear line, not a startup traceback.
    try:
        open_store(args.db).close()
    except (OSError, sqlite3.Error) as exc:
        raise CliError(f"cannot open --db {args.db}: {exc}") from None
    app = create_app(fleet, args.db)
    config = uvicorn.Config(
        app, host=hp.host, port=hp.port, log_level=args.log_level, access_log=False,
        lifespan="on", backlog=4096, timeout_graceful_shutdown=2,
        timeout_keep_alive=75, **(tls.uvicorn_kwargs() if tls is not None else {}),
    )
    server = _server_class()(config)
    server.run()
    # uvicorn exits quietly when startup fails (port taken, unreadable db): say so.
    if not server.started:
        raise CliError(f"responder did not start on {listen} (see the log above)")
    return 0
