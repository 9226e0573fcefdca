"""Draw a dashboard's panels from the same PromQL queries with matplotlib, as a PNG.

Grafana is not packaged in Debian or on PyPI, so where it cannot run this draws the panels of a
dashboard JSON from a real Prometheus: one box per panel at its gridPos, time series as lines or
bars, state timelines as coloured bands, stats as big numbers, tables as text. It is a picture of
the same queries, not a pixel copy of Grafana.

    python grafana/render_png.py --prometheus http://127.0.0.1:9090 \
        --dashboard grafana/dashboards/overview.json --minutes 5 -o docs/overview.png

The query helpers at the top (every query of a dashboard, template-variable substitution) have no
dependency beyond the standard library; tests/integration/test_grafana.py uses them to run every
query.
matplotlib is needed only to draw (`pip install -e .[docs]`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Grafana's global variables, as the test and the renderer fill them in. $__rate_interval is
# max(4 x scrape interval, $__interval + scrape interval) in Grafana; 1m is that for a 5 s scrape
# at the default panel widths.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?([a-zA-Z_]\w*)\s*\)\s*$")


@dataclass(frozen=True)
class Query:
    """One PromQL expression a dashboard makes Grafana run."""

    dashboard: str  # uid
    where: str  # human-readable location, e.g. "panel 3 'Worker state' A"
    kind: str  # panel | annotation | variable
    expr: str
    instant: bool = False
    panel_id: int | None = None
    ref_id: str = ""
    legend: str = ""


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    """Every query in a dashboard: panel targets, annotation queries, query variables."""
    uid = dashboard.get("uid", "?")
    out = []
    for panel in iter_panels(dashboard):
        for t in panel.get("targets", []):
            if t.get("expr"):
                out.append(Query(
                    uid, f"panel {panel.get('id')} {panel.get('title')!r} {t.get('refId', '')}",
                    "panel", t["expr"], bool(t.get("instant")) and not t.get("range"),
                    panel.get("id"), t.get("refId", ""), t.get("legendFormat", "")))
    for ann in dashboard.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            out.append(Query(uid, f"annotation {ann.get('name')!r}", "annotation", ann["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var.get("query")
            expr = q.get("query", "") if isinstance(q, dict) else (q or "")
            out.append(Query(uid, f"variable {var.get('name')!r}", "variable", expr))
    return out


def variables_used(expr: str) -> set[str]:
    return {a or b or c for a, b, c in _VAR.findall(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Fill in $name, ${name} and [[name]] as Grafana does; unknown names are an error."""
    merged = {**BUILTINS, **values}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in merged:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return merged[name]

    return _VAR.sub(repl, expr)


def parse_label_values(expr: str) -> tuple[str | None, str]:
    """`label_values(metric, label)` -> (metric, label); `label_values(label)` -> (None, label)."""
    m = _LABEL_VALUES.match(expr)
    if not m:
        raise ValueError(f"not a label_values() query: {expr!r}")
    return m.group(1), m.group(2)


# ---------------------------------------------------------------------- Prometheus HTTP API
def prom_get(base: str, path: str, params: Mapping[str, str] | list[tuple[str, str]],
             timeout: float = 10) -> Any:
    """GET a Prometheus API path; its `data`, or ValueError with Prometheus's own error text."""
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    if body.get("status") != "success":
        raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]


def label_values(base: str, expr: str, values: Mapping[str, str] | None = None) -> list[str]:
    """What Grafana offers for a `label_values()` variable query."""
    metric, label = parse_label_values(substitute(expr, values or {}))
    params = [("match[]", metric)] if metric else []
    return prom_get(base, f"/api/v1/label/{label}/values", params)


def run_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    return prom_get(base, "/api/v1/query_range",
                    {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                     "step": f"{step:g}"})["result"]


def run_instant(base: str, expr: str, at: float | None = None) -> list[dict]:
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    data = prom_get(base, "/api/v1/query", params)
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def has_finite_value(result: list[dict]) -> bool:
    """True when any series carries a real number (histogram_quantile of no events gives NaN)."""
    for series in result:
        points = series.get("values") or ([series["value"]] if "value" in series else [])
        for _, v in points:
            if math.isfinite(float(v)):
                return True
    return False


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    if not fmt or fmt == "__auto":
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


# ---------------------------------------------------------------------- drawing
_COLORS = {"green": "#37872d", "red": "#c4162a", "orange": "#fa6400", "yellow": "#e0b400",
           "blue": "#1f60c4", "transparent": "#2a2d33", "purple": "#8f3bb8"}
