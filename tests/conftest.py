"""Shared fixtures: fleets, and network-namespace labs on real wireguard-go."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import settings
from wg_failover.lab import netns
from wg_failover.lab.gen import generate_fleet

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()

# CI runs the property tests on a fixed seed so a red build can be replayed; locally they explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def require_netns() -> None:
    """Skip where a lab cannot run; in CI, where it must run, fail instead of skipping."""
    problems = netns.preflight()
    if problems:
        msg = "network-namespace lab unavailable: " + "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def netlab():
    """A NetLab with a prefix unique to this test; everything it made is removed afterwards."""
    require_netns()
    prefix = f"t{os.getpid() % 1000:03d}{next(_counter) % 100:02d}"
    lab = netns.NetLab(prefix)
    lab.up()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def small_fleet():
    """3 workers, 2 clients, keys from the real `wg genkey`."""
    return generate_fleet(3, 2)
