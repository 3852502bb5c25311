"""The throw-away PostgreSQL server of tests/pgserver.py starts, takes writes and reads them back."""

from __future__ import annotations

import psycopg

import pgserver

# conftest.py registers these fixtures for every test; registered here as well, this file also works on its own
# (both registrations share one server, see pgserver.py). Assigned rather than imported by name, which linters
# would flag as redefined by the test arguments.
postgres_dsn = pgserver.postgres_dsn
postgres_db = pgserver.postgres_db


def test_server_takes_writes_and_reads_them_back(postgres_dsn: str) -> None:
    assert postgres_dsn.startswith("postgresql://") and "@127.0.0.1:" in postgres_dsn
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("CREATE TABLE probe (seq BIGINT PRIMARY KEY, entry TEXT NOT NULL)")
        conn.execute("INSERT INTO probe VALUES (%s, %s), (%s, %s)", (1, "Zoë", 2, '{"a":1}'))
        conn.commit()
    with psycopg.connect(postgres_dsn) as conn:  # a second connection sees the committed rows
        rows = conn.execute("SELECT seq, entry FROM probe ORDER BY seq").fetchall()
        assert rows == [(1, "Zoë"), (2, '{"a":1}')]
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        conn.execute("DROP TABLE probe")


def test_fresh_database_per_test(postgres_db: str, postgres_dsn: str) -> None:
    assert postgres_db != postgres_dsn and postgres_db.rsplit("/", 1)[0] == postgres_dsn.rsplit("/", 1)[0]
    with psycopg.connect(postgres_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE t (x INT)")