_BG, _PANEL_BG, _FG, _GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"


def _color(name: str | None) -> str:
    return _COLORS.get(name or "", name or _FG)


def _threshold_color(defaults: Mapping[str, Any], value: float) -> str:
    color = "green"
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step["value"] is None or value >= step["value"]:
            color = step["color"]
    return _color(color)


def _mapped(defaults: Mapping[str, Any], value: float) -> tuple[str, str] | None:
    for m in defaults.get("mappings", []):
        if m["type"] == "value":
            key = f"{value:g}"
            if key in m["options"]:
                o = m["options"][key]
                return o["text"], _color(o.get("color"))
        elif m["type"] == "range":
            lo, hi = m["options"].get("from"), m["options"].get("to")
            if (lo is None or value >= lo) and (hi is None or value <= hi):
                r = m["options"]["result"]
                return r["text"], _color(r.get("color"))
    return None


def fmt_value(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    if unit == "s":
        if value >= 3600:
            return f"{value / 3600:.1f} h"
        if value >= 60:
            return f"{value / 60:.1f} min"
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"
    if unit in ("Bps", "decbytes"):
        suffix = "/s" if unit == "Bps" else ""
        for div, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if abs(value) >= div:
                return f"{value / div:.1f} {name}{suffix}"
        return f"{value:.0f} B{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def render(base: str, dashboard: Mapping[str, Any], out: Path, *, minutes: float = 10,
           values: Mapping[str, str] | None = None, end: float | None = None) -> None:
    """Draw every panel of `dashboard` from Prometheus at `base` over the last `minutes`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    values = dict(values or {})
    end = end or time.time()
    start = end - minutes * 60
    # Grafana's $__interval is about range / max data points; the bars of per-interval counts
    # are only right when the step equals it.
    step = float(max(1, round((end - start) / 200)))
    values.setdefault("__range", f"{int(end - start)}s")
    values.setdefault("__interval", f"{step:g}s")
    panels = [p for p in iter_panels(dashboard) if p.get("type") != "row"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_w, unit_h = 0.75, 0.42  # inches per grid column / row
    fig = plt.figure(figsize=(24 * unit_w, rows * unit_h + 0.8), facecolor=_BG)
    names = ", ".join(f"{a['name']} = {a.get('iconColor')}"
                      for a in dashboard.get("annotations", {}).get("list", []))
    fig.suptitle(f"{dashboard['title']}  (drawn from Prometheus with matplotlib; last "
                 f"{minutes:g} min; dashed lines: {names or 'none'})", color=_FG, fontsize=13,
                 x=0.01, ha="left", y=0.995)
    top = rows * unit_h / (rows * unit_h + 0.8)
    annotations = _annotation_times(base, dashboard, values, start, end, step)

    for p in panels:
        g = p["gridPos"]
        kind = p["type"]
        # Graphs keep room on the left for their axis labels, inside the panel's box.
        pad = {"timeseries": 0.045, "state-timeline": 0.09}.get(kind, 0.0)
        left = g["x"] / 24 + 0.004 + pad * 24 / max(g["w"], 6) / 3
        width = g["w"] / 24 - 0.008 - (left - g["x"] / 24 - 0.004)
        height = (g["h"] / rows) * top - 0.03
        bottom = top - (g["y"] + g["h"]) / rows * top + 0.012
        ax = fig.add_axes((left, bottom, width, height), facecolor=_PANEL_BG)
        ax.set_title(p["title"], color=_FG, fontsize=10, loc="left")
        for spine in ax.spines.values():
            spine.set_color(_GRID)
        ax.tick_params(colors=_FG, labelsize=7)
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        try:
            if kind == "timeseries":
                _draw_timeseries(ax, base, p, defaults, values, start, end, step, annotations)
                ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
            elif kind == "state-timeline":
                _draw_timeline(ax, base, p, defaults, values, start, end, step, annotations)
                ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
            elif kind in ("stat", "gauge", "bargauge"):
                _draw_stat(ax, base, p, defaults, values, end)
            elif kind == "table":
                _draw_table(ax, base, p, defaults, values, end)
            else:
                ax.text(0.5, 0.5, f"({kind})", color=_FG, ha="center", transform=ax.transAxes)
        except ValueError as e:  # a query error is shown in the panel, as Grafana does
            ax.text(0.5, 0.5, str(e)[:80], color=_COLORS["red"], ha="center",
                    transform=ax.transAxes, fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=_BG)
    plt.close(fig)


def _annotation_times(base, dashboard, values, start, end, step) -> list[tuple[float, str, str]]:
    marks = []
    for ann in dashboard.get("annotations", {}).get("list", []):
        if not ann.get("expr") or not ann.get("enable", True):
            continue
        for s in run_range(base, substitute(ann["expr"], values), start, end, step):
            # Each run of consecutive points is one event; mark where it starts.
            prev: float | None = None
            for ts, _ in s["values"]:
                t = float(ts)
                if prev is None or t - prev > step * 1.5:
                    marks.append((t, _color(ann.get("iconColor")),
                                  legend(ann.get("titleFormat", ""), s["metric"])))
                prev = t
    return marks


def _draw_annotations(ax, annotations) -> None:
    from datetime import datetime

    for t, color, _text in annotations:
        ax.axvline(datetime.fromtimestamp(t), color=color, linestyle="--", linewidth=1, alpha=0.9)


def _draw_timeseries(ax, base, p, defaults, values, start, end, step, annotations) -> None:
    from datetime import datetime

    unit = defaults.get("unit", "")
    negative = {o["matcher"]["options"] for o in p["fieldConfig"].get("overrides", [])
                if any(pr["id"] == "custom.transform" for pr in o["properties"])}
    dashed = {o["matcher"]["options"] for o in p["fieldConfig"].get("overrides", [])
              if any(pr["id"] == "custom.lineStyle" for pr in o["properties"])}
    bars = defaults.get("custom", {}).get("drawStyle") == "bars"
    any_data = False
    for t in p["targets"]:
        for s in run_range(base, substitute(t["expr"], values), start, end, step):
            xs = [datetime.fromtimestamp(float(ts)) for ts, _ in s["values"]]
            ys = [float(v) for _, v in s["values"]]
            if t["refId"] in negative:
                ys = [-y for y in ys]
            label = legend(t.get("legendFormat", ""), s["metric"])
            if bars:  # at least 1/150 of the range wide, or a 1 s bar is invisible
                ax.bar(xs, ys, width=max(step, (end - start) / 150) / 86400, label=label,
                       alpha=0.85)
            else:
                ax.plot(xs, ys, label=label, linewidth=1.4,
                        linestyle="--" if t["refId"] in dashed else "-",
                        marker="o" if defaults.get("custom", {}).get("showPoints") == "always"
                        else None, markersize=3)
            any_data = True
    _draw_annotations(ax, annotations)
    ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
    custom = defaults.get("custom", {})
    lo = defaults.get("min", custom.get("axisSoftMin"))
    if lo is not None and not negative:
        ax.set_ylim(bottom=min(lo, ax.get_ylim()[0]))
    if defaults.get("max") is not None:
        ax.set_ylim(top=defaults["max"] * 1.02)
    ax.grid(color=_GRID, linewidth=0.5)
    ax.yaxis.set_major_formatter(lambda v, _pos: fmt_value(abs(v), unit))
    if any_data:
        ax.legend(fontsize=7, loc="upper left", facecolor=_PANEL_BG, labelcolor=_FG,
                  edgecolor=_GRID, ncol=2)
    else:
        ax.text(0.5, 0.5, "No data", color=_FG, ha="center", transform=ax.transAxes)


def _draw_timeline(ax, base, p, defaults, values, start, end, step, annotations) -> None:
    from datetime import datetime

    rows = []
    for t in p["targets"]:
        for s in run_range(base, substitute(t["expr"], values), start, end, step):
            rows.append((legend(t.get("legendFormat", ""), s["metric"]), s["values"]))
    rows.sort(key=lambda r: r[0])
    for i, (_name, points) in enumerate(rows):
        for ts, v in points:
            value = float(v)
            mapped = _mapped(defaults, value)
            color = mapped[1] if mapped else _threshold_color(defaults, value)
            ax.barh(i, step / 86400, left=datetime.fromtimestamp(float(ts)), height=0.8,
                    color=color, linewidth=0)
        # Label each run of equal values once, at its start, as Grafana's "showValue" would.
        prev = None
        for ts, v in points:
            if v != prev:
                mapped = _mapped(defaults, float(v))
                ax.text(datetime.fromtimestamp(float(ts)), i, " " + (mapped[0] if mapped else v),
                        color="white", va="center", fontsize=7)
            prev = v
    _draw_annotations(ax, annotations)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
    ax.invert_yaxis()


def _draw_stat(ax, base, p, defaults, values, at) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    t = p["targets"][0]
    result = run_instant(base, substitute(t["expr"], values), at)
    # Several queries in one stat: Grafana shows each value; here they share the box.
    extra = [r for t2 in p["targets"][1:]
             for r in run_instant(base, substitute(t2["expr"], values), at)[:1]]
    if not result:
        ax.text(0.5, 0.45, "No data", color=_FG, ha="center", va="center",
                transform=ax.transAxes, fontsize=14)
        return
    s = result[0]
    value = float(s["value"][1])
    if p.get("options", {}).get("textMode") == "name":
        text = legend(t.get("legendFormat", ""), s["metric"])
    else:
        mapped = _mapped(defaults, value)
        text = mapped[0] if mapped else fmt_value(value, defaults.get("unit", ""))
        if extra:
            text = " / ".join([text] + [fmt_value(float(r["value"][1]), defaults.get("unit", ""))
                                        for r in extra])
    ax.set_facecolor(_threshold_color(defaults, value))
    ax.text(0.5, 0.42, text, color="white", ha="center", va="center", transform=ax.transAxes,
            fontsize=22, fontweight="bold")


def _draw_table(ax, base, p, defaults, values, at) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    organize = next((t["options"] for t in p.get("transformations", [])
                     if t["id"] == "organize"), {})
    rename = organize.get("renameByName", {})
    hidden = {k for k, v in organize.get("excludeByName", {}).items() if v}
    unit_of = {o["matcher"]["options"]: pr["value"]
               for o in p["fieldConfig"].get("overrides", []) for pr in o["properties"]
               if pr["id"] == "unit"}
    # Grafana's "merge": one row per distinct label set, one column per query.
    rows: dict[tuple, dict[str, str]] = {}
    label_cols: list[str] = []
    value_cols = []
    for t in p["targets"]:
        col = rename.get(f"Value #{t['refId']}", t["refId"])
        value_cols.append(col)
        unit = unit_of.get(col, defaults.get("unit", ""))
        for s in run_instant(base, substitute(t["expr"], values), at):
            labels = {k: v for k, v in s["metric"].items() if k not in hidden and k != "__name__"}
            for k in labels:
                if k not in label_cols:
                    label_cols.append(k)
            key = tuple(sorted(labels.items()))
            row = rows.setdefault(key, dict(labels))
            value = float(s["value"][1])
            mapped = _mapped(defaults, value) if unit == defaults.get("unit") else None
            row[col] = mapped[0] if mapped else fmt_value(value, unit)
    order = organize.get("indexByName", {})
    label_cols.sort(key=lambda c: order.get(c, len(order)))
    header = [rename.get(c, c) for c in label_cols] + value_cols
    cells = [[r.get(c, "") for c in label_cols] + [r.get(c, "") for c in value_cols]
             for r in sorted(rows.values(), key=lambda r: [r.get(c, "") for c in label_cols])]
    if not cells:
        ax.text(0.5, 0.5, "No data", color=_FG, ha="center", transform=ax.transAxes)
        return
    table = ax.table(cellText=cells[:12], colLabels=header, loc="upper center",
                     cellLoc="left", bbox=(0, max(0.0, 1 - 0.1 * (len(cells[:12]) + 1)), 1,
                                           min(1.0, 0.1 * (len(cells[:12]) + 1))))
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for cell in table.get_celld().values():
        cell.set_facecolor(_PANEL_BG)
        cell.set_edgecolor(_GRID)
        cell.get_text().set_color(_FG)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Draw a Grafana dashboard's panels from the same PromQL queries with "
                    "matplotlib (for docs where Grafana cannot run).")
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--dashboard", required=True, type=Path, help="dashboard JSON file")
    parser.add_argument("--minutes", type=float, default=10, help="time range (default 10)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="template variable value (repeatable), e.g. --var worker=w1")
    parser.add_argument("-o", "--output", required=True, type=Path, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        dashboard = json.loads(args.dashboard.read_text())
        values = dict(v.split("=", 1) for v in args.var)
        values.setdefault("datasource", "prometheus")
        render(args.prometheus, dashboard, args.output, minutes=args.minutes, values=values)
    except (OSError, ValueError, KeyError) as e:
        print(f"render_png: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
