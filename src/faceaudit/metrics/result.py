"""The evaluation result: per-group tables, cross-group FMR matrices and summaries, as JSON and DataFrames.

``to_dict`` follows ``schemas/results.schema.json`` (``SCHEMA_VERSION``); NaN becomes null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from faceaudit.metrics.bootstrap import BootstrapSpec, RateIntervals, bootstrap_rates, stratified_draws
from faceaudit.metrics.permutation import PermutationTest, permutation_test
from faceaudit.metrics.rates import (
    CellCounts,
    DetCurve,
    ScoreHistogram,
    ScoreMoments,
    Threshold,
    counts_at,
    det_curve,
    global_threshold,
    group_threshold,
    moments,
    score_histogram,
)
from faceaudit.metrics.summary import Summary, summarise
from faceaudit.scoring.groups import Grouping
from faceaudit.scoring.stats import PairStatistics

SCHEMA_VERSION = "1.3"


def json_ready(x: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN and inf to None, recursively."""
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_ready(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_ready(x.tolist())
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        v = float(x)
        return None if math.isnan(v) or math.isinf(v) else v
    return x


def _ci(iv: RateIntervals | None, which: str, i: int) -> list[float] | None:
    """An interval as [low, high], or None when not computed or undefined."""
    if iv is None:
        return None
    lo, hi = getattr(iv, which)[i]
    return None if np.isnan(lo) or np.isnan(hi) else [float(lo), float(hi)]


@dataclass(frozen=True)
class GroupCounts:
    group: str
    values: dict[str, str]
    subjects: int
    images: int
    failed_to_enrol: int
    genuine_pairs: int
    impostor_pairs: int  # impostor pairs within the group


@dataclass(frozen=True)
class OperatingPoint:
    target_fmr: float
    threshold: Threshold
    counts: CellCounts
    group_thresholds: list[Threshold]
    summary: Summary
    intervals: RateIntervals | None = None
    permutation: PermutationTest | None = None


@dataclass(frozen=True)
class Analysis:
    """Everything measured for one grouping (one attribute, or an intersection)."""

    grouping: Grouping
    counts: list[GroupCounts]
    operating_points: list[OperatingPoint]
    moments: list[ScoreMoments]
    det: list[DetCurve]
    genuine_cross_group: int
    histograms: list[ScoreHistogram] = field(default_factory=list)

    def group_table(self) -> pd.DataFrame:
        """One row per (target FMR, group): rates, counts, threshold shift, score statistics."""
        rows = []
        labels = self.grouping.labels
        g = len(labels)
        for op in self.operating_points:
            fm, imp = op.counts.diagonal(g)
            for i, lab in enumerate(labels):
                gt = op.group_thresholds[i]
                fmr_ci, fnmr_ci = _ci(op.intervals, "fmr_ci", i), _ci(op.intervals, "fnmr_ci", i)
                rows.append({
                    "target_fmr": op.target_fmr, "group": lab, **self.grouping.values(i),
                    "fmr_ci_low": fmr_ci[0] if fmr_ci else np.nan, "fmr_ci_high": fmr_ci[1] if fmr_ci else np.nan,
                    "fnmr_ci_low": fnmr_ci[0] if fnmr_ci else np.nan,
                    "fnmr_ci_high": fnmr_ci[1] if fnmr_ci else np.nan,
                    "threshold": op.threshold.value,
                    "fmr": fm[i] / imp[i] if imp[i] else np.nan, "false_matches": int(fm[i]),
                    "impostor_pairs": int(imp[i]),
                    "fnmr": (op.counts.false_non_matches[i] / op.counts.genuine_pairs[i]
                             if op.counts.genuine_pairs[i] else np.nan),
                    "false_non_matches": int(op.counts.false_non_matches[i]),
                    "genuine_pairs": int(op.counts.genuine_pairs[i]),
                    "fmr_vs_target": (fm[i] / imp[i] / op.target_fmr) if imp[i] else np.nan,
                    "group_threshold": gt.value, "threshold_shift": gt.value - op.threshold.value,
                    "eer": self.det[i].eer, "d_prime": self.moments[i].d_prime,
                    "genuine_mean": self.moments[i].genuine_mean, "impostor_mean": self.moments[i].impostor_mean,
                })
        return pd.DataFrame(rows)

    def cross_group_fmr(self, k: int = 0) -> pd.DataFrame:
        """The cross-group FMR matrix at the k-th operating point."""
        labels = list(self.grouping.labels)
        return pd.DataFrame(self.operating_points[k].counts.fmr_matrix(len(labels)), index=labels, columns=labels)

    def to_dict(self) -> dict[str, Any]:
        labels = self.grouping.labels
        g = len(labels)
        ops = []
        for op in self.operating_points:
            fm, imp = op.counts.diagonal(g)
            groups = []
            iv = op.intervals
            for i, lab in enumerate(labels):
                gt = op.group_thresholds[i]
                gen, fnm = op.counts.genuine_pairs[i], op.counts.false_non_matches[i]
                groups.append({
                    "group": lab, "values": self.grouping.values(i),
                    "fmr": fm[i] / imp[i] if imp[i] else None, "fmr_ci": _ci(iv, "fmr_ci", i),
                    "fmr_n_eff": None if iv is None else iv.fmr_n_eff[i],
                    "false_matches": fm[i], "impostor_pairs": imp[i],
                    "fnmr": fnm / gen if gen else None, "fnmr_ci": _ci(iv, "fnmr_ci", i),
                    "fnmr_n_eff": None if iv is None else iv.fnmr_n_eff[i],
                    "false_non_matches": fnm, "genuine_pairs": gen,
                    "fmr_vs_target": (fm[i] / imp[i] / op.target_fmr) if imp[i] else None,
                    "group_threshold": gt.value, "group_threshold_exact": gt.exact,
                    "threshold_shift": gt.value - op.threshold.value,
                })
            total_gen = op.counts.genuine_pairs_all
            ops.append({
                "target_fmr": op.target_fmr,
                "threshold": op.threshold.value,
                "threshold_exact": op.threshold.exact,
                "fmr": op.threshold.fmr,
                "false_matches": op.threshold.false_matches,
                "impostor_pairs": op.threshold.impostor_pairs,
                "fnmr": op.counts.false_non_matches_all / total_gen if total_gen else None,
                "groups": groups,
                "cross_group_fmr": {"groups": list(labels), "matrix": op.counts.fmr_matrix(g)},
                "permutation_test": None if op.permutation is None else op.permutation.to_dict(),
                "summary": {**op.summary.to_dict(),
                            "ci": None if op.intervals is None else {
                                k: (None if np.isnan(v[0]) or np.isnan(v[1]) else list(v))
                                for k, v in op.intervals.summary_ci.items()}},
            })
        per_group = []
        for i, lab in enumerate(labels):
            m, d = self.moments[i], self.det[i]
            per_group.append({
                "group": lab, "eer": d.eer, "eer_threshold": d.eer_threshold,
                "genuine_mean": m.genuine_mean, "genuine_std": m.genuine_std,
                "impostor_mean": m.impostor_mean, "impostor_std": m.impostor_std, "d_prime": m.d_prime,
                "det": {"threshold": d.threshold, "fmr": d.fmr, "fnmr": d.fnmr},
                "score_histogram": None if not self.histograms else {
                    "edges": self.histograms[i].edges, "genuine": self.histograms[i].genuine,
                    "impostor": self.histograms[i].impostor},
            })
        out: dict[str, Any] = json_ready({
            "attributes": list(self.grouping.attributes),
            "groups": [{"group": lab, "values": self.grouping.values(i)} for i, lab in enumerate(labels)],
            "counts": [c.__dict__ for c in self.counts],
            "genuine_pairs_across_groups": self.genuine_cross_group,
            "operating_points": ops,
            "per_group": per_group,
        })
        return out


def analyse(stats: PairStatistics, grouping: Grouping, counts: list[GroupCounts], target_fmrs: list[float],
            alpha: float, images_per_subject: np.ndarray | None = None,
            bootstrap: BootstrapSpec | None = None, permutations: int = 0) -> Analysis:
    """Rates, matrices and summaries at each target FMR for one grouping.

    With ``bootstrap`` and ``images_per_subject`` (S, G) (all-pairs data only), intervals too.
    """
    g = grouping.n_groups
    ops = []
    cross = 0
    draws = None
    if bootstrap is not None and images_per_subject is not None and bootstrap.replicates > 0:
        draws = stratified_draws(images_per_subject, bootstrap)
    for target in sorted(target_fmrs, reverse=True):
        t = global_threshold(stats, target)
        c = counts_at(stats, t)
        cross = c.genuine_cross_group
        fm, imp = c.diagonal(g)
        summ = summarise(list(grouping.labels), fm, imp, c.false_non_matches, c.genuine_pairs, alpha)
        iv = None
        if bootstrap is not None and images_per_subject is not None and draws is not None:
            iv = bootstrap_rates(stats, images_per_subject, list(grouping.labels), t, bootstrap, alpha, draws)
        perm = None
        if images_per_subject is not None and permutations > 0 and g > 1:
            perm = permutation_test(stats, images_per_subject, t, permutations, bootstrap.seed if bootstrap else 0)
        ops.append(OperatingPoint(target, t, c, [group_threshold(stats, i, target) for i in range(g)], summ, iv,
                                  perm))
    return Analysis(grouping=grouping, counts=counts, operating_points=ops,
                    moments=[moments(stats, i) for i in range(g)], det=[det_curve(stats, i) for i in range(g)],
                    genuine_cross_group=cross, histograms=[score_histogram(stats, i) for i in range(g)])


@dataclass
class EvaluationResult:
    """All analyses of one evaluation, with its inputs and settings."""

    analyses: list[Analysis]
    inputs: dict[str, Any]
    settings: dict[str, Any]
    excluded: dict[str, int] = field(default_factory=dict)
    uncertainty: dict[str, Any] = field(default_factory=dict)
    identification: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        from faceaudit import __version__

        out: dict[str, Any] = json_ready({
            "schema_version": SCHEMA_VERSION,
            "faceaudit_version": __version__,
            "inputs": self.inputs,
            "settings": self.settings,
            "excluded": self.excluded,
            "uncertainty": self.uncertainty or {"method": None, "note": "no intervals were computed"},
            "analyses": [a.to_dict() for a in self.analyses],
            "identification": self.identification,
        })
        return out
