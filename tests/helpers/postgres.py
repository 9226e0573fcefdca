"""A real PostgreSQL (Debian's `postgresql` package) for tests: its own cluster in a temporary
folder, on a free loopback port, stopped and removed afterwards.

    PgServer.start(fsync=False) -> PgServer
        initdb + pg_ctl start (as the `postgres` user when the tests run as root: PostgreSQL
        refuses to run as root). Password authentication (scram) over TCP, so URLs carry a real
        password. fsync=False for speed; bench/ starts one with fsync on.
    server.url(dbname="postgres") -> "postgresql://wgfo:PASSWORD@127.0.0.1:PORT/DBNAME"
    server.create_db() -> URL of a new, empty database;  server.drop_db(url)
    server.sql(url, statement, params=()) -> rows (autocommit; [] for statements without any)
    server.stop() / server.start_again()   stop or start the same cluster (a lost database)
    server.close()                         stop and remove everything
    shared_server() -> PgServer            one server for this process, started on first use and
                                           stopped at exit (ResponderProc with WGFO_TEST_STORE)

Fixtures (tests/conftest.py registers this module as a plugin):
    pg_server   one server for the whole session (unavailable() when PostgreSQL is not installed:
                a skip, a failure in CI)
    pg_url      a fresh database on it for one test, dropped afterwards
    store_backend   parametrized "sqlite" | "postgres": a Backend for one test, for tests that must
                hold for every store backend:
        backend.location      what `--db` / open_store take
        backend.shown         how logs and errors name it (the URL without its password)
        backend.sql(stmt, params=())   raw SQL on the store's database ("?" placeholders;
                                       SQLite's when the store is SQLite)
        with backend.write_lock(): ...  another connection holds the write lock a commit needs
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .tools import unavailable
from .wait import free_port

PREFIX = "wgfo-pg-"
ROLE = "wgfo"


def pg_bin(tool: str) -> str | None:
    """`tool` (initdb, pg_ctl) of the newest PostgreSQL installed, else None."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return found[-1] if found else shutil.which(tool)


def _run_as() -> list[str]:
    """PostgreSQL will not run as root: as root, run its tools as the `postgres` user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        unavailable("running as root and there is no `postgres` user to run PostgreSQL as "
                    "(apt-get install postgresql creates it)")
    return ["runuser", "-u", "postgres", "--"]


class PgServer:
    def __init__(self, root: Path, port: int, password: str, fsync: bool):
        self.root = root
        self.data = root / "data"
        self.port = port
        self.password = password
        self.fsync = fsync
        self.log = root / "server.log"
        self._n = 0

    @classmethod
    def start(cls, fsync: bool = False) -> PgServer:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            unavailable("PostgreSQL is not installed (apt-get install postgresql)")
        as_user = _run_as()
        root = Path(tempfile.mkdtemp(prefix=PREFIX))
        os.chmod(root, 0o755)
        server = cls(root, free_port(), secrets.token_urlsafe(12), fsync)
        try:
            pwfile = root / "pw"
            pwfile.write_text(server.password + "\n")
            if as_user:
                shutil.chown(root, "postgres")
                shutil.chown(pwfile, "postgres")
            server._tool([initdb, "-D", str(server.data), "-U", ROLE, "--pwfile", str(pwfile),
                          "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                          "--locale=C", "--no-sync"], timeout=120)
            pwfile.unlink()
            server.start_again()
        except BaseException:
            server.close()
            raise
        return server

    def _tool(self, argv: list[str], timeout: float = 60) -> None:
        r = subprocess.run([*_run_as(), *argv], capture_output=True, text=True, timeout=timeout,
                           cwd="/")
        if r.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({r.returncode}): "
                               f"{r.stdout}{r.stderr}\n{log}")

    def start_again(self) -> None:
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=100")
        if not self.fsync:
            opts += " -c full_page_writes=off"
        self._tool([pg_ctl_path(), "start", "-D", str(self.data), "-o", opts, "-l",
                    str(self.log), "-w", "-t", "60"], timeout=90)

    def stop(self) -> None:
        self._tool([pg_ctl_path(), "stop", "-D", str(self.data), "-m", "immediate", "-w",
                    "-t", "30"], timeout=60)

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def sql(self, url: str, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def create_db(self) -> str:
        self._n += 1
        name = f"t{os.getpid()}_{self._n}_{secrets.token_hex(3)}"
        self.sql(self.url(), f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_db(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self.sql(self.url(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_ctl_path() -> str:
    path = pg_bin("pg_ctl")
    assert path is not None
    return path


_shared: list[PgServer] = []


def shared_server() -> PgServer:
    if not _shared:
        _shared.append(PgServer.start())
        atexit.register(_shared[0].close)
    return _shared[0]


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    return shared_server()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    url = pg_server.create_db()
    try:
        yield url
    finally:
        pg_server.drop_db(url)


@dataclass
class Backend:
    kind: str  # sqlite | postgres
    location: str
    shown: str
    server: PgServer | None = None

    def sql(self, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
        if self.server is not None:
            return self.server.sql(self.location, statement.replace("?", "%s"), params)
        import sqlite3

        db = sqlite3.connect(self.location)
        try:
            rows = db.execute(statement, params).fetchall()
            db.commit()
            return rows
        finally:
            db.close()

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        if self.server is not None:
            import psycopg

            with psycopg.connect(self.location, connect_timeout=10) as conn:
                conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")  # opens a transaction
                yield
                conn.rollback()
            return
        import sqlite3

        db = sqlite3.connect(self.location, isolation_level=None, timeout=5)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield
            db.execute("ROLLBACK")
        finally:
            db.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = str(tmp_path / "r.db")
        return Backend("sqlite", path, path)
    from wg_failover.responder.store import describe_location

    url = request.getfixturevalue("pg_url")
    return Backend("postgres", url, describe_location(url),
                   request.getfixturevalue("pg_server"))
