"""The console script: every component's subcommand is reachable, each loads only itself."""

from __future__ import annotations

import subprocess
import sys


def test_help_lists_every_subcommand():
    res = subprocess.run([sys.executable, "-m", "wg_failover.cli", "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("check", "config", "exporter", "responder", "switcher", "lab"):
        assert f"    {cmd}" in res.stdout
    assert "unavailable" not in res.stdout


def test_a_subcommand_loads_only_its_own_component():
    # The exporter runs on every worker: it must not carry the responder's or switcher's imports.
    code = ("import sys, wg_failover.cli as c; c.build_parser(only='exporter'); "
            "print(sorted(m for m in ('httpx', 'fastapi', 'responder', 'client') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_no_subcommand_prints_help_and_exits_2():
    res = subprocess.run([sys.executable, "-m", "wg_failover.cli"], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "COMMAND" in res.stdout
