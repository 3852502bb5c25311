"""Sessions of the page at ``/``: a person signs in once with an API key and gets a session cookie.

The cookie holds a random session token (256 bits), never the API key: a copied cookie expires with its
session (:data:`SESSION_SECONDS`), calls no API route, and is useless once its key is revoked or the person
signs out. The database keeps only the token's SHA-256 with the key's id and the expiry, in
``page_sessions`` of the gallery's database (portable SQL, shared by every server process), so a stolen
database yields no session. The key's name and role are read from its record on every request, so a role
changed or a key revoked takes effect at once.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime

from faceaudit.gallery.store import Store
from faceaudit.service import keys

_TABLE = """CREATE TABLE IF NOT EXISTS page_sessions (token_hash TEXT PRIMARY KEY, key_id TEXT NOT NULL,
    created TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL)"""
#: How long a page session lasts (seconds): a working day.
SESSION_SECONDS = 8 * 3600


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_table(store: Store) -> None:
    with store.transaction() as tx:
        tx.run(_TABLE)


def create_session(store: Store, key: keys.ApiKey) -> str:
    """A new session for ``key``; returns its token (for the cookie). Expired sessions are removed."""
    token = secrets.token_urlsafe(32)
    now = time.time()
    with store.transaction() as tx:
        tx.run(_TABLE)
        tx.run("DELETE FROM page_sessions WHERE expires < ?", (now,))
        tx.run("INSERT INTO page_sessions (token_hash, key_id, created, expires) VALUES (?, ?, ?, ?)",
               (_digest(token), key.key_id, datetime.now(UTC).isoformat(timespec="seconds"), now + SESSION_SECONDS))
    return token


def session_key(store: Store, token: str) -> keys.ApiKey | None:
    """The active key of an unexpired session, else None."""
    if not token or len(token) > 100:
        return None
    with store.transaction() as tx:
        tx.run(_TABLE)
        row = tx.one("SELECT key_id FROM page_sessions WHERE token_hash = ? AND expires >= ?",
                     (_digest(token), time.time()))
    if row is None:
        return None
    found = [k for k in keys.list_keys(store) if k.key_id == row[0]]
    return found[0] if found and found[0].active else None


def end_session(store: Store, token: str) -> None:
    with store.transaction() as tx:
        tx.run(_TABLE)
        tx.run("DELETE FROM page_sessions WHERE token_hash = ?", (_digest(token),))
