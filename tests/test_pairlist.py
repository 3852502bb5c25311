"""Pair lists (RFW, BFW, LFW style): parsing each format, clear errors, and matching pairs to an image table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from faceaudit.errors import InputError
from faceaudit.io.lfw import read_pairs
from faceaudit.io.manifest import read_inputs
from faceaudit.io.pairlist import REASONS, PairList, PairMatch, match_pairs, read_pair_list


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- reading ---------------------------------------------------------------------------------------------------

def test_bfw_csv_with_p1_p2_label_and_fold(tmp_path: Path) -> None:
    f = _write(tmp_path / "bfw.csv", "fold,p1,p2,label,id1,att1,sim\n"
               "1,asian_females/n000009/0010_01.jpg,asian_females/n000009/0043_01.jpg,1,0,asian_females,0.8\n"
               "2,asian_females/n000009/0010_01.jpg,white_males/n000123/0001_02.jpg,0,0,asian_females,0.1\n")
    pairs = read_pair_list(f)
    assert len(pairs) == 2 and pairs.source == str(f)
    assert list(pairs.path_a) == ["asian_females/n000009/0010_01.jpg"] * 2
    assert pairs.path_b[1] == "white_males/n000123/0001_02.jpg"
    assert pairs.label is not None and pairs.label.dtype == bool and list(pairs.label) == [True, False]
    assert pairs.fold is not None and list(pairs.fold) == [1, 2]  # BFW's folds kept as written


def test_csv_with_path_a_path_b_and_no_label(tmp_path: Path) -> None:
    pairs = read_pair_list(_write(tmp_path / "p.csv", "path_a,path_b,note\n007/1.jpg,./008/2.jpg,x\n"))
    assert list(pairs.path_a) == ["007/1.jpg"] and list(pairs.path_b) == ["./008/2.jpg"]  # as written
    assert pairs.label is None and pairs.fold is None


def test_parquet_with_genuine_column(tmp_path: Path) -> None:
    f = tmp_path / "p.parquet"
    pd.DataFrame({"path_a": ["a/1.jpg", "a/1.jpg"], "path_b": ["a/2.jpg", "b/1.jpg"], "genuine": [True, False],
                  "fold": [0, 1]}).to_parquet(f)
    pairs = read_pair_list(f)
    assert list(pairs.path_b) == ["a/2.jpg", "b/1.jpg"]
    assert pairs.label is not None and list(pairs.label) == [True, False]
    assert pairs.fold is not None and pairs.fold.dtype == np.int64 and list(pairs.fold) == [0, 1]


def test_rfw_txt_without_header(tmp_path: Path) -> None:
    f = _write(tmp_path / "African_pairs.txt",
               "m.0c7mh2\t1\t4\nm.0c7mh2\t2\tm.01nlkv\t13\n\nm.01nlkv 1 2\n")  # tabs, a blank line, spaces
    pairs = read_pair_list(f)
    assert list(pairs.path_a) == ["m.0c7mh2/m.0c7mh2_0001.jpg", "m.0c7mh2/m.0c7mh2_0002.jpg",
                                  "m.01nlkv/m.01nlkv_0001.jpg"]
    assert list(pairs.path_b) == ["m.0c7mh2/m.0c7mh2_0004.jpg", "m.01nlkv/m.01nlkv_0013.jpg",
                                  "m.01nlkv/m.01nlkv_0002.jpg"]
    assert pairs.label is not None and list(pairs.label) == [True, False, True]
    assert pairs.fold is None


def test_lfw_txt_with_header_assigns_folds(tmp_path: Path) -> None:
    f = _write(tmp_path / "pairs.txt", "2\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\nBob\t1\t3\nBob\t2\tCy\t1\n")
    pairs = read_pair_list(f)
    assert pairs.fold is not None and list(pairs.fold) == [0, 0, 1, 1]
    assert pairs.label is not None and list(pairs.label) == [True, False, True, False]
    assert list(pairs.path_a) == ["Ann/Ann_0001.jpg", "Ann/Ann_0001.jpg", "Bob/Bob_0001.jpg", "Bob/Bob_0002.jpg"]
    assert pairs.path_b[3] == "Cy/Cy_0001.jpg"  # no images/ prefix, unlike lfw.read_pairs
    assert [p.a for p in read_pairs(f)] == [f"images/{p}" for p in pairs.path_a]


def test_one_number_header_has_no_folds(tmp_path: Path) -> None:
    # LFW's pairsDevTrain.txt / pairsDevTest.txt: '<pairs per class>' only
    pairs = read_pair_list(_write(tmp_path / "dev.txt", "1\nAnn 1 2\nAnn 1 Bob 1\n"))
    assert pairs.fold is None and pairs.label is not None and list(pairs.label) == [True, False]


@pytest.mark.parametrize(("written", "same"), [
    ("1", True), ("0", False), ("true", True), ("False", False), ("TRUE", True), ("same", True),
    ("Different", False), ("yes", True), ("NO", False), (" yes ", True),
])
def test_label_values(tmp_path: Path, written: str, same: bool) -> None:
    pairs = read_pair_list(_write(tmp_path / "p.csv", f'p1,p2,label\na.jpg,b.jpg,"{written}"\n'))
    assert pairs.label is not None and bool(pairs.label[0]) is same


def test_numeric_labels_in_parquet(tmp_path: Path) -> None:
    f = tmp_path / "p.parquet"
    pd.DataFrame({"p1": ["a.jpg", "a.jpg"], "p2": ["b.jpg", "c.jpg"], "label": [1, 0]}).to_parquet(f)
    labels = read_pair_list(f).label
    assert labels is not None and list(labels) == [True, False]


# --- errors ------------------------------------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no such pair list; give a \.csv, \.parquet or \.txt"):
        read_pair_list(tmp_path / "absent.csv")


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown pair list type '\.json'; use \.csv or \.parquet"):
        read_pair_list(_write(tmp_path / "p.json", "{}"))


def test_csv_without_image_columns_lists_found_and_accepted(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        read_pair_list(_write(tmp_path / "p.csv", "img1,img2,label\na.jpg,b.jpg,1\n"))
    msg = str(err.value)
    assert "'path_a' and 'path_b'" in msg and "'p1' and 'p2'" in msg
    assert "Columns found: img1, img2, label" in msg


def test_both_column_namings_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="both path_a/path_b and p1/p2 columns present; keep only one"):
        read_pair_list(_write(tmp_path / "p.csv", "path_a,path_b,p1,p2\na,b,a,b\n"))


@pytest.mark.parametrize(("text", "message"), [
    ("Ann 1 2\nAnn 1\n", r"line 2: expected 'name n1 n2' \(same person\) or 'name1 n1 name2 n2' \(different"),
    ("Ann 1 2\n\nAnn one 2\n", r"line 3: image numbers must be whole numbers in 'name n1 n2' .*, got \['Ann', 'one'"),
    ("Ann 1 2\nAnn 1 Bob\n", r"line 2: image numbers must be whole numbers in 'name n1 n2' \(same person\) or"),
    ("1 1\nAnn 1 Bob 2\nAnn 1 2\n", r"line 2: a matched pair has 3 fields"),
    ("2 1\nAnn 1 2\nAnn 1 Bob 2\n", r"expected 4 pair lines \(from the header '2 1'\), found 2"),
])
def test_malformed_txt_lines(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_pair_list(_write(tmp_path / "p.txt", text))


@pytest.mark.parametrize(("name", "text"), [("p.csv", "p1,p2,label\n"), ("p.txt", ""), ("q.txt", "\n\n")])
def test_empty_list(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(InputError, match="the pair list has no pairs"):
        read_pair_list(_write(tmp_path / name, text))


def test_unrecognised_label_says_where_and_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'label' has value\(s\) 'maybe' on line\(s\) 3; a label is 1/true/same/yes"):
        read_pair_list(_write(tmp_path / "p.csv", "p1,p2,label\na,b,1\na,c,maybe\n"))


def test_empty_cell_and_bad_fold(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"empty 'p2' on line\(s\) 3; every pair needs a p2"):
        read_pair_list(_write(tmp_path / "p.csv", "p1,p2\na,b\na,\n"))
    with pytest.raises(InputError, match=r"'fold' must be a whole number, not on line\(s\) 2"):
        read_pair_list(_write(tmp_path / "q.csv", "p1,p2,fold\na,b,1.5\n"))


def test_read_pairs_still_requires_the_lfw_header(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="first line must be '<folds> <pairs per class>'"):
        read_pairs(_write(tmp_path / "pairs.txt", "Ann 1 2\n"))


# --- matching ----------------------------------------------------------------------------------------------------

TABLE = pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "subject_id": ["s1", "s1", "s2", "s3"]})


def _pairs(rows: list[tuple[str, str, bool]], folds: bool = True) -> PairList:
    return PairList(np.array([r[0] for r in rows], dtype=object), np.array([r[1] for r in rows], dtype=object),
                    np.array([r[2] for r in rows]), np.arange(len(rows)) if folds else None, "test")


def _accounted(m: PairMatch) -> bool:
    return len(m) + sum(m.problems.values()) == m.n_pairs


def test_match_counts_every_pair_once() -> None:
    pairs = _pairs([
        ("a.jpg", "b.jpg", True),      # 0 usable
        ("./a.jpg", "c.jpg", True),    # 1 usable, label disagrees with subject ids (kept)
        ("a.jpg", "x.jpg", False),     # 2 image not listed
        ("b.jpg", "./b.jpg", True),    # 3 same image after normalisation
        ("b.jpg", "a.jpg", True),      # 4 duplicate of 0, other order
        ("a.jpg", "b.jpg", False),     # 5 duplicate of 0, same order (and a different label: first one wins)
        ("c.jpg", "d.jpg", False),     # 6 usable
        ("x.jpg", "x.jpg", False),     # 7 not listed: the first reason that applies
        ("d.jpg", "c.jpg", True),      # 8 duplicate of 6, and would disagree: counted once, as duplicate
    ])
    m = match_pairs(pairs, TABLE)
    assert m.problems == {"image_not_listed": 2, "same_image": 1, "duplicate_pair": 3}
    assert len(m) == 3 and m.n_pairs == 9 and _accounted(m)
    assert list(m.index_a) == [0, 0, 2] and list(m.index_b) == [1, 2, 3] and m.index_a.dtype == np.int64
    assert list(m.same) == [True, False, False]
    assert m.label is not None and list(m.label) == [True, True, False]  # as stated
    assert m.fold is not None and list(m.fold) == [0, 1, 6]
    assert m.label_mismatch == 1
    assert m.examples["label_mismatch"] == ["pair 2: ./a.jpg | c.jpg (listed as same person; subject ids 's1', 's2')"]
    assert m.examples["image_not_listed"] == ["pair 3: a.jpg | x.jpg (not in the table: x.jpg)",
                                              "pair 8: x.jpg | x.jpg (not in the table: x.jpg, x.jpg)"]
    assert m.examples["same_image"] == ["pair 4: b.jpg | ./b.jpg"]
    assert [e.split(":")[0] for e in m.examples["duplicate_pair"]] == ["pair 5", "pair 6", "pair 9"]


def test_examples_are_capped_and_every_reason_is_listed() -> None:
    m = match_pairs(_pairs([("a.jpg", f"missing{i}.jpg", False) for i in range(8)], folds=False), TABLE)
    assert set(m.problems) == set(REASONS) and m.problems["image_not_listed"] == 8 and len(m) == 0
    assert len(m.examples["image_not_listed"]) == 5 and m.examples["same_image"] == []
    assert m.fold is None and _accounted(m)


def test_match_without_labels() -> None:
    pairs = PairList(np.array(["a.jpg"], dtype=object), np.array(["c.jpg"], dtype=object), None, None, "t")
    m = match_pairs(pairs, TABLE)
    assert m.label is None and m.label_mismatch == 0 and list(m.same) == [False] and _accounted(m)


def test_absolute_paths_match_the_file_column(tmp_path: Path) -> None:
    _write(tmp_path / "m.csv", "path,subject_id\nimg/a.jpg,s1\nimg/b.jpg,s1\n")
    table = read_inputs(tmp_path / "m.csv")
    absolute = str(tmp_path.resolve() / "img" / "b.jpg")
    m = match_pairs(_pairs([("img/a.jpg", absolute, True)]), table)
    assert list(m.index_a) == [0] and list(m.index_b) == [1] and m.label_mismatch == 0


def test_table_problems_are_errors() -> None:
    pairs = _pairs([("a.jpg", "b.jpg", True)])
    with pytest.raises(InputError, match=r"1 path value\(s\) listed more than once, e.g. 'a.jpg'"):
        match_pairs(pairs, pd.DataFrame({"path": ["a.jpg", "./a.jpg", "b.jpg"], "subject_id": ["1", "1", "2"]}))
    with pytest.raises(InputError, match=r"missing column\(s\) subject_id"):
        match_pairs(pairs, pd.DataFrame({"path": ["a.jpg", "b.jpg"]}))
    with pytest.raises(InputError, match=r"without subject_id, e\.g\. pair 1: a\.jpg \| b\.jpg"):
        match_pairs(pairs, pd.DataFrame({"path": ["a.jpg", "b.jpg"], "subject_id": ["1", None]}))


# --- real data ---------------------------------------------------------------------------------------------------

def test_lfw_pairs_match_the_lfw_manifest(lfw: Path) -> None:
    pairs = read_pair_list(lfw / "pairs.txt")  # image root: lfw/images
    table = read_inputs(lfw / "manifest.csv")
    assert table["path"].str.startswith("images/").all()
    table["path"] = table["path"].str.removeprefix("images/")  # make the table's paths relative to the root too
    m = match_pairs(pairs, table)
    assert len(m) == 6000 and m.n_pairs == 6000 and _accounted(m)
    assert m.problems == dict.fromkeys(REASONS, 0)
    assert m.label is not None and int(m.label.sum()) == 3000
    assert m.label_mismatch == 0 and (m.label == m.same).all()
    assert m.fold is not None and sorted(set(m.fold.tolist())) == list(range(10))
    assert np.bincount(m.fold).tolist() == [600] * 10
