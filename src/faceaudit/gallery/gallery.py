"""A gallery of enrolled people: enrol, verify 1:1, search 1:N, delete, export, rotate the key, expire.

Every operation is checked against the policy first (:mod:`faceaudit.gallery.policy`), runs in one
database transaction with its audit-log entry (:mod:`faceaudit.gallery.log`), and only then touches
the search index, which is derived from the store: on opening, an index that does not hold exactly
the store's templates (after a crash between commit and index write, say) is rebuilt from the store.

A gallery is a folder: ``gallery.toml`` (the database URL, the index kind, the engine), the SQLite
database ``gallery.sqlite`` unless the database is PostgreSQL, and the encrypted index file. A SQLite
path in ``gallery.toml`` is relative to the folder, so a copied gallery uses its own database.

What is not encrypted is authenticated. Templates are bound to their id and subject by the AES-GCM
associated data, and a search confirms each candidate's owner by decrypting that candidate's
template (a relabelled row is an :class:`IntegrityError`, never a wrong name). The policy and the log
head are *sealed* (:mod:`faceaudit.gallery.seal`): an HMAC under a key derived from the gallery key
covers the stored policy, the log entry that set it and the log head; every write checks the seal first
and renews it in the same transaction, and opening refuses a gallery whose seal does not match (``UPDATE
meta`` that switches search on, a deleted head, entries cut off the log). Without the key nobody can
renew it; with the key one could do anything anyway.

Search thresholds are stated as a target FPIR. With a gallery of N people and a per-comparison
false match rate FMR(T), a non-mated search returns a false candidate with probability
FPIR(N, T) = 1 - (1 - FMR(T))^N (comparisons taken as independent; NIST IR 8271, section 3), so
the threshold used is the engine's calibrated threshold for FMR = 1 - (1 - FPIR)^(1/N): it rises as
the gallery grows.

Several threads and several processes. A :class:`Gallery` is safe to use from many threads: its views
(:meth:`Gallery.acting_as`, one per caller, each with its own actor and role) share one database connection,
cipher, policy and index, guarded by one lock, and embedding runs outside that lock. Several processes (the
workers of a server) may open one gallery, on PostgreSQL or SQLite: each write records in ``meta`` the log seq
of the last change to the templates (``templates_seq``), the seal names the log entry of the policy in force,
and ``key_id`` names the key; before every operation :meth:`Gallery.refresh` compares those three with what
this process last saw and reloads what another process changed (the index, the policy after checking its
seal, the key after a rotation). That costs one read of three rows by key per operation.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tomli_w

from faceaudit.engines.base import EnrolSettings
from faceaudit.errors import FaceauditError, ImageError, InputError
from faceaudit.gallery.crypto import DecryptionError, IntegrityError, TemplateCipher, generate_key_file
from faceaudit.gallery.index import KINDS, SearchIndex
from faceaudit.gallery.log import ChainCheck, LogEntry, next_entry
from faceaudit.gallery.policy import Policy, PolicyError
from faceaudit.gallery.safety import write_private
from faceaudit.gallery.seal import (
    check_chain,
    last_policy_entry,
    latest_policy_problems,
    logged_policy,
    put_seal,
    raise_if_unsealed,
    same_policy,
    seal_problems,
    stored_head,
)
from faceaudit.gallery.store import ErasureIncompleteError, Store, StoreError, TemplateRow, Tx, get_meta, set_meta
from faceaudit.io.images import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from faceaudit.mitigation.artefact import DeployedCalibration

SETTINGS = "gallery.toml"
INDEX_FILE = "index.faiss.enc"
DATABASE_FILE = "gallery.sqlite"
#: gallery.toml layout: 1 (older faceaudit) wrote the SQLite path relative to the working directory of
#: `gallery init`; 2 writes it relative to the gallery folder.
LAYOUT = 2
#: How far a candidate's score from the index may be from its score recomputed from the store (float32
#: sums in another order differ by about 1e-7; a different vector differs by far more).
_SCORE_TOLERANCE = 1e-4
#: The longest subject id (characters): ids are written into every log entry about the person.
MAX_SUBJECT_ID = 256

#: An image given to the gallery: a path, or the encoded file's bytes (an upload).
GalleryImage = str | Path | bytes


class UnknownSubjectError(InputError):
    """No such subject in the gallery (or no templates for them)."""


class EnrolmentError(InputError):
    """An image shows no usable face (failure to enrol); ``reason`` is the engine's code (``no_face``, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_subject_id(subject_id: str) -> str:
    """``subject_id`` if it can be stored as given in both databases, else InputError saying why. Any text is
    an id (quotes, ``<``, ``;`` are data: every statement is parameterised) except an empty one, one longer
    than :data:`MAX_SUBJECT_ID`, or one holding NUL or unpaired surrogates, which PostgreSQL text cannot hold."""
    if not isinstance(subject_id, str) or not subject_id:
        raise InputError("a subject id is needed")
    if len(subject_id) > MAX_SUBJECT_ID:
        raise InputError(f"a subject id is at most {MAX_SUBJECT_ID} characters, got {len(subject_id)}")
    if "\x00" in subject_id:
        raise InputError("a subject id cannot hold the NUL character")
    try:
        subject_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("a subject id must be valid Unicode text (it holds an unpaired surrogate)") from None
    return subject_id


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Consent:
    """The consent record kept per subject: who gave it, when, on what legal basis, until when."""

    given_by: str
    given_at: str  # ISO date
    legal_basis: str
    expires: str | None = None  # ISO date; None: the policy's retention applies

    def __post_init__(self) -> None:
        if not (self.given_by and self.given_at and self.legal_basis):
            raise InputError("a consent record needs who gave it, when (YYYY-MM-DD) and the legal basis")
        for d in (self.given_at, self.expires):
            if d is not None:
                try:
                    date.fromisoformat(d)
                except ValueError:
                    raise InputError(f"consent date {d!r}: write it as YYYY-MM-DD") from None


@dataclass(frozen=True)
class Candidate:
    rank: int
    subject_id: str
    template_id: int
    score: float
    match: bool  # score >= threshold


@dataclass(frozen=True)
class SearchResult:
    candidates: list[Candidate]
    threshold: float
    target_fpir: float
    gallery_size: int
    investigative_lead: bool  # the policy asks a person to review every candidate
    log_seq: int
    calibration: dict[str, Any] | None = None  # the fairness calibration's identity, when scores are calibrated

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "candidates": [asdict(c) for c in self.candidates],
                "note": "candidates are investigative leads for a person to review, not identifications"
                if self.investigative_lead else None}


