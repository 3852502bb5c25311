"""All-pairs comparison of embeddings, block by block, folded into :class:`PairStatistics`.

Images are ordered by group then subject, so every block of the score matrix belongs to one cell
(pair of groups) and genuine pairs sit in few blocks. Each block is a matrix product, folded at once
and dropped: memory is one block per thread, not the N^2 / 2 scores.

Parallelism: ``threads`` Python threads each take a share of the blocks, run single-threaded BLAS on
them and fold into their own statistics; the partial statistics are merged exactly at the end. NumPy
releases the GIL in matrix products and ufuncs, so the fold of one block overlaps the product of
another. Blocks of 512 x 1024 scores (2 MB, one core's L2 cache) are folded while still in cache;
this size measured fastest here.

A :class:`ScoreMap` (a deployed fairness calibration, :mod:`faceaudit.mitigation.artefact`) turns each
block's raw cosines into calibrated scores before the fold, so an audit of a calibrated system streams
exactly as a raw one does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from faceaudit.scoring.groups import cell_index
from faceaudit.scoring.stats import PairStatistics, ScoreBins

ROW_BLOCK = 512
COL_BLOCK = 1024


@dataclass(frozen=True)
class Block:
    """Rows [r0, r1) against rows [c0, c1) of the ordered embeddings; ``triangle`` when r0 == c0."""

    cell: int
    r0: int
    r1: int
    c0: int
    c1: int
    triangle: bool

    @property
    def pairs(self) -> int:
        n = self.r1 - self.r0
        return n * (n - 1) // 2 if self.triangle else n * (self.c1 - self.c0)


def plan_blocks(starts: np.ndarray, n_groups: int, row_block: int = ROW_BLOCK,
                col_block: int = COL_BLOCK) -> list[Block]:
    """Every unordered pair of rows exactly once, as blocks that each lie in one cell."""
    blocks = []
    for a in range(n_groups):
        for r0 in range(int(starts[a]), int(starts[a + 1]), row_block):
            r1 = min(r0 + row_block, int(starts[a + 1]))
            for b in range(a, n_groups):
                cell = int(cell_index(a, b, n_groups))
                if a == b:
                    blocks.append(Block(cell, r0, r1, r0, r1, True))
                    c_from = r1
                else:
                    c_from = int(starts[b])
                for c0 in range(c_from, int(starts[b + 1]), col_block):
                    blocks.append(Block(cell, r0, r1, c0, min(c0 + col_block, int(starts[b + 1])), False))
    return blocks


@dataclass(frozen=True)
class ScoreMap:
    """Calibrated scores of pairs from their raw cosine and one integer code per image.

    ``codes``: each row's code (its calibration cluster), in the caller's row order; ``transform(raw,
    codes_a, codes_b)``: the calibrated scores, broadcasting a block (r, c) against codes (r, 1) and
    (1, c). It must be picklable (a Dask worker applies it). ``lo``/``hi``: the range the calibrated
    scores can take, for the histogram bins. ``name``: what the results say the scores are.
    """

    codes: np.ndarray
    transform: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    lo: float
    hi: float
    name: str

    def block(self, raw: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """Calibrated float32 scores of a block: rows and cols are ranges in the row order of ``codes``."""
        return np.asarray(self.transform(raw, self.codes[rows][:, None], self.codes[cols][None, :]), np.float32)

    def pairs(self, raw: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Calibrated float32 scores of listed pairs of rows."""
        return np.asarray(self.transform(raw, self.codes[a], self.codes[b]), np.float32)

    def reordered(self, order: np.ndarray) -> ScoreMap:
        return ScoreMap(self.codes[order], self.transform, self.lo, self.hi, self.name)


@dataclass(frozen=True)
class ImpostorSample:
    """A declared sampling of impostor pairs: each is kept independently with probability ``rate``.

    The draw for block b uses the generator seeded with (seed, b), so a run is reproducible and does
    not depend on the number of threads. Genuine pairs are never sampled.
    """

    rate: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"impostor sampling rate must be in (0, 1], got {self.rate}")


