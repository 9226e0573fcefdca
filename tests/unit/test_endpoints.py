"""Several responder URLs (wg_failover/endpoints.py): move on after a failure, stay on the one
that works, come back to the first after a while; and the fleet file's `responder.urls`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from wg_failover.endpoints import Endpoints, split_urls
from wg_failover.fleet import ResponderSettings


def test_split_urls_keeps_the_order_and_drops_empties_duplicates_and_slashes():
    assert split_urls("http://a:1/, http://b:2,,http://a:1") == ["http://a:1", "http://b:2"]
    assert split_urls(["http://a:1,http://b:2", "http://c:3"]) == [
        "http://a:1", "http://b:2", "http://c:3"]
    with pytest.raises(ValueError, match="no responder URL"):
        Endpoints([" , "])


def test_moves_on_after_a_failure_stays_and_comes_back_to_the_first_after_a_while():
    now = [0.0]
    eps = Endpoints(["http://a", "http://b", "http://c"], home_after=60, clock=lambda: now[0])
    assert eps.current() == "http://a" and eps.order() == ["http://a", "http://b", "http://c"]
    assert eps.failed("http://a") == "http://b"
    assert eps.failed("http://a") == "http://b"  # an older request's failure moves nothing
    eps.ok("http://b")
    assert not eps.all_failed()
    now[0] = 59
    assert eps.current() == "http://b" and eps.order() == ["http://b", "http://c", "http://a"]
    now[0] = 60
    assert eps.current() == "http://a"  # back home
    for _ in range(3):
        eps.failed()
    assert eps.all_failed() and eps.current() == "http://a"  # round the ring
    eps.ok()
    assert not eps.all_failed()


def test_the_fleet_files_responder_urls():
    assert ResponderSettings().replica_urls() == ["http://127.0.0.1:8080"]
    rs = ResponderSettings(url="http://a:8080", urls=["http://a:8080/", "https://b:8080"])
    assert rs.replica_urls() == ["http://a:8080", "https://b:8080"]
    for bad in ([], ["ftp://x"], ["http://h"] * 17):
        with pytest.raises(ValidationError):
            ResponderSettings(urls=bad)
