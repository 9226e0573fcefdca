"""The programs the tests run, and what a test does when one is missing.

    WG_FAILOVER                   the console script of the venv running the tests
    unavailable(msg)              skip the test; in CI (where scripts/bootstrap installed
                                  everything) fail it instead, so a broken setup cannot pass green
    require_tool(name, install=None, *, strict=False) -> path of `name`, else unavailable(...)
                                  (strict: fail even outside CI)
    run_tool(*argv, cwd=None) -> stdout + stderr of a real tool (promtool, amtool); the test
                                  fails with the output when it exits non-zero
    require_netns()               unavailable(...) unless a namespace lab can run here
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from wg_failover.lab import netns

WG_FAILOVER = str(Path(sys.executable).with_name("wg-failover"))


def unavailable(msg: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def require_tool(name: str, install: str | None = None, *, strict: bool = False) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"`{name}` is not installed (apt-get install {install or name})"
        if strict:
            pytest.fail(msg)
        unavailable(msg)
    return path


def run_tool(*argv: str, cwd: Path | None = None) -> str:
    # Strict: these tests are about the shipped files passing the real tools; without the tool
    # they would prove nothing, so they do not skip quietly.
    tool = require_tool(argv[0], "prometheus prometheus-alertmanager", strict=True)
    proc = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=120,
                          cwd=cwd)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(argv)}` failed ({proc.returncode}):\n{out}")
    return out


def require_netns() -> None:
    problems = netns.preflight()
    if problems:
        unavailable("network-namespace lab unavailable: " + "; ".join(problems))