@dataclass(frozen=True)
class Erasure:
    """What :meth:`Gallery.erase` did and found: the templates erased and the erasure check's problems."""

    subject_id: str
    template_ids: list[int]
    problems: list[str]  # empty: nothing of the person is left (verify_erasure)

    @property
    def complete(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class KeyRotation:
    """What :meth:`Gallery.rotate_key_file` did: templates re-encrypted, the key ids, where each key now is."""

    templates: int
    old_key_id: str
    key_id: str
    key_file: Path
    retired_key_file: Path


@dataclass(frozen=True)
class GalleryCheck:
    """What :meth:`Gallery.check` found: the log's hash chain, and the seal over the policy and the head."""

    chain: ChainCheck
    seal_problems: list[str]
    head: tuple[int, str] | None  # the head stored beside the log (None: missing)

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.seal_problems


@dataclass
class _Settings:
    database: str
    index: str = "exact"
    engine: str = "yunet-sface"
    layout: int = 1  # absent in gallery.toml files of layout 1

    @classmethod
    def read(cls, folder: Path) -> _Settings:
        path = folder / SETTINGS
        try:
            settings = cls(**tomllib.loads(path.read_text()))
        except (tomllib.TOMLDecodeError, TypeError) as exc:
            raise InputError(f"{path} is not a gallery settings file ({exc})") from None
        if type(settings.layout) is not int or not 1 <= settings.layout <= LAYOUT:
            raise InputError(f"{path}: layout {settings.layout!r} is not one this faceaudit reads (1 to {LAYOUT})")
        return settings

    def database_url(self, folder: Path) -> str:
        """The database to open: PostgreSQL as written; a SQLite path resolved against ``folder``."""
        db = self.database
        if db.startswith(("postgresql://", "postgres://")):
            return db
        path = Path(db.removeprefix("sqlite:///"))
        if self.layout >= 2:
            return str(path if path.is_absolute() else folder / path)
        # Layout 1 kept the path as `gallery init` got it, relative to the working directory of that moment,
        # so a copied gallery opened (and rotate-key rewrote) the original's database. Its default database is
        # a file in the folder, so a file of that name in this folder is this gallery's own.
        own = folder / path.name
        if own.is_file():
            return str(own)
        if path.is_absolute() and path.is_file():
            return str(path)
        raise InputError(f"{folder / SETTINGS} (written by an older faceaudit) names the database {db!r} relative "
                         f"to the working directory of `gallery init`, and {folder} holds no {path.name}: set "
                         f"database to its path relative to {folder} (or an absolute path) and add layout = "
                         f"{LAYOUT} to {SETTINGS}")


def _settings_database(folder: Path, database: str | None) -> str:
    """How gallery.toml names the database: SQLite inside the folder relative to it, elsewhere absolute."""
    if database is None:
        return DATABASE_FILE
    if database.startswith(("postgresql://", "postgres://")):
        return database
    path = Path(database.removeprefix("sqlite:///")).resolve()
    try:
        return str(path.relative_to(folder.resolve()))
    except ValueError:
        return str(path)  # outside the folder: shared by copies, like a PostgreSQL database


#: What a process last saw of the changes other processes make: (templates_seq, seal's policy_seq, key_id).
_Marks = tuple[Any, Any, Any]


def _marks(tx: Tx) -> _Marks:
    rows = dict(tx.rows("SELECT key, value FROM meta WHERE key IN ('templates_seq', 'seal', 'key_id')"))
    seal = json.loads(rows["seal"]) if "seal" in rows else None
    return (json.loads(rows["templates_seq"]) if "templates_seq" in rows else None,
            seal.get("policy_seq") if isinstance(seal, dict) else None,
            json.loads(rows["key_id"]) if "key_id" in rows else None)


@dataclass
class _Shared:
    """The state every view of one open gallery shares (:meth:`Gallery.acting_as`); ``lock`` guards all of it."""

    store: Store
    cipher: TemplateCipher
    policy: Policy
    key_file: Path | None  # where to read the key again after another process rotated it (None: the environment)
    index: SearchIndex | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    synced: _Marks | None = None  # the changes the in-memory state reflects
    calibration: DeployedCalibration | None = None  # fairness calibration of every decision (Gallery.open)


class Gallery:
    """An open gallery; use :meth:`init` or :meth:`open`, and :meth:`close` (or ``with``).

    ``actor`` and ``role`` are who the operations are run and logged for; :meth:`acting_as` gives a view of the
    same open gallery for another caller (a service's authenticated key) without opening it again."""

    def __init__(self, folder: Path, shared: _Shared, settings: _Settings, actor: str, role: str, dim: int, *,
                 owner: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.folder = folder
        self._shared = shared
        self.settings = settings
        self.actor = actor
        self.role = role
        self.dim = dim
        self.max_pixels = max_pixels  # images over this many pixels are refused from their header
        self._owner = owner  # only the view that opened the gallery closes its connection

    # --- shared state (one copy for every view) ---
    @property
    def store(self) -> Store:
        return self._shared.store

    @property
    def cipher(self) -> TemplateCipher:
        return self._shared.cipher

    @cipher.setter
    def cipher(self, value: TemplateCipher) -> None:
        self._shared.cipher = value

    @property
    def policy(self) -> Policy:
        return self._shared.policy

    @policy.setter
    def policy(self, value: Policy) -> None:
        self._shared.policy = value

    @property
    def index(self) -> SearchIndex:
        assert self._shared.index is not None, "the index is loaded when the gallery is opened"
        return self._shared.index

    @index.setter
    def index(self, value: SearchIndex) -> None:
        self._shared.index = value

    def acting_as(self, actor: str, role: str) -> Gallery:
        """A view of this open gallery whose operations run and are logged as ``actor`` with ``role``; it shares
        the connection, key, policy and index (closing it closes nothing)."""
        return Gallery(self.folder, self._shared, self.settings, actor, role, self.dim, owner=False,
                       max_pixels=self.max_pixels)

    def refresh(self) -> None:
        """Catch up with what other processes changed since this one last looked (module docstring): reload the
        index if templates were enrolled or erased, the policy (seal checked) if it was replaced, the key if it
        was rotated. Called at the start of every operation; one read of three rows when nothing changed."""
        sh = self._shared
        with sh.lock:
            with self.store.transaction() as tx:
                marks = _marks(tx)
            if marks == sh.synced:
                return
            before = sh.synced or (None, None, None)
            if marks[2] != sh.cipher.key_id.hex():
                cipher = TemplateCipher.load(sh.key_file)
                if cipher.key_id.hex() != marks[2]:
                    raise StoreError(f"the gallery's key was rotated by another process (now id {marks[2]}) and the "
                                     f"key available here (id {cipher.key_id.hex()}) is not the new one yet")
                sh.cipher = cipher
            if marks[1] != before[1]:
                with self.store.transaction() as tx:
                    raise_if_unsealed(self.folder, seal_problems(tx, sh.cipher))
                    sh.policy = Policy.from_dict(get_meta(tx, "policy") or {})
            if marks[0] != before[0] or sh.index is None:
                self._load_index()
            sh.synced = marks

    # --- lifecycle ---
    @classmethod
    def init(cls, folder: str | Path, *, key_file: str | Path | None = None, database: str | None = None,
             index: str = "exact", engine: str | None = None, policy: Policy | None = None,
             actor: str = "admin", role: str = "admin") -> Gallery:
        f = Path(folder)
        if (f / SETTINGS).exists():
            raise InputError(f"{f} is a gallery already")
        if index not in KINDS:
            raise InputError(f"index {index!r}: use one of {', '.join(KINDS)}")
        from faceaudit.engines.registry import engine_spec

        spec = engine_spec(engine)
        f.mkdir(parents=True, exist_ok=True)
        settings = _Settings(_settings_database(f, database), index, spec.name, LAYOUT)
        cipher = TemplateCipher.load(key_file)
        store = Store.open(settings.database_url(f))
        pol = policy or Policy()
        ident = spec.identity()
        try:
            with store.transaction() as tx:
                tx.lock_writes()
                if get_meta(tx, "gallery") is not None:
                    raise InputError(f"the database {store.location} holds a gallery already")
                set_meta(tx, "gallery", {"created": _now(), "engine": ident.to_dict(), "dim": ident.embedding_dim})
                set_meta(tx, "key_id", cipher.key_id.hex())
                set_meta(tx, "policy", pol.to_dict())
                entry = _append(tx, actor, role, "init", params={"index": index, "engine": spec.name,
                                                                 "policy": pol.to_dict()})
                put_seal(tx, cipher, entry.seq)
            write_private(f / SETTINGS, tomli_w.dumps(asdict(settings)))  # may hold a database password
            return cls._ready(f, store, cipher, pol, settings, actor, role, key_file)
        except BaseException:
            store.close()
            raise

    @classmethod
    def open(cls, folder: str | Path, *, key_file: str | Path | None = None, actor: str = "unknown",
             role: str = "operator", calibration: DeployedCalibration | str | Path | None = None) -> Gallery:
        """Open a gallery; IntegrityError if its policy or log head fails authentication (see :meth:`seal`).

        ``calibration``: a fairness calibration (``faceaudit calibrate --method``; a path or one loaded), refused
        (CalibrationError) unless fitted for the gallery's engine. Verify and search then decide on calibrated
        scores against the calibration's thresholds, and log its identity with each decision."""
        f, settings, cipher, store = cls._connect(folder, key_file)
        try:
            with store.transaction() as tx:
                problems = seal_problems(tx, cipher)
            raise_if_unsealed(f, problems)
            fair = _fairness_calibration(calibration, store.get_meta("gallery")["engine"])
            policy = Policy.from_dict(store.get_meta("policy") or {})
            g = cls._ready(f, store, cipher, policy, settings, actor, role, key_file)
            g._shared.calibration = fair
            return g
        except BaseException:
            store.close()
            raise

    @classmethod
    def _connect(cls, folder: str | Path, key_file: str | Path | None) -> tuple[Path, _Settings, TemplateCipher,
                                                                             Store]:
        """The folder's settings, the key (checked against the gallery's) and the open database."""
        f = Path(folder)
        if not (f / SETTINGS).is_file():
            raise InputError(f"{f}: not a gallery (no {SETTINGS}); create one with `faceaudit gallery init`")
        settings = _Settings.read(f)
        cipher = TemplateCipher.load(key_file)
        store = Store.open(settings.database_url(f))
        key_id = store.get_meta("key_id")
        if key_id is None:
            store.close()
            raise InputError(f"{store.location} is not a faceaudit gallery")
        if key_id != cipher.key_id.hex():
            store.close()
            raise InputError(f"the key given (id {cipher.key_id.hex()}) is not the gallery's (id {key_id})")
        return f, settings, cipher, store

    @classmethod
    def check(cls, folder: str | Path, *, key_file: str | Path | None = None,
              head: tuple[int, str] | None = None) -> GalleryCheck:
        """Check a gallery's log (against ``head``, a published one, if given) and its seal, without refusing
        on what it finds: what `faceaudit log verify` reports."""
        _, _, cipher, store = cls._connect(folder, key_file)
        try:
            return _integrity(store, cipher, head)
        finally:
            store.close()

    @classmethod
    def seal(cls, folder: str | Path, *, key_file: str | Path | None = None, actor: str = "unknown",
             role: str = "admin", policy: Policy | None = None, head: tuple[int, str] | None = None) -> list[str]:
        """Seal a gallery whose policy or log head fails authentication, or that was created before galleries
        were sealed; returns the problems found (also logged with the seal).

        Without ``policy`` the stored policy is sealed only if the log says it is the last one set and the log
        checks out (against ``head``, a published head, if given): sealing what the log does not vouch for
        would accept a policy changed in the database. With ``policy`` it replaces the stored one, whatever
        that was (for a policy that was tampered with). Either way ``role`` must be allowed to set policies
        by the policy that will be in force. Never done automatically on opening: then whoever can write the
        database could delete the seal and have the next user's open seal their changes.
        """
        _, _, cipher, store = cls._connect(folder, key_file)
        try:
            with store.transaction() as tx:
                problems = seal_problems(tx, cipher)
            chain = check_chain(store, stored_head(store), head)
            if policy is None:
                if not problems and chain.ok:
                    return []
                if not chain.ok:
                    raise IntegrityError(
                        "cannot seal the stored policy: the audit log fails its check (" + "; ".join(chain.problems)
                        + "), so it cannot vouch for that policy. Restore the database from a backup, or replace "
                          "the policy with the intended one: `faceaudit gallery seal FOLDER --policy FILE`",
                        chain.problems)
                with store.transaction() as tx:
                    last = last_policy_entry(tx)
                stored = store.get_meta("policy")
                if last is None or not same_policy(logged_policy(last), stored):
                    where = f"seq {last.seq}" if last else "nowhere"
                    raise IntegrityError(
                        f"cannot seal the stored policy: it is not the last policy set in the audit log ({where}), "
                        "so it was changed in the database outside faceaudit. Replace it with the intended "
                        "policy: `faceaudit gallery seal FOLDER --policy FILE`", problems)
                new = Policy.from_dict(stored)
            else:
                new = policy
            new.allow(role, "policy")
            found = problems + chain.problems
            with store.transaction() as tx:
                tx.lock_writes()
                set_meta(tx, "policy", new.to_dict())
                entry = _append(tx, actor, role, "seal", params={"policy": new.to_dict(), "replaced": policy
                                                                 is not None, "problems": found[:50]})
                put_seal(tx, cipher, entry.seq)
            return found
        finally:
            store.close()

    @classmethod
    def _ready(cls, folder: Path, store: Store, cipher: TemplateCipher, policy: Policy, settings: _Settings,
               actor: str, role: str, key_file: str | Path | None) -> Gallery:
        shared = _Shared(store, cipher, policy, None if key_file is None else Path(key_file))
        g = cls(folder, shared, settings, actor, role, int(store.get_meta("gallery")["dim"]))
        with shared.lock:
            with store.transaction() as tx:
                shared.synced = _marks(tx)  # read before the index: a change in between is reloaded, not missed
            g._load_index()
        return g

    @contextmanager
    def _write(self, cipher: TemplateCipher | None = None, *, templates: bool = False) -> Iterator[Tx]:
        """A write transaction: the seal is checked before anything changes and renewed (under ``cipher``, for
        a key rotation) before the commit, so a change made outside faceaudit is never sealed by accident.
        ``templates``: the write enrols or erases templates, which other processes must see (``templates_seq``).
        Holds the shared lock, so the caller's in-memory update that follows stays in step with the commit."""
        sh = self._shared
        with sh.lock:
            self.refresh()  # under the key and policy in force: another process may have rotated or replaced them
            with self.store.transaction() as tx:
                tx.lock_writes()
                raise_if_unsealed(self.folder, seal_problems(tx, self.cipher))
                before = _marks(tx)
                yield tx
                if templates:
                    set_meta(tx, "templates_seq", get_meta(tx, "log_head")[0])
                put_seal(tx, cipher or self.cipher)
                after = _marks(tx)
            if before == sh.synced:  # nobody else changed anything since: this process is up to date
                sh.synced = after

    def _refused(self, operation: str, exc: PolicyError, params: dict[str, Any], purpose: str | None = None,
                 legal_basis: str | None = None) -> None:
        self.log_refusal(operation, exc.rule, params, purpose=purpose, legal_basis=legal_basis)

    def log_refusal(self, operation: str, rule: str, params: dict[str, Any] | None = None, *,
                    purpose: str | None = None, legal_basis: str | None = None) -> int:
        """Log that ``operation`` was refused to this actor by ``rule`` (a policy rule, or a rule of the layer
        in front, such as a service's ``auth.key``); returns the entry's seq."""
        with self._write() as tx:
            entry = _append(tx, self.actor, self.role, f"{operation}-refused", purpose=purpose,
                            legal_basis=legal_basis, params=params or {}, result={"rule": rule})
        return entry.seq

    def require(self, operation: str, params: dict[str, Any] | None = None) -> None:
        """Refuse with PolicyError (logged, naming the rule) unless this role may run ``operation``: for the
        operations checked in front of the gallery (detect, embed, audit, log), and to refuse early."""
        self.refresh()
        self._check(operation, lambda: self.policy.allow(self.role, operation), params or {})

    def logged(self, operation: str, write: Callable[[Tx], None], *, params: dict[str, Any] | None = None,
               result: dict[str, Any] | None = None) -> int:
        """Run ``write`` and log ``operation`` in one write transaction (both or neither); returns the seq.
        For records kept beside the gallery in its database, such as a service's API keys."""
        with self._write() as tx:
            write(tx)
            entry = _append(tx, self.actor, self.role, operation, params=params, result=result)
        return entry.seq

    def _check(self, operation: str, rule: Callable[[], None], params: dict[str, Any],
               purpose: str | None = None, legal_basis: str | None = None) -> None:
        """Run the policy check ``rule``; a refusal is logged (with the rule that refused) and raised."""
        try:
            rule()
        except PolicyError as exc:
            self._refused(operation, exc, params, purpose, legal_basis)
            raise

    def _take(self, operation: str, params: dict[str, Any]) -> None:
        """Count one use of a rate-limited operation by this actor, or refuse (logged) if over the policy's
        limit. Counted before the work, so failed attempts (an unknown subject id) count too."""
        limit = self.policy.limits.max_for(operation)
        if limit is None:
            return
        minutes = self.policy.limits.window_minutes
        now = datetime.now(UTC)
        since = (now - timedelta(minutes=minutes)).isoformat(timespec="microseconds")
        refused = None
        with self._write() as tx:
            tx.run("DELETE FROM usage WHERE at < ?", (since,))
            row = tx.one("SELECT COUNT(*) FROM usage WHERE actor = ? AND operation = ? AND at >= ?",
                         (self.actor, operation, since))
            used = int(row[0]) if row else 0
            if used >= limit:
                refused = PolicyError(f"limits.{self.policy.limits.key_for(operation)}",
                                      f"{self.actor!r} ran {used} {operation} operations in the last {minutes} "
                                      f"minutes, the most the policy allows; wait, or have the policy's [limits] "
                                      "changed if this is a legitimate bulk task")
                _append(tx, self.actor, self.role, f"{operation}-refused", params=params,
                        result={"rule": refused.rule})
            else:
                tx.run("INSERT INTO usage (actor, operation, at) VALUES (?, ?, ?)",
                       (self.actor, operation, now.isoformat(timespec="microseconds")))
        if refused is not None:
            raise refused

    def close(self) -> None:
        if self._owner:
            self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- templates and index ---
    @property
    def index_path(self) -> Path:
        return self.folder / INDEX_FILE

    def _aad(self, template_id: int, subject_id: str) -> bytes:
        return f"template:{template_id}:{subject_id}".encode()

    def _decrypt(self, row: TemplateRow) -> np.ndarray:
        """A template row's vector, authenticated with its id and subject (IntegrityError if the row was
        altered: relabelled, given another row's blob, or edited)."""
        try:
            plain = self.cipher.decrypt(row.blob, self._aad(row.template_id, row.subject_id))
        except DecryptionError as exc:
            raise IntegrityError(
                f"template {row.template_id}, stored as belonging to {row.subject_id!r}, fails authentication "
                f"({exc}): its row in the database was altered outside faceaudit (relabelled to another subject, "
                "or its encrypted template replaced). Restore the gallery database from a backup and check the "
                "audit log with `faceaudit log verify`") from None
        return np.frombuffer(plain, "<f4")

    def _decrypt_all(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.store.templates()
        ids = np.array([r.template_id for r in rows], np.int64)
        vecs = np.zeros((len(rows), self.dim), np.float32)
        for i, r in enumerate(rows):
            vecs[i] = self._decrypt(r)
        return ids, vecs

    def _load_index(self) -> None:
        """Load the saved index; rebuild it from the store when it is missing or differs from the store."""
        want = self.store.template_ids()
        if self.index_path.is_file():
            try:
                index = SearchIndex.load(self.index_path, self.cipher)
                if set(index.ids().tolist()) == want:
                    self.index = index
                    return
            except FaceauditError:
                pass  # unreadable or stale: the store is the truth, rebuild below
        self.rebuild_index()

    def rebuild_index(self) -> None:
        ids, vecs = self._decrypt_all()
        self.index = SearchIndex.build(ids, vecs, self.settings.index) if len(ids) else SearchIndex(
            self.dim, self.settings.index)
        self.index.save(self.index_path, self.cipher)

    def _embed(self, images: Sequence[GalleryImage]) -> tuple[np.ndarray, list[str]]:
        """Embeddings of the images (one face each); never written to the embedding cache. Runs outside the
        shared lock: other threads' gallery operations go on meanwhile."""
        from faceaudit.api import embed_image

        vecs, sources = [], []
        for n, img in enumerate(images, 1):
            name = f"image {n}" if isinstance(img, bytes) else Path(img).name
            try:
                res = embed_image(img, engine=self.settings.engine, settings=EnrolSettings(),
                                  max_pixels=self.max_pixels)
            except ImageError as exc:
                if not isinstance(img, bytes):
                    raise
                raise ImageError(exc.reason, str(exc), name) from None
            if not res or not res[0].ok or res[0].embedding is None:
                reason = res[0].reason if res else "no_face"
                message = res[0].message if res else ""
                raise EnrolmentError(reason, f"{img if isinstance(img, str | Path) else name}: no usable face "
                                             f"({reason}{': ' + message if message else ''})")
            vecs.append(np.asarray(res[0].embedding, np.float32))
            sources.append(name)
        return np.stack(vecs), sources

    def _check_vectors(self, vecs: np.ndarray) -> np.ndarray:
        v = np.asarray(vecs, np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise InputError(f"templates must be {self.dim}-d vectors of this gallery's engine, got shape {v.shape}")
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        if not np.all(np.isfinite(v)) or np.any(norms == 0):
            raise InputError("templates must be finite, non-zero vectors")
        return np.ascontiguousarray(v / norms)

    # --- operations ---
    # Each runs refresh() first (another process may have changed the gallery), checks the policy, embeds any
    # images outside the shared lock, then does its database and index work holding it.
    def enrol(self, subject_id: str, consent: Consent, *, images: Sequence[GalleryImage] = (),
              embeddings: np.ndarray | None = None) -> list[int]:
        """Enrol templates of one person with their consent record; returns the new template ids."""
        self.refresh()
        self._check("enrol", lambda: self.policy.allow(self.role, "enrol"), {"subject_id": subject_id})
        check_subject_id(subject_id)
        if embeddings is None:
            if not images:
                raise InputError("give images or embeddings to enrol")
            vecs, sources = self._embed(images)
        else:
            vecs = self._check_vectors(embeddings)
            sources = ["embedding"] * len(vecs)
        with self._shared.lock:
            with self._write(templates=True) as tx:
                ids = self._insert(tx, subject_id, consent, vecs, sources)
            self.index.add(np.array(ids, np.int64), vecs)
            self.index.save(self.index_path, self.cipher)
        return ids

    def enrol_many(self, items: Sequence[tuple[str, Consent, np.ndarray]], *, chunk: int = 1000) -> int:
        """Enrol many people from embeddings, ``chunk`` people per transaction (each with its own log entry);
        the index is written once at the end (after a crash it is rebuilt from the store on opening)."""
        self.refresh()
        self._check("enrol", lambda: self.policy.allow(self.role, "enrol"), {"subjects": len(items)})
        done = 0
        with self._shared.lock:
            for start in range(0, len(items), chunk):
                part = [(check_subject_id(s), c, self._check_vectors(v)) for s, c, v in items[start:start + chunk]]
                with self._write(templates=True) as tx:
                    ids = [self._insert(tx, s, c, v, ["embedding"] * len(v)) for s, c, v in part]
                self.index.add(np.array([i for group in ids for i in group], np.int64),
                               np.concatenate([v for _, _, v in part]))
                done += sum(len(v) for _, _, v in part)
            self.index.save(self.index_path, self.cipher)
        return done

    def _insert(self, tx: Tx, subject_id: str, consent: Consent, vecs: np.ndarray, sources: list[str]) -> list[int]:
        """One person's consent, encrypted templates and log entry, inside the caller's transaction."""
        if not subject_id:
            raise InputError("a subject id is needed")
        expires = consent.expires
        if expires is None and self.policy.retention_days is not None:
            expires = (date.today() + timedelta(days=self.policy.retention_days)).isoformat()
        now = _now()
        record = _json({**asdict(consent), "expires": expires})
        if tx.one("SELECT 1 FROM subjects WHERE subject_id = ?", (subject_id,)) is None:
            tx.run("INSERT INTO subjects (subject_id, consent, created, expires) VALUES (?, ?, ?, ?)",
                   (subject_id, record, now, expires))
        else:
            tx.run("UPDATE subjects SET consent = ?, expires = ? WHERE subject_id = ?", (record, expires, subject_id))
        ids = []
        for v, src in zip(vecs, sources, strict=True):
            tid = tx.insert_template(subject_id, b"", now, src)  # the id binds the ciphertext (AAD)
            blob = self.cipher.encrypt(v.astype("<f4").tobytes(), self._aad(tid, subject_id))
            tx.run("UPDATE templates SET blob = ? WHERE template_id = ?", (blob, tid))
            ids.append(tid)
        _append(tx, self.actor, self.role, "enrol", legal_basis=consent.legal_basis,
                params={"subject_id": subject_id, "templates": len(ids), "expires": expires},
                result={"template_ids": ids})
        return ids

    @property
    def calibration(self) -> DeployedCalibration | None:
        """The fairness calibration decisions use (:meth:`open`), or None for raw scores."""
        return self._shared.calibration

    def _calibration_identity(self) -> dict[str, Any] | None:
        cal = self._shared.calibration
        return None if cal is None else cal.provenance()

    def threshold_for_fpir(self, fpir: float) -> float:
        """The score threshold for a target FPIR at this gallery's size (module docstring).

        With a fairness calibration: its threshold on calibrated scores; the policy's ``min_score`` floor is a raw
        cosine and is then applied to each candidate's raw score instead (:meth:`search`)."""
        from faceaudit.api import calibration_for

        n = max(1, len(self.index))
        fmr = 1.0 - (1.0 - fpir) ** (1.0 / n)
        fair = self._shared.calibration
        cal = calibration_for(self.settings.engine) if fair is None else fair.table
        if fmr < cal.min_fmr:
            raise InputError(f"a gallery of {n:,} templates needs a per-comparison FMR of {fmr:.2g} for FPIR "
                             f"{fpir:g}, below the lowest the {'engine' if fair is None else 'fairness'} "
                             f"calibration supports ({cal.min_fmr:.2g}); ask for a larger FPIR")
        if fair is not None:
            return fair.threshold_for(fmr)
        t = cal.threshold_for(fmr)
        floor = self.policy.search.min_score
        return max(t, floor) if floor is not None else t

    def search(self, *, image: GalleryImage | None = None, embedding: np.ndarray | None = None, k: int = 10,
               fpir: float = 0.01, purpose: str | None = None, legal_basis: str | None = None) -> SearchResult:
        """1:N: the top-k candidates with scores; only those at or above the threshold are matches.

        Each candidate's owner is confirmed by decrypting its template (bound to its id and subject) and its
        score recomputed from it: IntegrityError if a row was relabelled or the index file disagrees with the
        store, rather than a wrong name."""
        self.refresh()
        self._check("search", lambda: self.policy.allow_search(self.role, purpose, legal_basis, k, fpir),
                    {"k": k, "fpir": fpir}, purpose, legal_basis)
        probe = self._embed([image])[0][0] if image is not None else None
        if probe is None:
            if embedding is None:
                raise InputError("give a probe image or embedding")
            probe = self._check_vectors(np.asarray(embedding, np.float32).reshape(1, -1))[0]
        with self._shared.lock:
            fair = self._shared.calibration
            threshold = self.threshold_for_fpir(fpir)
            size = len(self.index)
            params: dict[str, Any] = {"k": k, "fpir": fpir, "threshold": threshold, "gallery_size": size}
            if fair is None:
                cands = [Candidate(r + 1, owner, tid, score, bool(score >= threshold))
                         for r, (tid, owner, score) in enumerate(self._search_confirmed(probe, k))]
            else:
                cands = self._search_calibrated(fair, probe, k, threshold)
                params["calibration"] = fair.provenance()
            with self._write() as tx:
                entry = _append(tx, self.actor, self.role, "search", purpose=purpose, legal_basis=legal_basis,
                                params=params,
                                result={"candidates": [[c.subject_id, c.template_id, round(c.score, 6), c.match]
                                                       for c in cands]})
        return SearchResult(cands, threshold, fpir, size, self.policy.search.human_review, entry.seq,
                            self._calibration_identity())

    def _search_calibrated(self, fair: DeployedCalibration, probe: np.ndarray, k: int,
                           threshold: float) -> list[Candidate]:
        """Candidates ranked by calibrated score: the raw top ``max(4k, k + 50)`` (the index ranks raw cosines)
        re-scored with the calibration, the best k kept. A match needs the calibrated score at the calibrated
        threshold and, if the policy sets one, the raw score at its ``min_score`` floor (a raw cosine)."""
        found = self._search_confirmed(probe, max(4 * k, k + 50))
        if not found:
            return []
        raw = np.array([s for _, _, s in found])
        by_id = {r.template_id: self._decrypt(r) for r in self.store.templates_by_id([tid for tid, _, _ in found])}
        cal = fair.score(probe, np.stack([by_id[tid] for tid, _, _ in found]))
        order = sorted(range(len(found)), key=lambda i: (-cal[i], found[i][0]))[:k]
        floor = self.policy.search.min_score
        return [Candidate(r + 1, found[i][1], found[i][0], float(cal[i]),
                          bool(cal[i] >= threshold and (floor is None or raw[i] >= floor)))
                for r, i in enumerate(order)]

    def _search_confirmed(self, probe: np.ndarray, k: int) -> list[tuple[int, str, float]]:
        """``(template id, owner, score)`` of the top k, each owner confirmed by the template's own AAD.

        The index holds ids and vectors only, encrypted and authenticated as a whole; the owner always comes
        from the store row, and decrypting it proves that the row's subject is the one its template was
        enrolled under. The score recomputed from that template must equal the index's: an index file from
        another gallery under the same key (a copy that has since diverged) would otherwise pair an id with
        someone else's vector."""
        for attempt in range(2):
            scores, ids = self.index.search(probe.reshape(1, -1), k)
            hits = [(int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
            rows = {r.template_id: r for r in self.store.templates_by_id([i for i, _ in hits])}
            if all(i in rows for i, _ in hits):
                break
            if attempt:
                gone = sorted(i for i, _ in hits if i not in rows)
                raise StoreError(f"template ids {gone} are in the search index but not in the store, even after "
                                 f"reloading it; delete {self.index_path} to have it rebuilt from the store")
            self._load_index()  # another process erased someone since this gallery was opened
        out = []
        for tid, score in hits:
            row = rows[tid]
            stored = float(self._decrypt(row) @ probe)
            if abs(stored - score) > _SCORE_TOLERANCE:
                raise IntegrityError(
                    f"the search index's vector for template {tid} is not the store's (score {score:.6f} vs "
                    f"{stored:.6f}): {self.index_path} was replaced (by another gallery's index under the same key?) "
                    "or altered. Delete it to have it rebuilt from the store")
            out.append((tid, row.subject_id, score))
        return out

    def verify(self, subject_id: str, *, image: GalleryImage | None = None, embedding: np.ndarray | None = None,
               fmr: float | None = None) -> dict[str, Any]:
        """1:1: does the probe match any template of ``subject_id`` at the threshold for ``fmr``?

        ``fmr`` defaults to 1e-4, or with a fairness calibration to the FMR it was fitted at; with one, scores are
        calibrated (the best over the subject's templates), the threshold is the calibration's, and the result and
        the log entry carry its identity (``calibration``)."""
        from faceaudit.api import calibration_for

        fair = self._shared.calibration
        target = (1e-4 if fair is None else next(iter(fair.thresholds))) if fmr is None else fmr
        params: dict[str, Any] = {"subject_id": subject_id, "fmr": target}
        if fair is not None:
            params["calibration"] = fair.provenance()
        self.refresh()
        self._check("verify", lambda: self.policy.allow(self.role, "verify"), params)
        check_subject_id(subject_id)
        self._take("verify", params)  # 1:1 looped over every subject id would be a 1:N search
        # a bad fmr fails before embedding
        threshold = (calibration_for(self.settings.engine) if fair is None else fair).threshold_for(target)
        probe = self._embed([image])[0][0] if image is not None else self._check_vectors(
            np.asarray(embedding, np.float32).reshape(1, -1))[0]
        with self._shared.lock:  # rows and key read together: a key rotation in another thread cannot come between
            rows = self.store.templates(subject_id)
            if not rows:
                raise UnknownSubjectError(f"no templates enrolled for {subject_id!r}")
            templates = np.stack([self._decrypt(r) for r in rows])
        scores = (np.array([float(t @ probe) for t in templates]) if fair is None
                  else fair.score(probe, templates))  # calibrated from the raw vectors, never cached
        best = float(np.max(scores))
        with self._write() as tx:
            _append(tx, self.actor, self.role, "verify", params=params,
                    result={"match": best >= threshold, "score": round(best, 6)})
        return {"subject_id": subject_id, "match": best >= threshold, "score": best, "threshold": threshold,
                "fmr": target, "calibration": None if fair is None else fair.provenance()}

    def delete(self, subject_id: str, *, reason: str = "erasure request",
               requested_by_subject: bool = False) -> list[int]:
        """Erase a person: templates and consent from the store, the index and its file; logged.

        Always allowed for the subject's own request (``requested_by_subject``: the caller, e.g. a service that
        authenticated the subject, vouches for it; logged); on anyone else's behalf only for a role the policy
        gives ``delete``. ErasureIncompleteError (after the erasure is committed) if another reader keeps
        SQLite from overwriting the deleted bytes."""
        params = {"subject_id": subject_id, "reason": reason, "requested_by_subject": requested_by_subject}
        self.refresh()
        self._check("delete", lambda: self.policy.allow(self.role, "delete",
                                                        requested_by_subject=requested_by_subject), params)
        return self._erase(check_subject_id(subject_id), params)

    def erase(self, subject_id: str, *, reason: str = "erasure request",
              requested_by_subject: bool = False) -> Erasure:
        """:meth:`delete`, then :meth:`verify_erasure`: what was erased and what (if anything) is left, with an
        incomplete purge reported among the problems instead of raised (the erasure itself is committed)."""
        params = {"subject_id": subject_id, "reason": reason, "requested_by_subject": requested_by_subject}
        self.refresh()
        self._check("delete", lambda: self.policy.allow(self.role, "delete",
                                                        requested_by_subject=requested_by_subject), params)
        ids = self._erase(check_subject_id(subject_id), params, purge=False)
        # an incomplete purge is named by verify_erasure (the WAL cannot be checkpointed while a reader holds it)
        with contextlib.suppress(ErasureIncompleteError):
            self.store.purge_deleted()
        return Erasure(subject_id, ids, self.verify_erasure(subject_id, ids))

    def _erase(self, subject_id: str, params: dict[str, Any], *, purge: bool = True) -> list[int]:
        with self._shared.lock:
            with self._write(templates=True) as tx:
                ids = [int(r[0]) for r in tx.rows("SELECT template_id FROM templates WHERE subject_id = ?",
                                                  (subject_id,))]
                found = tx.one("SELECT 1 FROM subjects WHERE subject_id = ?", (subject_id,)) is not None
                if not found:
                    raise UnknownSubjectError(f"no subject {subject_id!r} in the gallery")
                tx.run("DELETE FROM templates WHERE subject_id = ?", (subject_id,))
                tx.run("DELETE FROM subjects WHERE subject_id = ?", (subject_id,))
                _append(tx, self.actor, self.role, "delete", params=params, result={"template_ids": ids})
            # the index first: if the purge below fails, the person must already be out of every search
            if ids:
                self.index.remove(np.array(ids, np.int64))
            self.index.save(self.index_path, self.cipher)
        if purge:
            self.store.purge_deleted()
        return ids

    def expire(self, today: date | None = None) -> list[str]:
        """Erase everyone whose consent or retention has ended (logged as expiry)."""
        self.refresh()
        day = (today or date.today()).isoformat()
        with self.store.transaction() as tx:
            due = [str(r[0]) for r in tx.rows("SELECT subject_id FROM subjects WHERE expires IS NOT NULL AND "
                                              "expires < ?", (day,))]
        for s in due:
            # erasure the policy's retention or the consent itself requires: no role may be needed for it
            self._erase(s, {"subject_id": s, "reason": f"consent or retention ended before {day}",
                            "requested_by_subject": False}, purge=False)
        if due:
            self.store.purge_deleted()  # once, after all: a busy reader must not stop the others' erasure
        return due

    def export(self, subject_id: str, *, requested_by_subject: bool = False) -> dict[str, Any]:
        """Everything held about one person (subject-access request): consent, templates, log entries.

        The templates come out in plaintext, so on anyone else's behalf only a role the policy gives
        ``export`` may; the subject's own request (``requested_by_subject``, vouched for by the caller and
        logged) always may. Rate-limited per actor by the policy's ``[limits] max_exports``."""
        params = {"subject_id": subject_id, "requested_by_subject": requested_by_subject}
        self.refresh()
        self._check("export", lambda: self.policy.allow(self.role, "export",
                                                        requested_by_subject=requested_by_subject), params)
        check_subject_id(subject_id)
        self._take("export", params)
        with self.store.transaction() as tx:
            row = tx.one("SELECT consent, created, expires FROM subjects WHERE subject_id = ?", (subject_id,))
        if row is None:
            raise UnknownSubjectError(f"no subject {subject_id!r} in the gallery")
        import base64

        with self._shared.lock:
            templates = [{"template_id": r.template_id, "created": r.created, "source": r.source,
                          "embedding_float32_base64": base64.b64encode(self._decrypt(r).tobytes()).decode()}
                         for r in self.store.templates(subject_id)]
        mine = [e.to_json() for e in self._log_entries() if _mentions(e, subject_id)]
        with self._write() as tx:
            _append(tx, self.actor, self.role, "export", params=params,
                    result={"templates": len(templates), "log_entries": len(mine)})
        return {"subject_id": subject_id, "consent": json.loads(row[0]), "created": row[1], "expires": row[2],
                "templates": templates, "log_entries": [json.loads(m) for m in mine]}

    def rotate_key(self, new: TemplateCipher) -> int:
        """Re-encrypt every template under ``new`` in one transaction (and re-seal under it); returns how many."""
        params = {"old_key_id": self.cipher.key_id.hex(), "new_key_id": new.key_id.hex()}
        self.refresh()
        self._check("rotate-key", lambda: self.policy.allow(self.role, "rotate-key"), params)
        with self._shared.lock:
            with self._write(cipher=new) as tx:
                # read inside the write transaction: a template another process enrols meanwhile waits for it
                rows = [TemplateRow(int(r[0]), str(r[1]), bytes(r[2]), str(r[3]), r[4]) for r in tx.rows(
                    "SELECT template_id, subject_id, blob, created, source FROM templates ORDER BY template_id")]
                for r in rows:
                    tx.run("UPDATE templates SET blob = ? WHERE template_id = ?",
                           (new.encrypt(self._decrypt(r).tobytes(), self._aad(r.template_id, r.subject_id)),
                            r.template_id))
                set_meta(tx, "key_id", new.key_id.hex())
                _append(tx, self.actor, self.role, "rotate-key", params=params, result={"templates": len(rows)})
            self.cipher = new
            self.index.save(self.index_path, self.cipher)
        self.store.purge_deleted()  # the old ciphertexts
        return len(rows)

    def rotate_key_file(self, key_file: str | Path) -> KeyRotation:
        """Rotate to a new random key kept in ``key_file``, the file this gallery's key is read from: the new
        key is written beside it (``<name>.new``, mode 600), every template re-encrypted under it (one logged
        transaction), then the old key file is kept as ``<name>.<old key id>.retired`` (for backups made before
        the rotation: destroy it once they are replaced) and the new key takes its place. A crash before the
        commit leaves the old key in force (and ``.new`` to delete); after it, ``.new`` is the gallery's key."""
        path = Path(key_file)
        new_path = path.with_name(f"{path.name}.new")
        if new_path.exists():
            raise InputError(f"{new_path} exists: an earlier key rotation did not finish. If the gallery's key id "
                             f"is that file's, move it over {path.name}; otherwise delete it")
        old_id = self.cipher.key_id.hex()
        generate_key_file(new_path)
        try:
            count = self.rotate_key(TemplateCipher.load(new_path))
        except BaseException:
            new_path.unlink(missing_ok=True)  # nothing was re-encrypted: the old key is still the gallery's
            raise
        retired = path.with_name(f"{path.name}.{old_id}.retired")
        os.link(path, retired)
        os.replace(new_path, path)
        return KeyRotation(count, old_id, self.cipher.key_id.hex(), path, retired)

    def set_policy(self, policy: Policy) -> None:
        """Replace the policy (logged with the old and the new; the seal then names this entry)."""
        self.refresh()
        self._check("policy", lambda: self.policy.allow(self.role, "policy"), {"new": policy.to_dict()})
        with self._shared.lock:
            with self._write() as tx:
                set_meta(tx, "policy", policy.to_dict())
                entry = _append(tx, self.actor, self.role, "policy", params={"old": self.policy.to_dict(),
                                                                             "new": policy.to_dict()})
                put_seal(tx, self.cipher, entry.seq)
            self.policy = policy

    def verify_erasure(self, subject_id: str, template_ids: Sequence[int] = ()) -> list[str]:
        """Problems found for an erased subject (empty when none): rows, index entries, the delete entry."""
        problems = []
        with self.store.transaction() as tx:
            if tx.one("SELECT 1 FROM subjects WHERE subject_id = ?", (subject_id,)) is not None:
                problems.append(f"{subject_id} is still in the subjects table")
            if tx.one("SELECT 1 FROM templates WHERE subject_id = ?", (subject_id,)) is not None:
                problems.append(f"templates of {subject_id} are still in the store")
        deleted = [e for e in self._log_entries()
                   if e.operation == "delete" and e.params.get("subject_id") == subject_id]
        if not deleted:
            problems.append(f"no delete of {subject_id} in the audit log")
        ids = set(template_ids) | {i for e in deleted for i in e.result.get("template_ids", [])}
        left = ids & set(SearchIndex.load(self.index_path, self.cipher).ids().tolist())
        if left:
            problems.append(f"template ids {sorted(left)} are still in the saved index")
        if self.store.dialect == "sqlite":
            # deleted content is zeroed only with secure_delete; later WAL frames then copy zeros, not templates
            with self.store.transaction() as tx:
                row = tx.one("PRAGMA secure_delete")
            if not row or int(row[0]) != 1:
                problems.append("SQLite secure_delete is off: deleted templates may remain in free pages")
            # Until a checkpoint has copied the zeroed pages over the old ones and emptied the WAL, the deleted
            # bytes are still on disk; a reader holding an old snapshot keeps the checkpoint from finishing.
            if not self.store.checkpoint():
                problems.append(f"the WAL of {self.store.location} cannot be checkpointed (another connection holds "
                                "a read transaction): the database file and its WAL may still hold the erased "
                                "data; close the other readers and run verify-erasure again")
        return problems

    def log_head(self) -> tuple[int, str] | None:
        return stored_head(self.store)

    def _log_entries(self) -> Iterator[LogEntry]:
        """The entries of the audit log in order, parsed one at a time (LogFormatError at an unreadable one)."""
        return (LogEntry.from_json(text) for _, text in self.store.log_rows())

    def verify_log(self, head: tuple[int, str] | None = None) -> ChainCheck:
        """Check the chain against the head stored beside it (which must be its last entry) and, if given,
        against ``head``, a published one (which must still be in it: later entries are fine)."""
        return check_chain(self.store, self.log_head(), head)


    def integrity(self, head: tuple[int, str] | None = None) -> GalleryCheck:
        """What :meth:`check` reports, for this open gallery: the log's chain (against ``head``, a published
        one, if given) and the seal, without refusing on what it finds."""
        return _integrity(self.store, self.cipher, head)

    def counts(self) -> dict[str, int]:
        """How many subjects and templates the gallery holds (from the store)."""
        with self.store.transaction() as tx:
            subjects = tx.one("SELECT COUNT(*) FROM subjects")
            templates = tx.one("SELECT COUNT(*) FROM templates")
        return {"subjects": int(subjects[0]) if subjects else 0, "templates": int(templates[0]) if templates else 0}


def _integrity(store: Store, cipher: TemplateCipher, head: tuple[int, str] | None) -> GalleryCheck:
    with store.transaction() as tx:
        # the head against the log is the chain check's, stated more precisely there
        problems = seal_problems(tx, cipher, with_head=False)
        problems += latest_policy_problems(tx)
    stored = stored_head(store)
    return GalleryCheck(check_chain(store, stored, head), problems, stored)


def _fairness_calibration(calibration: DeployedCalibration | str | Path | None,
                          engine: dict[str, Any]) -> DeployedCalibration | None:
    """The fairness calibration given (a path is loaded and its SHA-256 checked), refused (CalibrationError)
    unless fitted for ``engine``, the identity the gallery's templates were made with."""
    if calibration is None:
        return None
    from faceaudit.mitigation.artefact import load_calibration

    if isinstance(calibration, str | Path):
        return load_calibration(calibration, engine)
    calibration.check_engine(engine)
    return calibration


def _mentions(entry: LogEntry, subject_id: str) -> bool:
    """Whether a log entry is about this person: its subject, or a search that returned them."""
    if entry.params.get("subject_id") == subject_id:
        return True
    return any(c and c[0] == subject_id for c in entry.result.get("candidates", []))


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _append(tx: Tx, actor: str, role: str, operation: str, *, purpose: str | None = None,
            legal_basis: str | None = None, params: dict[str, Any] | None = None,
            result: dict[str, Any] | None = None) -> LogEntry:
    """Append one entry to the hash chain, in the caller's transaction, and move the head."""
    tx.lock_writes()
    row = tx.one("SELECT entry FROM log ORDER BY seq DESC LIMIT 1")
    prev = LogEntry.from_json(row[0]) if row else None
    entry = next_entry(prev, actor=actor, role=role, operation=operation, purpose=purpose, legal_basis=legal_basis,
                       params=params or {}, result=result or {})
    tx.run("INSERT INTO log (seq, entry) VALUES (?, ?)", (entry.seq, entry.to_json()))
    set_meta(tx, "log_head", [entry.seq, entry.hash])
    return entry
