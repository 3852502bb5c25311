"""Dataset adapters: every supported layout becomes one image table, plus the pairs it prescribes.

- ``manifest``: CSV or Parquet with ``path``, ``subject_id`` and the user's demographic columns.
- ``folder``: one subfolder per subject; labels come from an ``attributes`` file.
- ``lfw``: the LFW layout (``images/<Name>/<Name>_NNNN.jpg`` and ``pairs.txt``). All images are
  audited on all pairs; the View 2 pairs are kept to report the protocol's accuracy. Labels come
  from ``attributes``, or from ``manifest.csv`` in the LFW folder when there is one.
- ``pairs``: images (a manifest or a folder) with a list of the pairs to compare, in the style of
  RFW (``<Race>_pairs.txt``) or BFW (``p1, p2, label`` CSV): only the listed pairs are compared.

An ``attributes`` file (CSV or Parquet) joins labels on ``path`` when it has that column, else on
``subject_id``; its columns replace columns of the same name. Every file read is hashed (SHA-256)
for the report's provenance, and so is the resulting listing of images and labels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from faceaudit.errors import InputError
from faceaudit.io.files import open_table
from faceaudit.io.images import sha256_file
from faceaudit.io.lfw import read_pairs
from faceaudit.io.manifest import FILE_COLUMN, read_folder, read_inputs, read_manifest
from faceaudit.io.pairlist import PairMatch, match_pairs, read_pair_list

FORMATS = ("manifest", "folder", "lfw", "pairs")


@dataclass(frozen=True)
class ProtocolPairs:
    """A dataset's own verification protocol: pairs of table rows (-1: image not found) with labels and folds."""

    name: str
    index_a: np.ndarray
    index_b: np.ndarray
    same: np.ndarray
    fold: np.ndarray


@dataclass(frozen=True)
class Dataset:
    format: str
    root: Path  # where the images' relative paths start
    table: pd.DataFrame  # one row per image: path, subject_id, labels..., _file
    listed_pairs: PairMatch | None = None  # "pairs": only these are compared
    protocol: ProtocolPairs | None = None  # LFW: View 2, for the protocol accuracy
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> {path, sha256}
    notes: list[str] = field(default_factory=list)  # what the adapter left out or assumed

    @property
    def label_columns(self) -> list[str]:
        return [c for c in self.table.columns if c not in ("path", "subject_id") and not c.startswith("_")]

    def listing_sha256(self) -> str:
        """SHA-256 of the image listing as audited: path, subject_id and labels, sorted by path, as CSV."""
        cols = ["path", "subject_id", *sorted(self.label_columns)]
        listing = self.table[cols].sort_values("path").to_csv(index=False, lineterminator="\n")
        return hashlib.sha256(listing.encode()).hexdigest()


def detect_format(path: Path) -> str:
    """``lfw`` for a folder with ``pairs.txt`` and ``images/``, ``folder`` for other folders, else ``manifest``."""
    if path.is_dir():
        return "lfw" if (path / "pairs.txt").is_file() and (path / "images").is_dir() else "folder"
    return "manifest"


