"""Sufficient statistics of a set of comparisons, folded in block by block and merged exactly.

For every unordered pair of groups (a cell), the impostor scores are kept as a fine histogram plus
exact sums of scores and squared scores; the ``top_k`` largest impostor scores are kept exactly,
with their cell and both subjects, so thresholds at small FMRs and the per-group counts above them
are exact. Genuine pairs (same subject) are few, linear in the number of images, and kept exactly.

Every piece merges by a rule that does not depend on order: histograms and sums add, genuine arrays
concatenate, and tails merge by keeping the ``top_k`` largest of both. Memory is the histograms
(cells x bins) plus the tail plus the genuine pairs, whatever the number of impostor pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from faceaudit.scoring.groups import n_cells
from faceaudit.scoring.kernels import fold_block_kernel


@dataclass(frozen=True)
class ScoreBins:
    """``n`` equal bins over [lo, hi]; scores outside are counted in the end bins (and reported)."""

    lo: float = -1.0
    hi: float = 1.0
    n: int = 20_000

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.n

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.n + 1)

    def index(self, scores: np.ndarray) -> np.ndarray:
        """Bin of each score: floor((s - lo) * n / (hi - lo)) in float32 arithmetic, clipped to [0, n - 1].

        The one definition of a score's bin, used by every code path (float32 keeps the hot loop fast;
        a score within float32 rounding of an edge may fall on either side, which is within one bin).
        """
        s = np.asarray(scores, np.float32)
        tmp = np.subtract(s, np.float32(self.lo), dtype=np.float32)
        np.multiply(tmp, np.float32(self.n / (self.hi - self.lo)), out=tmp)
        np.maximum(tmp, 0, out=tmp)  # below lo (and negative zero) -> bin 0; truncation = floor from here
        idx = tmp.astype(np.intp)
        np.minimum(idx, self.n - 1, out=idx)
        return idx


@dataclass
class PairStatistics:
    """Streaming state of an evaluation; see the module docstring for what is kept and why."""

    n_groups: int
    bins: ScoreBins
    top_k: int
    impostor_hist: np.ndarray = field(init=False)
    impostor_sum: np.ndarray = field(init=False)
    impostor_sumsq: np.ndarray = field(init=False)
    out_of_range: int = 0
    _tail: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] = field(init=False)
    _pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(init=False, default_factory=list)
    _pending_size: int = field(init=False, default=0)
    _floor: float = field(init=False, default=-np.inf)
    _genuine: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        c = n_cells(self.n_groups)
        self.impostor_hist = np.zeros((c, self.bins.n), np.int64)
        self.impostor_sum = np.zeros(c, np.float64)
        self.impostor_sumsq = np.zeros(c, np.float64)
        self._tail = (np.empty(0, np.float32), np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.int32))

    # --- update ---
    def add_impostor_block(self, scores: np.ndarray, cell: int, subj_a: np.ndarray, subj_b: np.ndarray,
                           exclude_same_subject: bool = False) -> None:
        """Fold impostor scores of one cell.

        Either a 2-D block with ``subj_a`` per row and ``subj_b`` per column, or a 1-D array of pairs
        with ``subj_a`` and ``subj_b`` per pair. ``exclude_same_subject`` keeps same-subject pairs out of
        the tail (the caller then removes them from the histogram with :meth:`remove_impostor_scores`).
        """
        block = np.asarray(scores, np.float32)
        if block.size == 0:
            return
        if block.ndim == 1:
            subj_a, subj_b = np.asarray(subj_a).ravel(), np.asarray(subj_b).ravel()
            block = np.ascontiguousarray(block).reshape(1, -1)
            per_pair = True
        else:
            block = np.ascontiguousarray(block)
            subj_a, subj_b = np.asarray(subj_a).ravel(), np.asarray(subj_b).ravel()
            per_pair = False
        floor = self.tail_floor
        total, total_sq, n_above, outside = fold_block_kernel(
            block, np.float32(self.bins.lo), np.float32(self.bins.n / (self.bins.hi - self.bins.lo)),
            self.impostor_hist[cell], np.float32(floor), np.float32(self.bins.hi))
        self.impostor_sum[cell] += total
        self.impostor_sumsq[cell] += total_sq
        self.out_of_range += outside
        if n_above:
            s = block.ravel()
            keep = np.flatnonzero(s > floor)
            if per_pair:
                sa, sb = subj_a[keep], subj_b[keep]
            else:
                i, j = np.divmod(keep, block.shape[1])
                sa, sb = subj_a[i], subj_b[j]
            if exclude_same_subject:
                imp = sa != sb
                keep, sa, sb = keep[imp], sa[imp], sb[imp]
            self._merge_tail(s[keep], np.full(keep.size, cell, np.int32), sa, sb)

    def remove_impostor_scores(self, scores: np.ndarray, cell: int) -> None:
        """Take back scores folded by :meth:`add_impostor_block` (same bins, so the histogram stays exact).

        Used for the few genuine pairs inside a block that was folded whole for speed.
        """
        s = np.asarray(scores, np.float32).ravel()
        if s.size == 0:
            return
        self.impostor_hist[cell] -= np.bincount(self.bins.index(s), minlength=self.bins.n)
        s64 = s.astype(np.float64)
        self.impostor_sum[cell] -= float(s64.sum())
        self.impostor_sumsq[cell] -= float(s64 @ s64)
        self.out_of_range -= int(np.count_nonzero((s < self.bins.lo) | (s > self.bins.hi)))

    def add_impostor_pairs(self, scores: np.ndarray, cells: np.ndarray, subj_a: np.ndarray,
                           subj_b: np.ndarray) -> None:
        """Fold impostor pairs of mixed cells (from a score file)."""
        s = np.asarray(scores, np.float32)
        cells = np.asarray(cells, np.int64)
        if s.size == 0:
            return
        idx = self.bins.index(s)
        flat = np.bincount(cells * self.bins.n + idx, minlength=self.impostor_hist.size)
        self.impostor_hist += flat.reshape(self.impostor_hist.shape)
        s64 = s.astype(np.float64)
        self.impostor_sum += np.bincount(cells, weights=s64, minlength=len(self.impostor_sum))
        self.impostor_sumsq += np.bincount(cells, weights=s64 * s64, minlength=len(self.impostor_sum))
        self.out_of_range += int(np.count_nonzero((s < self.bins.lo) | (s > self.bins.hi)))
        keep = np.flatnonzero(s > self.tail_floor)
        if keep.size:
            self._merge_tail(s[keep], cells[keep].astype(np.int32), np.asarray(subj_a)[keep], np.asarray(subj_b)[keep])

    def add_genuine(self, scores: np.ndarray, cells: np.ndarray, subjects: np.ndarray) -> None:
        s = np.asarray(scores, np.float32).ravel()
        if s.size:
            self._genuine.append((s, np.asarray(cells, np.int32).ravel(), np.asarray(subjects, np.int32).ravel()))

    @property
    def tail_floor(self) -> float:
        """Scores at or below this cannot enter the tail (it holds top_k larger ones): -inf until then.

        Updated when pending candidates are compacted, so it may lag (admitting extra candidates,
        never losing one).
        """
        return self._floor

    def _merge_tail(self, s: np.ndarray, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """Queue tail candidates; they are compacted into the top_k in batches (amortised cost)."""
        self._pending.append((np.asarray(s, np.float32), np.asarray(c, np.int32), np.asarray(a, np.int32),
                              np.asarray(b, np.int32)))
        self._pending_size += len(s)
        if self._pending_size >= max(self.top_k // 4, 1 << 18):  # bounded extra memory
            self._compact()

    def _compact(self) -> None:
        if not self._pending:
            return
        score, cell, sa, sb = (np.concatenate(parts) for parts in zip(self._tail, *self._pending, strict=False))
        self._pending, self._pending_size = [], 0
        if len(score) > self.top_k:
            # Keep the top_k largest. Among scores tied at the cut, which pairs stay is arbitrary,
            # but the kept scores are always the same multiset; thresholds sit strictly above the cut.
            part = np.argpartition(score, len(score) - self.top_k)[len(score) - self.top_k:]
            score, cell, sa, sb = score[part], cell[part], sa[part], sb[part]
        if len(score) >= self.top_k:
            self._floor = float(score.min())
        self._tail = (score, cell, sa, sb)

    @property
    def tail_score(self) -> np.ndarray:
        self._compact()
        return self._tail[0]

    @property
    def tail_cell(self) -> np.ndarray:
        self._compact()
        return self._tail[1]

    @property
    def tail_subject_a(self) -> np.ndarray:
        self._compact()
        return self._tail[2]

    @property
    def tail_subject_b(self) -> np.ndarray:
        self._compact()
        return self._tail[3]

    def set_tail(self, score: np.ndarray, cell: np.ndarray, subject_a: np.ndarray, subject_b: np.ndarray) -> None:
        """Replace the tail (used when deriving statistics, e.g. by :func:`coarsen`)."""
        self._pending, self._pending_size = [], 0
        self._tail = (score, cell, subject_a, subject_b)
        self._floor = float(score.min()) if len(score) >= self.top_k else -np.inf

    # --- merge ---
    def merge(self, other: PairStatistics) -> PairStatistics:
        """Add ``other`` into this one (exact: same result in any order)."""
        if (other.n_groups, other.bins, other.top_k) != (self.n_groups, self.bins, self.top_k):
            raise ValueError("cannot merge statistics with different groups, bins or tail size")
        self.impostor_hist += other.impostor_hist
        self.impostor_sum += other.impostor_sum
        self.impostor_sumsq += other.impostor_sumsq
        self.out_of_range += other.out_of_range
        self._genuine.extend(other._genuine)
        self._merge_tail(other.tail_score, other.tail_cell, other.tail_subject_a, other.tail_subject_b)
        return self

    # --- read ---
    @property
    def n_impostor(self) -> np.ndarray:
        """Impostor pairs per cell."""
        counts: np.ndarray = self.impostor_hist.sum(axis=1)
        return counts

    def genuine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, cells, subjects) of every genuine pair."""
        if not self._genuine:
            return np.empty(0, np.float32), np.empty(0, np.int32), np.empty(0, np.int32)
        if len(self._genuine) > 1:
            self._genuine = [tuple(np.concatenate(p) for p in zip(*self._genuine, strict=True))]  # type: ignore[list-item]
        return self._genuine[0]

    def sorted_tail(self) -> tuple[np.ndarray, np.ndarray]:
        """Tail scores descending, with their cells."""
        order = np.argsort(-self.tail_score, kind="stable")
        return self.tail_score[order], self.tail_cell[order]


