"""`wg-failover ctl`: registered through the `wg_failover.commands` entry point."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import quote, urlsplit

from wg_failover import tls
from wg_failover.cli import CliError
from wg_failover.fleet import load_fleet, resolve_fleet_path
from wg_failover.tls import TlsError, client_context

from . import render
from .api import ENV_TOKEN_FILE, Api, read_token

ENV_RESPONDER = "WG_FAILOVER_RESPONDER"

DESCRIPTION = f"""\
The operator's CLI over the responder's admin API: list workers and clients, show one client,
drain and undrain a worker, read the event log. Human tables by default, --json prints the API's
JSON as it came (for scripts).

It needs the admin token (--token-file, default ${ENV_TOKEN_FILE}); the token is sent as a
bearer token and never printed. The responder is --responder URL, else ${ENV_RESPONDER}, else
responder.url of the fleet file (--fleet, $WG_FAILOVER_FLEET, /etc/wg-failover/fleet.yaml) when
there is one. Pin the responder's CA with --ca-file; --tls-cert/--tls-key for mutual TLS. A plain
http:// responder that is not on this machine is refused unless --insecure-http is given: the
admin token would cross the network in clear text.

Exit codes: 0 done; 2 for every error (refused token, unknown name, unreachable responder,
certificate not verified, store unavailable), with one line on stderr saying what to check.
"""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _connection_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every ctl command takes; given before or after the subcommand. On the
    subcommands their default is SUPPRESS, so an option given before the subcommand is not
    overwritten by the subcommand's default."""
    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--responder", metavar="URL", default=d(None),
                   help=f"responder base URL (default: ${ENV_RESPONDER}, then responder.url "
                   "from the fleet file)")
    p.add_argument("--fleet", metavar="FILE", default=d(None),
                   help="fleet file, only for its responder.url (default: $WG_FAILOVER_FLEET, "
                   "then /etc/wg-failover/fleet.yaml if it exists)")
    p.add_argument("--token-file", metavar="FILE", default=d(None),
                   help=f"file holding the admin token (default: ${ENV_TOKEN_FILE}); should be "
                   "mode 0600")
    p.add_argument("--ca-file", metavar="FILE", default=d(None),
                   help="CA certificate(s) the https:// responder's certificate must chain to")
    p.add_argument("--tls-cert", metavar="FILE", default=d(None),
                   help="client certificate for mutual TLS (with --tls-key)")
    p.add_argument("--tls-key", metavar="FILE", default=d(None), help="the key of --tls-cert")
    p.add_argument("--insecure-http", action="store_true", default=d(False),
                   help="allow a plain http:// responder that is not on this machine")
    p.add_argument("--json", action="store_true", default=d(False),
                   help="print the API's JSON instead of a table")
    p.add_argument("--timeout", type=_positive, default=d(10.0), metavar="SECONDS",
                   help="per-request timeout (default 10)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ctl", help="operator CLI over the responder's admin API",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _connection_options(p, suppress=False)
    sub = p.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        _connection_options(sp, suppress=True)
        sp.set_defaults(func=func)
        return sp

    add("workers", "table of the workers (GET /v1/workers): state, drain, health, load",
        cmd_workers)
    add("clients", "table of the clients and their assignments (GET /v1/clients)", cmd_clients)
    sp = add("client", "one client: assignment, unusable workers, latest probes, recent events "
             "(GET /v1/clients/NAME)", cmd_client)
    sp.add_argument("name", metavar="NAME", help="the client's fleet name")
    for verb, what in (("drain", "move a worker's clients off it and give it no more "
                                 "(POST /v1/workers/NAME/drain)"),
                       ("undrain", "let a drained worker take clients again "
                                   "(POST /v1/workers/NAME/undrain)")):
        sp = add(verb, what, cmd_drain)
        sp.add_argument("name", metavar="NAME", help="the worker's fleet name")
        sp.set_defaults(drain=verb == "drain")
    sp = add("events", "a page of the event log, oldest first (GET /v1/events)", cmd_events)
    sp.add_argument("--after", type=int, default=0, metavar="ID",
                    help="only events after this id (the previous page's last id; default 0)")
    sp.add_argument("--limit", type=int, default=100, metavar="N",
                    help="at most this many events (1..10000, default 100)")


# ------------------------------------------------------------------------------ connection


def responder_url(args: argparse.Namespace) -> str:
    """--responder, else $WG_FAILOVER_RESPONDER, else the fleet file's responder.url (only when
    a fleet file was named or the default one exists)."""
    url = args.responder or os.environ.get(ENV_RESPONDER)
    if url:
        return url
    named = args.fleet or os.environ.get("WG_FAILOVER_FLEET")
    if named or resolve_fleet_path(None).exists():
        return load_fleet(named).responder.url
    raise CliError(f"no responder: give --responder URL, set ${ENV_RESPONDER}, or --fleet FILE "
                   "(its responder.url)")


def check_url(url: str, *, insecure_http: bool) -> None:
    """The core's check (wg_failover.tls), as ctl's exit-2 error."""
    try:
        tls.check_responder_url(url, insecure_http=insecure_http, token="the admin token")
    except TlsError as exc:
        raise CliError(str(exc)) from None


def connect(args: argparse.Namespace) -> Api:
    url = responder_url(args)
    check_url(url, insecure_http=args.insecure_http)
    verify: Any = True
    if urlsplit(url).scheme == "https":
        try:
            verify = client_context(args.ca_file, args.tls_cert, args.tls_key)
        except TlsError as exc:
            raise CliError(str(exc)) from None
    return Api(url, read_token(args.token_file), verify, args.timeout)


def _run(args: argparse.Namespace, body: Any) -> int:
    api = connect(args)
    try:
        body(api)
    finally:
        api.close()
    return 0


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------------ commands


def cmd_workers(args: argparse.Namespace) -> int:
    def body(api: Api) -> None:
        data = api.get("/v1/workers")
        _print_json(data) if args.json else sys.stdout.write(render.workers_table(data))
    return _run(args, body)


def cmd_clients(args: argparse.Namespace) -> int:
    def body(api: Api) -> None:
        data = api.get("/v1/clients")
        _print_json(data) if args.json else sys.stdout.write(render.clients_table(data))
    return _run(args, body)


def cmd_client(args: argparse.Namespace) -> int:
    def body(api: Api) -> None:
        data = api.get(f"/v1/clients/{quote(args.name, safe='')}")
        if args.json:
            _print_json(data)
        else:
            sys.stdout.write(render.client_block(args.name, data))
    return _run(args, body)


def cmd_drain(args: argparse.Namespace) -> int:
    def body(api: Api) -> None:
        name = quote(args.name, safe="")
        # The answer says the worker as it is now; the list before says how many clients it
        # had, so the operator sees how many moved.
        before = next((w for w in api.get("/v1/workers") if w.get("name") == args.name), None)
        after = api.post(f"/v1/workers/{name}/{'drain' if args.drain else 'undrain'}")
        if args.json:
            _print_json(after)
        else:
            sys.stdout.write(render.drain_change(before, after, args.drain))
    return _run(args, body)


def cmd_events(args: argparse.Namespace) -> int:
    if args.after < 0:
        raise CliError("--after must be 0 or more")
    if not 1 <= args.limit <= 10000:
        raise CliError("--limit must be between 1 and 10000")

    def body(api: Api) -> None:
        data = api.get("/v1/events", {"after": args.after, "limit": args.limit})
        if args.json:
            _print_json(data)
            return
        sys.stdout.write(render.events_table(data.get("events") or []))
        print(f"(last id {data.get('last_id')}; next page: --after {data.get('last_id')})")
    return _run(args, body)
