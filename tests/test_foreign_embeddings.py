"""Another system's vectors (Parquet or .npz, no faceaudit metadata) are audited like faceaudit's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import faceaudit
from faceaudit.cli import main
from faceaudit.errors import InputError
from faceaudit.evaluate import evaluate_embeddings
from faceaudit.io.embeddings import read_embeddings

LABELS = ["sex", "race"]


@pytest.fixture(scope="module")
def london(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """The bundled faces embedded by the default engine: the faceaudit file, and its rows."""
    out = tmp_path_factory.mktemp("foreign") / "faces.parquet"
    run = faceaudit.embed(tiny_manifest, out, workers=1, cache=False)
    assert run.frame["ok"].all()
    return out, run.frame


def _foreign(frame: pd.DataFrame, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """The same vectors as another system might hand them over: unnormalised, float64, its own ids."""
    rng = np.random.default_rng(seed)
    vecs = np.stack(frame["embedding"].to_list()).astype(np.float64) * rng.uniform(0.5, 20.0, (len(frame), 1))
    return [f"img-{i}" for i in range(len(frame))], frame["subject_id"].astype(str).to_list(), vecs


def _counts(path: Path) -> list[list[tuple[int, ...]]]:
    res = evaluate_embeddings(path, LABELS, target_fmrs=[1e-2], bootstrap=0, permutations=0)
    cols = ["group", "threshold", "false_matches", "impostor_pairs", "false_non_matches", "genuine_pairs"]
    return [[tuple(r) for r in a.group_table()[cols].itertuples(index=False)] for a in res.analyses]


def test_parquet_and_npz_vectors_give_the_counts_of_faceaudits_own_file(london: tuple[Path, pd.DataFrame],
                                                                          tmp_path: Path) -> None:
    own, frame = london
    ids, subjects, vecs = _foreign(frame)
    pq = tmp_path / "vendor.parquet"
    pd.DataFrame({"id": ids, "subject_id": subjects, "sex": frame["sex"], "race": frame["race"],
                  "vector": list(vecs)}).to_parquet(pq)
    npz = tmp_path / "vendor.npz"
    np.savez(npz, path=np.array(ids), subject_id=np.array(subjects), sex=frame["sex"].to_numpy(str),
             race=frame["race"].to_numpy(str), embedding=vecs.astype(np.float32))
    reference = _counts(own)
    assert _counts(pq) == reference  # any vector column name, ids under 'id', unnormalised vectors
    assert _counts(npz) == reference
    df, meta = read_embeddings(pq, system_name="Vendor X 2.1")
    assert meta["foreign"] and meta["engine"]["supplied_by"] == "user" and meta["engine"]["name"] == "Vendor X 2.1"
    assert meta["engine"]["sha256"] == faceaudit.io.images.sha256_file(pq)
    assert df["ok"].all() and np.allclose(np.linalg.norm(np.stack(df["embedding"].to_list()), axis=1), 1.0)


def test_bad_rows_are_left_out_with_reasons_and_the_rest_evaluated(london: tuple[Path, pd.DataFrame],
                                                                    tmp_path: Path) -> None:
    _, frame = london
    ids, subjects, vecs = _foreign(frame)
    rows: list[list[float] | None] = [list(v) for v in vecs]
    rows[0] = None
    rows[1] = list(vecs[1][:64])
    rows[2] = [float("nan")] * vecs.shape[1]
    rows[3] = [0.0] * vecs.shape[1]
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"path": ids, "subject_id": subjects, "sex": frame["sex"], "embedding": rows}).to_parquet(path)
    df, _ = read_embeddings(path)
    assert df["reason"].head(4).to_list() == ["no_embedding", "wrong_dimension", "invalid_embedding",
                                              "invalid_embedding"]
    assert df["ok"].sum() == len(frame) - 4
    res = evaluate_embeddings(path, ["sex"], target_fmrs=[1e-2], bootstrap=0, permutations=0)
    assert res.inputs["enrolled"] == len(frame) - 4


def test_unusable_files_are_clear_errors(tmp_path: Path) -> None:
    two = tmp_path / "two.parquet"
    pd.DataFrame({"id": ["a", "b"], "subject_id": ["1", "2"], "v1": [[1.0, 0.0], [0.0, 1.0]],
                  "v2": [[1.0, 0.0], [0.0, 1.0]]}).to_parquet(two)
    with pytest.raises(InputError, match="name it 'embedding'"):
        read_embeddings(two)
    no_subject = tmp_path / "nosub.parquet"
    pd.DataFrame({"id": ["a"], "embedding": [[1.0, 0.0]]}).to_parquet(no_subject)
    with pytest.raises(InputError, match="subject_id"):
        read_embeddings(no_subject)
    objects = tmp_path / "objects.npz"
    np.savez(objects, path=np.array(["a", None], dtype=object), subject_id=np.array(["1", "2"]),
             embedding=np.eye(2))
    with pytest.raises(InputError, match="unicode arrays"):
        read_embeddings(objects)
    with pytest.raises(InputError, match="no such embeddings file"):
        read_embeddings(tmp_path / "absent.parquet")


def test_cli_evaluate_and_audit_name_the_system_and_its_file(london: tuple[Path, pd.DataFrame],
                                                             tmp_path: Path) -> None:
    _, frame = london
    ids, subjects, vecs = _foreign(frame)
    path = tmp_path / "vendor.parquet"
    pd.DataFrame({"id": ids, "subject_id": subjects, "sex": frame["sex"], "embedding": list(vecs)}).to_parquet(path)
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", "--embeddings", str(path), "--by", "sex", "--fmr", "1e-2",
                               "--bootstrap", "0", "--permutations", "0", "--system-name", "Vendor X",
                               "--out", str(tmp_path / "r.json"), "--quiet"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["inputs"]["engine"]["name"] == "Vendor X" and doc["inputs"]["engine"]["supplied_by"] == "user"
    res = runner.invoke(main, ["audit", "--embeddings", str(path), "--by", "sex", "--system-name", "Vendor X",
                               "--bootstrap", "20", "--permutations", "20", "--fmr", "1e-2",
                               "--out", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    prov = json.loads((tmp_path / "report" / "provenance.json").read_text())
    assert prov["engine"]["supplied_by"] == "user"
    assert prov["files"]["embeddings"]["sha256"] == faceaudit.io.images.sha256_file(path)
    system = json.loads((tmp_path / "report" / "results.json").read_text())["audit"]["system"]
    assert system == {**system, "kind": "embeddings supplied by the user", "name": "Vendor X"}
