"""Seeded k-means for the clusters of Fair Score Normalization and FairCal.

Greedy k-means++ seeding (Arthur & Vassilvitskii, "k-means++: the advantages of careful seeding", SODA 2007)
followed by Lloyd iterations (Lloyd 1982), optionally restarted ``n_init`` times keeping the partition
of lowest inertia (sum of squared distances to the assigned centre), as scikit-learn's ``KMeans`` does.

Written here in NumPy rather than taken from scikit-learn or SciPy because neither is a runtime
dependency of faceaudit (both are test extras), and a calibration must be reproducible from its seed
alone: restart r draws from ``numpy.random.default_rng([seed, 0xC1, r + 1])``, every tie (equal distances, equal
inertia) is broken by the lowest index, and an emptied cluster is refilled by the point farthest from
its centre, so the same data and seed give the same clusters on any machine with the same BLAS results.
"""

from __future__ import annotations

import numpy as np


def squared_distances(x: np.ndarray, centres: np.ndarray, xx: np.ndarray | None = None) -> np.ndarray:
    """(N, K) squared Euclidean distances, ||x||^2 - 2 x.c + ||c||^2 clipped at 0 (rounding can dip below).

    ``xx``: the rows' squared norms, when the caller has them (Lloyd's loop reuses them every iteration).
    """
    if xx is None:
        xx = (x * x).sum(axis=1)
    d = xx[:, None] - 2.0 * (x @ centres.T) + (centres * centres).sum(axis=1)[None, :]
    out: np.ndarray = np.maximum(d, 0.0)
    return out


def nearest(x: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of the nearest centre of each row of ``x`` (lowest index on ties), in chunks of rows."""
    x = np.asarray(x, np.float64)
    c = np.asarray(centres, np.float64)
    out = np.empty(len(x), np.int64)
    for s in range(0, len(x), chunk):
        out[s:s + chunk] = np.argmin(squared_distances(x[s:s + chunk], c), axis=1)
    return out


def _seed_centres(x: np.ndarray, xx: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++: the first centre uniformly; then 2 + ln(k) candidates drawn with probability
    proportional to D(x)^2, keeping the one that lowers the potential sum D(x)^2 most (Arthur & Vassilvitskii
    2007, sec. 6; scikit-learn's default), which makes a single run reliable."""
    n = len(x)
    trials = 2 + int(np.log(k))
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    d2 = squared_distances(x, centres[:1], xx)[:, 0]
    for i in range(1, k):
        total = d2.sum()
        if total <= 0:  # every point already on a centre (duplicates): any point will do
            picks = rng.integers(n, size=trials)
        else:
            picks = np.minimum(np.searchsorted(np.cumsum(d2), rng.random(trials) * total, side="right"), n - 1)
        cand = np.minimum(d2[:, None], squared_distances(x, x[picks], xx))  # (N, trials)
        best = int(np.argmin(cand.sum(axis=0)))
        centres[i] = x[picks[best]]
        d2 = cand[:, best]
    return centres


def _means(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean of each cluster's rows (every cluster non-empty), as one-hot.T @ x: a BLAS product, where a
    scatter-add (``np.add.at``) or sorting the rows costs more at N = 10^4."""
    onehot = np.zeros((len(labels), k))
    onehot[np.arange(len(labels)), labels] = 1.0
    out: np.ndarray = (onehot.T @ x) / np.bincount(labels, minlength=k)[:, None]
    return out


def _lloyd(x: np.ndarray, xx: np.ndarray, centres: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray, float]:
    k = len(centres)
    labels = np.full(len(x), -1, np.int64)
    for _ in range(max_iter):
        d2 = squared_distances(x, centres, xx)
        new = np.argmin(d2, axis=1)
        counts = np.bincount(new, minlength=k)
        while (counts == 0).any():
            # an empty cluster takes the point farthest from its own centre (deterministic refill), never the
            # last member of another cluster (k <= N, so some cluster has two)
            e = int(np.flatnonzero(counts == 0)[0])
            own = d2[np.arange(len(x)), new]
            own[counts[new] <= 1] = -1.0
            far = int(np.argmax(own))
            counts[new[far]] -= 1
            counts[e] += 1
            new[far] = e
        if np.array_equal(new, labels):
            break
        labels = new
        centres = _means(x, labels, k)
    inertia = float(squared_distances(x, centres, xx)[np.arange(len(x)), labels].sum())
    return centres, labels, inertia


def kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 1, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Centres (k, D) and labels (N,) of the best of ``n_init`` seeded k-means++ / Lloyd runs.

    One run by default, as scikit-learn's ``n_init="auto"`` does with greedy k-means++ seeding (which
    already starts near a good partition); the cross-validation runs k-means once per fold.

    Raises ValueError when there are fewer rows than clusters (the caller refuses with a reason first).
    """
    x = np.asarray(x, np.float64)
    if not 1 <= k <= len(x) or n_init < 1:
        raise ValueError(f"k-means needs 1 <= k <= {len(x)} points and n_init >= 1, got k = {k}, n_init = {n_init}")
    xx = (x * x).sum(axis=1)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for r in range(n_init):
        run = _lloyd(x, xx, _seed_centres(x, xx, k, np.random.default_rng([seed, 0xC1, r + 1])), max_iter)
        if best is None or run[2] < best[2]:
            best = run
    assert best is not None  # n_init >= 1
    return best[0], best[1]


def refine(x: np.ndarray, centres: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd iterations from the given centres (no seeding): centres and labels of the partition they reach."""
    x = np.asarray(x, np.float64)
    c = np.asarray(centres, np.float64)
    if not 1 <= len(c) <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= {len(x)} centres, got {len(c)}")
    centres_out, labels, _ = _lloyd(x, (x * x).sum(axis=1), c, max_iter)
    return centres_out, labels
