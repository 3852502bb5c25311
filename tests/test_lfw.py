"""Real data: the LFW View 2 protocol file, and accuracy on two of its folds (skipped without LFW)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import faceaudit
from faceaudit.io.lfw import read_pairs
from faceaudit.metrics.verification import kfold_accuracy


def test_pairs_file_has_ten_folds_of_300_and_300(lfw: Path) -> None:
    pairs = read_pairs(lfw / "pairs.txt")
    assert len(pairs) == 6000
    folds = np.array([p.fold for p in pairs])
    same = np.array([p.same for p in pairs])
    for f in range(10):
        assert (same[folds == f]).sum() == 300 and (~same[folds == f]).sum() == 300
    assert all((lfw / p.a).is_file() and (lfw / p.b).is_file() for p in pairs[:50])
    assert len({p.a for p in pairs} | {p.b for p in pairs}) == 7701


def test_two_folds_accuracy(lfw: Path, tmp_path: Path) -> None:
    pairs = [p for p in read_pairs(lfw / "pairs.txt") if p.fold < 2]
    images = sorted({p.a for p in pairs} | {p.b for p in pairs})
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": [str(lfw / p) for p in images], "subject_id": [p.split("/")[1] for p in images]}).to_csv(
        manifest, index=False)
    run = faceaudit.embed(manifest, workers=2)
    assert run.n_ok == len(images)  # every LFW image of these folds enrols
    emb = {str(Path(p).relative_to(lfw)): e for p, e in zip(run.frame["path"], run.frame["embedding"], strict=True)}
    scores = np.array([float(np.dot(emb[p.a], emb[p.b])) for p in pairs])
    res = kfold_accuracy(scores, np.array([p.same for p in pairs]), np.array([p.fold for p in pairs]))
    # The full 10-fold protocol reaches 99.4% (benchmarks/lfw_view2.py); two folds of 600 pairs each
    # must not fall below 98.5%.
    assert res.mean >= 0.985, res
