"""Is a demographic differential real? A permutation test with group labels shuffled between subjects.

Under the null hypothesis that error rates do not depend on the group, the group labels are
exchangeable between subjects: shuffling them (each subject keeps all its images and pairs and takes
another subject's group; group sizes in subjects stay the same) gives the distribution of a
differential under the null. The p-value is (1 + #{permutations with statistic >= observed}) /
(1 + #permutations) (Phipson & Smyth, "Permutation p-values should never be zero", 2010).

Statistics: FPD (max/min of within-group FMR, over the groups with impostor pairs) and FND (max/min
of FNMR, over the groups with genuine pairs), with the rule-of-3 for zero rates as in
:mod:`faceaudit.metrics.summary`; a side no group has pairs for is not tested (NaN p-value).
Counts in a permutation, with n_u the enrolled images of subject u: genuine pairs and false
non-matches of g add up over g's subjects; impostor pairs within g are ((sum_u n_u)^2 - sum_u n_u^2) / 2
over its subjects; false matches within g are the tail pairs above the threshold whose two subjects
are both in g (so the threshold must be exact).
A subject whose images carry different groups takes the group of most of its images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceaudit.metrics.rates import Threshold
from faceaudit.metrics.summary import max_ratio, rule_of_three
from faceaudit.scoring.stats import PairStatistics


@dataclass(frozen=True)
class PermutationTest:
    permutations: int
    seed: int
    fpd: float
    fpd_p_value: float
    fnd: float
    fnd_p_value: float
    subjects_with_mixed_groups: int

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def _differentials(group_of: np.ndarray, g: int, n_u: np.ndarray, gen_u: np.ndarray, fnm_u: np.ndarray,
                   tail_a: np.ndarray, tail_b: np.ndarray) -> tuple[float, float]:
    a = np.bincount(group_of, weights=n_u, minlength=g)
    sq = np.bincount(group_of, weights=n_u**2, minlength=g)
    imp = (a**2 - sq) / 2
    ga, gb = group_of[tail_a], group_of[tail_b]
    fm = np.bincount(ga[ga == gb], minlength=g).astype(np.float64)
    gen = np.bincount(group_of, weights=gen_u, minlength=g)
    fnm = np.bincount(group_of, weights=fnm_u, minlength=g)
    fmr, _ = rule_of_three(fm[imp > 0], imp[imp > 0])  # each side over the groups with its pairs (summary.py)
    fnmr, _ = rule_of_three(fnm[gen > 0], gen[gen > 0])
    return max_ratio(fmr), max_ratio(fnmr)


def permutation_test(stats: PairStatistics, images_per_subject: np.ndarray, threshold: Threshold,
                     permutations: int = 1000, seed: int = 0) -> PermutationTest | None:
    """FPD and FND with their permutation p-values; None when the threshold is binned (not exact)."""
    if not threshold.exact or permutations <= 0:
        return None
    n_sg = np.asarray(images_per_subject, np.float64)
    g = n_sg.shape[1]
    group_of = np.argmax(n_sg, axis=1)
    mixed = int(((n_sg > 0).sum(axis=1) > 1).sum())
    n_u = n_sg.sum(axis=1)
    scores, _, subj = stats.genuine()
    gen_u = np.bincount(subj, minlength=len(n_u)).astype(np.float64)
    fnm_u = np.bincount(subj[scores < threshold.value], minlength=len(n_u)).astype(np.float64)
    above = stats.tail_score >= threshold.value
    ta, tb = stats.tail_subject_a[above], stats.tail_subject_b[above]
    fpd, fnd = _differentials(group_of, g, n_u, gen_u, fnm_u, ta, tb)
    test_fpd, test_fnd = bool(np.isfinite(fpd)), bool(np.isfinite(fnd))  # a side no group measures: no test
    if not (test_fpd or test_fnd):
        nan = float("nan")
        return PermutationTest(permutations, seed, fpd, nan, fnd, nan, mixed)
    rng = np.random.default_rng(seed)
    ge_fpd = ge_fnd = 0
    present = n_u > 0  # only subjects with enrolled images take part
    idx = np.flatnonzero(present)
    for _ in range(permutations):
        shuffled = group_of.copy()
        shuffled[idx] = rng.permutation(group_of[idx])
        p_fpd, p_fnd = _differentials(shuffled, g, n_u, gen_u, fnm_u, ta, tb)
        ge_fpd += not p_fpd < fpd  # a NaN statistic counts as extreme (conservative)
        ge_fnd += not p_fnd < fnd
    nan = float("nan")
    return PermutationTest(permutations=permutations, seed=seed, fpd=fpd,
                           fpd_p_value=(1 + ge_fpd) / (1 + permutations) if test_fpd else nan, fnd=fnd,
                           fnd_p_value=(1 + ge_fnd) / (1 + permutations) if test_fnd else nan,
                           subjects_with_mixed_groups=mixed)
