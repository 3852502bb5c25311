"""Score files from any face recognition system: a pairs file plus a manifest, read in chunks.

Pairs file (CSV or Parquet): ``id_a``, ``id_b``, ``score``. Manifest (CSV or Parquet): ``id``,
``subject_id`` and any attribute columns. Files far larger than memory are read a chunk at a time.
Both must be regular files within the limits of :mod:`faceaudit.io.files`; a pairs CSV's header is
checked before parsing, and its other lines are bounded by the block size of the chunked reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from faceaudit.errors import InputError
from faceaudit.io.files import check_csv, check_parquet, open_regular, open_table

PAIR_COLUMNS = ("id_a", "id_b", "score")


def read_score_manifest(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise InputError(f"{p}: unknown manifest type {p.suffix!r}; use .csv or .parquet")
    with open_table(p, "a score manifest") as f:
        try:
            df = (pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""]) if suffix == ".csv"
                  else pd.read_parquet(f))
        except Exception as exc:  # pandas and pyarrow raise many parser errors
            raise InputError(f"{p}: cannot read the manifest ({exc})") from exc
    missing = [c for c in ("id", "subject_id") if c not in df.columns]
    if missing:
        raise InputError(f"{p}: missing column(s) {', '.join(missing)}; a score manifest needs 'id' and 'subject_id'")
    for col in ("id", "subject_id"):
        empty = df.index[df[col].isna() | (df[col].astype(str).str.strip() == "")].tolist()
        if empty:
            rows = ", ".join(str(i + 2) for i in empty[:10])
            raise InputError(f"{p}: empty {col!r} on line(s) {rows}; every image needs an id and a subject_id")
    df["id"] = df["id"].astype(str)
    df["subject_id"] = df["subject_id"].astype(str)
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise InputError(f"{p}: {len(dup)} duplicated id(s), e.g. {dup.iloc[0]!r}; every image id must be unique")
    return df.reset_index(drop=True)


@dataclass(frozen=True)
class PairChunk:
    """One chunk of a pairs file: row positions of both images in the manifest (-1: id not listed), scores."""

    index_a: np.ndarray
    index_b: np.ndarray
    score: np.ndarray  # float64; NaN where the file has no usable number


def _batches(p: Path, columns: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of the file with ``columns``; ids and (in CSV) scores as text, converted by the caller."""
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise InputError(f"{p}: unknown pairs file type {p.suffix!r}; use .csv or .parquet")
    block = max(1 << 20, chunk_rows * 32)
    with open_regular(p, what="a pairs file") as f:
        try:
            if suffix == ".csv":
                # the header only: the file may hold billions of rows; every other line is bounded by the block
                _check_columns(p, check_csv(f, p, "a pairs file", header_only=True))
                # ids stay text (leading zeros are significant); scores are parsed leniently by the caller
                yield from pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=block),
                                          convert_options=pacsv.ConvertOptions(
                                              include_columns=columns, column_types={c: pa.string() for c in columns},
                                              strings_can_be_null=True))
            else:
                check_parquet(f, p, "a pairs file")
                # pre_buffer (on by default) keeps every column chunk read so far until the iteration ends:
                # 10^8 rows held about 840 MB; without it memory stays at one batch
                pf = pq.ParquetFile(f, pre_buffer=False)
                _check_columns(p, pf.schema_arrow.names)
                yield from pf.iter_batches(batch_size=chunk_rows, columns=columns)
        except pa.ArrowInvalid as exc:
            if "straddl" in str(exc):  # pyarrow's word for a row longer than its block: not a list of pairs
                raise InputError(f"{p}: a line is longer than {block:,} bytes, the limit for a pairs file "
                                 "(id_a,id_b,score per line); is this the right file?") from None
            raise InputError(f"{p}: cannot read the pairs file ({exc})") from exc
        except OSError as exc:  # pyarrow's ArrowIOError, e.g. a damaged Parquet page
            raise InputError(f"{p}: cannot read the pairs file ({exc})") from exc


def _scores(col: pa.Array) -> np.ndarray:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return pd.to_numeric(pd.Series(col.to_numpy(zero_copy_only=False)), errors="coerce").to_numpy(np.float64)
    return np.asarray(pc.cast(col, pa.float64()).fill_null(np.nan).to_numpy(), np.float64)


def iter_pairs(path: str | Path, ids: pd.Series | None = None, chunk_rows: int = 1_000_000) -> Iterator[PairChunk]:
    """Chunks of a pairs file, ids looked up among ``ids`` (the manifest's id column) inside Arrow.

    Matching ids in Arrow (``pyarrow.compute.index_in``) never makes a Python string per row, which
    keeps memory flat and reading fast for files of billions of rows. Without ``ids`` only scores
    are read (the index arrays are empty).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such pairs file")
    columns = list(PAIR_COLUMNS) if ids is not None else ["score"]
    value_set = None if ids is None else pa.array(ids.astype(str).tolist(), pa.string())
    empty = np.empty(0, np.int64)
    for batch in _batches(p, columns, chunk_rows):
        score = _scores(batch.column("score"))
        if value_set is None:
            yield PairChunk(empty, empty, score)
            continue
        a, b = (pc.index_in(pc.cast(batch.column(c), pa.string()), value_set=value_set).fill_null(-1)
                .to_numpy().astype(np.int64) for c in ("id_a", "id_b"))
        yield PairChunk(a, b, score)


def _check_columns(path: Path, columns: object) -> None:
    cols = list(columns)  # type: ignore[call-overload]
    missing = [c for c in PAIR_COLUMNS if c not in cols]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; a pairs file needs id_a, id_b, score "
                         f"(found: {', '.join(map(str, cols))})")
