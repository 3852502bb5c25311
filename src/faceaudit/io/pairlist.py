"""Pair lists: datasets that name the pairs of images to compare, instead of comparing all pairs.

Formats, chosen by the file's suffix:

``.csv``, ``.parquet`` (or ``.pq``)
    One row per pair. Image columns ``path_a`` and ``path_b`` (our naming) or ``p1`` and ``p2`` (BFW:
    Robinson et al. 2020, "Face Recognition: Too Bias, or Not Too Bias?", whose pair list is a CSV with
    ``fold``, ``p1``, ``p2``, ``label`` and score columns). Optional ``label`` or ``genuine`` column, whether
    the two images show the same person: 1/0, true/false, same/different or yes/no, in any case. Optional
    ``fold`` column of whole numbers, kept as written (BFW numbers its folds from 1). Other columns are ignored.
``.txt``
    The LFW style (Huang et al. 2007, "Labeled Faces in the Wild"): lines ``name n1 n2`` (same person) or
    ``name1 n1 name2 n2`` (different people), fields separated by spaces or tabs. An optional first line
    ``<folds> <pairs per class>``, as in LFW's ``pairs.txt``, assigns folds as LFW does (consecutive blocks
    of 2 × pairs per class lines, from 0). RFW (Wang et al. 2019, "Racial Faces in-the-Wild") writes its
    ``<Race>_pairs.txt`` without that line; there are no folds then. Image n of name is
    ``<name>/<name>_<nnnn>.jpg``.

Paths are relative to the image root, the folder the image table's ``path`` column is relative to, or
absolute. :func:`match_pairs` maps them to rows of the table and accounts for every pair it cannot use.
A pair list must be a regular file with lines and columns within the limits of :mod:`faceaudit.io.files`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from faceaudit.errors import InputError
from faceaudit.io.files import MAX_LINE_BYTES, open_table, read_text
from faceaudit.io.lfw import parse_pair_lines
from faceaudit.io.manifest import FILE_COLUMN

#: Accepted image column pairs, ours first, then BFW's.
IMAGE_COLUMNS = (("path_a", "path_b"), ("p1", "p2"))
LABEL_COLUMNS = (("label",), ("genuine",))
FOLD_COLUMN = "fold"
SAME_VALUES = ("1", "true", "same", "yes")
DIFFERENT_VALUES = ("0", "false", "different", "no")
#: Why a pair is left out; each left-out pair is counted under the first reason that applies, in this order.
REASONS = ("image_not_listed", "same_image", "duplicate_pair")
MAX_EXAMPLES = 5


@dataclass(frozen=True, eq=False)  # eq=False: == on numpy fields would compare element-wise, not as a whole
class PairList:
    """The pairs of a pair list, in file order."""

    path_a: np.ndarray  # object array of str, relative to the image root as written (or absolute)
    path_b: np.ndarray
    label: np.ndarray | None  # bool same-person labels as the file states them; None when it states none
    fold: np.ndarray | None  # int64 folds as written (LFW style: from 0); None when the file has none
    source: str  # the file read

    def __len__(self) -> int:
        return len(self.path_a)


@dataclass(frozen=True, eq=False)
class PairMatch:
    """The usable pairs as rows of an image table, and an account of the pairs left out.

    ``len(self) + sum(self.problems.values()) == self.n_pairs``: no pair is dropped without being counted.
    """

    index_a: np.ndarray  # int64 row positions in the table, usable pairs only
    index_b: np.ndarray
    same: np.ndarray  # bool, equal subject ids: the truth for every usable pair
    label: np.ndarray | None  # bool, the label the file states, or None
    fold: np.ndarray | None  # int64, or None
    problems: dict[str, int]  # pairs left out, per reason in REASONS (all listed, zeros included)
    label_mismatch: int  # usable pairs (kept) whose stated label disagrees with ``same``
    examples: dict[str, list[str]]  # up to MAX_EXAMPLES per reason in REASONS and for "label_mismatch"
    n_pairs: int  # pairs in the list

    def __len__(self) -> int:
        return len(self.index_a)


def read_pair_list(path: str | Path) -> PairList:
    """Read a pair list in one of the formats of the module docstring."""
    p = Path(path)
    if not p.exists():  # anything else that is not a regular file is refused when opened, saying what it is
        raise InputError(f"{p}: no such pair list; give a .csv, .parquet or .txt file")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        pairs = _read_text(p)
    elif suffix in (".csv", ".parquet", ".pq"):
        pairs = _read_table(p, suffix)
    else:
        raise InputError(f"{p}: unknown pair list type {suffix!r}; use .csv or .parquet (columns path_a, path_b "
                         "or p1, p2) or .txt (LFW/RFW style)")
    if len(pairs) == 0:
        raise InputError(f"{p}: the pair list has no pairs")
    return pairs


def match_pairs(pairs: PairList, table: pd.DataFrame) -> PairMatch:
    """Map each pair's images to rows of ``table`` (``path`` and ``subject_id`` columns, as from read_inputs).

    Paths match after normalisation (``./a//b.jpg`` is ``a/b.jpg``); an absolute path in the list also
    matches the table's ``_file`` column. A pair is left out when an image is not in the table, when both
    sides are the same image, or when it repeats an earlier pair (in either order); the first is kept.
    """
    missing = [c for c in ("path", "subject_id") if c not in table.columns]
    if missing:
        raise InputError(f"image table: missing column(s) {', '.join(missing)}; pairs are matched on 'path' "
                         "and judged by 'subject_id' (use faceaudit.io.manifest.read_inputs)")
    ia, ib = _row_positions(table, pairs.path_a, pairs.path_b)
    not_listed = (ia < 0) | (ib < 0)
    same_image = ~not_listed & (ia == ib)
    candidate = ~(not_listed | same_image)
    duplicate = np.zeros(len(pairs), dtype=bool)
    # sorting each pair's two rows makes (a, b) and (b, a) the same comparison
    ends = pd.DataFrame({"lo": np.minimum(ia, ib)[candidate], "hi": np.maximum(ia, ib)[candidate]})
    duplicate[candidate] = ends.duplicated().to_numpy()
    usable = candidate & ~duplicate

    subject = table["subject_id"].to_numpy(dtype=object)

    def example(reason: str, i: int) -> str:
        text = f"pair {i + 1}: {pairs.path_a[i]} | {pairs.path_b[i]}"
        if reason == "image_not_listed":
            absent = [str(p) for p, row in ((pairs.path_a[i], ia[i]), (pairs.path_b[i], ib[i])) if row < 0]
            text += f" (not in the table: {', '.join(absent)})"
        elif reason == "label_mismatch":
            sa, sb = subject[ia[i]], subject[ib[i]]
            text += f" (listed as {'different people' if sa == sb else 'same person'}; subject ids {sa!r}, {sb!r})"
        return text

    ua, ub = ia[usable], ib[usable]
    unknown = pd.isna(subject[ua]) | pd.isna(subject[ub])
    if unknown.any():
        raise InputError(f"image table: {int(unknown.sum())} usable pair(s) have an image without subject_id, e.g. "
                         f"{example('', int(np.flatnonzero(usable)[np.argmax(unknown)]))}; every image needs one "
                         "to judge its pairs")
    same = subject[ua] == subject[ub]
    mismatch = np.zeros(len(pairs), dtype=bool)
    if pairs.label is not None:
        mismatch[usable] = pairs.label[usable] != same

    left_out = dict(zip(REASONS, (not_listed, same_image, duplicate), strict=True))
    examples = {reason: [example(reason, int(i)) for i in np.flatnonzero(mask)[:MAX_EXAMPLES]]
                for reason, mask in {**left_out, "label_mismatch": mismatch}.items()}
    return PairMatch(
        index_a=ua.astype(np.int64), index_b=ub.astype(np.int64), same=same.astype(bool),
        label=None if pairs.label is None else pairs.label[usable],
        fold=None if pairs.fold is None else pairs.fold[usable],
        problems={reason: int(mask.sum()) for reason, mask in left_out.items()},
        label_mismatch=int(mismatch.sum()), examples=examples, n_pairs=len(pairs),
    )


def _read_text(path: Path) -> PairList:
    lines = read_text(path, "a .txt pair list (LFW style)").splitlines()
    pairs = parse_pair_lines(path, lines)
    has_folds = bool(pairs) and pairs[0].fold is not None  # a file's pairs all have folds or none do
    return PairList(
        path_a=np.array([p.a for p in pairs], dtype=object),
        path_b=np.array([p.b for p in pairs], dtype=object),
        label=np.array([p.same for p in pairs], dtype=bool),
        fold=np.array([p.fold for p in pairs], dtype=np.int64) if has_folds else None,
        source=str(path),
    )


def _read_table(path: Path, suffix: str) -> PairList:
    found = [str(c) for c in _load(path, suffix, None).columns]
    image_cols = _pick(path, found, IMAGE_COLUMNS)
    if image_cols is None:
        raise InputError(f"{path}: no image columns; a pair list needs 'path_a' and 'path_b' (or BFW's 'p1' and "
                         f"'p2'), relative to the image root. Columns found: {', '.join(found)}")
    label_cols = _pick(path, found, LABEL_COLUMNS) or ()
    fold_cols = (FOLD_COLUMN,) if FOLD_COLUMN in found else ()
    df = _load(path, suffix, [*image_cols, *label_cols, *fold_cols])
    for col in df.columns:
        blank = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if blank.any():
            raise InputError(f"{path}: empty {col!r} on {_where(suffix, blank)}; every pair needs a {col}")
    fold = None
    if fold_cols:
        number = pd.to_numeric(df[FOLD_COLUMN], errors="coerce")
        bad = number.isna() | (number % 1 != 0)
        if bad.any():
            raise InputError(f"{path}: {FOLD_COLUMN!r} must be a whole number, not on {_where(suffix, bad)}")
        fold = number.to_numpy(dtype=np.int64)
    return PairList(
        path_a=df[image_cols[0]].astype(str).to_numpy(dtype=object),
        path_b=df[image_cols[1]].astype(str).to_numpy(dtype=object),
        label=_labels(path, suffix, df[label_cols[0]]) if label_cols else None,
        fold=fold,
        source=str(path),
    )


def _load(path: Path, suffix: str, columns: list[str] | None) -> pd.DataFrame:
    """Those columns of the file; ``None`` reads only the column names (no rows)."""
    with open_table(path, "a pair list", header_only=columns is None) as f:
        try:
            if suffix == ".csv":
                # pandas reads far past the header even for nrows=0: give it the (checked) first line only
                source = f if columns is not None else io.BytesIO(f.readline(MAX_LINE_BYTES + 2))
                # text cells, so labels and paths arrive as written; an empty cell is missing
                return pd.read_csv(source, usecols=columns, nrows=0 if columns is None else None, dtype=str,
                                   keep_default_na=False, na_values=[""])
            if columns is None:
                return pq.read_schema(f).empty_table().to_pandas()  # type: ignore[no-any-return]
            return pd.read_parquet(f, columns=columns)
        except Exception as exc:  # pandas and pyarrow raise many parser errors
            raise InputError(f"{path}: cannot read the pair list ({exc})") from exc


def _pick(path: Path, found: list[str], options: tuple[tuple[str, ...], ...]) -> tuple[str, ...] | None:
    """The one option whose columns are all present, or None; two present would make the choice a guess."""
    present = [opt for opt in options if all(c in found for c in opt)]
    if len(present) > 1:
        names = " and ".join("/".join(opt) for opt in present)
        raise InputError(f"{path}: both {names} columns present; keep only one of them")
    return present[0] if present else None


def _labels(path: Path, suffix: str, col: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(col):  # Parquet may store labels as numbers or bools
        same, different = col == 1, col == 0
    else:
        text = col.astype(str).str.strip().str.lower()
        same, different = text.isin(SAME_VALUES), text.isin(DIFFERENT_VALUES)
    bad = ~(same | different)
    if bad.any():
        values = ", ".join(repr(v) for v in pd.unique(col[bad])[:5])
        raise InputError(f"{path}: {col.name!r} has value(s) {values} on {_where(suffix, bad)}; a label is "
                         f"{'/'.join(SAME_VALUES)} for the same person or {'/'.join(DIFFERENT_VALUES)} for different "
                         "people")
    return same.to_numpy(dtype=bool)


def _where(suffix: str, mask: pd.Series) -> str:
    """Where the flagged rows are, as a user finds them: CSV line numbers (header is line 1) or Parquet rows."""
    rows = np.flatnonzero(mask.to_numpy(dtype=bool))
    shown = ", ".join(str(i + 2 if suffix == ".csv" else i) for i in rows[:10]) + (" ..." if len(rows) > 10 else "")
    return f"{'line' if suffix == '.csv' else 'row'}(s) {shown}"


def _row_positions(table: pd.DataFrame, *sides: np.ndarray) -> list[np.ndarray]:
    """For each side, the table row of each path, or -1 when the table does not list it."""
    keys = _keys(table, "path")
    rows = [keys.get_indexer(pd.Index(_normalise(side))) for side in sides]
    if FILE_COLUMN in table.columns:  # an absolute path in the list can only match the absolute _file
        files = _keys(table, FILE_COLUMN)
        for side, found in zip(sides, rows, strict=True):
            retry = found < 0
            found[retry] = files.get_indexer(pd.Index(_normalise(side[retry])))
    return rows


def _keys(table: pd.DataFrame, column: str) -> pd.Index:
    keys: pd.Index = pd.Index(_normalise(table[column].to_numpy(dtype=object)))
    if not keys.is_unique:
        repeated = keys[keys.duplicated()].unique()
        raise InputError(f"image table: {len(repeated)} {column} value(s) listed more than once, e.g. "
                         f"{repeated[0]!r}; list each image once so that a pair names one row")
    return keys


def _normalise(paths: Sequence[object] | np.ndarray) -> np.ndarray:
    """Comparable paths: ``./a//b.jpg`` and ``a/b.jpg`` name the same image."""
    codes, uniques = pd.factorize(np.asarray(paths, dtype=object), use_na_sentinel=False)
    # normalise each distinct path once: BFW's million pairs use about twenty thousand images
    return np.array([PurePosixPath(str(u)).as_posix() for u in uniques], dtype=object)[codes]
