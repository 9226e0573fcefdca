"""Human output: plain aligned tables and blocks, from the API's JSON. Pure functions (no I/O),
so tests check them without a responder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, no trailing blanks; None shows as '-'."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in [list(headers), *cells]]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def workers_table(workers: list[dict[str, Any]]) -> str:
    """SUSPECT: `yes` while a quorum of its clients' switches marks it (until the mark ends);
    RTT_MS: the median of its clients' smoothed RTTs and how many clients have a figure."""
    rows = []
    for w in workers:
        cap = w.get("capacity")
        load = f"{w.get('assigned', 0)}/{cap if cap is not None else '-'}"
        med, n = w.get("rtt_ms_median"), w.get("rtt_clients") or 0
        rtt = f"{med:g}({n})" if isinstance(med, (int, float)) and n else None
        rows.append([w.get("name"), w.get("state"), w.get("draining"), w.get("healthy"),
                     bool(w.get("suspect")), load, rtt, w.get("region"), w.get("since")])
    return table(["NAME", "STATE", "DRAINING", "HEALTHY", "SUSPECT", "ASSIGNED", "RTT_MS",
                  "REGION", "SINCE"], rows)


def clients_table(clients: list[dict[str, Any]]) -> str:
    rows = [[c.get("name"), c.get("worker"), c.get("version"), c.get("unusable"),
             c.get("since"), c.get("reason")] for c in clients]
    return table(["NAME", "WORKER", "VERSION", "UNUSABLE", "SINCE", "REASON"], rows)


def events_table(events: list[dict[str, Any]]) -> str:
    rows = [[e.get("id"), e.get("time"), e.get("kind"), e.get("worker"), e.get("client"),
             _data(e.get("data") or {})] for e in events]
    return table(["ID", "TIME", "KIND", "WORKER", "CLIENT", "DATA"], rows)


def _data(data: dict[str, Any]) -> str:
    return " ".join(f"{k}={_cell(v)}" for k, v in sorted(data.items()))


def client_block(name: str, status: dict[str, Any]) -> str:
    """`GET /v1/clients/{name}` as a readable block: assignment, unusable workers, the latest
    probes (one line per worker) and the recent events."""
    a = status.get("assignment") or {}
    out = [f"client   {name}",
           f"worker   {_cell(a.get('worker'))} (version {_cell(a.get('version'))}, "
           f"epoch {_cell(a.get('epoch'))})",
           f"backups  {_cell(a.get('backups'))}",
           f"reason   {_cell(a.get('reason'))}",
           f"since    {_cell(a.get('since'))}",
           f"unusable {_cell(status.get('unusable'))}"]
    probes = status.get("probes")
    if probes:
        out.append(f"\nprobes at {probes.get('time')}:")
        rows = [[w, r.get("up"), r.get("rtt_ms"), r.get("loss")]
                for w, r in sorted((probes.get("workers") or {}).items())]
        out.append(_indent(table(["WORKER", "UP", "RTT_MS", "LOSS"], rows)))
    else:
        out.append("\nprobes   none reported yet")
    events = status.get("events") or []
    if events:
        out.append(f"\nrecent events ({len(events)}):")
        out.append(_indent(events_table(events)))
    else:
        out.append("\nrecent events: none")
    return "\n".join(out).rstrip("\n") + "\n"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip("\n").split("\n"))


def drain_change(before: dict[str, Any] | None, after: dict[str, Any], drain: bool) -> str:
    """What a drain or undrain changed, from the worker before and the API's answer."""
    name = after.get("name")
    verb = "drained" if drain else "undrained"
    was = before.get("assigned", 0) if before else None
    now = after.get("assigned", 0)
    if before is not None and bool(before.get("draining")) == bool(after.get("draining")):
        head = f"{name}: already {verb}"
    else:
        head = f"{name}: {verb}"
    if was is None:
        moved = f"{now} clients assigned now"
    elif was > now:
        moved = f"{was - now} clients moved off it ({was} -> {now} assigned)"
    elif now > was:
        moved = f"{now - was} clients moved onto it ({was} -> {now} assigned)"
    else:
        moved = f"no client moved ({now} assigned)"
    return f"{head}; {moved}; state {after.get('state')}\n"


def fleet_diff(diff: dict[str, Any], dry_run: bool) -> str:
    """What `ctl apply` changed (or would change, `dry_run`)."""
    lines = []
    for key, label in (("workers_added", "+ worker"), ("workers_removed", "- worker"),
                       ("workers_changed", "~ worker"), ("clients_added", "+ client"),
                       ("clients_removed", "- client"), ("clients_changed", "~ client")):
        lines += [f"{label} {n}" for n in diff.get(key) or []]
    if diff.get("settings_changed"):
        lines.append("~ responder settings")
    for n in diff.get("enrolled_kept") or []:
        lines.append(f"= {n} (joined at run time; kept: the file does not name it)")
    changes = [x for x in lines if not x.startswith("=")]
    if not changes:
        head = f"no change (fleet version {diff.get('version')})"
    elif dry_run:
        head = f"dry run: {len(changes)} change(s) would be applied; nothing changed"
    else:
        head = f"applied: fleet version {diff.get('version')}"
    return "\n".join([*lines, head]) + "\n"


def keys_table(keys: list[dict[str, Any]]) -> str:
    rows = [[k.get("id"), k.get("kind"), k.get("reusable"), k.get("uses"), k.get("revoked"),
             k.get("expires"), k.get("name"), k.get("address")] for k in keys]
    return table(["ID", "KIND", "REUSABLE", "USES", "REVOKED", "EXPIRES", "NAME", "ADDRESS"],
                 rows)
