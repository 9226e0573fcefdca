"""Shared fixtures: fleets, network-namespace labs on real wireguard-go, the real responder."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import settings

from tests.helpers.tools import require_netns
from wg_failover.lab import netns
from wg_failover.lab.gen import generate_fleet

# The responder fixtures (`responder`, `responder_factory`) and the PostgreSQL ones (`pg_server`,
# `pg_url`, `store_backend`) for every test, registered once here instead of imported (with a
# `noqa`) into each module that uses them.
pytest_plugins = ["tests.helpers.responder", "tests.helpers.postgres"]

# Kept importable from here for the tests that import it from tests.conftest.
__all__ = ["require_netns"]

_counter = itertools.count()

# CI runs the property tests on a fixed seed so a red build can be replayed; locally they explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Modules marked both_stores run every responder test on SQLite and on PostgreSQL (issue
    # 15); WGFO_TEST_STORE=postgres runs all the others on PostgreSQL too.
    if metafunc.definition.get_closest_marker("both_stores") and \
            "store_kind" in metafunc.fixturenames:
        metafunc.parametrize("store_kind", ["sqlite", "postgres"])


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
