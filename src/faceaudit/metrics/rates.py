"""Error rates at one global threshold, per group and per pair of groups, from :class:`PairStatistics`.

Definitions (NISTIR 8280, FRVT Part 3: Demographic Effects, Grother, Ngan, Hanaoka 2019; ISO/IEC
19795-1 and 19795-10). A pair matches when its score is at least the threshold t.

- The global threshold t for a target FMR: over all impostor pairs of all groups, the smallest t with
  FMR(t) = #(impostor >= t) / #impostor <= target. It is the next float above the (k+1)-th largest
  impostor score, k = floor(target * #impostor), so tied scores never push the FMR over the target.
- FNMR_g(t) = #(genuine pairs of group g with score < t) / #(genuine pairs of group g), a genuine pair
  belonging to g when both its images do.
- FMR_(g1,g2)(t) = #(impostor pairs between g1 and g2 with score >= t) / #(such pairs), the cross-group
  matrix; FMR_g is its diagonal.

Exactness. Impostor counts come from the exact tail while t lies above the tail's smallest score, and
from the histogram otherwise; there t is moved to a bin edge (the smallest edge whose FMR is within the
target), counts are those of the bins from that edge up, and the threshold is within one bin of the
exact one.
``threshold_exact`` says which case applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceaudit.scoring.groups import cell_index
from faceaudit.scoring.stats import PairStatistics

#: A target FMR is evaluated only when at least this many false matches are expected at it; a group's
#: FMR is ranked against other groups' only under the same condition on its own impostor pairs.
MIN_EXPECTED_FALSE_MATCHES = 10
#: The target FMRs evaluated when none are asked for.
DEFAULT_FMRS = (1e-3, 1e-4, 1e-5, 1e-6)

@dataclass(frozen=True)
class Threshold:
    value: float
    exact: bool  # False: a histogram bin edge, within one bin of the exact threshold
    false_matches: int
    impostor_pairs: int

    @property
    def fmr(self) -> float:
        return self.false_matches / self.impostor_pairs if self.impostor_pairs else float("nan")


def _tail_is_complete(stats: PairStatistics) -> bool:
    return len(stats.tail_score) < stats.top_k


def global_threshold(stats: PairStatistics, target_fmr: float) -> Threshold:
    """The global threshold for ``target_fmr`` (see the module docstring)."""
    n_imp = int(stats.n_impostor.sum())
    if n_imp == 0:
        raise ValueError("no impostor pairs: a threshold at a target FMR cannot be set")
    tail, _ = stats.sorted_tail()
    return _threshold(tail, stats.impostor_hist.sum(axis=0), stats.bins.edges, n_imp, target_fmr,
                      _tail_is_complete(stats))


def _threshold(tail_desc: np.ndarray, hist: np.ndarray, edges: np.ndarray, n_imp: int, target: float,
               complete: bool) -> Threshold:
    """The rule of the module docstring, exact from the tail when it reaches, else at a bin edge."""
    k = int(np.floor(target * n_imp))
    if k < len(tail_desc):
        t = float(np.nextafter(np.float32(tail_desc[k]), np.float32(np.inf)))
        return Threshold(t, True, int(np.count_nonzero(tail_desc >= t)), n_imp)
    if complete:  # every impostor is in the tail and k >= all of them
        t = float(np.nextafter(np.float32(tail_desc[-1]), np.float32(-np.inf))) if len(tail_desc) else 0.0
        return Threshold(t, True, len(tail_desc), n_imp)
    above = np.cumsum(hist[::-1])[::-1]  # above[i] = #(scores in bins >= i)
    ok = np.flatnonzero(above <= k)
    i = int(ok[0]) if len(ok) else len(hist)
    return Threshold(float(edges[i]), False, int(above[i]) if i < len(hist) else 0, n_imp)


def impostor_counts_at(stats: PairStatistics, threshold: Threshold) -> np.ndarray:
    """#(impostor >= t) per cell."""
    n_cells = stats.impostor_hist.shape[0]
    if threshold.exact:
        keep = stats.tail_score >= threshold.value
        return np.bincount(stats.tail_cell[keep], minlength=n_cells).astype(np.int64)
    # The threshold is a bin edge: find that edge's own index (recomputing its bin in float32 can land
    # one bin low), so per-cell counts add up to the threshold's global count.
    i = int(np.searchsorted(stats.bins.edges, threshold.value, side="left"))
    if i >= stats.bins.n:
        return np.zeros(n_cells, np.int64)
    counts: np.ndarray = stats.impostor_hist[:, i:].sum(axis=1)
    return counts


