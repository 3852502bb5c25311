"""Two systems on the same people: per-group differences with a paired subject-level bootstrap.

For systems A (the reference) and B evaluated on the same images, each at its own global threshold
for the same target FMR, the difference for group g is

    d_FMR(g) = FMR_B(g) - FMR_A(g),    d_FNMR(g) = FNMR_B(g) - FNMR_A(g),

and for a summary measure m (FPD, FND, IR, FDR, GARBE, SER, accuracy STD, see
:mod:`faceaudit.metrics.summary`) d_m = m_B - m_A. Pairs share subjects and both systems saw the
same subjects, so the two rates are correlated; the interval must resample *subjects*, the *same*
subjects for both systems in each replicate (the paired bootstrap: Efron & Tibshirani 1993, ch. 6
and 8; Bolle, Ratha & Pankanti 2004 for biometric scores). Replicate r draws subject counts m_u
(stratified by group, :func:`faceaudit.metrics.bootstrap.stratified_draws`); both systems' counts
in that replicate follow :func:`faceaudit.metrics.bootstrap.replicate_counts` with the same m_u, and
d_r = rate_B,r - rate_A,r. The interval is the percentile interval of d_r. Thresholds stay at their
full-data values (the operating points are fixed), as in the single-system intervals.

A difference is called only when its interval excludes zero: "B's FMR for women is lower than A's"
needs the whole interval below zero. Two systems with no errors in a group give d = 0 in every
replicate, an interval [0, 0], and no call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from faceaudit.metrics.bootstrap import ReplicateCounts, percentile_interval, replicate_counts
from faceaudit.metrics.rates import Threshold
from faceaudit.metrics.summary import MEASURES, summarise
from faceaudit.scoring.stats import PairStatistics

SUMMARY_MEASURES = MEASURES
#: For each summary measure, whether a lower value means smaller differences between groups.
LOWER_IS_FAIRER = {"fpd": True, "fnd": True, "ir": True, "fdr": False, "garbe": True, "ser": True,
                   "accuracy_std": True}


def call(ci: tuple[float, float] | None) -> str:
    """'lower' or 'higher' when the interval of B - A excludes zero, else 'no clear difference'."""
    if ci is None or not np.all(np.isfinite(ci)):
        return "not computed"
    if ci[1] < 0:
        return "lower"
    if ci[0] > 0:
        return "higher"
    return "no clear difference"


def _rates(errors: np.ndarray, trials: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(trials > 0, errors / np.where(trials > 0, trials, 1), np.nan)


@dataclass(frozen=True)
class PairedReplicates:
    """Per replicate (rows) and group (columns): each system's rates, and their summary measures."""

    fmr_a: np.ndarray
    fmr_b: np.ndarray
    fnmr_a: np.ndarray
    fnmr_b: np.ndarray
    summary_a: np.ndarray  # (R, len(SUMMARY_MEASURES))
    summary_b: np.ndarray


def paired_replicates(stats_a: PairStatistics, threshold_a: Threshold, stats_b: PairStatistics,
                      threshold_b: Threshold, images_per_subject: np.ndarray, labels: list[str],
                      draws: np.ndarray, alpha: float) -> PairedReplicates:
    """Both systems' per-group rates and summaries in each replicate of ``draws`` (the same subjects)."""
    n_sg = np.asarray(images_per_subject, np.float64)
    ra = replicate_counts(stats_a, n_sg, threshold_a, draws)
    rb = replicate_counts(stats_b, n_sg, threshold_b, draws)

    def summaries(rc: ReplicateCounts) -> np.ndarray:
        out = np.full((len(draws), len(SUMMARY_MEASURES)), np.nan)
        for r in range(len(draws)):
            s = summarise(labels, rc.false_matches[r], rc.impostor_pairs[r], rc.false_non_matches[r],
                          rc.genuine_pairs[r], alpha)
            out[r] = [getattr(s, m) for m in SUMMARY_MEASURES]
        return out

    return PairedReplicates(
        fmr_a=_rates(ra.false_matches, ra.impostor_pairs), fmr_b=_rates(rb.false_matches, rb.impostor_pairs),
        fnmr_a=_rates(ra.false_non_matches, ra.genuine_pairs), fnmr_b=_rates(rb.false_non_matches, rb.genuine_pairs),
        summary_a=summaries(ra), summary_b=summaries(rb))


@dataclass(frozen=True)
class PairedDifference:
    """B - A per group and per summary measure, observed and with paired bootstrap intervals."""

    labels: list[str]
    fmr_diff: np.ndarray  # (G,)
    fmr_diff_ci: np.ndarray  # (G, 2)
    fnmr_diff: np.ndarray
    fnmr_diff_ci: np.ndarray
    summary_diff: dict[str, float]
    summary_diff_ci: dict[str, tuple[float, float]]
    replicates: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        groups = []
        for i, lab in enumerate(self.labels):
            fci = (float(self.fmr_diff_ci[i, 0]), float(self.fmr_diff_ci[i, 1]))
            nci = (float(self.fnmr_diff_ci[i, 0]), float(self.fnmr_diff_ci[i, 1]))
            groups.append({"group": lab, "fmr_diff": float(self.fmr_diff[i]), "fmr_diff_ci": list(fci),
                           "fmr_call": call(fci), "fnmr_diff": float(self.fnmr_diff[i]),
                           "fnmr_diff_ci": list(nci), "fnmr_call": call(nci)})
        summary = {}
        for m in SUMMARY_MEASURES:
            ci = self.summary_diff_ci[m]
            c = call(ci)
            fairer = None
            if c in ("lower", "higher"):
                fairer = "b" if (c == "lower") == LOWER_IS_FAIRER[m] else "a"
            summary[m] = {"diff": self.summary_diff[m], "ci": list(ci), "call": c, "fairer": fairer,
                          "lower_is_fairer": LOWER_IS_FAIRER[m]}
        return {"groups": groups, "summary": summary, "replicates": self.replicates, "confidence": self.confidence}


def paired_difference(stats_a: PairStatistics, threshold_a: Threshold, stats_b: PairStatistics,
                      threshold_b: Threshold, images_per_subject: np.ndarray, labels: list[str],
                      draws: np.ndarray, alpha: float, confidence: float = 0.95) -> PairedDifference | None:
    """B - A with paired intervals (module docstring); None when a threshold is not exact (binned)."""
    if not (threshold_a.exact and threshold_b.exact):
        return None
    n_sg = np.asarray(images_per_subject, np.float64)
    obs = paired_replicates(stats_a, threshold_a, stats_b, threshold_b, n_sg, labels,
                            np.ones((1, n_sg.shape[0])), alpha)
    rep = paired_replicates(stats_a, threshold_a, stats_b, threshold_b, n_sg, labels, draws, alpha)
    sdiff = rep.summary_b - rep.summary_a
    sci = percentile_interval(sdiff, confidence)
    odiff = (obs.summary_b - obs.summary_a)[0]
    return PairedDifference(
        labels=list(labels),
        fmr_diff=(obs.fmr_b - obs.fmr_a)[0], fmr_diff_ci=percentile_interval(rep.fmr_b - rep.fmr_a, confidence),
        fnmr_diff=(obs.fnmr_b - obs.fnmr_a)[0], fnmr_diff_ci=percentile_interval(rep.fnmr_b - rep.fnmr_a, confidence),
        summary_diff={m: float(odiff[i]) for i, m in enumerate(SUMMARY_MEASURES)},
        summary_diff_ci={m: (float(sci[i, 0]), float(sci[i, 1])) for i, m in enumerate(SUMMARY_MEASURES)},
        replicates=len(draws), confidence=confidence)
