"""Embeddings files: Parquet, one row per image (or per face), engine identity in the file metadata.

Columns written by ``faceaudit embed``: ``path``, ``subject_id``, ``sha256``, ``ok``, ``reason``,
``message``, ``embedding`` (L2-normalised float32 list, null when not ok), ``det_score``,
``face_index``, ``n_faces``, ``box``, ``landmarks``, then the manifest's passthrough columns.
The key ``faceaudit`` of the Parquet schema metadata holds JSON: ``engine`` (identity), ``settings``
and ``faceaudit_version``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from faceaudit.errors import InputError

METADATA_KEY = b"faceaudit"
CORE_COLUMNS = ("path", "subject_id", "sha256", "ok", "reason", "message", "embedding", "det_score",
                "face_index", "n_faces", "box", "landmarks")


def _float_list(values: list[Any], width: int | None) -> pa.Array:
    inner = pa.float32()
    typ = pa.list_(inner, width) if width else pa.list_(inner)
    return pa.array([None if v is None else np.asarray(v, np.float32) for v in values], type=typ)


def write_embeddings(df: pd.DataFrame, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write ``df`` (columns as in the module docstring) to Parquet with ``metadata`` as JSON.

    Written to a temporary file and renamed, so an interrupted write never leaves a half file.
    """
    dim = int(metadata.get("engine", {}).get("embedding_dim", 0)) or None
    fields: dict[str, pa.Array] = {}
    for col in df.columns:
        if col == "embedding":
            fields[col] = _float_list(list(df[col]), dim)
        elif col == "box":
            fields[col] = _float_list(list(df[col]), 4)
        elif col == "landmarks":
            fields[col] = _float_list(list(df[col]), 10)
        else:
            fields[col] = pa.Array.from_pandas(df[col])
    table = pa.table(fields)
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    pq.write_table(table, tmp)
    tmp.replace(out)


def read_embeddings(path: str | Path, *, system_name: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read an embeddings file: (rows, metadata). Raises InputError if it is not one.

    A file of ``faceaudit embed`` carries its engine's identity. Any other system's vectors (Parquet
    or ``.npz``, :mod:`faceaudit.io.foreign_embeddings`) are read too, recorded as supplied by the
    user under ``system_name`` with the file's SHA-256.
    """
    from faceaudit.io.files import FileRefused, open_table
    from faceaudit.io.foreign_embeddings import read_foreign_embeddings
    from faceaudit.io.images import sha256_file

    p = Path(path)
    what = "an embeddings file"
    try:
        if p.suffix.lower() == ".npz":
            return read_foreign_embeddings(p, None, sha256_file(p), system_name)
        with open_table(p, what, fmt="parquet") as f:  # bounded footer and column count, then read
            table = pq.read_table(f)
    except FileRefused as exc:
        if exc.reason == "missing_file":
            raise InputError(f"{p}: no such embeddings file; create it with `faceaudit embed`, or give another "
                             "system's vectors as Parquet or .npz") from None
        raise
    except InputError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid and others
        raise InputError(f"{p}: not a readable Parquet file ({exc}); embeddings are Parquet or .npz") from exc
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return read_foreign_embeddings(p, table, sha256_file(p), system_name)
    missing = [c for c in ("path", "subject_id", "ok", "embedding") if c not in table.column_names]
    if missing:
        raise InputError(f"{p}: missing column(s) {', '.join(missing)}")
    return table.to_pandas(), json.loads(raw)


def embedding_matrix(df: pd.DataFrame) -> np.ndarray:
    """Stack the ``embedding`` column of the ok rows into an (N, D) float32 array."""
    ok = df[df["ok"]]
    if len(ok) == 0:
        return np.zeros((0, 0), np.float32)
    return np.stack([np.asarray(v, np.float32) for v in ok["embedding"]])