@dataclass(frozen=True)
class CellCounts:
    """Counts at one threshold, per cell (impostor) and per group (genuine, both images in the group)."""

    false_matches: np.ndarray  # per cell
    impostor_pairs: np.ndarray  # per cell
    false_non_matches: np.ndarray  # per group
    genuine_pairs: np.ndarray  # per group
    genuine_cross_group: int  # genuine pairs whose two images are in different groups
    false_non_matches_all: int  # over every genuine pair, cross-group ones included
    genuine_pairs_all: int

    def fmr_matrix(self, n_groups: int) -> np.ndarray:
        """Symmetric G x G matrix of FMR (nan where a cell has no pairs)."""
        m = np.full((n_groups, n_groups), np.nan)
        for a in range(n_groups):
            for b in range(n_groups):
                c = int(cell_index(a, b, n_groups))
                if self.impostor_pairs[c]:
                    m[a, b] = self.false_matches[c] / self.impostor_pairs[c]
        return m

    def diagonal(self, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
        idx = cell_index(np.arange(n_groups), np.arange(n_groups), n_groups)
        return self.false_matches[idx], self.impostor_pairs[idx]


def counts_at(stats: PairStatistics, threshold: Threshold) -> CellCounts:
    g = stats.n_groups
    scores, cells, _ = stats.genuine()
    diag = cell_index(np.arange(g), np.arange(g), g)
    group_of_cell = np.full(stats.impostor_hist.shape[0], -1)
    group_of_cell[diag] = np.arange(g)
    gcell = group_of_cell[cells] if len(cells) else np.empty(0, np.int64)
    within = gcell >= 0
    gen = np.bincount(gcell[within], minlength=g)
    fnm = np.bincount(gcell[within & (scores < threshold.value)], minlength=g)
    return CellCounts(
        false_matches=impostor_counts_at(stats, threshold),
        impostor_pairs=stats.n_impostor.copy(),
        false_non_matches=fnm.astype(np.int64),
        genuine_pairs=gen.astype(np.int64),
        genuine_cross_group=int((~within).sum()),
        false_non_matches_all=int(np.count_nonzero(scores < threshold.value)),
        genuine_pairs_all=len(scores),
    )


def group_threshold(stats: PairStatistics, group: int, target_fmr: float) -> Threshold:
    """The threshold group ``group`` alone would need for FMR_g = target (same rule as the global one)."""
    c = int(cell_index(group, group, stats.n_groups))
    n_imp = int(stats.n_impostor[c])
    if n_imp == 0:
        return Threshold(float("nan"), False, 0, 0)
    tail = np.sort(stats.tail_score[stats.tail_cell == c])[::-1]
    return _threshold(tail, stats.impostor_hist[c], stats.bins.edges, n_imp, target_fmr, _tail_is_complete(stats))


@dataclass(frozen=True)
class ScoreMoments:
    genuine_mean: float
    genuine_std: float
    impostor_mean: float
    impostor_std: float

    @property
    def d_prime(self) -> float:
        """d' = |mu_gen - mu_imp| / sqrt((sigma_gen^2 + sigma_imp^2) / 2) (decidability, Daugman 2004)."""
        den = np.sqrt((self.genuine_std**2 + self.impostor_std**2) / 2)
        return float(abs(self.genuine_mean - self.impostor_mean) / den) if den > 0 else float("nan")


def moments(stats: PairStatistics, group: int) -> ScoreMoments:
    """Exact means and (population) standard deviations of a group's genuine and impostor scores."""
    c = int(cell_index(group, group, stats.n_groups))
    scores, cells, _ = stats.genuine()
    gen = scores[cells == c].astype(np.float64)
    n = stats.n_impostor[c]
    nan = float("nan")
    if n:
        mi = stats.impostor_sum[c] / n
        si = float(np.sqrt(max(stats.impostor_sumsq[c] / n - mi * mi, 0.0)))
    else:
        mi, si = nan, nan
    return ScoreMoments(float(gen.mean()) if len(gen) else nan, float(gen.std()) if len(gen) else nan,
                        float(mi), si)


@dataclass(frozen=True)
class DetCurve:
    """FMR and FNMR of one group at the histogram's bin edges (within one bin), and its EER."""

    threshold: np.ndarray
    fmr: np.ndarray
    fnmr: np.ndarray
    eer: float
    eer_threshold: float


def det_curve(stats: PairStatistics, group: int, max_points: int = 400) -> DetCurve:
    """A group's DET curve over bin edges: FMR(e) = #(imp >= e)/#imp, FNMR(e) = #(gen < e)/#gen.

    EER: the mean of FMR and FNMR at the edge where |FMR - FNMR| is smallest.
    """
    c = int(cell_index(group, group, stats.n_groups))
    edges = stats.bins.edges[:-1]
    hist = stats.impostor_hist[c]
    n_imp = hist.sum()
    scores, cells, _ = stats.genuine()
    gen = np.sort(scores[cells == c])
    if n_imp == 0 or len(gen) == 0:
        empty = np.empty(0)
        return DetCurve(empty, empty, empty, float("nan"), float("nan"))
    fmr = np.cumsum(hist[::-1])[::-1] / n_imp
    fnmr = np.searchsorted(gen, edges, side="left") / len(gen)
    best = int(np.argmin(np.abs(fmr - fnmr)))
    eer = float((fmr[best] + fnmr[best]) / 2)
    live = np.flatnonzero((fmr > 0) & (fnmr < 1) & ((fmr < 1) | (fnmr > 0)))
    if len(live) == 0:
        live = np.array([best])
    pick = live[np.unique(np.linspace(0, len(live) - 1, min(max_points, len(live))).round().astype(int))]
    return DetCurve(edges[pick], fmr[pick], fnmr[pick], eer, float(edges[best]))


@dataclass(frozen=True)
class ScoreHistogram:
    """Counts of a group's genuine and within-group impostor scores in ``len(edges) - 1`` equal bins."""

    edges: np.ndarray
    genuine: np.ndarray
    impostor: np.ndarray


def score_histogram(stats: PairStatistics, group: int, n_bins: int = 100) -> ScoreHistogram:
    """A group's score distributions, coarsened from the evaluation's fine bins.

    The fine impostor histogram is summed in runs of ``stats.bins.n // n_bins`` bins (``n_bins`` is
    lowered to a divisor of the fine bin count), so impostor counts are exact per coarse bin; genuine
    scores use the same edges and the same bin rule (:meth:`ScoreBins.index`). Both sum to the group's
    pair counts.
    """
    n_fine = stats.bins.n
    n_bins = max(1, min(n_bins, n_fine))
    while n_fine % n_bins:
        n_bins -= 1
    step = n_fine // n_bins
    c = int(cell_index(group, group, stats.n_groups))
    imp = stats.impostor_hist[c].reshape(n_bins, step).sum(axis=1)
    scores, cells, _ = stats.genuine()
    gen = np.bincount(stats.bins.index(scores[cells == c]) // step, minlength=n_bins)
    return ScoreHistogram(stats.bins.edges[::step], gen.astype(np.int64), imp.astype(np.int64))
