"""The wheel that pip builds from this repository installs everything under `wg_failover/`: no
generic top-level `client`, `responder` or `exporter` lands in site-packages, where another
distribution could own the name, and every console entry point names a module that is in it.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _venv_backend_is_enough() -> bool:
    """Whether the venv's setuptools satisfies [build-system] requires (then no download)."""
    try:
        from packaging.requirements import Requirement

        version = importlib.metadata.version("setuptools")
    except (ImportError, importlib.metadata.PackageNotFoundError):
        return False
    reqs = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    return all(r.name != "setuptools" or r.specifier.contains(version, prereleases=True)
               for r in reqs)


def _source_copy(dest: Path) -> Path:
    # Built in a copy: setuptools writes build/ and *.egg-info beside the sources, which other
    # runs in this checkout share, and a stale build/lib would carry deleted modules along.
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for lic in ROOT.glob("LICEN[CS]E*"):
        shutil.copy2(lic, dest / lic.name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    for folder in set(PYPROJECT["tool"]["setuptools"]["package-dir"].values()):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
            "-w", str(tmp / "out"), str(src)]
    if _venv_backend_is_enough():
        argv.insert(4, "--no-build-isolation")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = (tmp / "out").glob("*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def _dist_info(wheel: zipfile.ZipFile) -> str:
    (info,) = {n.split("/")[0] for n in wheel.namelist() if n.split("/")[0].endswith(".dist-info")}
    return info


def test_everything_installs_under_wg_failover(wheel):
    info = _dist_info(wheel)
    stray = [n for n in wheel.namelist() if not n.startswith(("wg_failover/", info + "/"))]
    assert not stray, f"files outside wg_failover/ and {info}/: {stray}"
    top_level = wheel.read(f"{info}/top_level.txt").decode().split()
    assert top_level == ["wg_failover"]


def test_every_module_of_the_checkout_is_in_the_wheel(wheel):
    # What runs from the checkout is what gets installed: each folder's modules, at its place.
    names = set(wheel.namelist())
    missing = []
    for pkg, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts:
                continue
            installed = "/".join((*pkg.split("."), *rel.parts))
            if installed not in names:
                missing.append(f"{folder}/{rel} (as {installed})")
    assert not missing, "not in the wheel: " + ", ".join(sorted(missing))


def test_entry_points_name_modules_in_the_wheel(wheel):
    info = _dist_info(wheel)
    eps = configparser.ConfigParser(delimiters=("=",))
    eps.optionxform = str  # entry point names are case-sensitive
    eps.read_string(wheel.read(f"{info}/entry_points.txt").decode())
    assert eps.has_option("console_scripts", "wg-failover")
    assert {"exporter", "responder", "switcher", "lab"} <= set(eps["wg_failover.commands"])
    names = set(wheel.namelist())
    for section in eps.sections():
        for name, value in eps[section].items():
            module = value.split(":")[0].strip()
            assert module == "wg_failover" or module.startswith("wg_failover."), (
                f"[{section}] {name} = {value}: not a wg_failover module")
            path = module.replace(".", "/")
            assert f"{path}.py" in names or f"{path}/__init__.py" in names, (
                f"[{section}] {name} = {value}: {module} is not in the wheel")
