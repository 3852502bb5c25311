"""All-pairs comparison of embeddings, block by block, folded into :class:`PairStatistics`.

Images are ordered by group then subject, so every block of the score matrix belongs to one cell
(pair of groups) and genuine pairs sit in few blocks. Each block is a matrix product (BLAS, all
cores), folded at once and dropped: memory is one block, not the N^2 / 2 scores.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from faceaudit.scoring.groups import cell_index
from faceaudit.scoring.stats import PairStatistics, ScoreBins


def compare_embeddings(
    embeddings: np.ndarray,
    subjects: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    *,
    bins: ScoreBins | None = None,
    top_k: int = 1_000_000,
    block: int = 2048,
    progress: bool = False,
) -> PairStatistics:
    """Compare every unordered pair of rows (cosine of L2-normalised rows) into sufficient statistics.

    ``subjects`` and ``groups`` are integer codes per row. Pairs of the same subject are genuine.
    """
    emb = np.ascontiguousarray(embeddings, np.float32)
    subjects = np.asarray(subjects, np.int32)
    groups = np.asarray(groups, np.int32)
    n = len(emb)
    if not (len(subjects) == len(groups) == n):
        raise ValueError(f"{n} embeddings, {len(subjects)} subjects, {len(groups)} groups: lengths differ")
    order = np.lexsort((subjects, groups))
    emb, subjects, groups = emb[order], subjects[order], groups[order]
    starts = np.searchsorted(groups, np.arange(n_groups + 1))
    stats = PairStatistics(n_groups=n_groups, bins=bins or ScoreBins(), top_k=top_k)
    jobs = [(a, b, r0) for a in range(n_groups) for r0 in range(starts[a], starts[a + 1], block)
            for b in range(a, n_groups)]
    for a, b, r0 in tqdm(jobs, desc="compare", unit="block", disable=not progress, leave=False):
        r1 = min(r0 + block, starts[a + 1])
        cell = int(cell_index(a, b, n_groups))
        if a == b:
            _fold_triangle(stats, emb, subjects, r0, r1, cell)
            c0 = r1
        else:
            c0 = starts[b]
        for c in range(c0, starts[b + 1], block * 4):
            _fold_rectangle(stats, emb, subjects, r0, r1, c, min(c + block * 4, starts[b + 1]), cell)
    return stats


def _fold_triangle(stats: PairStatistics, emb: np.ndarray, subj: np.ndarray, r0: int, r1: int, cell: int) -> None:
    """Pairs (i, j) with r0 <= i < j < r1."""
    if r1 - r0 < 2:
        return
    scores = emb[r0:r1] @ emb[r0:r1].T
    i, j = np.triu_indices(r1 - r0, k=1)
    _fold_pairs(stats, scores[i, j], subj[r0 + i], subj[r0 + j], cell)


def _fold_rectangle(stats: PairStatistics, emb: np.ndarray, subj: np.ndarray, r0: int, r1: int, c0: int, c1: int,
                    cell: int) -> None:
    """All pairs of rows [r0, r1) with rows [c0, c1)."""
    if r1 <= r0 or c1 <= c0:
        return
    scores = emb[r0:r1] @ emb[c0:c1].T
    sr, sc = subj[r0:r1], subj[c0:c1]
    if np.intersect1d(sr, sc, assume_unique=False).size == 0:  # no genuine pair in this block
        stats.add_impostor_block(scores, cell, sr[:, None], sc[None, :])
        return
    i, j = np.divmod(np.arange(scores.size), scores.shape[1])
    _fold_pairs(stats, scores.ravel(), sr[i], sc[j], cell)


def _fold_pairs(stats: PairStatistics, scores: np.ndarray, sa: np.ndarray, sb: np.ndarray, cell: int) -> None:
    same = sa == sb
    if same.any():
        stats.add_genuine(scores[same], np.full(int(same.sum()), cell, np.int32), sa[same])
    imp = ~same
    stats.add_impostor_block(scores[imp], cell, sa[imp], sb[imp])
