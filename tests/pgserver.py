"""A throw-away PostgreSQL server for the tests: initdb a cluster in a temporary folder, start it on a free local
port, hand out its DSN, stop it and delete the folder at the end.

The gallery runs on SQLite and on PostgreSQL behind one API, and the same tests must pass on both; a real
server (not a mock) is the only way to see PostgreSQL's own locking, types and transaction behaviour. The
server uses Debian's binaries (``apt-get install postgresql``, or ``make postgres``); without them the
fixture skips and says what to install.

* The cluster is private to the test session: trust authentication for one superuser, listening on
  127.0.0.1 only, its unix socket inside the temporary folder (never /var/run/postgresql, which belongs to
  the system's own cluster), fsync off (a crash of the machine may lose a throw-away cluster; a killed
  client or server still recovers from the WAL, which is what crash tests exercise).
* initdb and postgres refuse to run as root. Under root (containers, CI) they run as the ``postgres``
  system user if there is one, else ``nobody``, through ``subprocess``'s ``user=``/``group=`` (no sudo,
  runuser or setpriv needed), and the temporary folder is handed to that user.

Use it through two lines in conftest.py::

    from pgserver import postgres_db, postgres_dsn  # noqa: F401  (fixtures: tests/pgserver.py)

``postgres_dsn`` (session) is the server's ``postgres`` database; ``postgres_db`` (per test) is a fresh
empty database on it, dropped after the test.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "faceaudit"
INSTALL_HINT = "install Debian's PostgreSQL server with `apt-get install postgresql` (as root), or run `make postgres`"
_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class PgBin:
    """The folder holding initdb, pg_ctl and postgres of one PostgreSQL version."""

    bindir: Path

    @property
    def initdb(self) -> str:
        return str(self.bindir / "initdb")

    @property
    def pg_ctl(self) -> str:
        return str(self.bindir / "pg_ctl")


def _complete(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path))


def find_pg_bin() -> PgBin | None:
    """initdb and pg_ctl from PATH, else the newest /usr/lib/postgresql/*/bin; None when there is none.

    Debian keeps the server binaries in /usr/lib/postgresql/VERSION/bin, off PATH; what is on PATH may be a
    symlink into there (as /usr/local/bin/initdb is on this machine) or postgresql-common's pg_wrapper, so
    the link is resolved and the folder used only if initdb, pg_ctl and postgres are all in it (pg_ctl
    starts the postgres next to itself).
    """
    found = shutil.which("initdb")
    if found:
        bindir = Path(os.path.realpath(found)).parent
        if _complete(bindir):
            return PgBin(bindir)
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if _complete(Path(candidate)):
            return PgBin(Path(candidate))
    return None


def _free_port() -> int:
    # Bound and released: another process could take it before the server does, so starting retries.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class _RunAs:
    """Who runs initdb, pg_ctl and postgres: this process's user, or an unprivileged one when that is root."""

    uid: int | None = None
    gid: int | None = None
    name: str | None = None

    @classmethod
    def pick(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        for name in ("postgres", "nobody"):
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                continue
            return cls(pw.pw_uid, pw.pw_gid, name)
        raise RuntimeError("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")

    def run(self, args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # the user's PGHOST etc. stay out
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        if self.uid is not None:
            env.update(HOME=str(cwd), USER=str(self.name), LOGNAME=str(self.name))
            # extra_groups=[] drops root's supplementary groups too
            return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=check,
                                  user=self.uid, group=self.gid, extra_groups=[])  # fmt: skip
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=check)

    def give(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)


class PostgresServer:
    """One throw-away cluster; :meth:`start` then :meth:`stop` (which also deletes its folder)."""

    def __init__(self, pg: PgBin) -> None:
        self.pg = pg
        self.who = _RunAs.pick()
        # mkdtemp is private (0700) to the user creating it; the folder is handed to the user running the
        # server, and /tmp keeps the socket path short (unix socket paths are limited to about 107 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="faceaudit-pg-"))
        self.who.give(self.root)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        try:
            self.who.run([self.pg.initdb, "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                          "--locale=C", "--no-sync"], cwd=self.root)  # fmt: skip
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"initdb failed ({e.returncode}):\n{e.stdout}\n{e.stderr}") from None
        last = ""
        for _ in range(3):  # a fresh port each time: the free one may have been taken in between
            self.port = _free_port()
            options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")  # fmt: skip
            res = self.who.run([self.pg.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options,
                                "-w", "-t", str(int(_START_TIMEOUT)), "start"], cwd=self.root, check=False)  # fmt: skip
            if res.returncode == 0:
                self._wait_ready()
                return self.dsn
            last = f"{res.stdout}\n{res.stderr}\n{self._log_tail()}"
            if "could not bind" not in last and "already in use" not in last:
                break
        raise RuntimeError(f"PostgreSQL did not start:\n{last}")

    def _wait_ready(self) -> None:
        """pg_ctl -w already waited for the postmaster; wait until a client can really log in and query."""
        import psycopg

        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL does not accept connections on {self.dsn}: {e}\n"
                                       f"{self._log_tail()}") from None  # fmt: skip
                time.sleep(0.1)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """Stop at once (-m immediate: nothing in a throw-away cluster is worth a clean shutdown) and delete it."""
        try:
            if (self.data / "postmaster.pid").exists():
                res = self.who.run([self.pg.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                                   cwd=self.root, check=False)  # fmt: skip
                if res.returncode != 0:
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        # pg_ctl could not stop it: kill the one postmaster this cluster started, by the pid it recorded
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)


# One server per process, however many times the fixture is registered: a test module importing it as well as
# conftest.py gives pytest two session fixtures, and both get this server; the last one to finish stops it.
_server: PostgresServer | None = None
_users = 0


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL server started for this test session (database ``postgres``, superuser, trust auth).

    Skips, saying what to install, when the PostgreSQL server or psycopg is missing.
    """
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'psycopg[binary]'")
    pg = find_pg_bin()
    if pg is None:
        pytest.skip(f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
                    f"/usr/lib/postgresql/*/bin: {INSTALL_HINT}")  # fmt: skip
    global _server, _users
    if _server is None:
        server = PostgresServer(pg)
        try:
            server.start()
        except BaseException:
            server.stop()
            raise
        _server = server
    _users += 1
    try:
        yield _server.dsn
    finally:
        _users -= 1
        if _users == 0:
            _server.stop()
            _server = None


@pytest.fixture()
def postgres_db(postgres_dsn: str) -> Iterator[str]:
    """DSN of a fresh, empty database on the session's server, dropped after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # CREATE/DROP DATABASE refuse transactions
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            # WITH (FORCE) ends connections a test left open (PostgreSQL >= 13)
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
