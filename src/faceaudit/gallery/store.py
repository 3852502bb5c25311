"""The gallery's database: subjects with consent, encrypted templates, the audit log, settings.

One API over two engines, chosen by URL: SQLite (a file; the embedded default) and PostgreSQL
(``postgresql://...``, through psycopg 3) for production. Every change runs in one transaction
together with its log entry, so after a crash a template is either there with its log entry or
absent. SQL is written once with ``?`` placeholders and translated for psycopg (``%s``).

Erasure. SQLite runs with ``secure_delete`` (deleted content is overwritten with zeros, in the
table and the freed pages) and WAL; after a delete the WAL is checkpointed and truncated, so no
copy of a deleted template stays in the database file or its WAL. A checkpoint cannot finish while
another connection reads an older snapshot (its pages, deleted data included, stay where they are):
:meth:`Store.purge_deleted` then retries for a bounded time and raises :class:`ErasureIncompleteError`
rather than report an erasure that has not happened. PostgreSQL keeps deleted rows
until VACUUM, which runs after each delete (its own write-ahead log keeps old records until the
server recycles the segments: an operator's retention setting, stated in the README).

The SQLite file is created readable by its owner only (0600, whatever the umask); SQLite gives its WAL
and shared-memory files the database file's permissions.

Threads. One :class:`Store` holds one connection, which a server uses from the threads of its pool: every use
of the connection (a transaction, a checkpoint, a purge) holds the store's lock, so statements of two threads
never interleave within one transaction. (Reentrant: a reader called inside a transaction does not deadlock.)
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceaudit.errors import FaceauditError, InputError

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS subjects (subject_id TEXT PRIMARY KEY, consent TEXT NOT NULL,
           created TEXT NOT NULL, expires TEXT)""",
    """CREATE TABLE IF NOT EXISTS templates (template_id {serial},
           subject_id TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
           blob {bytes} NOT NULL, created TEXT NOT NULL, source TEXT)""",
    "CREATE INDEX IF NOT EXISTS templates_subject ON templates(subject_id)",
    "CREATE TABLE IF NOT EXISTS log (seq {bigint} PRIMARY KEY, entry TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # rate-limited operations (the policy's [limits]): one row per use, pruned once out of every window
    "CREATE TABLE IF NOT EXISTS usage (actor TEXT NOT NULL, operation TEXT NOT NULL, at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS usage_actor ON usage(actor, operation, at)",
]
#: The only column types the two databases spell differently.
_TYPES = {"sqlite": {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "bytes": "BLOB", "bigint": "INTEGER"},
          "postgres": {"serial": "BIGSERIAL PRIMARY KEY", "bytes": "BYTEA", "bigint": "BIGINT"}}


class StoreError(FaceauditError):
    """The gallery database refused or failed an operation."""


class ErasureIncompleteError(StoreError):
    """Deleted data could not be purged from the database's files (another connection holds them)."""


#: How long purge_deleted waits, in all, for other readers to let a checkpoint finish (seconds).
CHECKPOINT_WAIT = 10.0


@dataclass(frozen=True)
class TemplateRow:
    template_id: int
    subject_id: str
    blob: bytes
    created: str
    source: str | None


class Tx:
    """A transaction's statements, with ``?`` placeholders whatever the database."""

    def __init__(self, cursor: Any, dialect: str) -> None:
        self._cur = cursor
        self._dialect = dialect

    def run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._dialect == "postgres":
            sql = sql.replace("?", "%s")
        self._cur.execute(sql, tuple(params))
        return self._cur

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.run(sql, params).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row = self.run(sql, params).fetchone()
        return None if row is None else tuple(row)

    def insert_template(self, subject_id: str, blob: bytes, created: str, source: str | None) -> int:
        sql = "INSERT INTO templates (subject_id, blob, created, source) VALUES (?, ?, ?, ?)"
        if self._dialect == "postgres":
            row = self.one(sql + " RETURNING template_id", (subject_id, blob, created, source))
            assert row is not None
            return int(row[0])
        return int(self.run(sql, (subject_id, blob, created, source)).lastrowid)

    def lock_writes(self) -> None:
        """Serialise writers until the transaction ends. SQLite's BEGIN IMMEDIATE already holds the write lock;
        PostgreSQL's READ COMMITTED would let two transactions read the same log tail or usage count."""
        if self._dialect == "postgres":
            self.run("LOCK TABLE log IN SHARE ROW EXCLUSIVE MODE")