def _fold_sampled(stats: PairStatistics, scores: np.ndarray, sr: np.ndarray, sc: np.ndarray, blk: Block,
                  index: int, sample: ImpostorSample) -> None:
    rng = np.random.default_rng([sample.seed, index])
    if blk.triangle:
        i, j = np.triu_indices(blk.r1 - blk.r0, k=1)
    else:
        i, j = np.divmod(np.arange(scores.size), scores.shape[1])
    s, sa, sb = scores[i, j], sr[i], sc[j]
    same = sa == sb
    if same.any():
        stats.add_genuine(s[same], np.full(int(same.sum()), blk.cell, np.int32), sa[same])
    keep = ~same & (rng.random(len(s)) < sample.rate)
    stats.add_impostor_block(s[keep], blk.cell, sa[keep], sb[keep])


def fold_block(stats: PairStatistics, emb: np.ndarray, subj: np.ndarray, blk: Block, index: int = 0,
               sample: ImpostorSample | None = None, score_map: ScoreMap | None = None) -> None:
    """Compare one block (number ``index`` of the plan) and fold its (calibrated) scores into ``stats``."""
    if blk.pairs == 0:
        return
    cols = emb[blk.c0:blk.c1]
    if blk.triangle:
        # A copy, so NumPy never takes its SYRK path for A @ A.T: SYRK rounds differently from GEMM, and
        # whether NumPy takes it depends on how the array was allocated (not on a Dask worker's copy).
        cols = cols.copy()
    scores = emb[blk.r0:blk.r1] @ cols.T
    if score_map is not None:
        scores = score_map.block(scores, slice(blk.r0, blk.r1), slice(blk.c0, blk.c1))
    sr, sc = subj[blk.r0:blk.r1], subj[blk.c0:blk.c1]
    if sample is not None and sample.rate < 1.0:
        _fold_sampled(stats, scores, sr, sc, blk, index, sample)
        return
    if blk.triangle:
        i, j = np.triu_indices(blk.r1 - blk.r0, k=1)
        _fold_pairs(stats, scores[i, j], sr[i], sc[j], blk.cell)
        return
    overlap = sr[-1] >= sc[0] and sc[-1] >= sr[0]  # subjects are sorted within a group
    gi, gj = _same_subject_positions(sr, sc) if overlap else (np.empty(0, np.intp), np.empty(0, np.intp))
    if len(gi) == 0:
        stats.add_impostor_block(scores, blk.cell, sr, sc)  # no genuine pair here
        return
    # Fold the whole block at full speed, then take the few genuine pairs back out.
    stats.add_impostor_block(scores, blk.cell, sr, sc, exclude_same_subject=True)
    genuine = scores[gi, gj]
    stats.remove_impostor_scores(genuine, blk.cell)
    stats.add_genuine(genuine, np.full(len(gi), blk.cell, np.int32), sr[gi])


