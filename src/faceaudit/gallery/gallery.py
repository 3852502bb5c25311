"""A gallery of enrolled people: enrol, verify 1:1, search 1:N, delete, export, rotate the key, expire.

Every operation is checked against the policy first (:mod:`faceaudit.gallery.policy`), runs in one
database transaction with its audit-log entry (:mod:`faceaudit.gallery.log`), and only then touches
the search index, which is derived from the store: on opening, an index that does not hold exactly
the store's templates (after a crash between commit and index write, say) is rebuilt from the store.

A gallery is a folder: ``gallery.toml`` (the database URL, the index kind, the engine), the SQLite
database ``gallery.sqlite`` unless the database is PostgreSQL, and the encrypted index file.

Search thresholds are stated as a target FPIR. With a gallery of N people and a per-comparison
false match rate FMR(T), a non-mated search returns a false candidate with probability
FPIR(N, T) = 1 - (1 - FMR(T))^N (comparisons taken as independent; NIST IR 8271, section 3), so
the threshold used is the engine's calibrated threshold for FMR = 1 - (1 - FPIR)^(1/N): it rises as
the gallery grows.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from faceaudit.engines.base import EnrolSettings
from faceaudit.errors import FaceauditError, InputError
from faceaudit.gallery.crypto import TemplateCipher
from faceaudit.gallery.index import KINDS, SearchIndex
from faceaudit.gallery.log import ChainCheck, LogEntry, next_entry, verify_chain
from faceaudit.gallery.policy import Policy, PolicyError
from faceaudit.gallery.store import Store, Tx, get_meta, set_meta

SETTINGS = "gallery.toml"
INDEX_FILE = "index.faiss.enc"


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

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "candidates": [asdict(c) for c in self.candidates],
                "note": "candidates are investigative leads for a person to review, not identifications"
                if self.investigative_lead else None}


@dataclass
class _Settings:
    database: str
    index: str = "exact"
    engine: str = "yunet-sface"


@dataclass
class Gallery:
    """An open gallery; use :meth:`init` or :meth:`open`, and :meth:`close` (or ``with``)."""

    folder: Path
    store: Store
    cipher: TemplateCipher
    policy: Policy
    settings: _Settings
    actor: str
    role: str
    index: SearchIndex = field(init=False)
    dim: int = field(init=False)

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
        settings = _Settings(database or str(f / "gallery.sqlite"), index, spec.name)
        cipher = TemplateCipher.load(key_file)
        store = Store.open(settings.database)
        pol = policy or Policy()
        ident = spec.identity()
        with store.transaction() as tx:
            if get_meta(tx, "gallery") is not None:
                raise InputError(f"the database {store.location} holds a gallery already")
            set_meta(tx, "gallery", {"created": _now(), "engine": ident.to_dict(), "dim": ident.embedding_dim})
            set_meta(tx, "key_id", cipher.key_id.hex())
            set_meta(tx, "policy", pol.to_dict())
            _append(tx, actor, role, "init", params={"index": index, "engine": spec.name,
                                                     "policy": pol.to_dict()})
        (f / SETTINGS).write_text(tomli_w.dumps(asdict(settings)))
        return cls._ready(f, store, cipher, pol, settings, actor, role)

    @classmethod
    def open(cls, folder: str | Path, *, key_file: str | Path | None = None, actor: str = "unknown",
             role: str = "operator") -> Gallery:
        f = Path(folder)
        if not (f / SETTINGS).is_file():
            raise InputError(f"{f}: not a gallery (no {SETTINGS}); create one with `faceaudit gallery init`")
        settings = _Settings(**tomllib.loads((f / SETTINGS).read_text()))
        cipher = TemplateCipher.load(key_file)
        store = Store.open(settings.database)
        key_id = store.get_meta("key_id")
        if key_id is None:
            store.close()
            raise InputError(f"{store.location} is not a faceaudit gallery")
        if key_id != cipher.key_id.hex():
            store.close()
            raise InputError(f"the key given (id {cipher.key_id.hex()}) is not the gallery's (id {key_id})")
        policy = Policy.from_dict(store.get_meta("policy") or {})
        return cls._ready(f, store, cipher, policy, settings, actor, role)

    @classmethod
    def _ready(cls, folder: Path, store: Store, cipher: TemplateCipher, policy: Policy, settings: _Settings,
               actor: str, role: str) -> Gallery:
        g = cls(folder, store, cipher, policy, settings, actor, role)
        g.dim = int(store.get_meta("gallery")["dim"])
        g._load_index()
        return g

    def close(self) -> None:
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

    def _decrypt_all(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.store.templates()
        ids = np.array([r.template_id for r in rows], np.int64)
        vecs = np.zeros((len(rows), self.dim), np.float32)
        for i, r in enumerate(rows):
            vecs[i] = np.frombuffer(self.cipher.decrypt(r.blob, self._aad(r.template_id, r.subject_id)), "<f4")
        return ids, vecs

    def _load_index(self) -> None:
        """Load the saved index; rebuild it from the store when it is missing or differs from the store."""
        want = {r.template_id for r in self.store.templates()}
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

    def _embed(self, images: Sequence[str | Path]) -> tuple[np.ndarray, list[str]]:
        """Embeddings of the images (one face each); never written to the embedding cache."""
        from faceaudit.api import embed_image

        vecs, sources = [], []
        for img in images:
            res = embed_image(img, engine=self.settings.engine, settings=EnrolSettings())
            if not res or not res[0].ok or res[0].embedding is None:
                reason = res[0].reason if res else "no_face"
                raise InputError(f"{img}: no usable face ({reason}); nothing was enrolled")
            vecs.append(np.asarray(res[0].embedding, np.float32))
            sources.append(Path(img).name)
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
    def enrol(self, subject_id: str, consent: Consent, *, images: Sequence[str | Path] = (),
              embeddings: np.ndarray | None = None) -> list[int]:
        """Enrol templates of one person with their consent record; returns the new template ids."""
        self.policy.allow(self.role, "enrol")
        if embeddings is None:
            if not images:
                raise InputError("give images or embeddings to enrol")
            vecs, sources = self._embed(images)
        else:
            vecs = self._check_vectors(embeddings)
            sources = ["embedding"] * len(vecs)
        with self.store.transaction() as tx:
            ids = self._insert(tx, subject_id, consent, vecs, sources)
        self.index.add(np.array(ids, np.int64), vecs)
        self.index.save(self.index_path, self.cipher)
        return ids

    def enrol_many(self, items: Sequence[tuple[str, Consent, np.ndarray]], *, chunk: int = 1000) -> int:
        """Enrol many people from embeddings, ``chunk`` people per transaction (each with its own log entry);
        the index is written once at the end (after a crash it is rebuilt from the store on opening)."""
        self.policy.allow(self.role, "enrol")
        done = 0
        for start in range(0, len(items), chunk):
            part = [(s, c, self._check_vectors(v)) for s, c, v in items[start:start + chunk]]
            with self.store.transaction() as tx:
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

    def threshold_for_fpir(self, fpir: float) -> float:
        """The score threshold for a target FPIR at this gallery's size (module docstring)."""
        from faceaudit.api import calibration_for

        n = max(1, len(self.index))
        fmr = 1.0 - (1.0 - fpir) ** (1.0 / n)
        cal = calibration_for(self.settings.engine)
        if fmr < cal.min_fmr:
            raise InputError(f"a gallery of {n:,} templates needs a per-comparison FMR of {fmr:.2g} for FPIR "
                             f"{fpir:g}, below the lowest the engine's calibration supports ({cal.min_fmr:.2g}); "
                             "ask for a larger FPIR")
        t = cal.threshold_for(fmr)
        floor = self.policy.search.min_score
        return max(t, floor) if floor is not None else t

    def search(self, *, image: str | Path | None = None, embedding: np.ndarray | None = None, k: int = 10,
               fpir: float = 0.01, purpose: str | None = None, legal_basis: str | None = None) -> SearchResult:
        """1:N: the top-k candidates with scores; only those at or above the threshold are matches."""
        try:
            self.policy.allow_search(self.role, purpose, legal_basis, k, fpir)
        except PolicyError as exc:
            with self.store.transaction() as tx:
                _append(tx, self.actor, self.role, "search-refused", purpose=purpose, legal_basis=legal_basis,
                        params={"k": k, "fpir": fpir}, result={"rule": exc.rule})
            raise
        probe = self._embed([image])[0] if image is not None else None
        if probe is None:
            if embedding is None:
                raise InputError("give a probe image or embedding")
            probe = self._check_vectors(np.asarray(embedding, np.float32).reshape(1, -1))[0]
        threshold = self.threshold_for_fpir(fpir)
        scores, ids = self.index.search(probe.reshape(1, -1), k)
        owners = self._owners([int(i) for i in ids[0] if i >= 0])
        cands = [Candidate(r + 1, owners[int(i)], int(i), float(s), bool(s >= threshold))
                 for r, (s, i) in enumerate(zip(scores[0], ids[0], strict=True)) if i >= 0]
        with self.store.transaction() as tx:
            entry = _append(tx, self.actor, self.role, "search", purpose=purpose, legal_basis=legal_basis,
                            params={"k": k, "fpir": fpir, "threshold": threshold, "gallery_size": len(self.index)},
                            result={"candidates": [[c.subject_id, c.template_id, round(c.score, 6), c.match]
                                                   for c in cands]})
        return SearchResult(cands, threshold, fpir, len(self.index), self.policy.search.human_review, entry.seq)

    def _owners(self, template_ids: list[int]) -> dict[int, str]:
        if not template_ids:
            return {}
        with self.store.transaction() as tx:
            marks = ",".join("?" * len(template_ids))
            rows = tx.rows(f"SELECT template_id, subject_id FROM templates WHERE template_id IN ({marks})",
                           template_ids)
        return {int(t): str(s) for t, s in rows}

    def verify(self, subject_id: str, *, image: str | Path | None = None, embedding: np.ndarray | None = None,
               fmr: float = 1e-4) -> dict[str, Any]:
        """1:1: does the probe match any template of ``subject_id`` at the threshold for ``fmr``?"""
        from faceaudit.api import calibration_for

        self.policy.allow(self.role, "verify")
        probe = self._embed([image])[0] if image is not None else self._check_vectors(
            np.asarray(embedding, np.float32).reshape(1, -1))[0]
        rows = self.store.templates(subject_id)
        if not rows:
            raise InputError(f"no templates enrolled for {subject_id!r}")
        best = max(float(np.frombuffer(self.cipher.decrypt(r.blob, self._aad(r.template_id, r.subject_id)),
                                       "<f4") @ probe) for r in rows)
        threshold = calibration_for(self.settings.engine).threshold_for(fmr)
        with self.store.transaction() as tx:
            _append(tx, self.actor, self.role, "verify", params={"subject_id": subject_id, "fmr": fmr},
                    result={"match": best >= threshold, "score": round(best, 6)})
        return {"subject_id": subject_id, "match": best >= threshold, "score": best, "threshold": threshold}

    def delete(self, subject_id: str, *, reason: str = "erasure request") -> list[int]:
        """Erase a person: templates and consent from the store, the index and its file; logged."""
        self.policy.allow(self.role, "delete")
        with self.store.transaction() as tx:
            ids = [int(r[0]) for r in tx.rows("SELECT template_id FROM templates WHERE subject_id = ?",
                                              (subject_id,))]
            found = tx.one("SELECT 1 FROM subjects WHERE subject_id = ?", (subject_id,)) is not None
            if not found:
                raise InputError(f"no subject {subject_id!r} in the gallery")
            tx.run("DELETE FROM templates WHERE subject_id = ?", (subject_id,))
            tx.run("DELETE FROM subjects WHERE subject_id = ?", (subject_id,))
            _append(tx, self.actor, self.role, "delete", params={"subject_id": subject_id, "reason": reason},
                    result={"template_ids": ids})
        self.store.purge_deleted()
        if ids:
            self.index.remove(np.array(ids, np.int64))
        self.index.save(self.index_path, self.cipher)
        return ids

    def expire(self, today: date | None = None) -> list[str]:
        """Erase everyone whose consent or retention has ended (logged as expiry)."""
        day = (today or date.today()).isoformat()
        with self.store.transaction() as tx:
            due = [str(r[0]) for r in tx.rows("SELECT subject_id FROM subjects WHERE expires IS NOT NULL AND "
                                              "expires < ?", (day,))]
        for s in due:
            self.delete(s, reason=f"consent or retention ended before {day}")
        return due

    def export(self, subject_id: str) -> dict[str, Any]:
        """Everything held about one person (subject-access request): consent, templates, log entries."""
        self.policy.allow(self.role, "export")
        with self.store.transaction() as tx:
            row = tx.one("SELECT consent, created, expires FROM subjects WHERE subject_id = ?", (subject_id,))
        if row is None:
            raise InputError(f"no subject {subject_id!r} in the gallery")
        import base64
        import json

        templates = [{"template_id": r.template_id, "created": r.created, "source": r.source,
                      "embedding_float32_base64": base64.b64encode(
                          self.cipher.decrypt(r.blob, self._aad(r.template_id, r.subject_id))).decode()}
                     for r in self.store.templates(subject_id)]
        entries = [LogEntry.from_json(e) for _, e in self.store.log_rows()]
        mine = [e.to_json() for e in entries if _mentions(e, subject_id)]
        with self.store.transaction() as tx:
            _append(tx, self.actor, self.role, "export", params={"subject_id": subject_id},
                    result={"templates": len(templates), "log_entries": len(mine)})
        return {"subject_id": subject_id, "consent": json.loads(row[0]), "created": row[1], "expires": row[2],
                "templates": templates, "log_entries": [json.loads(m) for m in mine]}

    def rotate_key(self, new: TemplateCipher) -> int:
        """Re-encrypt every template under ``new`` in one transaction; returns how many."""
        self.policy.allow(self.role, "rotate-key")
        rows = self.store.templates()
        with self.store.transaction() as tx:
            for r in rows:
                aad = self._aad(r.template_id, r.subject_id)
                tx.run("UPDATE templates SET blob = ? WHERE template_id = ?",
                       (new.encrypt(self.cipher.decrypt(r.blob, aad), aad), r.template_id))
            set_meta(tx, "key_id", new.key_id.hex())
            _append(tx, self.actor, self.role, "rotate-key", params={"old_key_id": self.cipher.key_id.hex(),
                                                                     "new_key_id": new.key_id.hex()},
                    result={"templates": len(rows)})
        self.store.purge_deleted()
        self.cipher = new
        self.index.save(self.index_path, self.cipher)
        return len(rows)

    def set_policy(self, policy: Policy) -> None:
        self.policy.allow(self.role, "policy")
        with self.store.transaction() as tx:
            set_meta(tx, "policy", policy.to_dict())
            _append(tx, self.actor, self.role, "policy", params={"old": self.policy.to_dict(),
                                                                 "new": policy.to_dict()})
        self.policy = policy

    def verify_erasure(self, subject_id: str, template_ids: Sequence[int] = ()) -> list[str]:
        """Problems found for an erased subject (empty when none): rows, index entries, the delete entry."""
        problems = []
        with self.store.transaction() as tx:
            if tx.one("SELECT 1 FROM subjects WHERE subject_id = ?", (subject_id,)) is not None:
                problems.append(f"{subject_id} is still in the subjects table")
            if tx.one("SELECT 1 FROM templates WHERE subject_id = ?", (subject_id,)) is not None:
                problems.append(f"templates of {subject_id} are still in the store")
        deleted = [e for e in (LogEntry.from_json(t) for _, t in self.store.log_rows())
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
        return problems

    def log_head(self) -> tuple[int, str] | None:
        head = self.store.get_meta("log_head")
        return None if head is None else (int(head[0]), str(head[1]))

    def verify_log(self, head: tuple[int, str] | None = None) -> ChainCheck:
        """Check the chain against ``head`` (a published one), else against the head stored beside it."""
        return verify_chain(self.store.log_rows(), head or self.log_head())


def _mentions(entry: LogEntry, subject_id: str) -> bool:
    """Whether a log entry is about this person: its subject, or a search that returned them."""
    if entry.params.get("subject_id") == subject_id:
        return True
    return any(c and c[0] == subject_id for c in entry.result.get("candidates", []))


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


def _append(tx: Tx, actor: str, role: str, operation: str, *, purpose: str | None = None,
            legal_basis: str | None = None, params: dict[str, Any] | None = None,
            result: dict[str, Any] | None = None) -> LogEntry:
    """Append one entry to the hash chain, in the caller's transaction, and move the head."""
    row = tx.one("SELECT entry FROM log ORDER BY seq DESC LIMIT 1")
    prev = LogEntry.from_json(row[0]) if row else None
    entry = next_entry(prev, actor=actor, role=role, operation=operation, purpose=purpose, legal_basis=legal_basis,
                       params=params or {}, result=result or {})
    tx.run("INSERT INTO log (seq, entry) VALUES (?, ?)", (entry.seq, entry.to_json()))
    set_meta(tx, "log_head", [entry.seq, entry.hash])
    return entry
