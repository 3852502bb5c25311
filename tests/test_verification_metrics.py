"""k-fold verification accuracy (LFW View 2 protocol) against hand calculations and brute force."""

from __future__ import annotations

import numpy as np
import pytest

from faceaudit.metrics.verification import accuracy_at, best_threshold, kfold_accuracy


def test_accuracy_at_by_hand() -> None:
    scores = np.array([0.9, 0.7, 0.4, 0.2])
    same = np.array([True, False, True, False])
    assert accuracy_at(scores, same, 0.5) == 0.5  # right: 0.9 (match), 0.2 (non-match)
    assert accuracy_at(scores, same, 0.8) == 0.75
    assert accuracy_at(scores, same, 0.3) == 0.75


def test_best_threshold_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        same = rng.random(60) < 0.5
        scores = np.round(rng.normal(same * 1.0, 0.8), 1)  # rounding makes ties
        t = best_threshold(scores, same)
        brute = max(accuracy_at(scores, same, c) for c in np.concatenate([scores, [scores.max() + 1]]))
        assert accuracy_at(scores, same, t) == brute


def test_kfold_uses_other_folds_for_the_threshold() -> None:
    # fold 0 alone would pick a threshold near 0.5; the other folds force 0.15, which fold 0 pays for
    scores = np.array([0.6, 0.4, 0.2, 0.1, 0.2, 0.1])
    same = np.array([True, False, True, False, True, False])
    folds = np.array([0, 0, 1, 1, 2, 2])
    res = kfold_accuracy(scores, same, folds)
    assert res.fold_threshold[0] == pytest.approx(0.15)
    assert res.fold_accuracy == (0.5, 1.0, 1.0)
    assert abs(res.mean - 2.5 / 3) < 1e-12
