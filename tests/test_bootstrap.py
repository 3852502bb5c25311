"""Subject-level bootstrap: replicate counts against brute force, and coverage on known populations."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from faceaudit.metrics.bootstrap import BootstrapSpec, bootstrap_rates, replicate_counts, subject_draws
from faceaudit.metrics.rates import global_threshold
from faceaudit.scoring.compare import compare_embeddings
from faceaudit.scoring.groups import cell_index
from faceaudit.scoring.stats import PairStatistics, ScoreBins
from reference import materialised_counts


def test_replicate_counts_equal_a_materialised_resample() -> None:
    rng = np.random.default_rng(0)
    subj = np.repeat(np.arange(14), rng.integers(1, 4, 14))
    group = (np.arange(14) % 2)[subj]
    centres = rng.normal(size=(14, 8))
    emb = centres[subj] + rng.normal(scale=1.2, size=(len(subj), 8))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    stats = compare_embeddings(emb, subj, group, 2, top_k=10**6, row_block=5, col_block=7)
    t = global_threshold(stats, 0.05)
    n_sg = np.zeros((14, 2))
    np.add.at(n_sg, (subj, group), 1)
    scores = emb @ emb.T
    for seed in range(5):
        m = np.random.default_rng(seed).integers(0, 4, 14)
        rc = replicate_counts(stats, n_sg, t, m[None, :])
        want = materialised_counts(scores, subj, group, m, t.value)  # fm, imp, fnm, gen per group
        got = np.stack([rc.false_matches[0], rc.impostor_pairs[0], rc.false_non_matches[0], rc.genuine_pairs[0]])
        np.testing.assert_allclose(got, want)


def test_draws_keep_stratum_sizes_and_are_reproducible() -> None:
    strata = np.array([0, 0, 0, 1, 1, 2])
    a = subject_draws(strata, 50, seed=3)
    b = subject_draws(strata, 50, seed=3)
    np.testing.assert_array_equal(a, b)
    assert (a[:, :3].sum(1) == 3).all() and (a[:, 3:5].sum(1) == 2).all() and (a[:, 5] == 1).all()
    assert not np.array_equal(a, subject_draws(strata, 50, seed=4))


def _simulate(rng: np.random.Generator, n_subjects: int, images: int, t: float) -> tuple[PairStatistics, np.ndarray]:
    """One group. Impostor score u-v: a_u + a_v + e; genuine score of u: 1 + b_u + e (subject effects)."""
    a = rng.normal(0, 0.5, n_subjects)
    b = rng.normal(0, 0.5, n_subjects)
    subj = np.repeat(np.arange(n_subjects), images)
    i, j = np.triu_indices(len(subj), k=1)
    gen = subj[i] == subj[j]
    s = np.where(gen, 1.0 + b[subj[i]], a[subj[i]] + a[subj[j]]) + rng.normal(0, 0.5, len(i))
    stats = PairStatistics(n_groups=1, bins=ScoreBins(-6, 6, 2000), top_k=10**6)
    c = cell_index(0, 0, 1)
    stats.add_genuine(s[gen], np.full(gen.sum(), c), subj[i][gen])
    stats.add_impostor_pairs(s[~gen], np.full((~gen).sum(), c), subj[i][~gen], subj[j][~gen])
    return stats, np.full((n_subjects, 1), images, float)


def test_intervals_cover_known_true_rates_about_95_percent() -> None:
    """True FMR(t) = 1 - Phi(t / sqrt(2 * 0.5^2 + 0.5^2)); true FNMR(t) = Phi((t - 1) / sqrt(0.5^2 + 0.5^2))."""
    t_value = 1.2
    true_fmr = 1 - norm.cdf(t_value / np.sqrt(0.75))
    true_fnmr = norm.cdf((t_value - 1) / np.sqrt(0.5))
    rng = np.random.default_rng(2026)
    hit_fmr = hit_fnmr = 0
    sims = 300
    from faceaudit.metrics.rates import Threshold

    for k in range(sims):
        stats, n_sg = _simulate(rng, n_subjects=80, images=3, t=t_value)
        thr = Threshold(t_value, True, 0, int(stats.n_impostor.sum()))
        iv = bootstrap_rates(stats, n_sg, ["all"], thr, BootstrapSpec(replicates=400, seed=k), alpha=0.5)
        assert iv is not None
        hit_fmr += iv.fmr_ci[0, 0] <= true_fmr <= iv.fmr_ci[0, 1]
        hit_fnmr += iv.fnmr_ci[0, 0] <= true_fnmr <= iv.fnmr_ci[0, 1]
    print(f"coverage FMR {hit_fmr / sims:.3f}, FNMR {hit_fnmr / sims:.3f}")
    assert 0.93 <= hit_fmr / sims <= 0.97
    assert 0.93 <= hit_fnmr / sims <= 0.97


def test_subjects_without_images_are_never_drawn() -> None:
    strata = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1, -1, -1, -1])
    draws = subject_draws(strata, 300, seed=1)
    assert (draws[:, 8:] == 0).all()
    assert (draws[:, :4].sum(1) == 4).all() and (draws[:, 4:8].sum(1) == 4).all()


def test_permutation_p_value_is_nan_when_nothing_can_be_tested() -> None:
    from faceaudit.metrics.permutation import permutation_test
    from faceaudit.metrics.rates import Threshold

    stats = PairStatistics(n_groups=2, bins=ScoreBins(), top_k=100)
    c = cell_index(0, 1, 2)  # only cross-group impostor pairs, no genuine pairs at all
    stats.add_impostor_pairs(np.array([0.1, 0.2], np.float32), np.array([c, c]), np.array([0, 1]), np.array([2, 3]))
    n_sg = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], float)
    res = permutation_test(stats, n_sg, Threshold(0.15, True, 1, 2), permutations=20)
    # two people per group give impostor pairs within each group (FPD testable), but no genuine pairs
    assert res is not None and res.fpd == 1.0 and res.fpd_p_value == 1.0 and np.isnan(res.fnd_p_value)
    one_each = np.array([[1, 0], [0, 1]], float)  # one person per group: neither side has pairs
    stats = PairStatistics(n_groups=2, bins=ScoreBins(), top_k=100)
    stats.add_impostor_pairs(np.array([0.1], np.float32), np.array([c]), np.array([0]), np.array([1]))
    res = permutation_test(stats, one_each, Threshold(0.15, True, 1, 1), permutations=20)
    assert res is not None and np.isnan(res.fpd_p_value) and np.isnan(res.fnd_p_value)
