"""Permutation test: uniform p-values when groups do not matter, small ones when they do."""

from __future__ import annotations

import numpy as np

from faceaudit.metrics.permutation import _differentials, permutation_test
from faceaudit.metrics.rates import counts_at, global_threshold
from faceaudit.metrics.summary import summarise
from faceaudit.scoring.compare import compare_embeddings


def _population(seed: int, effect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two groups of subjects, 2-3 images each; ``effect`` > 0 makes group 1 faces more alike (more FMs)."""
    rng = np.random.default_rng(seed)
    n = 120
    per = rng.integers(2, 4, n)
    subj = np.repeat(np.arange(n), per)
    group = (np.arange(n) % 2)[subj]
    shared = rng.normal(size=16)
    centres = rng.normal(size=(n, 16)) + np.outer(np.arange(n) % 2, shared) * effect
    emb = centres[subj] + rng.normal(scale=0.8, size=(len(subj), 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    return emb, subj, group


def _test(seed: int, effect: float) -> tuple[float, float]:
    emb, subj, group = _population(seed, effect)
    stats = compare_embeddings(emb, subj, group, 2, top_k=10**6)
    t = global_threshold(stats, 1e-2)
    n_sg = np.zeros((subj.max() + 1, 2))
    np.add.at(n_sg, (subj, group), 1)
    res = permutation_test(stats, n_sg, t, permutations=200, seed=seed)
    assert res is not None
    # the observed FPD is the summary's FPD (same counts, same zero rule)
    c = counts_at(stats, t)
    fm, imp = c.diagonal(2)
    s = summarise(["a", "b"], fm, imp, c.false_non_matches, c.genuine_pairs)
    assert res.fpd == s.fpd and res.fnd == s.fnd
    return res.fpd_p_value, res.fnd_p_value


def test_no_effect_gives_no_systematic_small_p_values() -> None:
    p = np.array([_test(seed, 0.0)[0] for seed in range(12)])
    assert (p < 0.05).sum() <= 2  # about 5% expected under the null
    assert 0.25 < p.mean() < 0.75


def test_a_real_differential_is_detected() -> None:
    p_fpd, _ = _test(100, 0.9)
    assert p_fpd <= 0.01


def test_differentials_by_hand() -> None:
    # subjects 0,1 in group 0 (2 images each), 2,3 in group 1 (1 and 3 images)
    group_of = np.array([0, 0, 1, 1])
    n_u = np.array([2.0, 2.0, 1.0, 3.0])
    gen_u = np.array([1.0, 1.0, 0.0, 3.0])
    fnm_u = np.array([0.0, 1.0, 0.0, 1.0])
    tail_a, tail_b = np.array([0, 2]), np.array([1, 3])  # one false match in each group
    fpd, fnd = _differentials(group_of, 2, n_u, gen_u, fnm_u, tail_a, tail_b)
    # impostor pairs: group 0 (16 - 8) / 2 = 4, group 1 (16 - 10) / 2 = 3 -> FMR 1/4 and 1/3
    assert fpd == (1 / 3) / (1 / 4)
    # FNMR: group 0 1/2, group 1 1/3
    assert fnd == (1 / 2) / (1 / 3)
