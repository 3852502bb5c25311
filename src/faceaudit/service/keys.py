"""API keys: who may call the service, under which role of the gallery policy.

A key is ``fa_<id>_<secret>``: ``id`` is 8 random bytes in hex (which row to look at), ``secret`` 32 random
bytes (256 bits, :mod:`secrets`) in URL-safe base64. It is shown once, when it is created; the database keeps
only the SHA-256 of the whole key, in the table ``api_keys`` of the gallery's own database (portable SQL, so
SQLite and PostgreSQL alike), beside the key's unique name, its role, when it was created and when it was
revoked. A stolen copy of the database therefore yields no usable key, and SHA-256 without salt or
stretching is enough because the secret is 256 random bits, not a password.

Looking a key up reads the row by ``id`` and compares the SHA-256 of what was presented with the stored one
using :func:`hmac.compare_digest` (constant time); an unknown id is compared against a dummy digest so that
the answer takes as long. Creating and revoking a key are entries in the gallery's hash-chained log
(``key-create``, ``key-revoke``, with the name, role and id, never the secret or its hash), written in the
same transaction as the row.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from faceaudit.errors import InputError
from faceaudit.gallery.gallery import Gallery
from faceaudit.gallery.store import Store, Tx

_TABLE = """CREATE TABLE IF NOT EXISTS api_keys (key_id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL, hash TEXT NOT NULL, created TEXT NOT NULL, revoked TEXT)"""
PREFIX = "fa_"
_KEY = re.compile(r"fa_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
#: Key names are actors in the log and appear in URLs of operators' tools: plain characters only.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_DUMMY = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A key's record (never the key itself): name, role, id, when created and revoked."""

    key_id: str
    name: str
    role: str
    created: str
    revoked: str | None

    @property
    def active(self) -> bool:
        return self.revoked is None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_table(store: Store) -> None:
    """Create the ``api_keys`` table if the gallery's database has none yet."""
    with store.transaction() as tx:
        tx.run(_TABLE)


def _row(row: tuple[object, ...]) -> ApiKey:
    return ApiKey(str(row[0]), str(row[1]), str(row[2]), str(row[3]), None if row[4] is None else str(row[4]))


def create_key(gallery: Gallery, name: str, role: str) -> tuple[str, ApiKey]:
    """A new key for ``name`` with ``role``: ``(the key, shown once, its record)``. Logged as ``key-create``.

    The role must be one the gallery's policy names, or the policy must have a ``"*"`` role that stands for
    any other (then the key gets what ``"*"`` allows)."""
    if not _NAME.fullmatch(name):
        raise InputError(f"key name {name!r}: 1 to 64 letters, digits and . _ @ - (starting with a letter or digit)")
    if not _NAME.fullmatch(role):
        raise InputError(f"role {role!r}: 1 to 64 letters, digits and . _ @ - (starting with a letter or digit)")
    if role not in gallery.policy.roles and "*" not in gallery.policy.roles:
        raise InputError(f"role {role!r} is not in the gallery's policy (roles: {', '.join(gallery.policy.roles)})")
    ensure_table(gallery.store)
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    created = datetime.now(UTC).isoformat(timespec="seconds")

    def insert(tx: Tx) -> None:
        if tx.one("SELECT 1 FROM api_keys WHERE name = ?", (name,)) is not None:
            raise InputError(f"a key named {name!r} exists already (revoke it, or choose another name)")
        tx.run("INSERT INTO api_keys (key_id, name, role, hash, created, revoked) VALUES (?, ?, ?, ?, ?, NULL)",
               (key_id, name, role, _digest(key), created))

    gallery.logged("key-create", insert, params={"name": name, "role": role, "key_id": key_id})
    return key, ApiKey(key_id, name, role, created, None)


def list_keys(store: Store) -> list[ApiKey]:
    """Every key's record, active and revoked, by name."""
    ensure_table(store)
    with store.transaction() as tx:
        rows = tx.rows("SELECT key_id, name, role, created, revoked FROM api_keys ORDER BY name")
    return [_row(r) for r in rows]


def revoke_key(gallery: Gallery, name: str) -> ApiKey:
    """Revoke the key called ``name`` (it stops working at once, in every server process); logged."""
    ensure_table(gallery.store)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    found: list[ApiKey] = []

    def revoke(tx: Tx) -> None:
        row = tx.one("SELECT key_id, name, role, created, revoked FROM api_keys WHERE name = ?", (name,))
        if row is None:
            raise InputError(f"no key named {name!r}")
        if row[4] is not None:
            raise InputError(f"the key {name!r} was revoked already, at {row[4]}")
        tx.run("UPDATE api_keys SET revoked = ? WHERE name = ?", (now, name))
        found.append(_row((*row[:4], now)))

    gallery.logged("key-revoke", revoke, params={"name": name})
    return found[0]


def parse_key_id(key: str) -> str | None:
    """The id part of a well-formed key (None when it is not one)."""
    m = _KEY.fullmatch(key)
    return m.group(1) if m else None


def lookup(store: Store, key: str) -> tuple[ApiKey | None, str]:
    """``(the key's record, "ok")`` for an active ``key``; ``(its record, "revoked")`` for a revoked one (the
    caller must refuse it); else ``(None, why)`` with why ``malformed`` or ``unknown`` (no such id, or the
    secret does not match). The digests are compared in constant time, an
    unknown id against a dummy, so the answer's timing says nothing about which ids exist."""
    key_id = parse_key_id(key)
    with store.transaction() as tx:
        row = tx.one("SELECT key_id, name, role, created, revoked, hash FROM api_keys WHERE key_id = ?",
                     (key_id or "",))
    matches = hmac.compare_digest(_digest(key), str(row[5]) if row is not None else _DUMMY)
    if key_id is None:
        return None, "malformed"
    if row is None or not matches:
        return None, "unknown"
    record = _row(row[:5])
    return record, "ok" if record.active else "revoked"
