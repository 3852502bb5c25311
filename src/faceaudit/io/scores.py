"""Score files from any face recognition system: a pairs file plus a manifest, read in chunks.

Pairs file (CSV or Parquet): ``id_a``, ``id_b``, ``score``. Manifest (CSV or Parquet): ``id``,
``subject_id`` and any attribute columns. Files far larger than memory are read a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from faceaudit.errors import InputError

PAIR_COLUMNS = ("id_a", "id_b", "score")


def read_score_manifest(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    try:
        if p.suffix.lower() == ".csv":
            df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
        elif p.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(p)
        else:
            raise InputError(f"{p}: unknown manifest type {p.suffix!r}; use .csv or .parquet")
    except FileNotFoundError:
        raise InputError(f"{p}: no such manifest") from None
    missing = [c for c in ("id", "subject_id") if c not in df.columns]
    if missing:
        raise InputError(f"{p}: missing column(s) {', '.join(missing)}; a score manifest needs 'id' and 'subject_id'")
    df["id"] = df["id"].astype(str)
    df["subject_id"] = df["subject_id"].astype(str)
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise InputError(f"{p}: {len(dup)} duplicated id(s), e.g. {dup.iloc[0]!r}; every image id must be unique")
    return df.reset_index(drop=True)


def iter_pairs(path: str | Path, chunk_rows: int = 2_000_000) -> Iterator[pd.DataFrame]:
    """Chunks of the pairs file with columns id_a, id_b (str) and score (float64)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such pairs file")
    if p.suffix.lower() == ".csv":
        header = pd.read_csv(p, nrows=0).columns
        _check_columns(p, header)
        for chunk in pd.read_csv(p, usecols=list(PAIR_COLUMNS), dtype={"id_a": str, "id_b": str},
                                 chunksize=chunk_rows):
            chunk["score"] = pd.to_numeric(chunk["score"], errors="coerce")
            yield chunk
    elif p.suffix.lower() in (".parquet", ".pq"):
        f = pq.ParquetFile(p)
        _check_columns(p, f.schema_arrow.names)
        for batch in f.iter_batches(batch_size=chunk_rows, columns=list(PAIR_COLUMNS)):
            df = batch.to_pandas()
            df["id_a"], df["id_b"] = df["id_a"].astype(str), df["id_b"].astype(str)
            df["score"] = pd.to_numeric(df["score"], errors="coerce")
            yield df
    else:
        raise InputError(f"{p}: unknown pairs file type {p.suffix!r}; use .csv or .parquet")


def _check_columns(path: Path, columns: object) -> None:
    cols = list(columns)  # type: ignore[call-overload]
    missing = [c for c in PAIR_COLUMNS if c not in cols]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; a pairs file needs id_a, id_b, score "
                         f"(found: {', '.join(map(str, cols))})")
