"""Verification accuracy with a threshold chosen on held-out folds (the LFW View 2 protocol).

LFW README, "View 2": for each of the 10 folds, choose the threshold on the other 9 folds and
measure accuracy on this one; report the mean (and standard error) over folds. Accuracy at
threshold t is (#same pairs with score >= t + #different pairs with score < t) / #pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction of pairs decided right at ``threshold`` (match when score >= threshold)."""
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    return float(np.mean((scores >= threshold) == same))


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold that maximises accuracy on these pairs.

    Candidates are the midpoints between consecutive distinct scores plus one below the lowest and
    one above the highest; accuracy is computed for all of them at once with cumulative sums. Ties
    in accuracy go to the lowest such threshold.
    """
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    if scores.size == 0:
        raise ValueError("no pairs")
    uniq = np.unique(scores)
    cands = np.concatenate([[uniq[0] - 1.0], (uniq[:-1] + uniq[1:]) / 2.0, [uniq[-1] + 1.0]])
    order = np.argsort(scores)
    s, y = scores[order], same[order]
    # Pairs with score < t are rejected: count same (errors) and different (correct) below each candidate.
    below = np.searchsorted(s, cands, side="left")
    same_below = np.concatenate([[0], np.cumsum(y)])[below]
    diff_below = below - same_below
    correct = (y.sum() - same_below) + diff_below
    return float(cands[int(np.argmax(correct))])


@dataclass(frozen=True)
class KFoldAccuracy:
    mean: float
    std: float  # standard deviation over folds
    standard_error: float
    fold_accuracy: tuple[float, ...]
    fold_threshold: tuple[float, ...]


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> KFoldAccuracy:
    """Mean accuracy over folds, each tested at the threshold best on all the other folds."""
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    folds = np.asarray(folds)
    accs, ths = [], []
    for f in np.unique(folds):
        test = folds == f
        t = best_threshold(scores[~test], same[~test])
        ths.append(t)
        accs.append(accuracy_at(scores[test], same[test], t))
    a = np.array(accs)
    return KFoldAccuracy(mean=float(a.mean()), std=float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                         standard_error=float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0,
                         fold_accuracy=tuple(accs), fold_threshold=tuple(ths))
