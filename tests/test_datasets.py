"""Dataset adapters: manifest, folder and LFW layouts become one image table with labels and protocol pairs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from faceaudit.errors import InputError
from faceaudit.io.datasets import detect_format, load_dataset


def _folder(tmp_path: Path, tiny: pd.DataFrame) -> Path:
    root = tmp_path / "faces"
    for _, row in tiny.head(10).iterrows():
        (root / row["subject_id"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(row["file"], root / row["subject_id"] / Path(row["path"]).name)
    return root


def test_folder_with_attributes_joined_on_subject(tmp_path: Path, tiny: pd.DataFrame) -> None:
    root = _folder(tmp_path, tiny)
    labels = tiny.drop_duplicates("subject_id").head(4)[["subject_id", "sex", "race"]]
    labels.to_csv(tmp_path / "labels.csv", index=False)
    ds = load_dataset(root, attributes=tmp_path / "labels.csv")
    assert ds.format == "folder" and len(ds.table) == 10 and ds.label_columns == ["sex", "race"]
    by_subject = ds.table.set_index("path")
    for _, row in tiny.head(10).iterrows():
        got = by_subject.loc[f"{row['subject_id']}/{Path(row['path']).name}", "sex"]
        expected = row["sex"] if row["subject_id"] in set(labels["subject_id"]) else None
        assert (got if isinstance(got, str) else None) == expected
    assert ds.notes and "have no row in the attributes file" in ds.notes[0]
    assert set(ds.files) == {"attributes"} and len(ds.files["attributes"]["sha256"]) == 64


def test_manifest_listing_hash_tracks_labels(tmp_path: Path, tiny_manifest: Path) -> None:
    a = load_dataset(tiny_manifest)
    assert a.format == "manifest" and len(a.table) == 204
    assert a.listing_sha256() == load_dataset(tiny_manifest).listing_sha256()
    changed = pd.read_csv(tiny_manifest, dtype=str, keep_default_na=False)
    changed.loc[0, "sex"] = "M" if changed.loc[0, "sex"] == "F" else "F"
    changed["path"] = [str(tiny_manifest.parent / p) for p in changed["path"]]
    changed.to_csv(tmp_path / "m.csv", index=False)
    assert load_dataset(tmp_path / "m.csv").listing_sha256() != a.listing_sha256()


def test_attribute_file_errors(tmp_path: Path, tiny_manifest: Path) -> None:
    pd.DataFrame({"name": ["a"], "sex": ["F"]}).to_csv(tmp_path / "nokey.csv", index=False)
    with pytest.raises(InputError, match="needs a 'path' or 'subject_id' column"):
        load_dataset(tiny_manifest, attributes=tmp_path / "nokey.csv")
    pd.DataFrame({"subject_id": ["001", "001"], "sex": ["F", "M"]}).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(InputError, match="repeated subject_id"):
        load_dataset(tiny_manifest, attributes=tmp_path / "dup.csv")
    with pytest.raises(InputError, match="no such dataset"):
        load_dataset(tmp_path / "nothing")
    with pytest.raises(InputError, match="needs the pair list"):
        load_dataset(tiny_manifest, "pairs")


def test_lfw_layout_with_its_protocol(lfw: Path) -> None:
    assert detect_format(lfw) == "lfw"
    ds = load_dataset(lfw)
    assert len(ds.table) == 13_233 and ds.table["subject_id"].nunique() == 5_749
    assert ds.table["sex"].notna().all() and ds.table["race"].notna().sum() > 0  # sex for all, race for some
    pr = ds.protocol
    assert pr is not None and len(pr.index_a) == 6_000 and pr.same.sum() == 3_000
    assert sorted(np.unique(pr.fold)) == list(range(10))
    subj = ds.table["subject_id"].to_numpy()
    assert ((subj[pr.index_a] == subj[pr.index_b]) == pr.same).all()  # the protocol's labels agree with folders
    assert set(ds.files) == {"pairs", "attributes"}
