"""Our rates and EER against pyeer (an independent implementation) on the same scores."""

from __future__ import annotations

import numpy as np
import pytest
from pyeer.eer_info import get_eer_stats

from faceaudit.metrics.rates import counts_at, det_curve, global_threshold
from faceaudit.scoring.groups import cell_index
from faceaudit.scoring.stats import PairStatistics, ScoreBins


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_fmr100_fmr1000_match_pyeer(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gen = np.clip(rng.normal(0.62, 0.11, 4000), -1, 1).astype(np.float32)
    imp = np.clip(rng.normal(0.08, 0.10, 200_000), -1, 1).astype(np.float32)
    stats = PairStatistics(n_groups=1, bins=ScoreBins(-1, 1, 20_000), top_k=10_000)
    c = int(cell_index(0, 0, 1))
    stats.add_genuine(gen, np.full(len(gen), c), np.arange(len(gen)))
    stats.add_impostor_pairs(imp, np.full(len(imp), c), np.zeros(len(imp), int), np.ones(len(imp), int))
    ref = get_eer_stats(gen.astype(np.float64), imp.astype(np.float64))
    det = det_curve(stats, 0)
    assert det.eer == pytest.approx(ref.eer, abs=2e-3)
    for target, theirs in ((1e-2, ref.fmr100), (1e-3, ref.fmr1000)):
        t = global_threshold(stats, target)
        fnmr = counts_at(stats, t).false_non_matches[0] / len(gen)
        # pyeer takes the threshold whose FMR is closest to the target, we the lowest with FMR <= target:
        # the two differ by at most a few genuine pairs near the threshold.
        assert fnmr == pytest.approx(theirs, abs=3 / len(gen))
