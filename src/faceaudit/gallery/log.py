"""The gallery's audit log: a hash chain of entries, and the check that finds where it was tampered with.

Every operation on a gallery (enrol, search, delete, export, policy change, key rotation, expiry) appends one
:class:`LogEntry`: who (actor and role), when (UTC), the declared purpose and legal basis, the parameters and
the ids in the result, and the hash of the entry before. The log records *that* a face was searched for and
what came back, never the face: it holds no embeddings and no images (:func:`next_entry` refuses anything that
looks like a template), and it should hold ids rather than names.

Why a hash chain
    Each entry's hash covers its own fields *and* the previous entry's hash, so every entry commits to the
    whole history before it. Editing, deleting, inserting or reordering any entry breaks a link at that
    position, and anyone who can read the rows can see where, with no secret key (an HMAC would need the
    same key to write and to verify, and whoever writes could then also forge). The chain makes tampering
    evident; it does not prevent it.

Storage (done elsewhere)
    Rows ``(seq INTEGER PRIMARY KEY, entry TEXT)`` in SQLite or PostgreSQL, where ``entry`` is the canonical
    JSON text of one entry (:meth:`LogEntry.to_json`), plus a *head* ``(last seq, last hash)`` kept apart from
    the rows. :func:`verify_chain` takes the rows as stored, text and all, so it checks exactly what is on
    disk: the text must be canonical, so two texts never stand for the same entry.

What the head anchor protects against, and what it does not
    A chain alone cannot show that its newest entries were cut off (the shorter chain is still a valid
    chain), nor that someone with write access rewrote an entry and then recomputed every hash after it
    (a forged but self-consistent chain). The head catches both: the last seq or the last hash no longer
    match it. Two heads are checked differently. The head stored beside the rows (``head``) must be the
    last entry: an entry after it was added without moving it. A *published* head (``published``: a copy
    taken at some time and kept elsewhere) must still be in the chain at its seq with exactly its hash;
    entries after it are the operations since it was published. A published head helps only as far as it
    is out of the forger's reach: someone who can rewrite the
    whole database *and* the head can forge any history, and nothing in here can tell. Against them, copy
    the head somewhere they cannot write (a signed audit report, another system, a supervisor's inbox) and
    verify against that copy. The chain also cannot show that an entry was true when it was written: a
    compromised application can log lies from the start.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from faceaudit.errors import FaceauditError

GENESIS = "0" * 64
"""The ``prev_hash`` of the first entry (seq 1): there is nothing before it."""

EMPTY_HEAD: tuple[int, str] = (0, GENESIS)
"""The head of a log with no entries."""

MAX_FLOATS = 16
"""A list holding more floats than this looks like an embedding; such params or results are refused."""

_FIELDS = frozenset(
    {"seq", "time", "actor", "role", "operation", "purpose", "legal_basis", "params", "result", "prev_hash", "hash"}
)
_HEX64 = re.compile(r"[0-9a-f]{64}")


class LogFormatError(FaceauditError, ValueError):
    """The text of a log entry is not a well-formed entry (not JSON, a field missing or of the wrong type)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a log entry")


def _finite_float(text: str) -> float:
    # 1e400 parses as inf, which could not be written back as JSON (and could never have been logged)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


# One text per value: sorted keys, no whitespace, UTF-8 kept as is, and no NaN or Infinity (they are not JSON,
# and NaN != NaN would make an entry unequal to itself). Built once: json.dumps/loads with options build a new
# encoder/decoder per call, which is a good part of the cost of verifying a long log.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _canonical(obj: Any) -> str:
    return _ENCODER.encode(obj)


