"""Reading inputs: folder layout, CSV and Parquet manifests, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from faceaudit.errors import InputError
from faceaudit.io.manifest import FILE_COLUMN, read_inputs


def test_folder_per_subject(tmp_path: Path) -> None:
    for sid in ("007", "ann"):
        (tmp_path / sid).mkdir()
        (tmp_path / sid / "1.jpg").write_bytes(b"x")
    (tmp_path / "ann" / ".hidden.jpg").write_bytes(b"x")
    df = read_inputs(tmp_path)
    assert list(df["subject_id"]) == ["007", "ann"]
    assert list(df["path"]) == ["007/1.jpg", "ann/1.jpg"]
    assert Path(df[FILE_COLUMN][0]).is_file()


def test_loose_files_in_folder_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="subfolder"):
        read_inputs(tmp_path)


def test_csv_manifest_keeps_text_and_passthrough(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,subject_id,sex,age\nimg/a.jpg,007,F,\nimg/b.jpg,008,,31\n")
    df = read_inputs(tmp_path / "m.csv")
    assert list(df["subject_id"]) == ["007", "008"]
    assert df["age"].isna().tolist() == [True, False] and df["age"][1] == "31"
    assert df[FILE_COLUMN][0] == str(tmp_path.resolve() / "img/a.jpg")


def test_parquet_manifest(tmp_path: Path) -> None:
    pd.DataFrame({"path": ["/abs/a.jpg"], "subject_id": ["s1"], "race": ["x"]}).to_parquet(tmp_path / "m.parquet")
    df = read_inputs(tmp_path / "m.parquet")
    assert df[FILE_COLUMN][0] == "/abs/a.jpg" and df["race"][0] == "x"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file,subject_id\na.jpg,1\n", "missing column"),
        ("path,subject_id\na.jpg,\n", "empty 'subject_id' on line"),
        ("path,subject_id\n", "lists no images"),
    ],
)
def test_bad_manifests(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InputError, match=match):
        read_inputs(tmp_path / "m.csv")


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        read_inputs(tmp_path / "nothing")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(InputError, match="unknown manifest type"):
        read_inputs(tmp_path / "m.txt")
