"""The shipped Grafana dashboards and the query helpers of grafana/render_png.py.

    GRAFANA      the repository's grafana/ folder
    DASHBOARDS   its dashboards/*.json, sorted
    rp           grafana/render_png.py as a module (iter_panels, dashboard_queries, substitute,
                 run_instant, run_range, label_values, ...)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def load_render_module() -> ModuleType:
    """grafana/render_png.py holds the query helpers; grafana/ is not a package."""
    spec = importlib.util.spec_from_file_location("wgfo_render_png", GRAFANA / "render_png.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


rp = load_render_module()