def entry_hash(fields: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of every field except ``hash``; ``prev_hash`` is included,
    which is what chains an entry to the one before."""
    return _sha256(_canonical({k: v for k, v in fields.items() if k != "hash"}))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class LogEntry:
    """One entry of the audit log; ``time`` is ISO 8601 UTC, e.g. ``2025-01-31T12:00:00.000000Z``."""

    seq: int
    time: str
    actor: str
    role: str
    operation: str
    purpose: str | None
    legal_basis: str | None
    params: dict[str, Any]
    result: dict[str, Any]
    prev_hash: str
    hash: str

    def fields(self) -> dict[str, Any]:
        """Every field by name, as :func:`entry_hash` takes them."""
        return {
            "seq": self.seq, "time": self.time, "actor": self.actor, "role": self.role, "operation": self.operation,
            "purpose": self.purpose, "legal_basis": self.legal_basis, "params": self.params, "result": self.result,
            "prev_hash": self.prev_hash, "hash": self.hash,
        }  # fmt: skip

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, hash)``: the head of a log whose last entry is this one."""
        return (self.seq, self.hash)

    def to_json(self) -> str:
        """The canonical JSON text: sorted keys, ``,`` and ``:`` without spaces, non-ASCII kept as UTF-8."""
        return _canonical(self.fields())

    @classmethod
    def from_json(cls, text: str) -> LogEntry:
        """Parse one entry's text; raises :class:`LogFormatError` saying what is wrong. Does not check the
        hash (:func:`verify_chain` does, so that it can say *which* check failed)."""
        return cls(**_parse(text))


def _parse(text: str) -> dict[str, Any]:
    """The fields of one entry's text, each checked for its type; raises LogFormatError."""
    if not isinstance(text, str):
        raise LogFormatError(f"a log entry is text, got {type(text).__name__}")
    try:
        d = _DECODER.decode(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise LogFormatError(f"not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise LogFormatError(f"a log entry is a JSON object, got {type(d).__name__}")
    if d.keys() != _FIELDS:
        missing, extra = sorted(_FIELDS - d.keys()), sorted(d.keys() - _FIELDS)
        raise LogFormatError(f"wrong fields (missing: {missing or 'none'}; unexpected: {extra or 'none'})")
    seq = d["seq"]
    if type(seq) is not int or seq < 1:  # bool is an int subclass: refuse true as seq 1
        raise LogFormatError(f"seq must be an integer >= 1, got {seq!r}")
    for name in ("actor", "role", "operation"):
        if not isinstance(d[name], str) or not d[name]:
            raise LogFormatError(f"{name} must be a non-empty string, got {d[name]!r}")
    for name in ("purpose", "legal_basis"):
        if d[name] is not None and not isinstance(d[name], str):
            raise LogFormatError(f"{name} must be a string or null, got {d[name]!r}")
    for name in ("params", "result"):
        if not isinstance(d[name], dict):
            raise LogFormatError(f"{name} must be an object, got {type(d[name]).__name__}")
    for name in ("prev_hash", "hash"):
        if not isinstance(d[name], str) or not _HEX64.fullmatch(d[name]):
            raise LogFormatError(f"{name} must be 64 lowercase hex digits, got {d[name]!r}")
    _parse_utc(d["time"])
    return d


def _parse_utc(value: Any) -> datetime:
    if not isinstance(value, str):
        raise LogFormatError(f"time must be an ISO 8601 string, got {value!r}")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise LogFormatError(f"time is not ISO 8601: {value!r}") from None
    if t.tzinfo is None or t.utcoffset() != timedelta(0):
        raise LogFormatError(f"time must be in UTC: {value!r}")
    return t


def _format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_payload(value: Any, where: str) -> None:
    """Raise ValueError if ``value`` holds anything that looks like a face template or an image, or a key
    that is not a string (JSON would turn it into one, and {1: .., "1": ..} would silently lose a value)."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        v, path = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise ValueError(f"{path} has the key {k!r}: keys in the audit log are strings")
                stack.append((x, f"{path}.{k}"))
        elif isinstance(v, list | tuple):
            # A template is a flat vector of floats; scores belong next to their ids ([{"id": .., "score": ..}]),
            # so a long float list in a log entry is a template by mistake, never a legitimate field.
            if sum(1 for x in v if isinstance(x, float)) > MAX_FLOATS:
                raise ValueError(
                    f"{path} holds a list of more than {MAX_FLOATS} floats, which looks like an embedding; "
                    "the audit log never holds templates (log ids and scores paired with ids instead)"
                )
            stack.extend((x, f"{path}[{i}]") for i, x in enumerate(v))
        elif isinstance(v, bytes | bytearray | memoryview) or hasattr(v, "__array__"):
            # numpy arrays and raw bytes are templates, images or ciphertexts: none belongs in the log
            raise ValueError(
                f"{path} is a {type(v).__name__}: the audit log holds no templates, images or binary data "
                "(log ids; convert a numpy scalar with float() or int())"
            )


def next_entry(
    prev: LogEntry | None,
    *,
    actor: str,
    role: str,
    operation: str,
    purpose: str | None = None,
    legal_basis: str | None = None,
    params: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    time: str | datetime | None = None,
) -> LogEntry:
    """The entry to append after ``prev`` (``None`` for the first entry), with its hash computed.

    ``time`` defaults to now; given, it must be UTC and is normalised to ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
    ``params`` and ``result`` must be JSON (dicts with string keys, lists, strings, numbers, booleans, None);
    they are stored as they read back from JSON (tuples become lists), so the entry equals its parsed text.
    Raises ValueError for anything that looks like an embedding (a list of more than 16 floats, an array,
    bytes), for NaN or Infinity, for keys that are not strings, and for an empty actor, role or operation.
    """
    for name, value in (("actor", actor), ("role", role), ("operation", operation)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    for name, opt in (("purpose", purpose), ("legal_basis", legal_basis)):
        if opt is not None and not isinstance(opt, str):
            raise ValueError(f"{name} must be a string or None, got {opt!r}")
    if time is None:
        stamp = _format_time(datetime.now(UTC))
    elif isinstance(time, datetime):
        if time.tzinfo is None or time.utcoffset() != timedelta(0):
            raise ValueError(f"time must be in UTC: {time!r}")
        stamp = _format_time(time)
    else:
        try:
            stamp = _format_time(_parse_utc(time))
        except LogFormatError as e:
            raise ValueError(str(e)) from None
    payload: dict[str, dict[str, Any]] = {}
    for name, obj in (("params", params), ("result", result)):
        obj = {} if obj is None else obj
        if not isinstance(obj, dict):
            raise ValueError(f"{name} must be a dict, got {type(obj).__name__}")
        _check_payload(obj, name)
        try:
            text = _canonical(obj)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} cannot be logged as JSON: {e}") from None
        # Round trip, so the entry in memory is exactly what from_json will read back (tuples become lists):
        # an entry equal to its own parsed text cannot be written with one hash and read back with another.
        payload[name] = json.loads(text)
    fields: dict[str, Any] = {
        "seq": 1 if prev is None else prev.seq + 1,
        "time": stamp,
        "actor": actor,
        "role": role,
        "operation": operation,
        "purpose": purpose,
        "legal_basis": legal_basis,
        "params": payload["params"],
        "result": payload["result"],
        "prev_hash": GENESIS if prev is None else prev.hash,
    }
    return LogEntry(**fields, hash=entry_hash(fields))


@dataclass(frozen=True)
class ChainCheck:
    """What :func:`verify_chain` found. ``entries`` counts the rows read; each problem starts with the seq it
    is about (``seq 7: ...``), or with ``head:`` when the rows disagree with the head anchor."""

    ok: bool
    entries: int
    problems: list[str]


def _missing(first: int, last: int) -> str:
    """Words for the seqs first..last (inclusive) that should be there and are not."""
    return f"seq {first} is missing" if first == last else f"seq {first} to {last} are missing"


def _extra(first: int, last: int) -> str:
    return f"seq {first} was added" if first == last else f"seq {first} to {last} were added"


def verify_chain(rows: Iterable[tuple[int, str]], head: Sequence[Any] | None = None, *,
                 published: Sequence[Any] | None = None) -> ChainCheck:
    """Check the stored log rows ``(seq, entry text)``, in storage order, and name every place it was tampered.

    Each row is checked on its own (the text parses, is canonical, its seq is the row's seq, its hash matches
    its content) and against the row before (seq one more, ``prev_hash`` equal to that row's hash); the first
    row must be seq 1 after :data:`GENESIS`. With ``head`` = ``(last seq, last hash)`` the last row must be
    that entry, which catches a cut-off tail and a chain re-hashed from some entry on. Links are checked
    between neighbours rather than against an expected position, so one deleted or edited entry is reported
    where it happened instead of at every entry after it. With ``published`` = ``(seq, hash)`` (a head
    published earlier) the chain must hold that seq with exactly that hash; later entries are fine. Reads
    the rows once, holding one entry at a time.
    """
    problems: list[str] = []
    pub = _anchor(published) if published is not None else None
    at_pub: list[str | None] = []  # hashes of the rows stored at the published seq (None: unreadable)
    count = 0
    prev_col: int | None = None  # seq column of the row before
    top_col = 0  # the highest seq column so far
    prev: LogEntry | None = None  # the parsed row before, None if unreadable (or at the start)
    for raw_col, text in rows:
        count += 1
        if type(raw_col) is not int:
            # (sqlite3 and psycopg give ints for an integer key; anything else means the table was altered)
            problems.append(f"seq {raw_col!r}: the seq column is not an integer (the table was altered)")
            prev = None
            continue
        col = raw_col
        where = f"seq {col}"
        # Storage order: each row's seq is the one before plus one.
        if prev_col is None:
            if col != 1:
                problems.append(
                    f"{where}: the log starts here, but a log starts at seq 1: "
                    + (_missing(1, col - 1) + " (deleted?)" if col > 1 else "this seq is not valid")
                )
        elif col == prev_col:
            problems.append(f"{where}: a second row with this seq (inserted or duplicated?)")
        elif col < prev_col:
            problems.append(f"{where}: stored after seq {prev_col}: entries are out of order (moved?)")
        elif col > prev_col + 1 and col > top_col + 1:
            # a gap counts from the highest seq so far: after rows 4, 6, 5 the row 7 leaves nothing out
            problems.append(f"{where}: stored after seq {prev_col}: {_missing(top_col + 1, col - 1)} (deleted?)")
        prev_col = col
        top_col = max(top_col, col)

        try:
            fields = _parse(text)
        except LogFormatError as e:
            problems.append(f"{where}: entry text is unreadable (edited?): {e}")
            prev = None
            if isinstance(pub, tuple) and col == pub[0]:
                at_pub.append(None)
            continue
        entry = LogEntry(**fields)
        if isinstance(pub, tuple) and col == pub[0]:
            at_pub.append(entry.hash)
        canonical = _canonical(fields)
        if canonical == text:
            # The text minus its hash member is what was hashed. In canonical text that member comes right
            # after "actor" (keys are sorted) and its pattern cannot occur inside a JSON string (a quote in
            # a string is escaped), so removing its first occurrence is exact; one JSON dump instead of two
            # keeps verifying fast.
            digest = _sha256(canonical.replace(f'"hash":"{entry.hash}",', "", 1))
        else:
            # Same entry, different text (e.g. an escape or a number written another way): the bytes on disk
            # were changed, even if what they mean was not.
            problems.append(f"{where}: entry text is not in canonical form (edited?)")
            digest = entry_hash(fields)
        if entry.seq != col:
            problems.append(f"{where}: the entry inside says seq {entry.seq} (edited or moved?)")
        if digest != entry.hash:
            problems.append(f"{where}: entry was edited (its hash does not match its content)")
        # The link to the entry before: by content, so a swapped or inserted entry shows even when the seq
        # column was renumbered to look right.
        if prev is None:
            # (after an unreadable row there is no hash to compare with; that row is already reported)
            if count == 1 and col == 1 and entry.prev_hash != GENESIS:
                problems.append(f"{where}: first entry, but it does not start the chain (entries before it deleted?)")
        elif entry.prev_hash != prev.hash:
            problems.append(
                f"{where}: does not follow seq {prev.seq} (its prev_hash is not that entry's hash): "
                "an entry was deleted, inserted, moved or edited here"
            )
        prev = entry

    if head is not None:
        problems.extend(_check_head(head, count, prev_col, prev))
    if isinstance(pub, str):
        problems.append(pub)
    elif pub is not None:
        problems.extend(_check_published(pub, top_col, at_pub))
    return ChainCheck(ok=not problems, entries=count, problems=problems)


def _anchor(head: Sequence[Any]) -> tuple[int, str] | str:
    """``(seq, hash)`` of a published head, or the problem with it."""
    if (isinstance(head, str) or len(head) != 2 or type(head[0]) is not int or head[0] < 0
            or not isinstance(head[1], str) or not _HEX64.fullmatch(head[1])):
        return f"head: malformed published head {head!r} (expected [seq, 64 lowercase hex digits])"
    return int(head[0]), str(head[1])


def _check_published(pub: tuple[int, str], top_col: int, at_pub: list[str | None]) -> list[str]:
    """Whether the chain still holds the published head (entries after it are later operations)."""
    seq, digest = pub
    if seq == 0:  # published while the log was empty: every log extends it
        return [] if digest == GENESIS else [f"head: the published head seq 0 must have the hash {GENESIS}"]
    if top_col < seq:
        return [f"head: the log is shorter than the published head (truncated): it ends at seq {top_col}, the "
                f"published head is seq {seq}: {_missing(top_col + 1, seq)}"]
    if digest in at_pub:
        return []
    if not at_pub:
        return [f"head: the log has no entry at seq {seq}, where the published head is (deleted?)"]
    shown = next((h for h in at_pub if h is not None), None)
    found = f"its hash is {shown[:12]}…" if shown else "it is unreadable"
    return [f"head: the entry at seq {seq} differs from the published head (rewritten): {found}, the published "
            f"head says {digest[:12]}…"]


def _check_head(head: Sequence[Any], count: int, last_col: int | None, last: LogEntry | None) -> list[str]:
    if isinstance(head, str) or len(head) != 2 or type(head[0]) is not int or not isinstance(head[1], str):
        return [f"head: malformed head anchor {head!r} (expected [last seq, last hash])"]
    seq, digest = int(head[0]), str(head[1])
    if count == 0:
        if (seq, digest) == EMPTY_HEAD:
            return []
        return [f"head: the log is empty but the head says it ends at seq {seq}: {_missing(1, seq)} (truncated?)"]
    if last_col is None:  # every row had a broken seq column, already reported
        return []
    if last_col < seq:
        return [f"head: the log ends at seq {last_col} but the head says seq {seq}: "
                f"{_missing(last_col + 1, seq)} (truncated?)"]
    if last_col > seq:
        return [f"head: the log goes on to seq {last_col} but the head says it ends at seq {seq}: "
                f"{_extra(seq + 1, last_col)} without moving the head (inserted?)"]
    if last is None:
        return []  # the last row is unreadable, already reported; nothing to compare the hash with
    if last.hash != digest:
        return [f"head: seq {seq} has hash {last.hash[:12]}… but the head says {digest[:12]}…: "
                "the chain was rewritten and re-hashed (forged?)"]
    return []