class Store:
    """A gallery database: open with :meth:`open` (a SQLite path or a ``postgresql://`` URL)."""

    def __init__(self, conn: Any, dialect: str, location: str, path: Path | None) -> None:
        self._conn: Any = conn
        self.dialect = dialect
        self.location = location  # for messages: never holds a password
        self.path = path  # the SQLite file, None for PostgreSQL
        self.checkpoint_wait = CHECKPOINT_WAIT  # seconds purge_deleted and checkpoint wait for other readers
        self._lock = threading.RLock()  # one connection, used by one thread at a time (module docstring)

    @classmethod
    def open(cls, url: str | Path) -> Store:
        text = str(url)
        if text.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg
            except ImportError:  # pragma: no cover - psycopg is a dependency
                raise StoreError("PostgreSQL needs psycopg: pip install 'psycopg[binary]'") from None
            try:
                pg = psycopg.connect(text)
            except psycopg.OperationalError as exc:
                raise StoreError(f"cannot connect to the gallery database ({exc})") from exc
            store = cls(pg, "postgres", text.split("@")[-1], None)
        else:
            path = Path(text.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(path)
            # transactions are explicit (BEGIN IMMEDIATE); any thread may use the connection, one at a time (_lock)
            lite = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "secure_delete=ON"):
                lite.execute(f"PRAGMA {pragma}")
            store = cls(lite, "sqlite", str(path), path)
        with store.transaction() as tx:
            for sql in _SCHEMA:
                tx.run(sql.format(**_TYPES[store.dialect]))
        return store

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """All or nothing: commit when the block ends, roll back on any error (or a crash)."""
        with self._lock:
            yield from self._transaction()

    def _transaction(self) -> Iterator[Tx]:
        conn = self._live()
        if self.dialect == "sqlite":
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")  # take the write lock now: one writer at a time
            try:
                yield Tx(cur, "sqlite")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        else:
            with conn.transaction(), conn.cursor() as cur:
                yield Tx(cur, "postgres")

    def _live(self) -> Any:
        if self._conn is None:
            raise StoreError(f"the gallery database {self.location} is closed")
        return self._conn

    # --- maintenance ---
    def purge_deleted(self, wait: float | None = None) -> None:
        """Make deleted rows unrecoverable from the database's own files (see the module docstring); on SQLite
        raise ErasureIncompleteError when other readers keep the checkpoint from finishing for ``wait`` seconds
        (default: ``checkpoint_wait``)."""
        with self._lock:
            self._purge(self._live(), self.checkpoint_wait if wait is None else wait)

    def _purge(self, conn: Any, wait: float) -> None:
        if self.dialect == "sqlite":
            if not self.checkpoint(wait):
                raise ErasureIncompleteError(
                    f"erasure is incomplete: another connection to {self.location} holds a read transaction, so "
                    "the deleted data is still in the database file or its WAL (it was removed from the gallery "
                    f"and the log, but its bytes are not yet overwritten; waited {wait:g} s). Close the other "
                    "readers (other faceaudit processes, sqlite3 shells, backup tools) and run "
                    "`faceaudit gallery verify-erasure`, which finishes the purge")
        else:
            conn.autocommit = True  # VACUUM cannot run inside a transaction
            try:
                conn.execute("VACUUM templates")
                conn.execute("VACUUM subjects")
            finally:
                conn.autocommit = False

    def checkpoint(self, wait: float | None = None) -> bool:
        """SQLite: copy the WAL into the database file and truncate it to zero bytes, retrying while other
        connections hold old snapshots, for at most ``wait`` seconds; whether it completed. (The pragma's
        first result column is 1 when it could not finish: ignoring that would leave deleted data behind.)"""
        with self._lock:
            return self._checkpoint(self._live(), wait)

    def _checkpoint(self, conn: Any, wait: float | None) -> bool:
        if self.dialect != "sqlite":
            return True
        wait = self.checkpoint_wait if wait is None else wait
        deadline = time.monotonic() + wait
        try:
            while True:
                # the busy handler waits within one attempt; a short one so the deadline is kept
                conn.execute(f"PRAGMA busy_timeout = {max(1, min(250, int(wait * 1000)))}")
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy is not None and int(busy[0]) == 0:
                    wal = Path(f"{self.path}-wal")
                    return not wal.exists() or wal.stat().st_size == 0
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
        finally:
            conn.execute("PRAGMA busy_timeout = 5000")  # sqlite3.connect's default

    def files(self) -> list[Path]:
        """The database's files on this machine (SQLite: the file and its WAL); none for PostgreSQL."""
        if self.path is None:
            return []
        return [p for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists()]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- reads outside a write ---
    def get_meta(self, key: str) -> Any:
        with self.transaction() as tx:
            row = tx.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else json.loads(row[0])

    def templates(self, subject_id: str | None = None) -> list[TemplateRow]:
        with self.transaction() as tx:
            rows = (tx.rows("SELECT template_id, subject_id, blob, created, source FROM templates "
                            "WHERE subject_id = ? ORDER BY template_id", (subject_id,)) if subject_id is not None
                    else tx.rows("SELECT template_id, subject_id, blob, created, source FROM templates "
                                 "ORDER BY template_id"))
        return [TemplateRow(int(r[0]), str(r[1]), bytes(r[2]), str(r[3]), r[4]) for r in rows]

    def template_ids(self) -> set[int]:
        """The ids of every template (without reading the encrypted blobs)."""
        with self.transaction() as tx:
            return {int(r[0]) for r in tx.rows("SELECT template_id FROM templates")}

    def templates_by_id(self, template_ids: Sequence[int]) -> list[TemplateRow]:
        if not template_ids:
            return []
        marks = ",".join("?" * len(template_ids))
        with self.transaction() as tx:
            rows = tx.rows(f"SELECT template_id, subject_id, blob, created, source FROM templates "
                           f"WHERE template_id IN ({marks})", [int(i) for i in template_ids])
        return [TemplateRow(int(r[0]), str(r[1]), bytes(r[2]), str(r[3]), r[4]) for r in rows]

    def log_rows(self) -> list[tuple[int, str]]:
        with self.transaction() as tx:
            return [(int(s), str(e)) for s, e in tx.rows("SELECT seq, entry FROM log ORDER BY seq")]


def _create_private(path: Path) -> None:
    """Create an empty SQLite file readable by its owner only (an empty file is an empty database)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # os.open's mode is filtered by the umask; fchmod is not
    finally:
        os.close(fd)


def set_meta(tx: Tx, key: str, value: Any) -> None:
    text = json.dumps(value, sort_keys=True)
    if tx.one("SELECT 1 FROM meta WHERE key = ?", (key,)) is None:
        tx.run("INSERT INTO meta (key, value) VALUES (?, ?)", (key, text))
    else:
        tx.run("UPDATE meta SET value = ? WHERE key = ?", (text, key))


def get_meta(tx: Tx, key: str) -> Any:
    row = tx.one("SELECT value FROM meta WHERE key = ?", (key,))
    return None if row is None else json.loads(row[0])


def require_gallery(store: Store) -> None:
    if store.get_meta("gallery") is None:
        store.close()
        raise InputError(f"{store.location} is not a faceaudit gallery; create one with `faceaudit gallery init`")