def load_dataset(path: str | Path, fmt: str = "auto", *, pairs: str | Path | None = None,
                 image_root: str | Path | None = None, attributes: str | Path | None = None) -> Dataset:
    """Read a dataset in one of :data:`FORMATS` (``auto``: :func:`detect_format`)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such dataset file or folder")
    fmt = detect_format(p) if fmt == "auto" else fmt
    files: dict[str, dict[str, str]] = {}
    notes: list[str] = []
    if fmt == "manifest":
        if p.is_dir():  # other things that are not regular files are refused by read_manifest, by name
            raise InputError(f"{p}: format 'manifest' needs a CSV or Parquet file; this is a folder")
        table, root = read_manifest(p), p.resolve().parent
        files["manifest"] = {"path": str(p), "sha256": sha256_file(p)}
    elif fmt == "folder":
        if not p.is_dir():
            raise InputError(f"{p}: format 'folder' needs a folder with one subfolder per subject")
        table, root = read_folder(p), p.resolve()
    elif fmt == "lfw":
        return _lfw(p, attributes)
    elif fmt == "pairs":
        if pairs is None:
            raise InputError("format 'pairs' needs the pair list (dataset.pairs, --pairs)")
        return _pairs(p, Path(pairs), image_root, attributes)
    else:
        raise InputError(f"unknown dataset format {fmt!r}; use one of auto, {', '.join(FORMATS)}")
    if attributes is not None:
        table = join_attributes(table, Path(attributes), notes)
        files["attributes"] = {"path": str(attributes), "sha256": sha256_file(attributes)}
    return Dataset(fmt, root, table, files=files, notes=notes)


def join_attributes(table: pd.DataFrame, path: Path, notes: list[str]) -> pd.DataFrame:
    """Add the label columns of ``path`` to ``table`` (on ``path`` if it has one, else on ``subject_id``)."""
    if not path.exists():
        raise InputError(f"{path}: no such attributes file")
    parquet = path.suffix.lower() in (".parquet", ".pq")
    with open_table(path, "an attributes file", fmt="parquet" if parquet else "csv") as f:
        try:
            attrs = pd.read_parquet(f) if parquet else pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""])
        except Exception as exc:  # pandas and pyarrow raise many parser errors
            raise InputError(f"{path}: cannot read the attributes file ({exc})") from exc
    key = "path" if "path" in attrs.columns else "subject_id" if "subject_id" in attrs.columns else None
    if key is None:
        raise InputError(f"{path}: an attributes file needs a 'path' or 'subject_id' column to join on "
                         f"(columns found: {', '.join(map(str, attrs.columns))})")
    attrs[key] = attrs[key].astype(str)
    dup = attrs[key][attrs[key].duplicated()]
    if len(dup):
        raise InputError(f"{path}: {len(dup)} repeated {key}(s), e.g. {dup.iloc[0]!r}; give each {key} one row")
    labels = [c for c in attrs.columns if c not in ("path", "subject_id")]
    if not labels:
        raise InputError(f"{path}: no label columns besides {key}")
    base = table.drop(columns=[c for c in labels if c in table.columns])
    merged = base.merge(attrs[[key, *labels]], on=key, how="left", validate="many_to_one")
    unmatched = int(merged[labels].isna().all(axis=1).sum())
    if unmatched:
        notes.append(f"{unmatched} of {len(merged)} images have no row in the attributes file {path.name} "
                     f"(joined on {key}); their labels are unknown")
    return merged


def _lfw(root: Path, attributes: str | Path | None) -> Dataset:
    if not (root / "images").is_dir() or not (root / "pairs.txt").is_file():
        raise InputError(f"{root}: an LFW folder holds images/<Name>/<Name>_NNNN.jpg and pairs.txt")
    table = read_folder(root / "images")
    table["path"] = "images/" + table["path"]
    files = {"pairs": {"path": str(root / "pairs.txt"), "sha256": sha256_file(root / "pairs.txt")}}
    notes: list[str] = []
    labels = Path(attributes) if attributes is not None else root / "manifest.csv"
    if labels.is_file():  # the LFW folder's own manifest.csv has a path column: labels join per image
        table = join_attributes(table, labels, notes)
        files["attributes"] = {"path": str(labels), "sha256": sha256_file(labels)}
    else:
        notes.append(f"no labels: {labels} not found and no attributes file given")
    rows = pd.Index(table["path"])
    pairs = read_pairs(root / "pairs.txt")
    ia = rows.get_indexer([q.a for q in pairs])
    ib = rows.get_indexer([q.b for q in pairs])
    missing = int(((ia < 0) | (ib < 0)).sum())
    if missing:  # kept, with index -1: the protocol counts such a pair as failed, like a failure to enrol
        notes.append(f"{missing} View 2 pairs name images missing under images/; they count as errors in the "
                     "View 2 accuracy")
    protocol = ProtocolPairs("LFW View 2 (pairs.txt: 10 folds, threshold chosen on the other 9)", ia, ib,
                             np.array([q.same for q in pairs]), np.array([q.fold for q in pairs]))
    return Dataset("lfw", root.resolve(), table, protocol=protocol, files=files, notes=notes)


def _pairs(images: Path, pairs: Path, image_root: str | Path | None, attributes: str | Path | None) -> Dataset:
    table = read_inputs(images)
    root = Path(image_root).resolve() if image_root else (images.resolve() if images.is_dir()
                                                          else images.resolve().parent)
    files = {"pairs": {"path": str(pairs), "sha256": sha256_file(pairs)}}
    if images.is_file():
        files["manifest"] = {"path": str(images), "sha256": sha256_file(images)}
    notes: list[str] = []
    if attributes is not None:
        table = join_attributes(table, Path(attributes), notes)
        files["attributes"] = {"path": str(attributes), "sha256": sha256_file(attributes)}
    # the pair list names images relative to the image root: match on that
    rel = table.assign(path=[_relative(f, root) for f in table[FILE_COLUMN]])
    listed = match_pairs(read_pair_list(pairs), rel)
    return Dataset("pairs", root, table, listed_pairs=listed, files=files, notes=notes)


def _relative(file: str, root: Path) -> str:
    try:
        return PurePosixPath(Path(file).resolve().relative_to(root)).as_posix()
    except ValueError:
        return Path(file).as_posix()