def _same_subject_positions(sr: np.ndarray, sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) positions where the (sorted) row and column subjects are equal."""
    lo = np.searchsorted(sc, sr, side="left")
    hi = np.searchsorted(sc, sr, side="right")
    counts = hi - lo
    total = int(counts.sum())
    rows = np.repeat(np.arange(len(sr)), counts)
    starts = np.cumsum(counts) - counts
    cols = lo[rows] + (np.arange(total) - starts[rows])
    return rows, cols


def _fold_pairs(stats: PairStatistics, scores: np.ndarray, sa: np.ndarray, sb: np.ndarray, cell: int) -> None:
    same = sa == sb
    if same.any():
        stats.add_genuine(scores[same], np.full(int(same.sum()), cell, np.int32), sa[same])
    imp = ~same
    stats.add_impostor_block(scores[imp], cell, sa[imp], sb[imp])


@dataclass(frozen=True)
class ComparisonPlan:
    """Embeddings ordered by group then subject, and the blocks that cover every pair once.

    Both the thread pool here and a Dask cluster (:mod:`faceaudit.distributed`) run a plan: each
    worker folds some blocks into its own statistics, and the partial statistics merge exactly.
    """

    emb: np.ndarray
    subjects: np.ndarray
    blocks: list[Block]
    n_groups: int
    bins: ScoreBins
    top_k: int
    sample: ImpostorSample | None
    score_map: ScoreMap | None = None  # in the plan's row order

    @property
    def pairs(self) -> int:
        return sum(b.pairs for b in self.blocks)

    def empty(self) -> PairStatistics:
        return PairStatistics(n_groups=self.n_groups, bins=self.bins, top_k=self.top_k)


def plan_comparison(
    embeddings: np.ndarray,
    subjects: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    *,
    bins: ScoreBins | None = None,
    top_k: int = 1_000_000,
    row_block: int = ROW_BLOCK,
    col_block: int = COL_BLOCK,
    sample: ImpostorSample | None = None,
    score_map: ScoreMap | None = None,
) -> ComparisonPlan:
    """Order rows by group then subject and plan the blocks (see :func:`compare_embeddings`)."""
    emb = np.ascontiguousarray(embeddings, np.float32)
    subjects = np.asarray(subjects, np.int32)
    groups = np.asarray(groups, np.int32)
    n = len(emb)
    if not (len(subjects) == len(groups) == n):
        raise ValueError(f"{n} embeddings, {len(subjects)} subjects, {len(groups)} groups: lengths differ")
    if score_map is not None and len(score_map.codes) != n:
        raise ValueError(f"{n} embeddings but {len(score_map.codes)} calibration codes")
    order = np.lexsort((subjects, groups))
    emb, subjects, groups = emb[order], subjects[order], groups[order]
    starts = np.searchsorted(groups, np.arange(n_groups + 1))
    return ComparisonPlan(emb, subjects, plan_blocks(starts, n_groups, row_block, col_block), n_groups,
                          bins or ScoreBins(), top_k, sample, None if score_map is None else score_map.reordered(order))


def fold_blocks(emb: np.ndarray, subjects: np.ndarray, blocks: list[tuple[int, Block]], stats: PairStatistics,
                sample: ImpostorSample | None = None, done: Callable[[int], object] | None = None,
                score_map: ScoreMap | None = None) -> PairStatistics:
    """Fold the numbered blocks into ``stats`` (single-threaded BLAS is the caller's choice); returns it."""
    for index, blk in blocks:
        fold_block(stats, emb, subjects, blk, index, sample, score_map)
        if done is not None:
            done(blk.pairs)
    return stats


def compare_embeddings(
    embeddings: np.ndarray,
    subjects: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    *,
    bins: ScoreBins | None = None,
    top_k: int = 1_000_000,
    threads: int | None = None,
    progress: bool = False,
    row_block: int = ROW_BLOCK,
    col_block: int = COL_BLOCK,
    sample: ImpostorSample | None = None,
) -> PairStatistics:
    """Compare every unordered pair of rows (cosine of L2-normalised rows) into sufficient statistics.

    ``subjects`` and ``groups`` are integer codes per row; pairs of the same subject are genuine.
    Within a group, rows are ordered by subject, which keeps the subject-sorted check of each block
    cheap. Results do not depend on ``threads`` or block sizes (up to float32 rounding of scores).
    ``sample``: a declared sampling of impostor pairs (all pairs when None); the sample depends on the
    block sizes, which are part of the declaration.
    """
    plan = plan_comparison(embeddings, subjects, groups, n_groups, bins=bins, top_k=top_k, row_block=row_block,
                           col_block=col_block, sample=sample)
    return run_plan(plan, threads=threads, progress=progress)


def run_plan(plan: ComparisonPlan, *, threads: int | None = None, progress: bool = False) -> PairStatistics:
    """Run a plan on this machine's threads."""
    threads = max(1, threads or os.cpu_count() or 1)
    numbered = list(enumerate(plan.blocks))
    bar = tqdm(total=plan.pairs, desc="compare", unit="pair", unit_scale=True, disable=not progress, leave=False)
    # interleaved shares balance the work
    parts = [plan.empty() for _ in range(threads)]

    def run(k: int) -> None:
        fold_blocks(plan.emb, plan.subjects, numbered[k::threads], parts[k], plan.sample, bar.update, plan.score_map)

    try:
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
            for fut in [pool.submit(run, k) for k in range(threads)]:
                fut.result()
    finally:
        bar.close()
    total = parts[0]
    for p in parts[1:]:
        total.merge(p)
    return total


def score_pairs(emb: np.ndarray, index_a: np.ndarray, index_b: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    """Cosine similarity of listed pairs of rows of L2-normalised ``emb``: row-wise dot products, in chunks
    so that memory stays at two (chunk, D) slices whatever the number of pairs."""
    out = np.empty(len(index_a), np.float32)
    for s in range(0, len(index_a), chunk):
        a, b = emb[index_a[s:s + chunk]], emb[index_b[s:s + chunk]]
        out[s:s + chunk] = np.einsum("ij,ij->i", a, b)
    return out


def warm_up() -> None:
    """Compare a few random vectors, so Numba compiles the fold kernel now and caches it (install time)."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 128)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    compare_embeddings(emb, np.arange(300) // 3, np.arange(300) % 4, 4, top_k=100, threads=1)
