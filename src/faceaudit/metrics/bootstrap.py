"""Confidence intervals for per-group rates and summary measures: a subject-level bootstrap.

Pairs share subjects, so pairs are not independent and a binomial interval would be too narrow.
Each replicate resamples subjects with replacement within their group (so every group keeps its
size; Efron & Tibshirani 1993, ch. 6 and 8 on stratified and clustered resampling; the "subsets
bootstrap" of Bolle, Ratha & Pankanti 2004 for biometric scores). A subject drawn m times brings m
copies of its images; the replicate keeps each copy's genuine pairs and the impostor pairs between
copies of different subjects (pairs between copies of one subject are not impostor pairs).

Counts in a replicate, with m_u the number of draws of subject u and n_ug its enrolled images in g:
- genuine pairs of g: sum_u m_u G_ug; false non-matches: sum_u m_u FNM_ug(t);
- impostor pairs of cell (a, b): A_a A_b - sum_u m_u^2 n_ua n_ub for a != b, and
  (A_a^2 - sum_u m_u^2 n_ua^2) / 2 for a = b, with A_g = sum_u m_u n_ug;
- false matches of cell c: sum over impostor pairs (u, v) of c with score >= t of m_u m_v. These
  pairs are exactly the kept tail above t, so intervals need an exact threshold.

The threshold stays at its value on the full data (the operating point is fixed). Intervals are
percentile intervals of the replicates. A group with zero observed errors gets [0, 3 / n] instead
(rule of 3), since resampling zeros only gives zeros. Effective sample size: n_eff = p (1 - p) /
var_boot(p), the number of independent pairs that would give the same variance (Kish's design effect).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceaudit.metrics.rates import Threshold
from faceaudit.metrics.summary import MEASURES, PART_MEASURES, summarise
from faceaudit.scoring.groups import cell_index
from faceaudit.scoring.stats import PairStatistics


@dataclass(frozen=True)
class BootstrapSpec:
    replicates: int = 1000
    seed: int = 0
    confidence: float = 0.95


@dataclass(frozen=True)
class RateIntervals:
    """Per-group intervals at one threshold; rows follow the grouping's order."""

    fmr_ci: np.ndarray  # (G, 2)
    fnmr_ci: np.ndarray  # (G, 2)
    fmr_n_eff: np.ndarray  # (G,)
    fnmr_n_eff: np.ndarray
    summary_ci: dict[str, tuple[float, float]]
    replicates: int


def subject_draws(strata: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """(replicates, S) draw counts: each stratum's subjects resampled with replacement to its own size.

    Replicate r uses the generator seeded with (seed, r), so any replicate can be recomputed alone.
    Subjects in a negative stratum are never drawn.
    """
    strata = np.asarray(strata)
    out = np.zeros((replicates, len(strata)), np.int64)
    members = [np.flatnonzero(strata == s) for s in np.unique(strata) if s >= 0]
    for r in range(replicates):
        rng = np.random.default_rng([seed, r])
        for idx in members:
            out[r, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)))
    return out


def percentile_interval(values: np.ndarray, confidence: float) -> np.ndarray:
    """Percentile interval per column, skipping NaN replicates; NaN for a column with none usable."""
    lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    out = np.full((*values.shape[1:], 2), np.nan)
    usable = np.isfinite(values).sum(axis=0) > 0
    if usable.any():
        v = values[:, usable]
        out[usable] = np.stack([np.nanquantile(v, lo, axis=0), np.nanquantile(v, hi, axis=0)], axis=-1)
    return out


