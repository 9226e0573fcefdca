"""`wg-failover ctl`: registered through the `wg_failover.commands` entry point."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import quote, urlsplit

from wg_failover import tls
from wg_failover.cli import CliError, positive_float
from wg_failover.endpoints import split_urls
from wg_failover.fleet import FleetError, fleet_data, load_fleet, resolve_fleet_path
from wg_failover.tls import TlsError, client_context

from . import render
from .api import ENV_TOKEN_FILE, Api, read_token

ENV_RESPONDER = "WG_FAILOVER_RESPONDER"

DESCRIPTION = f"""\
The operator's CLI over the responder's admin API: list workers and clients, show one client,
drain and undrain a worker, read the event log, apply a fleet file (with its diff; --dry-run),
create, list and revoke enrollment keys for `wg-failover join`, revoke a client, drain and
remove a worker. Human tables by default, --json prints the API's JSON as it came (for scripts).

It needs the admin token (--token-file, default ${ENV_TOKEN_FILE}); the token is sent as a
bearer token and never printed. The responder is --responder URL, else ${ENV_RESPONDER}, else
responder.urls (or .url) of the fleet file (--fleet, $WG_FAILOVER_FLEET,
/etc/wg-failover/fleet.yaml) when there is one. Several URLs (replicas; --responder again, or
comma-separated) are tried in order: a replica that is down or a standby (503) is passed over.
Pin the responder's CA with --ca-file; --tls-cert/--tls-key for mutual TLS. A plain
http:// responder that is not on this machine is refused unless --insecure-http is given: the
admin token would cross the network in clear text.

