"""Embeddings made by another system: any model's vectors, audited like faceaudit's own.

Accepted files (one row per image):

- Parquet: an id column (``path`` or ``id``), ``subject_id``, label columns, and one vector column:
  ``embedding``, or else the only column whose values are lists of numbers.
- NumPy ``.npz``: one array per column (``path`` or ``id``, ``subject_id``, labels), each of length N,
  and one 2-D float array (N, D) of vectors (named ``embedding``, or the only 2-D array).

Vectors are L2-normalised here, so scores are cosine similarities as for faceaudit's engines. A row
whose vector is missing, of another length than the others, non-finite or all zeros is kept with
``ok`` false and its reason (``no_embedding``, ``wrong_dimension``, ``invalid_embedding``), so it is
counted and reported like an image that failed to enrol, and the rest is audited.

The identity recorded for the system is what the user says (``system_name``) plus the file's
SHA-256: faceaudit cannot vouch for how the vectors were made, and provenance says so.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from faceaudit.errors import InputError
from faceaudit.io.files import open_regular

ID_COLUMNS = ("path", "id")
RESERVED = ("ok", "reason", "message", "det_score", "face_index", "n_faces", "box", "landmarks")


def _vector_column(table: pa.Table, p: Path) -> str:
    if "embedding" in table.column_names:
        return "embedding"
    lists: list[str] = [str(f.name) for f in table.schema
             if (pa.types.is_list(f.type) or pa.types.is_large_list(f.type) or pa.types.is_fixed_size_list(f.type))
             and (pa.types.is_floating(f.type.value_type) or pa.types.is_integer(f.type.value_type))]
    if len(lists) != 1:
        found = ", ".join(lists) or "none"
        raise InputError(f"{p}: cannot tell which column holds the vectors (list-of-number columns: {found}); "
                         "name it 'embedding'")
    return lists[0]


def _from_parquet(table: pa.Table, p: Path) -> tuple[pd.DataFrame, list[Any]]:
    col = _vector_column(table, p)
    vectors = table.column(col).to_pylist()
    df = table.drop_columns([col]).to_pandas()
    return df, vectors


def _from_npz(p: Path) -> tuple[pd.DataFrame, list[Any]]:
    try:
        # a regular file (never a FIFO or device), opened once; no pickles: a data file must not run code
        with open_regular(p, what="an embeddings file") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except InputError:  # refused by open_regular: its message says why
        raise
    except ValueError as exc:
        raise InputError(f"{p}: {exc}; store text columns as unicode arrays (np.str_), not objects") from exc
    except Exception as exc:  # zipfile.BadZipFile, OSError, ...
        raise InputError(f"{p}: not a readable .npz file ({exc})") from exc
    two_d = [k for k, a in arrays.items() if a.ndim == 2]
    key = "embedding" if "embedding" in arrays else (two_d[0] if len(two_d) == 1 else None)
    if key is None or arrays[key].ndim != 2 or arrays[key].dtype.kind not in "fiu":
        raise InputError(f"{p}: needs one 2-D numeric array of vectors (N, D), named 'embedding' "
                         f"(2-D arrays found: {', '.join(two_d) or 'none'})")
    vecs = arrays.pop(key)
    bad = [f"{k} {a.shape}" for k, a in arrays.items() if a.shape != (len(vecs),)]
    if bad:
        raise InputError(f"{p}: every column must be a 1-D array of length {len(vecs)} (one per vector); "
                         f"got {', '.join(bad)}")
    return pd.DataFrame({k: a.tolist() for k, a in arrays.items()}), list(vecs)


def _hex_digest(value: Any) -> str | None:
    """An image SHA-256 the user gave, kept for provenance when it is one (64 hex digits)."""
    text = str(value).strip().lower() if value is not None else ""
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def _check_rows(vectors: list[Any]) -> tuple[np.ndarray, list[str | None], list[str | None], int]:
    """(unit vectors, reason, message, dimension); rows that are unusable get a zero vector and a reason."""
    lengths = Counter(len(v) for v in vectors if v is not None)
    if not lengths:
        raise InputError("no row has a vector")
    dim = lengths.most_common(1)[0][0]
    out = np.zeros((len(vectors), dim), np.float32)
    reasons: list[str | None] = [None] * len(vectors)
    messages: list[str | None] = [None] * len(vectors)
    for i, v in enumerate(vectors):
        if v is None:
            reasons[i], messages[i] = "no_embedding", "the vector is missing"
            continue
        if len(v) != dim:
            reasons[i], messages[i] = "wrong_dimension", f"{len(v)} values, the other vectors have {dim}"
            continue
        x = np.asarray(v, np.float64)
        norm = float(np.linalg.norm(x)) if np.all(np.isfinite(x)) else float("nan")
        if not np.isfinite(norm) or norm == 0.0:
            reasons[i], messages[i] = "invalid_embedding", "the vector is not finite or is all zeros"
            continue
        out[i] = (x / norm).astype(np.float32)
    return out, reasons, messages, dim


def read_foreign_embeddings(path: str | Path, table: pa.Table | None, sha256: str,
                            system_name: str | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows and metadata (as :func:`faceaudit.io.embeddings.read_embeddings` gives) of another system's vectors.

    ``table``: the file already read as Parquet, or None for an ``.npz`` file.
    """
    from faceaudit import __version__

    p = Path(path)
    df, vectors = _from_parquet(table, p) if table is not None else _from_npz(p)
    ids = [c for c in ID_COLUMNS if c in df.columns]
    if not ids or "subject_id" not in df.columns:
        raise InputError(f"{p}: needs an id column ('path' or 'id') and 'subject_id' beside the vectors; "
                         f"columns found: {', '.join(map(str, df.columns))}")
    reserved = [c for c in RESERVED if c in df.columns]
    if reserved:
        raise InputError(f"{p}: column(s) {', '.join(reserved)} are faceaudit's own; rename them "
                         "(rows without a usable vector are marked by faceaudit)")
    if ids[0] == "id":
        df = df.rename(columns={"id": "path"})
    elif "id" in df.columns:
        df = df.drop(columns=["id"])
    df["path"] = df["path"].astype(str)
    df["subject_id"] = df["subject_id"].astype(str)
    if df["path"].duplicated().any():
        dup = df.loc[df["path"].duplicated(), "path"].iloc[0]
        raise InputError(f"{p}: the id {dup!r} appears more than once; each row must be one image")
    try:
        unit, reasons, messages, dim = _check_rows(vectors)
    except InputError as exc:
        raise InputError(f"{p}: {exc}") from None
    ok = np.array([r is None for r in reasons])
    core = pd.DataFrame({
        "path": df["path"], "subject_id": df["subject_id"],
        "sha256": [_hex_digest(h) for h in df["sha256"]] if "sha256" in df.columns else None,
        "ok": ok, "reason": reasons, "message": messages,
        "embedding": [unit[i] if ok[i] else None for i in range(len(df))],
    })
    labels = df.drop(columns=[c for c in ("path", "subject_id", "sha256") if c in df.columns])
    frame = pd.concat([core, labels.reset_index(drop=True)], axis=1)
    name = system_name or f"user-supplied embeddings ({p.name})"
    engine = {"name": name, "version": f"file sha256 {sha256[:12]}", "supplied_by": "user",
              "file": p.name, "sha256": sha256, "embedding_dim": dim,
              "models": [{"role": "vectors supplied by the user", "file": p.name, "licence": "not known to faceaudit",
                          "sha256": sha256}],
              "note": "vectors supplied by the user; faceaudit L2-normalised them and compares them by cosine "
                      "similarity; how they were made is not known to faceaudit"}
    return frame, {"engine": engine, "settings": {}, "faceaudit_version": __version__, "foreign": True}