def _n_eff(p: np.ndarray, reps: np.ndarray) -> np.ndarray:
    """p (1 - p) / var_boot(p) per column (NaN where the variance is zero or undefined)."""
    out = np.full(reps.shape[1], np.nan)
    enough = np.isfinite(reps).sum(axis=0) > 1
    if enough.any():
        var = np.nanvar(reps[:, enough], axis=0, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[enough] = np.where(var > 0, p[enough] * (1 - p[enough]) / var, np.nan)
    return out


@dataclass(frozen=True)
class ReplicateCounts:
    """Counts per replicate (rows) and group (columns), and the same counts on the full data."""

    false_matches: np.ndarray
    impostor_pairs: np.ndarray
    false_non_matches: np.ndarray
    genuine_pairs: np.ndarray
    observed: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # fm, imp, fnm, gen


def replicate_counts(stats: PairStatistics, images_per_subject: np.ndarray, threshold: Threshold,
                     draws: np.ndarray) -> ReplicateCounts:
    """Within-group counts of each replicate (formulas in the module docstring); ``draws`` is (R, S)."""
    g = np.asarray(images_per_subject).shape[1]
    diag = cell_index(np.arange(g), np.arange(g), g)
    group_of_cell = np.full(stats.impostor_hist.shape[0], -1)
    group_of_cell[diag] = np.arange(g)
    scores, cells, subj = stats.genuine()
    gg = group_of_cell[cells] if len(cells) else np.empty(0, np.int64)
    within = gg >= 0
    above = stats.tail_score >= threshold.value
    tg = group_of_cell[stats.tail_cell[above]]
    return counts_from_pairs(images_per_subject, draws, subj[within], gg[within], scores[within] < threshold.value,
                             tg[tg >= 0], stats.tail_subject_a[above][tg >= 0], stats.tail_subject_b[above][tg >= 0],
                             stats.n_impostor[diag])


def counts_from_pairs(images_per_subject: np.ndarray, draws: np.ndarray, genuine_subject: np.ndarray,
                      genuine_group: np.ndarray, genuine_missed: np.ndarray, fm_group: np.ndarray,
                      fm_subject_a: np.ndarray, fm_subject_b: np.ndarray,
                      impostor_pairs: np.ndarray) -> ReplicateCounts:
    """:func:`replicate_counts` from the decisions themselves: each within-group genuine pair (its subject, group,
    and whether it was missed), each within-group false match (its group and two subjects), and the observed
    within-group impostor pairs per group (the replicates' follow from the composition, module docstring)."""
    n_sg = np.asarray(images_per_subject, np.float64)
    draws = np.asarray(draws, np.float64)
    g = n_sg.shape[1]
    gen_su = np.zeros((n_sg.shape[0], g))
    fnm_su = np.zeros((n_sg.shape[0], g))
    np.add.at(gen_su, (genuine_subject, genuine_group), 1)
    np.add.at(fnm_su, (genuine_subject[genuine_missed], genuine_group[genuine_missed]), 1)

    a_rg = draws @ n_sg
    imp_r = (a_rg**2 - (draws**2) @ (n_sg**2)) / 2

    fm_r = np.zeros_like(imp_r)
    for r0 in range(0, len(draws), 64):
        w = draws[r0:r0 + 64][:, fm_subject_a] * draws[r0:r0 + 64][:, fm_subject_b]  # (r, E)
        for k in range(g):
            fm_r[r0:r0 + 64, k] = w[:, fm_group == k].sum(axis=1)
    observed = (np.bincount(fm_group, minlength=g).astype(np.float64),
                np.asarray(impostor_pairs, np.float64), fnm_su.sum(0), gen_su.sum(0))
    return ReplicateCounts(fm_r, imp_r, draws @ fnm_su, draws @ gen_su, observed)


def stratified_draws(images_per_subject: np.ndarray, spec: BootstrapSpec) -> np.ndarray:
    """The (replicates, S) draws for ``images_per_subject`` (S, G), each subject in its group's stratum.

    Subjects without enrolled images take no part (stratum -1, never drawn). The draws depend on
    the grouping and the seed only, so one set serves every threshold of an analysis.
    """
    n_sg = np.asarray(images_per_subject, np.float64)
    strata = np.where(n_sg.sum(axis=1) > 0, np.argmax(n_sg, axis=1), -1)
    return subject_draws(strata, spec.replicates, spec.seed)


def bootstrap_rates(
    stats: PairStatistics,
    images_per_subject: np.ndarray,
    labels: list[str],
    threshold: Threshold,
    spec: BootstrapSpec,
    alpha: float,
    draws: np.ndarray | None = None,
) -> RateIntervals | None:
    """Intervals for each group's FMR and FNMR and for the summary measures; None if the threshold is binned.

    ``images_per_subject`` is (S, G): enrolled images of each subject in each group, with subjects
    coded as in ``stats`` (the codes its genuine pairs and tail carry). ``draws``: from
    :func:`stratified_draws` (computed here when not given).
    """
    if not threshold.exact:
        return None
    n_sg = np.asarray(images_per_subject, np.float64)
    g = n_sg.shape[1]
    if draws is None:
        draws = stratified_draws(n_sg, spec)
    rc = replicate_counts(stats, n_sg, threshold, draws)
    fm_obs, imp_obs, fnm_obs, gen_obs = rc.observed
    with np.errstate(divide="ignore", invalid="ignore"):
        fmr_reps = np.where(rc.impostor_pairs > 0, rc.false_matches / rc.impostor_pairs, np.nan)
        fnmr_reps = np.where(rc.genuine_pairs > 0, rc.false_non_matches / rc.genuine_pairs, np.nan)
        p_fmr = np.where(imp_obs > 0, fm_obs / imp_obs, np.nan)
        p_fnmr = np.where(gen_obs > 0, fnm_obs / gen_obs, np.nan)
    fmr_ci = percentile_interval(fmr_reps, spec.confidence)
    fnmr_ci = percentile_interval(fnmr_reps, spec.confidence)
    for k in range(g):  # zero observed errors: the rule-of-3 interval
        if fm_obs[k] == 0 and imp_obs[k] > 0:
            fmr_ci[k] = (0.0, min(1.0, 3.0 / imp_obs[k]))
        if fnm_obs[k] == 0 and gen_obs[k] > 0:
            fnmr_ci[k] = (0.0, min(1.0, 3.0 / gen_obs[k]))
    names = MEASURES + PART_MEASURES
    summ = np.full((spec.replicates, len(names)), np.nan)
    for r in range(spec.replicates):
        s = summarise(labels, rc.false_matches[r], rc.impostor_pairs[r], rc.false_non_matches[r],
                      rc.genuine_pairs[r], alpha)
        summ[r] = [getattr(s, n) for n in names]
    sci = percentile_interval(summ, spec.confidence)
    return RateIntervals(
        fmr_ci=fmr_ci, fnmr_ci=fnmr_ci, fmr_n_eff=_n_eff(p_fmr, fmr_reps), fnmr_n_eff=_n_eff(p_fnmr, fnmr_reps),
        summary_ci={n: (float(sci[i, 0]), float(sci[i, 1])) for i, n in enumerate(names)},
        replicates=spec.replicates,
    )
