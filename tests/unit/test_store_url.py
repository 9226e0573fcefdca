"""`--db` as messages show it: a PostgreSQL URL without its password, wherever the URL holds one;
a SQLite path as it is."""

from __future__ import annotations

import pytest

from wg_failover.responder.store import describe_location
from wg_failover.responder.store.postgres_faults import scrub, secrets_in


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://wgfo:pw@db:5432/wgfo", "postgresql://wgfo@db:5432/wgfo"),
    ("postgres://wgfo:p%40ss@db/wgfo?sslmode=require&password=pw2",
     "postgres://wgfo@db/wgfo?sslmode=require"),
    ("postgresql://wgfo:pw@db1:5432,db2:5432/wgfo?target_session_attrs=read-write",
     "postgresql://wgfo@db1:5432,db2:5432/wgfo?target_session_attrs=read-write"),
    ("postgresql:///wgfo?host=/run/postgresql", "postgresql:///wgfo?host=/run/postgresql"),
    ("POSTGRESQL://u:a:b@c@[::1]:5/d", "postgresql://u@[::1]:5/d"),
    ("/var/lib/wg-failover/responder.db", "/var/lib/wg-failover/responder.db"),
])
def test_the_url_is_shown_without_its_password(url: str, shown: str):
    assert describe_location(url) == shown


def test_every_form_of_the_password_is_scrubbed_from_a_message():
    url = "postgresql://wgfo:p%40ss@db/wgfo?password=other"
    found = secrets_in(url)
    assert set(found) == {"p%40ss", "p@ss", "other"}
    text = 'bad token "p%40ss" for p@ss, then other'
    assert scrub(text, found) == 'bad token "***" for ***, then ***'