def coarsen(stats: PairStatistics, group_map: np.ndarray, n_coarse: int) -> PairStatistics:
    """Statistics of a coarser grouping, exactly: fine group g becomes ``group_map[g]``.

    Computing once on the finest grouping (the intersection of all attributes) and coarsening gives
    every marginal grouping without comparing the embeddings again.
    """
    from faceaudit.scoring.groups import cell_index  # local: groups imports nothing from here

    g = stats.n_groups
    fine_a, fine_b = np.triu_indices(g)
    fine_cells = cell_index(fine_a, fine_b, g)
    coarse_of = np.empty(len(fine_cells), np.int64)
    coarse_of[fine_cells] = cell_index(group_map[fine_a], group_map[fine_b], n_coarse)
    out = PairStatistics(n_groups=n_coarse, bins=stats.bins, top_k=stats.top_k)
    np.add.at(out.impostor_hist, coarse_of, stats.impostor_hist)
    np.add.at(out.impostor_sum, coarse_of, stats.impostor_sum)
    np.add.at(out.impostor_sumsq, coarse_of, stats.impostor_sumsq)
    out.out_of_range = stats.out_of_range
    out.set_tail(stats.tail_score.copy(), coarse_of[stats.tail_cell].astype(np.int32),
                 stats.tail_subject_a.copy(), stats.tail_subject_b.copy())
    scores, cells, subjects = stats.genuine()
    out.add_genuine(scores, coarse_of[cells] if len(cells) else cells, subjects)
    return out
