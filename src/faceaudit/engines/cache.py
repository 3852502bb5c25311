"""Embedding cache: enrolment results keyed by image content (SHA-256) and engine configuration.

The configuration key hashes the engine identity and the enrolment settings, so a different model,
model version, runtime or face policy never reuses old vectors. SQLite (WAL) is the store: one file,
safe when the process is killed (each batch is one transaction), and fast enough that a warm rerun
over thousands of images takes about a second. The payload is JSON plus raw float32 bytes; no pickle,
so a cache file from elsewhere cannot run code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from faceaudit.engines.base import EngineIdentity, EnrolSettings, Face, FaceResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    image_sha256 TEXT NOT NULL,
    config TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (image_sha256, config)
) WITHOUT ROWID;
"""


def default_cache_path() -> Path:
    """``$FACEAUDIT_CACHE_DIR/embeddings.sqlite``, else ``~/.cache/faceaudit/embeddings.sqlite``."""
    base = os.environ.get("FACEAUDIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "faceaudit"
    )
    return Path(base) / "embeddings.sqlite"


def config_key(identity: EngineIdentity, settings: EnrolSettings, max_pixels: int) -> str:
    """The part of the cache key that is not the image: engine identity plus enrolment settings.

    A fairness calibration (``--calibration``, :mod:`faceaudit.mitigation.artefact`) is deliberately not part
    of the key: the cache holds raw enrolment results only (embeddings, never scores), and calibrated scores are
    computed from those raw embeddings at decision time, every time, by
    :func:`faceaudit.mitigation.artefact.score_calibrated`. Nothing calibrated is ever stored here, so a raw and
    a calibrated run can share the cached vectors without their scores or decisions being mixed.
    """
    blob = json.dumps({"engine": identity.fingerprint, "settings": settings.to_dict(), "max_pixels": max_pixels},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def encode_results(results: list[FaceResult]) -> str:
    items = []
    for r in results:
        d: dict[str, Any] = {"ok": r.ok, "reason": r.reason, "message": r.message, "face_index": r.face_index,
                             "n_faces": r.n_faces}
        if r.face is not None:
            d["box"] = list(map(float, r.face.box))
            d["landmarks"] = r.face.landmarks.astype(np.float32).ravel().tolist()
            d["score"] = float(r.face.score)
        if r.embedding is not None:
            d["embedding"] = base64.b64encode(np.asarray(r.embedding, "<f4").tobytes()).decode()
        items.append(d)
    return json.dumps(items)


def decode_results(payload: str) -> list[FaceResult]:
    out = []
    for d in json.loads(payload):
        face = None
        if "box" in d:
            face = Face(box=tuple(d["box"]), landmarks=np.asarray(d["landmarks"], np.float32).reshape(5, 2),
                        score=float(d["score"]))
        emb = None
        if "embedding" in d:
            emb = np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").astype(np.float32)
        out.append(FaceResult(ok=bool(d["ok"]), reason=d["reason"], message=d["message"], face=face,
                              embedding=emb, face_index=int(d["face_index"]), n_faces=int(d["n_faces"])))
    return out


class EmbeddingCache:
    """A SQLite file of enrolment results. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the embedding cache {self.path} is closed")
        return self._db

    def get(self, image_sha256: str, config: str) -> list[FaceResult] | None:
        row = self.db.execute(
            "SELECT payload FROM results WHERE image_sha256 = ? AND config = ?", (image_sha256, config)
        ).fetchone()
        return None if row is None else decode_results(row[0])

    def put_many(self, items: Iterable[tuple[str, str, list[FaceResult]]]) -> None:
        """Store (image_sha256, config, results) items in one transaction."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO results (image_sha256, config, payload) VALUES (?, ?, ?)",
                [(sha, cfg, encode_results(res)) for sha, cfg, res in items],
            )

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
