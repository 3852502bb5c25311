"""The fold kernel: one pass over a block of scores into a histogram, sums and a tail count.

Written with Numba because NumPy would need about eight passes over each block (bin index, clip,
bincount, sum, sum of squares, range check, tail filter) and its bincount holds the GIL, so threads
could not share the work. Compiled without the GIL, the kernel folds a block in one pass while other
threads fold theirs. Bin rule identical to :meth:`faceaudit.scoring.stats.ScoreBins.index`.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True, fastmath=False)
def fold_block_kernel(scores: np.ndarray, lo: np.float32, scale: np.float32, hist: np.ndarray,
                      floor: np.float32, hi: np.float32) -> tuple[np.float64, np.float64, int, int]:  # pragma: no cover
    """Add ``scores`` (2-D float32) into ``hist``; return (sum, sum of squares, #(> floor), #out of [lo, hi]).

    Sums are accumulated in float32 over runs of at most 4096 scores, then in float64.
    """
    n_bins = hist.shape[0]
    total = np.float64(0.0)
    total_sq = np.float64(0.0)
    above = 0
    outside = 0
    for i in range(scores.shape[0]):
        row_sum = np.float32(0.0)
        row_sq = np.float32(0.0)
        for j in range(scores.shape[1]):
            if (j & 4095) == 4095:  # keep float32 partial sums short
                total += row_sum
                total_sq += row_sq
                row_sum = np.float32(0.0)
                row_sq = np.float32(0.0)
            s = scores[i, j]
            x = (s - lo) * scale
            if x < 0:
                x = np.float32(0.0)
            b = int(x)
            if b > n_bins - 1:
                b = n_bins - 1
            hist[b] += 1
            row_sum += s
            row_sq += s * s
            if s > floor:
                above += 1
            if s < lo or s > hi:
                outside += 1
        total += row_sum
        total_sq += row_sq
    return total, total_sq, above, outside
