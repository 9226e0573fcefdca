"""`wg-failover`: one console script, a subcommand per component.

The core owns `check` and `config`; the exporter, responder, switcher and lab register their own
subcommands through the `wg_failover.commands` entry-point group, so this package never imports
them (and a broken component cannot break `check`).
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from pathlib import Path

from .fleet import DEFAULT_FLEET_PATH, FLEET_ENV, FleetError, load_fleet
from .wgquick import KeyFileError, read_private_key, render_client, render_worker

EXIT_USAGE = 2


class CliError(Exception):
    """An error for the user: printed as one clean message, exit code 2, no traceback."""


def positive_float(text: str) -> float:
    """argparse `type=` for a number greater than 0 (seconds, intervals)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def fleet_argument(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """The shared `--fleet` option: components call this so all commands read the fleet alike."""
    parser.add_argument(
        "--fleet",
        metavar="FILE",
        required=required,
        help=f"fleet file (default: ${FLEET_ENV}, then {DEFAULT_FLEET_PATH})",
    )


def cmd_check(args: argparse.Namespace) -> int:
    fleet = load_fleet(args.fleet_file or args.fleet)
    print(
        f"{args.fleet_file or args.fleet or 'fleet'}: OK: {len(fleet.workers)} workers, "
        f"{len(fleet.clients)} clients"
    )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    fleet = load_fleet(args.fleet)
    key = read_private_key(args.private_key_file) if args.private_key_file else None
    try:
        if args.kind == "worker":
            text = render_worker(fleet, args.name, key)
        else:
            text = render_client(fleet, args.name, key, keepalive=args.keepalive,
                                 active=args.active)
    except KeyError as exc:
        raise CliError(exc.args[0]) from None
    if args.output:
        out = Path(args.output)
        out.touch(mode=0o600, exist_ok=True)
        out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI; with `only`, just that component's subcommand is loaded.

    Loading one component rather than all keeps a long-running process (the exporter on every
    worker) free of the others' imports: httpx, FastAPI and friends cost megabytes of RSS.
    """
    parser = argparse.ArgumentParser(
        prog="wg-failover",
        description=(
            "Multi-node WireGuard VPN with automatic failover, the Prometheus way: an exporter "
            "on each worker, Prometheus rules and Alertmanager to detect failure, a responder "
            "that re-plans client assignments, and a switcher on each client that moves routes "
            "between warm peers."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="validate a fleet file and exit (0 = valid, 2 = invalid)",
                       description="Validate a fleet file; every problem is listed with its "
                       "field path. Exit code 0 when valid, 2 when not.")
    p.add_argument("fleet_file", nargs="?", metavar="FLEET", help="fleet file to check")
    fleet_argument(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "config",
        help="print a wg-quick config for a worker or a client",
        description="Print the wg-quick(8) config of a worker or client from the fleet file. "
        "A client gets every worker as a peer (its tunnel /32, keepalive); its routes sit on "
        "the first preferred worker only. Private keys never come from the fleet file: pass "
        "--private-key-file, or fill in the placeholder.",
    )
    p.add_argument("kind", choices=["worker", "client"])
    p.add_argument("name", help="worker or client name from the fleet file")
    fleet_argument(p)
    p.add_argument("--private-key-file", metavar="FILE", help="file holding `wg genkey` output")
    p.add_argument("--keepalive", type=int, default=25, metavar="SECONDS",
                   help="PersistentKeepalive on a client's worker peers (default 25)")
    p.add_argument("--active", metavar="WORKER",
                   help="client only: the worker holding the routes (default: first preferred)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (mode 0600), not stdout")
    p.set_defaults(func=cmd_config)

    eps = sorted(entry_points(group="wg_failover.commands"), key=lambda e: e.name)
    if only is not None and any(ep.name == only for ep in eps):
        eps = [ep for ep in eps if ep.name == only]
    for ep in eps:
        try:
            register = ep.load()
        except Exception as exc:  # a broken component must not take the whole CLI down
            broken = sub.add_parser(ep.name, help=f"(unavailable: {exc})")
            broken.set_defaults(func=_unavailable(ep.name, exc))
            continue
        register(sub)
    return parser


def _unavailable(name: str, exc: Exception):
    def run(_args: argparse.Namespace) -> int:
        raise CliError(f"`{name}` is unavailable: {exc}")

    return run


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    first = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(only=first if first not in ("check", "config") else None)
    args = parser.parse_args(args_list)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except FleetError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USAGE
    except (CliError, KeyFileError) as exc:
        print(f"wg-failover: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
