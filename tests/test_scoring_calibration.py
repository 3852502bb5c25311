"""Single-group scoring, the FMR threshold rule and the shipped calibration, against naive and sklearn references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from faceaudit.engines import default
from faceaudit.engines.calibration import Calibration, load_calibration
from faceaudit.errors import CalibrationError
from faceaudit.metrics.rates import global_threshold
from faceaudit.scoring.compare import compare_embeddings
from faceaudit.scoring.stats import PairStatistics, ScoreBins


def _data(n: int = 300, d: int = 16, subjects: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(subjects, d))
    labels = rng.integers(0, subjects, n)
    emb = centres[labels] + rng.normal(scale=1.5, size=(n, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), labels


def _one_group(emb: np.ndarray, labels: np.ndarray, top_k: int, **kw: int) -> PairStatistics:
    """Everyone in one group: the way `faceaudit calibrate` compares."""
    return compare_embeddings(emb, labels, np.zeros(len(emb), np.int32), 1, top_k=top_k, **kw)


def test_all_pairs_matches_naive_double_loop() -> None:
    emb, labels = _data()
    res = _one_group(emb, labels, top_k=500, row_block=37, col_block=53)  # odd block sizes on purpose
    gen, imp = [], []
    for i in range(len(emb)):
        for j in range(i + 1, len(emb)):
            s = float(emb[i] @ emb[j])
            (gen if labels[i] == labels[j] else imp).append(s)
    genuine = res.genuine()[0]
    assert len(genuine) == len(gen) and int(res.n_impostor.sum()) == len(imp)
    np.testing.assert_allclose(np.sort(genuine), np.sort(gen), atol=1e-6)
    np.testing.assert_allclose(res.sorted_tail()[0], np.sort(imp)[::-1][:500], atol=1e-6)


def test_threshold_at_fmr_never_exceeds_target_and_handles_ties() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], np.float32)
    stats = PairStatistics(n_groups=1, bins=ScoreBins(), top_k=100)
    stats.add_impostor_pairs(scores, np.zeros(10, int), np.zeros(10, int), np.ones(10, int))
    # 2 false matches allowed of 10: the 3rd largest is 0.8, tied with the 2nd; all 0.8s must be rejected
    th = global_threshold(stats, 0.2)
    t, count = th.value, th.false_matches
    assert count == 1 and 0.8 < t <= 0.9
    th = global_threshold(stats, 0.4)
    t, count = th.value, th.false_matches
    assert count == 4 and 0.5 < t <= 0.8


def test_threshold_fmr_agrees_with_sklearn_roc_curve() -> None:
    # Embeddings on a 1/16 grid: every dot product is exact in float32, so the blocked matrix
    # product and the reference agree bit for bit (and ties are plentiful).
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 80, 400)
    emb = (np.round(rng.normal(size=(80, 16)) * 4)[labels] + rng.integers(-3, 4, size=(400, 16))) / 16
    emb = emb.astype(np.float32)
    res = _one_group(emb, labels, top_k=10_000)
    n_impostor = int(res.n_impostor.sum())
    ia, ib = np.triu_indices(len(emb), k=1)
    s = (emb[ia] * emb[ib]).sum(1)
    y = labels[ia] == labels[ib]
    fpr, _, thr = roc_curve(y, s, drop_intermediate=False)
    for target in (1e-1, 1e-2, 1e-3):
        th = global_threshold(res, target)
        t, count = th.value, th.false_matches
        assert count == int(((s >= t) & ~y).sum())
        # sklearn: fpr[i] = #(impostor >= thr[i]) / #impostor. Our threshold reaches the largest
        # FMR that does not exceed the target, and at t the FMR equals sklearn's at the nearest thr >= t.
        assert count / n_impostor == pytest.approx(fpr[fpr <= target].max(), abs=1e-15)
        assert count / n_impostor == pytest.approx(fpr[np.flatnonzero(thr >= t)[-1]], abs=1e-15)


def test_shipped_calibration_fits_the_default_engine() -> None:
    cal = load_calibration(default.identity())
    assert cal.n_impostor > 80_000_000 and cal.source["dataset"].startswith("LFW")
    assert np.all(np.diff(cal.threshold) > 0) and np.all(np.diff(cal.fmr) <= 0)
    t3, t4 = cal.threshold_for(1e-3), cal.threshold_for(1e-4)
    assert t3 < t4
    assert cal.fmr_at(t4) == pytest.approx(1e-4, rel=0.15)
    with pytest.raises(CalibrationError, match="below what the calibration supports"):
        cal.threshold_for(1e-9)
    with pytest.raises(CalibrationError):
        cal.threshold_for(0.5)


def test_calibration_round_trip_and_interpolation() -> None:
    cal = Calibration(engine="e", engine_version="1", model_sha256=("x",), fmr=np.array([1e-2, 1e-3, 1e-4]),
                      threshold=np.array([0.3, 0.4, 0.5]), fnmr=np.array([0.01, 0.02, 0.05]), n_impostor=10**6,
                      n_genuine=100, source={"dataset": "toy"})
    again = Calibration.from_dict(cal.to_dict())
    np.testing.assert_array_equal(again.threshold, cal.threshold)
    assert cal.threshold_for(10**-3.5) == pytest.approx(0.45)  # log-linear between grid points
    assert cal.fmr_at(0.45) == pytest.approx(10**-3.5)
    assert cal.fnmr_at(0.45) == pytest.approx(0.035)
