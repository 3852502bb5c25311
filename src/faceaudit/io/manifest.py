"""Read the list of images to process: a folder with one subfolder per subject, or a manifest file.

A manifest is CSV or Parquet with a ``path`` column (relative to the manifest's folder, or absolute)
and a ``subject_id`` column; every other column passes through unchanged. CSV cells are read as text,
so identifiers such as ``007`` keep their leading zeros; an empty cell is a missing value (unknown).
A manifest must be a regular file with lines and columns within the limits of :mod:`faceaudit.io.files`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from faceaudit.errors import InputError
from faceaudit.io.files import open_table

REQUIRED_COLUMNS = ("path", "subject_id")
#: Column holding each image's absolute location; internal, never written out.
FILE_COLUMN = "_file"


def read_inputs(source: str | Path) -> pd.DataFrame:
    """One row per image: ``path`` (as given), ``subject_id``, passthrough columns, and ``_file``."""
    src = Path(source)
    if src.is_dir():
        return read_folder(src)
    if src.exists():  # read_manifest refuses what is not a regular file (a FIFO, a device), saying what it is
        return read_manifest(src)
    raise InputError(f"{src}: no such file or folder; give a folder with one subfolder per subject, "
                     "or a manifest (.csv or .parquet)")


def read_folder(root: Path) -> pd.DataFrame:
    """Images in ``root/<subject>/``; hidden files (starting with '.') are ignored, nothing else is.

    Everything that is not a folder is listed, a FIFO or a broken link included: reading it then fails
    with a reason reported per image (``left_out.csv``), rather than the entry vanishing from the audit.
    """
    rows = []
    loose = []
    for sub in sorted(root.iterdir()):
        if sub.name.startswith("."):
            continue
        if not sub.is_dir():
            loose.append(sub.name)
            continue
        for f in sorted(sub.rglob("*")):
            if not f.is_dir() and not any(part.startswith(".") for part in f.relative_to(root).parts):
                rows.append({"path": f.relative_to(root).as_posix(), "subject_id": sub.name, FILE_COLUMN: str(f)})
    if loose:
        shown = ", ".join(loose[:5]) + (" ..." if len(loose) > 5 else "")
        raise InputError(
            f"{root}: {len(loose)} file(s) directly in the folder ({shown}); put every image in a subfolder "
            "named after its subject, or list the images in a manifest"
        )
    if not rows:
        raise InputError(f"{root}: no images found; expected {root}/<subject_id>/<image files>")
    return pd.DataFrame(rows, columns=["path", "subject_id", FILE_COLUMN])


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A CSV (every value text, empty as missing) or Parquet table, opened with the bounded checks of
    :func:`faceaudit.io.files.open_table`; ``what`` names it in errors ("a manifest")."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise InputError(f"{path}: unknown {what.split()[-1]} type {suffix!r}; use .csv or .parquet")
    with open_table(path, what) as f:
        try:
            if suffix == ".csv":
                return pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""])
            return pd.read_parquet(f)
        except Exception as exc:  # pandas and pyarrow raise many parser errors
            raise InputError(f"{path}: cannot read {what} ({exc})") from exc


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet manifest; see the module docstring."""
    suffix = path.suffix.lower()
    df = read_table(path, "a manifest")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)}; a manifest needs 'path' (relative to the "
            f"manifest's folder) and 'subject_id'. Columns found: {', '.join(map(str, df.columns))}"
        )
    if FILE_COLUMN in df.columns:
        raise InputError(f"{path}: column name {FILE_COLUMN!r} is reserved; rename it")
    for col in REQUIRED_COLUMNS:
        bad = df.index[df[col].isna() | (df[col].astype(str).str.strip() == "")].tolist()
        if bad:
            rows = ", ".join(str(i + 2 if suffix == ".csv" else i) for i in bad[:10])
            where = "line" if suffix == ".csv" else "row"
            raise InputError(f"{path}: empty {col!r} on {where}(s) {rows}; every image needs a {col}")
    if len(df) == 0:
        raise InputError(f"{path}: the manifest lists no images")
    df = df.reset_index(drop=True)
    df["path"] = df["path"].astype(str)
    df["subject_id"] = df["subject_id"].astype(str)
    base = path.parent.resolve()
    df[FILE_COLUMN] = [str(p if Path(p).is_absolute() else base / p) for p in df["path"]]
    return df
