"""The console script: every component's subcommand is reachable, each loads only itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMPONENTS = {"exporter": "wg_failover.exporter", "responder": "wg_failover.responder",
              "switcher": "wg_failover.client", "lab": "wg_failover.lab", "ctl": "wg_failover.ctl",
              "agent": "wg_failover.agent"}


def loaded_after_parser(only: str, candidates: list[str]) -> list[str]:
    """Which of `candidates` are imported once the parser for `only` is built (a fresh process:
    this one has imported everything already)."""
    code = (f"import sys, wg_failover.cli as c; c.build_parser(only={only!r}); "
            f"print(' '.join(m for m in {candidates!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_help_lists_every_subcommand():
    res = subprocess.run([sys.executable, "-m", "wg_failover.cli", "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("check", "config", "exporter", "responder", "switcher", "lab", "ctl", "agent",
                "join"):
        assert f"    {cmd}" in res.stdout
    assert "unavailable" not in res.stdout


@pytest.mark.parametrize("command", sorted(COMPONENTS))
def test_a_subcommand_loads_only_its_own_component(command):
    others = [pkg for cmd, pkg in COMPONENTS.items() if cmd != command]
    assert loaded_after_parser(command, [COMPONENTS[command], *others]) == [COMPONENTS[command]]


def test_the_exporter_loads_no_http_client_or_web_framework():
    # The exporter runs on every worker: httpx and FastAPI would cost megabytes of RSS there.
    assert loaded_after_parser("exporter", ["httpx", "fastapi", "uvicorn"]) == []


def test_no_subcommand_prints_help_and_exits_2():
    res = subprocess.run([sys.executable, "-m", "wg_failover.cli"], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "COMMAND" in res.stdout