Exit codes: 0 done; 2 for every error (refused token, unknown name, unreachable responder,
certificate not verified, store unavailable), with one line on stderr saying what to check.
"""


def _connection_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every ctl command takes; given before or after the subcommand. On the
    subcommands their default is SUPPRESS, so an option given before the subcommand is not
    overwritten by the subcommand's default."""
    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--responder", metavar="URL", action="append", default=d(None),
                   help=f"responder base URL; several (replicas) by giving it again or "
                   f"comma-separated, tried in order (default: ${ENV_RESPONDER}, then "
                   "responder.urls / responder.url from the fleet file)")
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
    p.add_argument("--timeout", type=positive_float, default=d(10.0), metavar="SECONDS",
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

    sp = add("workers", "table of the workers (GET /v1/workers): state, drain, health, load; "
             "`workers remove NAME` drains a worker, then takes it out of the fleet "
             "(DELETE /v1/workers/NAME)", cmd_workers)
    sp.add_argument("action", nargs="?", choices=["remove"], help="remove NAME")
    sp.add_argument("name", nargs="?", metavar="NAME", help="the worker to remove")
    sp = add("clients", "table of the clients and their assignments (GET /v1/clients); "
             "`clients remove NAME` revokes a client: its peers go from every worker, its token "
             "stops working (DELETE /v1/clients/NAME)", cmd_clients)
    sp.add_argument("action", nargs="?", choices=["remove"], help="remove NAME")
    sp.add_argument("name", nargs="?", metavar="NAME", help="the client to revoke")
    sp = add("apply", "apply a fleet file through the API (PUT /v1/fleet) and print the diff; "
             "the file is checked here first, with the same errors as `wg-failover check`; "
             "nodes that joined at run time are kept unless the file names them", cmd_apply)
    sp.add_argument("file", metavar="FILE", help="the fleet file")
    sp.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    sp = add("keys", "enrollment keys for `wg-failover join`: `keys create --kind client|"
             "worker [--reusable] [--expires 24h]` prints a key once; `keys list`; "
             "`keys revoke ID`", cmd_keys)
    sp.add_argument("action", choices=["create", "list", "revoke"])
    sp.add_argument("id", nargs="?", metavar="ID", help="the key to revoke (from `keys list`)")
    sp.add_argument("--kind", choices=["client", "worker"], help="what may join with the key")
    sp.add_argument("--reusable", action="store_true",
                    help="any number of nodes may join with it (default: one)")
    sp.add_argument("--expires", default="24h", metavar="DURATION",
                    help="how long the key works: 90s, 30m, 24h, 7d (default 24h)")
    sp.add_argument("--name", help="the only node name the key may join as")
    sp.add_argument("--address", metavar="CIDR",
                    help="the address the client gets (default: the next free one of "
                    "responder.client_pool)")
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


def responder_urls(args: argparse.Namespace) -> list[str]:
    """--responder (each may hold several, comma-separated), else $WG_FAILOVER_RESPONDER (the
    same), else the fleet file's responder.urls or responder.url (only when a fleet file was
    named or the default one exists)."""
    urls = split_urls(args.responder or os.environ.get(ENV_RESPONDER) or [])
    if urls:
        return urls
    named = args.fleet or os.environ.get("WG_FAILOVER_FLEET")
    if named or resolve_fleet_path(None).exists():
        return load_fleet(named).responder.replica_urls()
    raise CliError(f"no responder: give --responder URL, set ${ENV_RESPONDER}, or --fleet FILE "
                   "(its responder.url)")


def check_url(url: str, *, insecure_http: bool) -> None:
    """The core's check (wg_failover.tls), as ctl's exit-2 error."""
    try:
        tls.check_responder_url(url, insecure_http=insecure_http, token="the admin token")
    except TlsError as exc:
        raise CliError(str(exc)) from None


def connect(args: argparse.Namespace) -> Api:
    urls = responder_urls(args)
    for url in urls:
        check_url(url, insecure_http=args.insecure_http)
    verify: Any = True
    if any(urlsplit(url).scheme == "https" for url in urls):
        try:
            verify = client_context(args.ca_file, args.tls_cert, args.tls_key)
        except TlsError as exc:
            raise CliError(str(exc)) from None
    return Api(urls, read_token(args.token_file), verify, args.timeout)


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


def _removal(args: argparse.Namespace, kind: str) -> str | None:
    if args.action is None:
        if args.name is not None:
            raise CliError(f"unexpected {args.name!r}: did you mean `{kind}s remove NAME`?")
        return None
    if not args.name:
        raise CliError(f"`{kind}s remove` needs the {kind}'s name")
    return args.name


def _print_removed(args: argparse.Namespace, diff: dict[str, Any], what: str) -> None:
    if args.json:
        _print_json(diff)
    else:
        print(f"{what}; fleet version {diff.get('version')}. If the fleet file names it, it "
              "comes back at the next apply: remove it from the file too.")


def cmd_workers(args: argparse.Namespace) -> int:
    name = _removal(args, "worker")

    def body(api: Api) -> None:
        if name is not None:
            # The responder drains first and waits (up to 10 s) for its clients to move.
            diff = api.delete(f"/v1/workers/{quote(name, safe='')}",
                              timeout=max(args.timeout, 30.0))
            _print_removed(args, diff, f"{name}: drained and removed")
            return
        data = api.get("/v1/workers")
        _print_json(data) if args.json else sys.stdout.write(render.workers_table(data))
    return _run(args, body)


def cmd_clients(args: argparse.Namespace) -> int:
    name = _removal(args, "client")

    def body(api: Api) -> None:
        if name is not None:
            diff = api.delete(f"/v1/clients/{quote(name, safe='')}")
            _print_removed(args, diff, f"{name}: revoked (no peer on any worker, token refused)")
            return
        data = api.get("/v1/clients")
        _print_json(data) if args.json else sys.stdout.write(render.clients_table(data))
    return _run(args, body)


def cmd_apply(args: argparse.Namespace) -> int:
    try:
        fleet = load_fleet(args.file)
    except FleetError as exc:
        raise CliError(exc.render().rstrip("\n")) from None

    def body(api: Api) -> None:
        diff = api.put("/v1/fleet", fleet_data(fleet),
                       {"dry_run": "true"} if args.dry_run else None)
        _print_json(diff) if args.json else sys.stdout.write(
            render.fleet_diff(diff, args.dry_run))
    return _run(args, body)


def parse_duration(text: str) -> int:
    """`90s`, `30m`, `24h`, `7d` or plain seconds, as whole seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    num, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(num) * units[unit]
    except ValueError:
        raise CliError(f"--expires {text!r}: write a duration like 90s, 30m, 24h or 7d") from None
    if not 1 <= value <= 365 * 86400:
        raise CliError(f"--expires {text!r}: must be from 1 second to 365 days")
    return int(value)


def cmd_keys(args: argparse.Namespace) -> int:
    if args.action == "create" and args.kind is None:
        raise CliError("`keys create` needs --kind client or --kind worker")
    if args.action == "revoke" and not args.id:
        raise CliError("`keys revoke` needs the key's ID (see `keys list`)")
    expires = parse_duration(args.expires) if args.action == "create" else 0

    def body(api: Api) -> None:
        if args.action == "list":
            data = api.get("/v1/enroll-keys")
            _print_json(data) if args.json else sys.stdout.write(render.keys_table(data))
        elif args.action == "revoke":
            data = api.delete(f"/v1/enroll-keys/{quote(args.id, safe='')}")
            _print_json(data) if args.json else print(f"key {args.id}: revoked")
        else:
            req = {"kind": args.kind, "reusable": args.reusable, "expires_seconds": expires}
            req.update({k: v for k in ("name", "address") if (v := getattr(args, k))})
            data = api.post("/v1/enroll-keys", req)
            if args.json:
                _print_json(data)
            else:
                print(data["key"])
                print(f"(key {data['id']}: {data['kind']}, "
                      f"{'reusable' if data['reusable'] else 'one-time'}, expires "
                      f"{data['expires']}; shown only now: give it to `wg-failover join "
                      "--enroll-key-file`)", file=sys.stderr)
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
